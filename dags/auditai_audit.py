"""Airflow 3 DAG `auditai_audit`: the AuditAI audit of one model, then the registry gate and promotion.

Parsing this file imports only the Airflow Task SDK and the standard library: auditai_ops,
torch and mlflow are imported inside the tasks, and Variables are read only while a task runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

DAG_ID = "auditai_audit"
TAGS = ["auditai", "audit", "mlops"]
WORK_ROOT_VARIABLE = "auditai_work_root"
CONFIG_VARIABLE = "auditai_config_path"
KFP_HOST_VARIABLE = "auditai_kfp_host"
DEFAULT_WORK_ROOT = "/tmp/auditai-airflow"
CONFIG_FILE = "audit-config.yaml"

DEFAULT_ARGS = {
    "owner": "auditai",
    "retries": 2,
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=20),
    "execution_timeout": timedelta(minutes=30),
}

DOC_MD = f"""
# AuditAI audit

Proves (or refutes with a decoded counterexample) every semantic unit test of the audit config
for one model, registers the audited model version in the MLflow registry through the gate, and
promotes it only when the audit passes.

`prepare` → `choose_runner` → `map_latents` → (`discover_directions`, `train_classifier`) →
`plan_shards` → `verify_shard` × *shards* (dynamic task mapping) → `merge` → `report` → `gate` →
`audit_passed` (short circuit on the verdict) → `promote`.

**Repair** (`finetune.repair: true` in the config, as in `auditai run`): after a failing audit's
gate, `repair` fine-tunes the head for the failing unit tests, re-audits the candidate into
`repaired/` and, when it passes, registers it through the gate → `candidate_passed` (short
circuit) → `promote_candidate`. Otherwise `repair` and what follows it are skipped.

With a KFP host (param `kfp_host` or Variable `{KFP_HOST_VARIABLE}`), `submit_to_kfp` submits
the Kubeflow pipeline instead and every local step is skipped.

**Params**: `config_path` (default: Variable `{CONFIG_VARIABLE}`), `model_name` (the registered
model the gate registers under; default: the config's `gate.model_name`), `model_version` (a
version number or alias of `model_name` whose classifier is audited, pixel mode; empty: the model
the config names), `promote_to` (the alias promotion sets), `shards`, `work_dir`, `kfp_host`.

**Work folder**: `work_dir`, else `<Variable {WORK_ROOT_VARIABLE}, default {DEFAULT_WORK_ROOT}>/{DAG_ID}/<run id>`.
Every task reads and writes it: all workers must share it (a shared volume) unless one worker
runs them all.

**Registry**: the config's `tracking:` section, else `$MLFLOW_TRACKING_URI` (S3 artifacts:
`MLFLOW_S3_ENDPOINT_URL`, `AWS_*`); without either, each run keeps its own sqlite store in its
work folder. Every step is a nested MLflow run of the audit's run.

**Outcome**: a failing audit is registered with gate FAIL and leaves the run *successful* with
`promote` skipped (read the task states, not the run state); an audit or gate error fails the run.
"""


def _run_folder_name(run_id: str) -> str:
    """The run id as a folder name (run ids hold ':' and '+')."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)


@contextmanager
def _bad_input_fails_fast() -> Iterator[None]:
    """Bad input (a one-line AuditInputError naming the file or field) does not heal on retry: fail without retrying."""
    from airflow.sdk.exceptions import AirflowFailException

    from auditai_ops.errors import AuditInputError

    try:
        yield
    except AuditInputError as error:
        raise AirflowFailException(f"auditai: {error}") from None


@contextmanager
def _step(run: dict[str, Any], name: str) -> Iterator[None]:
    """One audit step: bad input fails fast, and the step is logged as a nested MLflow run of the audit (a tracking failure is only a warning)."""
    from auditai_ops.steps import config_from_text
    from auditai_ops.tracking.steps import track_step

    config = config_from_text(run["config_yaml"])
    with _bad_input_fails_fast(), track_step(config.tracking, _folder(run), name, config, Path(run["config_path"])):
        yield


def _folder(run: dict[str, Any]) -> Path:
    return Path(run["work_dir"])


def _base(run: dict[str, Any]) -> Path:
    return Path(run["config_path"]).parent


