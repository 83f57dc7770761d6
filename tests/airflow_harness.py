"""Airflow seen from a subprocess whose environment names a temporary AIRFLOW_HOME (see `airflow_env`): parse, test a DAG, read states.

Airflow reads its configuration when first imported, so each use runs in a fresh process
with the environment set first; the test process itself never imports airflow.

    python airflow_harness.py parse DAGS_FOLDER              the DagBag as JSON: errors, parse time, policies, side effects
    python airflow_harness.py test DAG_ID CONF_JSON [REGEX]  dag.test() one run (tasks matching REGEX marked success); its states as JSON
    python airflow_harness.py states DAG_ID                  the states of the DAG's latest run as JSON
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HEAVY_MODULES = ("torch", "mlflow", "auditai_ops", "kfp", "numpy", "boto3", "sklearn", "scipy")
HARNESS = Path(__file__).resolve()
REPO = HARNESS.parents[1]
RESULT_MARK = "AUDITAI-HARNESS-RESULT "


def airflow_env(home: Path, dags_folder: Path = REPO / "dags", extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an Airflow process using `home`: its own sqlite metadata DB, our dags/, no examples, this checkout importable."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
            **(extra or {}),
        }
    )
    return env


def airflow_executable() -> str:
    return str(Path(sys.executable).with_name("airflow"))


def migrate(home: Path) -> None:
    """`airflow db migrate`: the sqlite metadata DB in `home`."""
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run([airflow_executable(), "db", "migrate"], env=airflow_env(home), check=True, capture_output=True, timeout=300)


def call(env: dict[str, str], *args: str, timeout: float = 900) -> dict[str, Any]:
    """Run this harness with `args` in `env`; returns its JSON result and, under "output", what the tasks logged (dag.test() logs to the console)."""
    done = subprocess.run([sys.executable, str(HARNESS), *args], env=env, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode != 0 or not lines:
        raise AssertionError(f"harness {args[0]} failed ({done.returncode}):\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}")
    return {**json.loads(lines[-1][len(RESULT_MARK) :]), "output": done.stdout + done.stderr}


def _task_policy(task: Any) -> dict[str, Any]:
    timeout = task.execution_timeout
    return {
        "operator": type(task).__name__,
        "mapped": bool(getattr(task, "is_mapped", False)),
        "retries": task.retries,
        "retry_exponential_backoff": float(task.retry_exponential_backoff or 0),
        "execution_timeout_s": timeout.total_seconds() if timeout is not None else None,
        "upstream": sorted(task.upstream_task_ids),
    }


def parse(dags_folder: str) -> dict[str, Any]:
    """Parse the folder as the DAG processor does, recording Variable reads and socket connections made meanwhile."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import Variable

    side_effects: list[str] = []

    def record_variable(cls: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        side_effects.append(f"Variable.get({key!r})")
        raise RuntimeError("Variable read at parse time")

    def record_connect(self: socket.socket, address: Any) -> None:
        side_effects.append(f"socket connect {address!r}")
        raise OSError("network at parse time")

    Variable.get = classmethod(record_variable)  # type: ignore[method-assign]
    socket.socket.connect = record_connect  # type: ignore[method-assign]
    before = set(sys.modules)
    started = time.perf_counter()
    bag = DagBag(dags_folder)
    seconds = time.perf_counter() - started
    return {
        "import_errors": bag.import_errors,
        "seconds": seconds,
        "file_seconds": {stat.file: stat.duration.total_seconds() for stat in bag.dagbag_stats},
        "heavy_modules": sorted(m for m in HEAVY_MODULES if m in sys.modules),
        "new_heavy_modules": sorted(m for m in set(sys.modules) - before if m.split(".")[0] in HEAVY_MODULES),
        "side_effects": side_effects,
        "dags": {
            dag_id: {
                "tags": sorted(dag.tags),
                "doc_md": dag.doc_md or "",
                "params": sorted(dag.params.keys()),
                "schedule": str(dag.schedule) if dag.schedule is not None else None,
                "tasks": {task.task_id: _task_policy(task) for task in dag.tasks},
            }
            for dag_id, dag in bag.dags.items()
        },
    }


def _states(dag_run: Any) -> dict[str, Any]:
    """{"run": state, "tasks": {task_id or task_id[i] for mapped: state}}."""
    tasks = {}
    for ti in dag_run.get_task_instances():
        key = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
        tasks[key] = str(ti.state.value if hasattr(ti.state, "value") else ti.state)
    state = dag_run.state
    return {"run_id": dag_run.run_id, "run": str(state.value if hasattr(state, "value") else state), "tasks": tasks}


def dag_test(dag_id: str, conf: str, mark_success: str | None = None) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dag_run = bag.dags[dag_id].test(run_conf=json.loads(conf), mark_success_pattern=mark_success)
    return _states(dag_run)


def states(dag_id: str) -> dict[str, Any]:
    from airflow.models.dagrun import DagRun

    runs = sorted(DagRun.find(dag_id=dag_id), key=lambda run: run.run_after)
    if not runs:
        raise SystemExit(f"no runs of {dag_id}")
    return _states(runs[-1])


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    result = {"parse": parse, "test": dag_test, "states": states}[command](*arguments)
    print(RESULT_MARK + json.dumps(result, default=str), flush=True)
