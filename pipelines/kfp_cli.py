"""`auditai kfp ...`: compile the audit pipeline, submit it or schedule it on a KFP endpoint, or run it locally.

These commands need kfp (the `kfp` extra) and this repository's components/ and pipelines/
folders; the library itself never imports kfp, so `auditai kfp` loads this module from the
checkout. Exit codes as for every auditai command: 0 ok (a local run whose specs all pass),
1 a spec fails, 2 bad input or an error.
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

import yaml

from auditai_ops.steps import override_config_text
from components.runtime import RUNTIME
from pipelines.audit_pipeline import DEFAULT_ACCELERATOR, DEFAULT_SHARDS, PIPELINE_NAME, build_pipeline

PIPELINE_YAML = Path(__file__).resolve().parent / "audit_pipeline.yaml"


def compile_pipeline(output: Path = PIPELINE_YAML, shards: int = DEFAULT_SHARDS, accelerator: str | None = DEFAULT_ACCELERATOR) -> Path:
    """Write the pipeline's IR YAML (the committed one is made with the defaults)."""
    from kfp import compiler

    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=output.parent, delete=False) as scratch:
        staging = Path(scratch.name)
    try:
        compiler.Compiler().compile(build_pipeline(shards, accelerator), str(staging))
        staging.replace(output)
    finally:
        staging.unlink(missing_ok=True)  # a failed compile leaves nothing behind
    return output


def _arguments(config: Path | None) -> dict[str, str]:
    """The pipeline's parameters: the audit config as YAML text (checked here, so a bad config never reaches the cluster)."""
    from auditai_ops.steps import config_from_text

    if config is None:
        return {"config_yaml": ""}
    text = Path(config).read_text()
    config_from_text(text)
    return {"config_yaml": text}


def _client(host: str, namespace: str | None):  # noqa: ANN202 - kfp.Client
    from kfp import Client

    return Client(host=host, namespace=namespace)


def submit(host: str, config: Path | None, package: Path = PIPELINE_YAML, experiment: str = PIPELINE_NAME, run_name: str | None = None, namespace: str | None = None) -> str:
    """Start one run of the compiled pipeline on the KFP endpoint at `host`; returns the run id."""
    client = _client(host, namespace)
    result = client.create_run_from_pipeline_package(
        str(package), arguments=_arguments(config), run_name=run_name, experiment_name=experiment, namespace=namespace, service_account=RUNTIME.service_account
    )
    return result.run_id


def schedule(
    host: str, cron: str, config: Path | None, package: Path = PIPELINE_YAML, experiment: str = PIPELINE_NAME, job_name: str = "auditai-nightly", namespace: str | None = None
) -> str:
    """Create a recurring run (KFP's 6-field cron: seconds first, e.g. '0 0 2 * * *' nightly at 02:00); returns its id."""
    client = _client(host, namespace)
    experiment_id = client.create_experiment(experiment, namespace=namespace).experiment_id
    recurring = client.create_recurring_run(
        experiment_id=experiment_id,
        job_name=job_name,
        cron_expression=cron,
        params=_arguments(config),
        pipeline_package_path=str(package),
        max_concurrency=1,
        no_catchup=True,
        service_account=RUNTIME.service_account,
    )
    return recurring.recurring_run_id


