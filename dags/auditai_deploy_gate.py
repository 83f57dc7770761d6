"""Airflow 3 DAG `auditai_deploy_gate`: deploy a registered model version only if the registry shows it certified.

Parsing this file imports only the Airflow Task SDK and the standard library: auditai_ops and
mlflow are imported inside the tasks, and nothing reaches the registry before a task runs.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

DAG_ID = "auditai_deploy_gate"
TAGS = ["auditai", "deploy", "mlops"]
CONFIG_VARIABLE = "auditai_config_path"
WORK_ROOT_VARIABLE = "auditai_work_root"
DEFAULT_WORK_ROOT = "/tmp/auditai-airflow"

DEFAULT_ARGS = {
    "owner": "auditai",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=20),
    "execution_timeout": timedelta(minutes=30),
}

DOC_MD = f"""
# AuditAI deployment gate

`check_certificate` → `deploy_model_placeholder`.

Before anything is deployed, `check_certificate` downloads the target version from the MLflow
model registry and re-checks what it carries: an AuditAI package whose audit passed, every
certificate intact (content hash, signature when `AUDITAI_SIGNING_KEY` is set, verdict recomputed
from its samples), and weight hashes recomputed from the version's own files that match the
certificates (`auditai check-version`, read-only). A failed check or a version without a
certificate refuses the deployment with the reasons in the task log: the run fails
(`on_refusal: fail`, the default) or the deploy task is skipped (`on_refusal: skip`). A registry
that cannot be reached is retried, then fails the run.

`deploy_model_placeholder` only logs what it would deploy: **replace it** with your deployment
operator (KServe, SageMaker, a Helm release, ...). It receives the checked version, its alias and
its weight hashes.

**Params**: `model_name`, `version` (a version number or an alias, default `certified`),
`config_path` (its `tracking:` section names the registry; default: Variable `{CONFIG_VARIABLE}`,
else `$MLFLOW_TRACKING_URI`), `on_refusal`.
"""


@dag(
    dag_id=DAG_ID,
    schedule=None,
    start_date=None,
    catchup=False,
    tags=TAGS,
    doc_md=DOC_MD,
    default_args=DEFAULT_ARGS,
    params={
        "model_name": Param("auditai-model", type="string", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="registered model name"),
        "version": Param("certified", type="string", pattern=r"^([0-9]+|[A-Za-z_][A-Za-z0-9_-]*)$", description="version number or alias to deploy"),
        "config_path": Param("", type="string", description=f"audit config whose tracking section names the registry; empty: Variable {CONFIG_VARIABLE} or the defaults"),
        "on_refusal": Param("fail", enum=["fail", "skip"], description="a refused version fails the run, or only skips the deploy task"),
    },
)
def auditai_deploy_gate() -> None:
    @task.short_circuit(execution_timeout=timedelta(minutes=20))
    def check_certificate() -> dict[str, Any] | bool:
        """The registry's version must carry a passing certificate whose weight hashes match its own files; the reasons go to the task log."""
        from airflow.sdk import Variable
        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        from auditai_ops.config import load_config
        from auditai_ops.errors import AuditInputError
        from auditai_ops.gate.decision import ERROR, PASS, render_decision
        from auditai_ops.gate.step import check_version

        context = get_current_context()
        params = context["params"]
        config_path = params["config_path"] or Variable.get(CONFIG_VARIABLE, default="")
        chosen = params["version"]
        version, alias = (chosen, None) if chosen.isdigit() else (None, chosen)
        work_dir = Path(Variable.get(WORK_ROOT_VARIABLE, default="") or DEFAULT_WORK_ROOT) / DAG_ID
        try:
            decision = check_version(load_config(Path(config_path) if config_path else None), work_dir, params["model_name"], version, alias)
        except AuditInputError as error:
            raise AirflowFailException(f"auditai: {error}") from None
        print(render_decision(decision))
        if decision.decision == PASS:
            checked = {"model_name": decision.model_name, "version": decision.version, "alias": alias}
            return {**checked, "certificates_digest": decision.certificates_digest, "weights": decision.weights}
        reasons = "; ".join(decision.reasons)
        if decision.decision == ERROR:
            raise AirflowException(f"the registry could not be checked: {reasons}")  # retried
        if params["on_refusal"] == "fail":
            raise AirflowFailException(f"deployment refused for {params['model_name']} {chosen}: {reasons}")
        print(f"deployment refused for {params['model_name']} {chosen}: {reasons}; the deploy task is skipped")
        return False

    @task(execution_timeout=timedelta(minutes=30))
    def deploy_model_placeholder(checked: dict[str, Any]) -> str:
        """PLACEHOLDER: replace with your deployment operator. It only logs the certified version it was given."""
        target = f"{checked['model_name']} version {checked['version']}"
        print(f"[placeholder] would deploy {target} (certificates {checked['certificates_digest']}; weights {checked['weights']})")
        return target

    deploy_model_placeholder(check_certificate())


auditai_deploy_gate()
