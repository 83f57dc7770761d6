"""`auditai kfp ...`: compile the audit pipeline, submit it or schedule it on a KFP endpoint, or run it locally.

These commands need kfp (the `kfp` extra) and this repository's components/ and pipelines/
folders; the library itself never imports kfp, so `auditai kfp` loads this module from the
checkout. Exit codes as for every auditai command: 0 ok (a local run whose specs all pass),
1 a spec fails, 2 bad input or an error.
"""

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import yaml

from auditai_ops.steps import override_config_text
from components.runtime import CPU_IMAGE, CUDA_IMAGE, RUNTIME
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


# Warnings kfp's local runner gives for every task of this pipeline, expected offline: display names
# are a UI setting, and the tasks run in this Python instead of the images of infra/images.yaml.
# Only these go to the log file instead of the console; any other warning is shown as usual.
EXPECTED_LOCAL_WARNINGS = (
    (UserWarning, re.compile(r"Task '[^']+': settings \['display_name'\] have no effect in the current local runner and will be ignored\.$")),
    (RuntimeWarning, re.compile(r'You may be attempt?ing to run a task that uses custom or non-Python base image "(?:' + "|".join(map(re.escape, (CPU_IMAGE, CUDA_IMAGE))) + ')"')),
)
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
TASK_STARTED = re.compile(r" - INFO - Executing task '(?P<task>[^']+)'")
TASK_FINISHED = re.compile(r" - (?:INFO|ERROR) - Task '(?P<task>[^']+)' finished with status (?P<status>[A-Z]+)")
KFP_PROBLEM = re.compile(r"\d\d:\d\d:\d\d\.\d{3} - (?:WARNING|ERROR|CRITICAL) - ")


class LocalRunFailed(RuntimeError):
    """A task of a local pipeline run failed; the message names it and the log file."""


def _expected_warning(message: Warning | str, category: type[Warning]) -> bool:
    return any(issubclass(category, kind) and pattern.search(str(message)) for kind, pattern in EXPECTED_LOCAL_WARNINGS)


class LocalRunConsole:
    """What kfp's local runner prints, sent to a log file; the console gets one line per finished task.

    kfp.local prints every task's streamed output and its own log records to sys.stdout (its log
    handler is created on sys.stdout for each task), so replacing sys.stdout with this object while
    the pipeline runs captures all of it. Lines are written to the log without colour codes. A line
    of kfp's own log at WARNING or above is also shown on the console, so no kfp error is hidden.
    With `verbose`, the console gets kfp's full output as well. Thread-safe: kfp runs the shards of
    a ParallelFor in threads.
    """

    def __init__(self, log: TextIO, console: TextIO, verbose: bool = False) -> None:
        self.log = log
        self.console = console
        self.verbose = verbose
        self.tasks: list[dict[str, Any]] = []  # {"task", "status", "seconds"} in the order they finished
        self._started: dict[str, deque[float]] = {}
        self._recent: deque[str] = deque(maxlen=25)  # the last lines of output since a task started, shown when it fails
        self._pending = ""
        self._lock = threading.RLock()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        with self._lock:
            if self.verbose:
                self.console.write(text)
            *lines, self._pending = (self._pending + text).split("\n")
            for line in lines:
                self._line(ANSI_ESCAPE.sub("", line))
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self.log.flush()
            self.console.flush()

    def close_pending(self) -> None:
        with self._lock:
            if self._pending:
                self._line(ANSI_ESCAPE.sub("", self._pending))
                self._pending = ""
            self.flush()

    def _console(self, line: str) -> None:
        # Not print(): while a task runs, kfp replaces builtins.print with one that indents through sys.stdout.
        self.console.write(line + "\n")
        self.console.flush()

    def _line(self, line: str) -> None:
        self.log.write(line + "\n")
        if started := TASK_STARTED.search(line):
            self._started.setdefault(started["task"], deque()).append(time.monotonic())
            self._recent.clear()
        elif finished := TASK_FINISHED.search(line):
            self._finished(finished["task"], finished["status"])
        elif KFP_PROBLEM.search(line) and not self.verbose:
            self._console(line)
        elif line.startswith("    "):
            self._recent.append(line)

    def _finished(self, task: str, status: str) -> None:
        starts = self._started.get(task)
        seconds = time.monotonic() - starts.popleft() if starts else float("nan")
        self.tasks.append({"task": task, "status": status, "seconds": seconds})
        done = status == "SUCCESS"
        self._console(f"{task:<24} {'done' if done else 'FAILED'} in {seconds:6.1f} s")
        if not done and not self.verbose:
            self._console(f"  the last lines of output before it failed (all of it: {self.log.name}):")
            for line in self._recent:
                self._console("  " + line)

    def showwarning(self, original: Callable[..., None]) -> Callable[..., None]:
        """A warnings.showwarning that sends kfp's expected offline warnings to the log only."""

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: TextIO | None = None, line: str | None = None) -> None:
            if _expected_warning(message, category):
                with self._lock:
                    self.log.write(warnings.formatwarning(message, category, filename, lineno, line))
            else:
                original(message, category, filename, lineno, file, line)

        return show