def run_local(config: Path | None, pipeline_root: Path, shards: int = 2) -> dict:
    """Run the whole pipeline here with kfp.local.SubprocessRunner (CPU, this Python).

    Returns {"audit": the merged summary, "finetune": the fine-tuning record or None,
    "candidate": the candidate's merged summary or None} (the last two from the repair branch).

    The components install nothing at run time (install_kfp_package=False, no
    packages_to_install), so the run works offline with the packages of this environment.
    """
    from kfp import local

    arguments = _arguments(config)
    if not os.environ.get("MLFLOW_TRACKING_URI"):  # no server: every task logs to one local store under the pipeline root
        store = Path(pipeline_root).resolve() / "mlflow"
        store.mkdir(parents=True, exist_ok=True)
        tracking = {"uri": f"sqlite:///{store / 'mlflow.db'}", "artifact_location": (store / "artifacts").as_uri()}
        arguments["config_yaml"] = override_config_text(arguments["config_yaml"], {"tracking": tracking})
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    run = build_pipeline(shards, accelerator=None)(**arguments)
    folders = sorted(Path(pipeline_root).glob(f"{PIPELINE_NAME}-*/"))  # run folders are named by start time
    folder = folders[-1] if folders else Path(pipeline_root)
    if run.output is None or not (folder / "merge" / "audit" / "summary.json").is_file():
        raise RuntimeError(f"the local pipeline run left no summary under {pipeline_root}")

    def read(relative: str) -> dict | None:
        path = folder / relative
        return json.loads(path.read_text()) if path.is_file() else None

    return {"audit": read("merge/audit/summary.json"), "finetune": read("finetune/candidate/finetune/finetune.json"), "candidate": read("merge-2/audit/summary.json")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `auditai kfp` subcommands."""
    sub = parser.add_subparsers(dest="kfp_command", required=True, metavar="COMMAND")
    compile_ = sub.add_parser("compile", help="write the pipeline YAML (default: pipelines/audit_pipeline.yaml)")
    compile_.add_argument("--output", type=Path, default=PIPELINE_YAML)
    compile_.add_argument("--shards", type=int, default=DEFAULT_SHARDS, help=f"verification shards (default {DEFAULT_SHARDS})")
    compile_.add_argument("--accelerator", default=DEFAULT_ACCELERATOR, help=f"accelerator type per shard, or 'none' for CPU (default {DEFAULT_ACCELERATOR})")
    for name, text in (("submit", "start a run on a KFP endpoint"), ("schedule", "create a recurring run on a KFP endpoint")):
        command = sub.add_parser(name, help=text)
        command.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://ml-pipeline-ui.kubeflow:80")
        command.add_argument("--config", type=Path, default=None, help="audit config YAML passed as the pipeline's config_yaml")
        command.add_argument("--package", type=Path, default=PIPELINE_YAML, help="compiled pipeline YAML")
        command.add_argument("--experiment", default=PIPELINE_NAME)
        command.add_argument("--namespace", default=None)
        if name == "schedule":
            command.add_argument("--cron", required=True, help="6-field cron, seconds first: '0 0 2 * * *' runs nightly at 02:00")
            command.add_argument("--job-name", default="auditai-nightly")
        else:
            command.add_argument("--run-name", default=None)
    local = sub.add_parser("run-local", help="run the whole pipeline here with kfp.local.SubprocessRunner (offline, CPU)")
    local.add_argument("--config", type=Path, default=None)
    local.add_argument("--pipeline-root", type=Path, default=Path("runs/kfp-local"))
    local.add_argument("--shards", type=int, default=2)


def main(args: argparse.Namespace) -> int:
    """Run one `auditai kfp` subcommand; returns the exit code."""
    if args.kfp_command == "compile":
        accelerator = None if args.accelerator.lower() == "none" else args.accelerator
        print(f"compiled {compile_pipeline(args.output, args.shards, accelerator)}")
        return 0
    if args.kfp_command == "submit":
        print(f"submitted run {submit(args.host, args.config, args.package, args.experiment, args.run_name, args.namespace)}")
        return 0
    if args.kfp_command == "schedule":
        print(f"created recurring run {schedule(args.host, args.cron, args.config, args.package, args.experiment, args.job_name, args.namespace)} ({args.cron})")
        return 0
    outcome = run_local(args.config, args.pipeline_root, args.shards)
    report = {"verdict": outcome["audit"]["verdict"], "unit_tests": _verdicts(outcome["audit"])}
    if outcome["finetune"] is not None:
        report["finetune"] = outcome["finetune"]["status"]
    final = outcome["audit"]
    if outcome["candidate"] is not None:  # exit with the candidate's verdict, as `auditai run` does after a repair
        final = outcome["candidate"]
        report["candidate"] = {"verdict": final["verdict"], "unit_tests": _verdicts(final)}
    print(yaml.safe_dump(report, sort_keys=False))
    return {"pass": 0, "fail": 1}.get(final["verdict"], 2)


def _verdicts(summary: dict) -> dict[str, str]:
    return {t["name"]: t["verdict"] for t in summary["unit_tests"]}
