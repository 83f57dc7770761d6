"""Acceptance: `airflow dags test auditai_audit` on the small config, end to end on a sqlite metadata DB: the verdicts of `auditai run`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from airflow_harness import airflow_env, airflow_executable, call

SMALL_CONFIG = Path(__file__).parents[1] / "cli" / "small.yaml"


@pytest.mark.slow
@pytest.mark.integration
def test_airflow_dags_test_gives_the_verdicts_of_auditai_run_and_promotes(airflow_home: Path, small_run: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    env = airflow_env(airflow_home)
    conf = {"config_path": str(SMALL_CONFIG), "work_dir": str(work), "shards": 2}
    done = subprocess.run([airflow_executable(), "dags", "test", "auditai_audit", "--conf", json.dumps(conf)], env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]

    result = call(env, "states", "auditai_audit")
    assert result["run"] == "success"
    tasks = result["tasks"]
    assert tasks["submit_to_kfp"] == "skipped"
    assert {state for task, state in tasks.items() if task != "submit_to_kfp"} == {"success"}, tasks
    assert {"verify_shard[0]", "verify_shard[1]", "promote"} <= set(tasks)
    expected = json.loads((small_run / "summary.json").read_text())
    dag_summary = json.loads((work / "summary.json").read_text())
    assert [(t["name"], t["verdict"]) for t in dag_summary["unit_tests"]] == [(t["name"], t["verdict"]) for t in expected["unit_tests"]]
    assert dag_summary["verdict"] == expected["verdict"] == "pass"