@contextlib.contextmanager
def quiet_local_runner(log_path: Path, verbose: bool = False, console: TextIO | None = None) -> Iterator[LocalRunConsole]:
    """While kfp.local runs a pipeline: its output to `log_path`, one line per task to the console (see LocalRunConsole)."""
    console = console or sys.stdout
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as log:
        progress = LocalRunConsole(log, console, verbose)
        with warnings.catch_warnings():
            warnings.showwarning = progress.showwarning(warnings.showwarning)
            try:
                with contextlib.redirect_stdout(progress):  # type: ignore[type-var]
                    yield progress
            finally:
                progress.close_pending()


def run_local(config: Path | None, pipeline_root: Path, shards: int = 2, verbose: bool = False, console: TextIO | None = None) -> dict:
    """Run the whole pipeline here with kfp.local.SubprocessRunner (CPU, this Python).

    Returns {"audit": the merged summary, "finetune": the fine-tuning record or None,
    "candidate": the candidate's merged summary or None (the last two from the repair branch),
    "tasks": [{"task", "status", "seconds"}] in the order they finished, "log": the log file}.
    The console shows one line per task; kfp's full output goes to
    `<pipeline_root>/run-local-<start time>.log` (with `verbose`, to the console as well).
    A failed task raises LocalRunFailed, naming the task and the log.

    The components install nothing at run time (install_kfp_package=False, no
    packages_to_install), so the run works offline with the packages of this environment.
    """
    from kfp import local

    console = console or sys.stdout
    arguments = _arguments(config)
    if not os.environ.get("MLFLOW_TRACKING_URI"):  # no server: every task logs to one local store under the pipeline root
        store = Path(pipeline_root).resolve() / "mlflow"
        store.mkdir(parents=True, exist_ok=True)
        tracking = {"uri": f"sqlite:///{store / 'mlflow.db'}", "artifact_location": (store / "artifacts").as_uri()}
        arguments["config_yaml"] = override_config_text(arguments["config_yaml"], {"tracking": tracking})
    log_path = Path(pipeline_root) / f"run-local-{time.strftime('%Y-%m-%d-%H-%M-%S')}.log"
    print(f"kfp run-local: every task's output goes to {log_path}", file=console, flush=True)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    with quiet_local_runner(log_path, verbose, console) as progress:
        try:
            run = build_pipeline(shards, accelerator=None)(**arguments)
        except RuntimeError as error:
            message = ANSI_ESCAPE.sub("", str(error))
            if "finished with status FAILURE" not in message:  # not a failed task: a bug, keep its traceback
                raise
            failed = [task["task"] for task in progress.tasks if task["status"] != "SUCCESS"]
            what = f"task {', '.join(failed)} failed" if failed else message
            raise LocalRunFailed(f"the local pipeline run stopped: {what}; its output is in {log_path}") from error
    folders = sorted(Path(pipeline_root).glob(f"{PIPELINE_NAME}-*/"))  # run folders are named by start time
    folder = folders[-1] if folders else Path(pipeline_root)
    if run.output is None or not (folder / "merge" / "audit" / "summary.json").is_file():
        raise RuntimeError(f"the local pipeline run left no summary under {pipeline_root}")

    def read(relative: str) -> dict | None:
        path = folder / relative
        return json.loads(path.read_text()) if path.is_file() else None

    return {
        "audit": read("merge/audit/summary.json"),
        "finetune": read("finetune/candidate/finetune/finetune.json"),
        "candidate": read("merge-2/audit/summary.json"),
        "tasks": progress.tasks,
        "log": log_path,
    }


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
    local.add_argument("--verbose", action="store_true", help="also print kfp's full output (every task's log) to the console; it always goes to the run's log file")


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
    try:
        outcome = run_local(args.config, args.pipeline_root, args.shards, verbose=args.verbose)
    except LocalRunFailed as error:
        print(f"auditai: error: {error}", file=sys.stderr)
        return 2
    report = {"verdict": outcome["audit"]["verdict"], "unit_tests": _verdicts(outcome["audit"])}
    if outcome["finetune"] is not None:
        report["finetune"] = outcome["finetune"]["status"]
    final = outcome["audit"]
    if outcome["candidate"] is not None:  # exit with the candidate's verdict, as `auditai run` does after a repair
        final = outcome["candidate"]
        report["candidate"] = {"verdict": final["verdict"], "unit_tests": _verdicts(final)}
    print(yaml.safe_dump(report, sort_keys=False).rstrip())
    return {"pass": 0, "fail": 1}.get(final["verdict"], 2)


def _verdicts(summary: dict) -> dict[str, str]:
    return {t["name"]: t["verdict"] for t in summary["unit_tests"]}
