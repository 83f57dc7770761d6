"""`dag.test()` of auditai_audit with a sqlite metadata DB: a failing audit skips promote while the run itself stays successful."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from airflow_harness import airflow_env, call

SMALL_CONFIG = Path(__file__).parents[1] / "cli" / "small.yaml"
# The small run's latents, directions and head are reused: these tasks are marked successful
# instead of retraining them, and verification, merge, report, gate and the short circuit run.
REUSED_STEPS = "map_latents|discover_directions|train_classifier"


@pytest.mark.slow
def test_a_failing_audit_skips_promote_and_the_run_stays_successful(airflow_home: Path, small_run: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    for part in ("latent", "directions", "classifier"):
        shutil.copytree(small_run / part, work / part)
    config = yaml.safe_load(SMALL_CONFIG.read_text())
    config["unit_tests"][0]["threshold"] = 0.95  # slant_small certifies ~0.83 of its samples
    config_path = tmp_path / "failing.yaml"
    config_path.write_text(yaml.safe_dump(config))
    conf = {"config_path": str(config_path), "work_dir": str(work), "shards": 2}

    result = call(airflow_env(airflow_home), "test", "auditai_audit", json.dumps(conf), REUSED_STEPS)

    tasks = result["tasks"]
    assert result["run"] == "success"  # the run state alone does not tell a failing audit apart
    assert tasks["promote"] == "skipped" and tasks["audit_passed"] == "success"
    assert tasks["submit_to_kfp"] == "skipped"
    assert {tasks[name] for name in ("prepare", "plan_shards", "verify_shard[0]", "verify_shard[1]", "merge", "report")} == {"success"}
    summary = json.loads((work / "summary.json").read_text())
    assert summary["verdict"] == "fail"
    assert [(t["name"], t["verdict"]) for t in summary["unit_tests"]] == [("slant_small", "fail"), ("thickness_small", "pass"), ("pca1_small", "pass")]
    assert yaml.safe_load((work / "audit-config.yaml").read_text()) == config


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
