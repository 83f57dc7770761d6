"""`dag.test()` of auditai_audit with a sqlite metadata DB: the KFP branch (the whole audit runs in tests/integration/test_airflow_dags.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from airflow_harness import airflow_env, call

SMALL_CONFIG = Path(__file__).parents[1] / "cli" / "small.yaml"


@pytest.mark.slow
def test_with_a_kfp_host_the_run_submits_the_pipeline_and_skips_every_local_step(airflow_home: Path, tmp_path: Path) -> None:
    # config path and KFP host come from Airflow Variables (here set through AIRFLOW_VAR_* environment variables), read only at run time
    variables = {"AIRFLOW_VAR_AUDITAI_CONFIG_PATH": str(SMALL_CONFIG), "AIRFLOW_VAR_AUDITAI_KFP_HOST": "http://kfp.invalid:80"}
    # submit_to_kfp itself (pipelines/kfp_cli.submit) is tested in tests/pipelines; here it is marked successful, as no KFP endpoint runs in CI
    result = call(airflow_env(airflow_home, extra=variables), "test", "auditai_audit", json.dumps({"work_dir": str(tmp_path / "work")}), "submit_to_kfp")

    tasks = result["tasks"]
    assert result["run"] == "success" and tasks["prepare"] == tasks["choose_runner"] == tasks["submit_to_kfp"] == "success"
    local = {name: state for name, state in tasks.items() if name not in ("prepare", "choose_runner", "submit_to_kfp")}
    assert local and set(local.values()) == {"skipped"}, local
    assert yaml.safe_load((tmp_path / "work" / "audit-config.yaml").read_text()) == yaml.safe_load(SMALL_CONFIG.read_text())  # what is submitted