@dag(
    dag_id=DAG_ID,
    schedule="0 2 * * *",
    start_date=None,
    catchup=False,
    max_active_runs=1,
    tags=TAGS,
    doc_md=DOC_MD,
    default_args=DEFAULT_ARGS,
    params={
        "config_path": Param("", type="string", description=f"audit config YAML on the workers; empty: Variable {CONFIG_VARIABLE}"),
        "model_name": Param("", type="string", description="registered model the gate registers the audited version under; empty: the config's gate.model_name"),
        "model_version": Param("", type="string", description="version number or alias of model_name to audit (pixel mode); empty: the model the config names"),
        "promote_to": Param("production", type="string", pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$", description="alias set on the gated version when the audit passes"),
        "shards": Param(2, type="integer", minimum=1, maximum=256, description="verification shards, run as mapped tasks"),
        "work_dir": Param("", type="string", description="this run's artifact folder, shared by every worker; empty: <work root>/auditai_audit/<run id>"),
        "kfp_host": Param("", type="string", description=f"KFP endpoint: submit the Kubeflow pipeline instead of running here; empty: Variable {KFP_HOST_VARIABLE}"),
    },
)
def auditai_audit() -> None:
    @task(execution_timeout=timedelta(minutes=5))
    def prepare() -> dict[str, Any]:
        """Resolve the config (with the model params applied), the work folder and the runner; write the config used into the folder."""
        from airflow.sdk import Variable
        from airflow.sdk.exceptions import AirflowFailException

        from auditai_ops.fileio import write_text
        from auditai_ops.steps import config_file_text, config_from_text, override_config_text, registered_model_uri

        context = get_current_context()
        params = context["params"]
        config_path = params["config_path"] or Variable.get(CONFIG_VARIABLE, default="")
        if not config_path:
            raise AirflowFailException(f"config_path: give the param or set the Variable {CONFIG_VARIABLE}")
        path = Path(config_path).resolve()
        work_root = Variable.get(WORK_ROOT_VARIABLE, default="") or DEFAULT_WORK_ROOT
        work_dir = Path(params["work_dir"] or Path(work_root) / DAG_ID / _run_folder_name(context["run_id"])).resolve()
        with _bad_input_fails_fast():
            text = config_file_text(path)
            overrides: dict[str, dict[str, Any]] = {"gate": {"model_name": params["model_name"]}} if params["model_name"] else {}
            if params["model_version"]:
                name = params["model_name"] or config_from_text(text).gate.model_name
                overrides["model"] = {"classifier": registered_model_uri(name, params["model_version"])}
            text = override_config_text(text, overrides)
        write_text(work_dir / CONFIG_FILE, text)
        print(f"config {path} -> {work_dir / CONFIG_FILE}; work folder {work_dir}")
        kfp_host = params["kfp_host"] or Variable.get(KFP_HOST_VARIABLE, default="")
        config = config_from_text(text)
        if config.tracking.enabled and not kfp_host:
            from auditai_ops.tracking.steps import begin_audit

            begin_audit(config, work_dir, path)  # this run's parent MLflow run: every step nests under it
        return {
            "config_yaml": text,
            "config_file": str(work_dir / CONFIG_FILE),
            "config_path": str(path),
            "work_dir": str(work_dir),
            "shards": params["shards"],
            "kfp_host": kfp_host,
            "promote_to": params["promote_to"],
        }

    @task.branch(execution_timeout=timedelta(minutes=5))
    def choose_runner(run: dict[str, Any]) -> str:
        """Submit to Kubeflow when a KFP host is configured, else run every step on the Airflow workers."""
        return "submit_to_kfp" if run["kfp_host"] else "map_latents"

    @task(execution_timeout=timedelta(minutes=10))
    def submit_to_kfp(run: dict[str, Any]) -> str:
        """Start one run of the compiled audit pipeline on the KFP endpoint with this run's config; returns the KFP run id."""
        from auditai_ops.cli.main import checkout_module

        with _bad_input_fails_fast():
            run_id = checkout_module("pipelines.kfp_cli").submit(run["kfp_host"], Path(run["config_file"]))
        print(f"submitted KFP run {run_id} to {run['kfp_host']}")
        return run_id

    @task(execution_timeout=timedelta(hours=3))
    def map_latents(run: dict[str, Any]) -> dict[str, float]:
        """Train the VAE (or load the team's generator) and encode the dataset."""
        from auditai_ops.steps import map_latents_step

        with _step(run, "map-latents"):
            return map_latents_step(run["config_yaml"], _folder(run), _base(run))

    @task(execution_timeout=timedelta(hours=1))
    def discover_directions(run: dict[str, Any]) -> list[str]:
        """Find and calibrate the semantic directions the unit tests move along."""
        from auditai_ops.steps import discover_directions_step

        with _step(run, "discover-directions"):
            return discover_directions_step(run["config_yaml"], _folder(run), _folder(run), _base(run))

    @task(execution_timeout=timedelta(hours=1))
    def train_classifier(run: dict[str, Any]) -> dict[str, float]:
        """Train the audited classifier head on the latents (latent mode; pixel mode audits the team's classifier with it as encoder head)."""
        from auditai_ops.steps import train_classifier_step

        with _step(run, "train-classifier"):
            return train_classifier_step(run["config_yaml"], _folder(run), _folder(run))

    @task(execution_timeout=timedelta(minutes=5))
    def plan_shards(run: dict[str, Any]) -> list[int]:
        """The shard indices verify_shard is mapped over (one mapped task each)."""
        return list(range(run["shards"]))

    @task(execution_timeout=timedelta(hours=3), max_active_tis_per_dagrun=16)
    def verify_shard(run: dict[str, Any], shard_index: int) -> str:
        """Prove or falsify shard `shard_index` of every unit test's samples; returns the shard file."""
        from auditai_ops.steps import verify_shard_step

        f, count = _folder(run), run["shards"]
        with _step(run, f"verify-shard-{shard_index}-of-{count}"):
            return str(verify_shard_step(run["config_yaml"], f, f, f, shard_index, count, f, base_dir=_base(run)))

    @task(execution_timeout=timedelta(minutes=30))
    def merge(run: dict[str, Any], shard_files: list[str]) -> dict[str, Any]:
        """Merge the shards into certificates, summary.json and junit.xml; returns the verdicts."""
        from auditai_ops.steps import merge_step

        f = _folder(run)
        with _step(run, "verify"):
            summary = merge_step(run["config_yaml"], f, f, f, [Path(p) for p in shard_files], f, _base(run))
        return {"verdict": summary["verdict"], "unit_tests": [{"name": t["name"], "verdict": t["verdict"]} for t in summary["unit_tests"]]}

    @task(execution_timeout=timedelta(minutes=15))
    def report(run: dict[str, Any]) -> str:
        """The self-contained HTML report (verdicts, certificates, counterexamples, certified accuracy against the range) in the work folder."""
        import json

        from auditai_ops.layout import DIRECTIONS_DIR, SUMMARY_FILE
        from auditai_ops.report.html import write_html_report
        from auditai_ops.report.render import console_table

        print(console_table(json.loads((_folder(run) / SUMMARY_FILE).read_text())))
        with _step(run, "report"):
            path = write_html_report(_folder(run), _folder(run) / DIRECTIONS_DIR)
        print(f"report: {path}")
        return str(path)

    @task(execution_timeout=timedelta(minutes=30))
    def gate(run: dict[str, Any], verdicts: dict[str, Any]) -> dict[str, Any]:
        """Register the audited model version in the MLflow registry; the gate's alias moves only past passing certificates that match the weights."""
        from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

        from auditai_ops.gate.decision import FAIL, render_decision
        from auditai_ops.gate.step import gate_audit
        from auditai_ops.steps import config_from_text

        config = config_from_text(run["config_yaml"])
        if not config.tracking.enabled:
            raise AirflowSkipException("tracking.enabled is false: no registry gate, and nothing to promote")
        with _bad_input_fails_fast():
            decision = gate_audit(config, _folder(run), _base(run))
        print(render_decision(decision))
        if decision.decision == FAIL and verdicts["verdict"] == "pass":
            raise AirflowFailException(f"the gate refused an audit that passed: {'; '.join(decision.reasons)}")
        if decision.decision != FAIL and decision.exit_code != 0:  # the registry could not be reached, or the alias not set: worth a retry
            raise AirflowException(f"the gate could not decide: {'; '.join(decision.reasons) or 'the alias was not set'}")
        return {"decision": decision.decision, "model_name": decision.model_name, "version": decision.version, "alias": decision.alias}

    @task.short_circuit(execution_timeout=timedelta(minutes=5))
    def audit_passed(verdicts: dict[str, Any], gated: dict[str, Any]) -> dict[str, Any] | bool:
        """The certified version for promote when the audit passed; False skips promote (the run stays successful); an audit error fails the run."""
        from airflow.sdk.exceptions import AirflowFailException

        failing = [f"{t['name']} ({t['verdict']})" for t in verdicts["unit_tests"] if t["verdict"] != "pass"]
        if verdicts["verdict"] == "error":
            raise AirflowFailException(f"the audit could not decide: {', '.join(failing)}")
        print(f"audit verdict {verdicts['verdict']}; gate {gated['decision']} for {gated['model_name']} version {gated['version']}")
        if failing:
            print(f"not passing: {', '.join(failing)}: promote is skipped")
        return {"model_name": gated["model_name"], "version": gated["version"]} if verdicts["verdict"] == "pass" else False

    @task(execution_timeout=timedelta(minutes=30))
    def promote(run: dict[str, Any], approved: dict[str, Any]) -> str:
        """Set the `promote_to` alias on the certified version, after re-checking the version the registry holds."""
        from airflow.sdk.exceptions import AirflowException, AirflowFailException

        from auditai_ops.gate.decision import FAIL, render_decision
        from auditai_ops.gate.step import promote_version
        from auditai_ops.steps import config_from_text

        audit_dir = Path(approved["audit_dir"]) if approved.get("audit_dir") else _folder(run)  # the folder whose files the version must hold
        with _bad_input_fails_fast():
            decision = promote_version(config_from_text(run["config_yaml"]), audit_dir, approved["model_name"], approved["version"], None, run["promote_to"])
        print(render_decision(decision))
        if decision.decision == FAIL:
            raise AirflowFailException(f"promotion refused: {'; '.join(decision.reasons)}")
        if decision.exit_code != 0:
            raise AirflowException(f"promotion could not decide: {'; '.join(decision.reasons) or 'the alias was not set'}")
        return f"{decision.model_name} version {decision.version} -> {run['promote_to']}"

    @task(execution_timeout=timedelta(hours=3))
    def repair(run: dict[str, Any], verdicts: dict[str, Any], gated: dict[str, Any]) -> dict[str, Any] | None:
        """A failing audit with finetune.repair: fine-tune, re-audit the candidate into repaired/, gate it if it passes (skipped otherwise)."""
        from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

        from auditai_ops.finetune.repair import REPAIRED_DIR, candidate_gate_config, repair_audit, repair_table
        from auditai_ops.gate.decision import FAIL, render_decision
        from auditai_ops.gate.step import gate_audit
        from auditai_ops.layout import resolve_inputs
        from auditai_ops.steps import audit_generator, config_from_text

        config = config_from_text(run["config_yaml"])
        if verdicts["verdict"] != "fail" or not config.finetune.repair:
            raise AirflowSkipException(f"audit verdict {verdicts['verdict']}, finetune.repair {config.finetune.repair}: nothing to repair")
        f, base = _folder(run), _base(run)
        inputs = resolve_inputs(f, config.inputs, base)
        with _bad_input_fails_fast(), _step(run, "finetune"):
            outcome = repair_audit(config, audit_generator(config, inputs, base), inputs, f, base)
        print(f"{outcome.finetune.describe()}\n\n{repair_table(outcome.rows)}")
        if not outcome.passed:
            print(f"the candidate does not pass ({outcome.finetune.message}): nothing to promote")
            return None
        with _bad_input_fails_fast():
            decision = gate_audit(candidate_gate_config(config, outcome, inputs, f), f / REPAIRED_DIR, base)
        print(render_decision(decision))
        if decision.decision == FAIL:
            raise AirflowFailException(f"the gate refused a repaired candidate that passed its audit: {'; '.join(decision.reasons)}")
        if decision.exit_code != 0:  # the registry could not be reached, or the alias not set: worth a retry
            raise AirflowException(f"the gate could not decide on the repaired candidate: {'; '.join(decision.reasons) or 'the alias was not set'}")
        print(f"repaired candidate: {decision.model_name} version {decision.version} (the failing audit's version {gated['version']} stays refused)")
        return {"model_name": decision.model_name, "version": decision.version, "audit_dir": str(f / REPAIRED_DIR)}

    @task.short_circuit(execution_timeout=timedelta(minutes=5))
    def candidate_passed(repaired: dict[str, Any] | None) -> dict[str, Any] | bool:
        """The repaired candidate's certified version for promote_candidate; False (skip) when no candidate passed."""
        return {"model_name": repaired["model_name"], "version": repaired["version"], "audit_dir": repaired["audit_dir"]} if repaired else False

    run = prepare()
    runner = choose_runner(run)
    latents = map_latents(run)
    runner >> [submit_to_kfp(run), latents]
    directions, head = discover_directions(run), train_classifier(run)
    latents >> [directions, head]
    indices = plan_shards(run)
    [directions, head] >> indices
    shards = verify_shard.partial(run=run).expand(shard_index=indices)
    verdicts = merge(run, shards)
    reported = report(run)
    verdicts >> reported
    gated = gate(run, verdicts)
    reported >> gated
    promote(run, audit_passed(verdicts, gated))
    promote.override(task_id="promote_candidate")(run, candidate_passed(repair(run, verdicts, gated)))


auditai_audit()
