"""Both DAGs end to end on a sqlite Airflow metadata DB (`airflow db migrate` in a temporary AIRFLOW_HOME) and a sqlite MLflow registry.

Acceptance: `airflow dags test auditai_audit` on the small config gives the verdicts of `auditai run`,
registers and certifies the version and promotes it; a failing audit is registered as refused and
promote is skipped while the run succeeds; the deploy gate refuses an unaudited version and a failed
one, and passes the certified one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow_harness import airflow_env, airflow_executable, call
from finetune_synthetic import write_synthetic_audit

pytestmark = [pytest.mark.slow, pytest.mark.integration]
SMALL_CONFIG = Path(__file__).parents[1] / "cli" / "small.yaml"
MODEL = "auditai-dag-test"
REPAIRED_MODEL = "auditai-dag-repair"
# The failing audit reuses the passing run's latents, directions and head: these tasks are
# marked successful instead of retraining them; verification and everything after it runs.
REUSED_STEPS = "map_latents|discover_directions|train_classifier"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A sqlite MLflow store shared by every DAG run here, named in the tracking section of a copy of the small config."""
    folder = tmp_path_factory.mktemp("registry")
    config = yaml.safe_load(SMALL_CONFIG.read_text())
    config["tracking"] = {"uri": f"sqlite:///{folder / 'mlflow.db'}", "artifact_location": (folder / "artifacts").as_uri()}
    path = folder / "small-tracked.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return {"uri": config["tracking"]["uri"], "config": config, "config_path": path}


def _client(registry: dict[str, Any]) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(registry["uri"])


@pytest.fixture(scope="module")
def passing_run(airflow_home: Path, registry: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`airflow dags test auditai_audit` (the CLI) on the small config, every step run."""
    work = tmp_path_factory.mktemp("passing") / "work"
    env = airflow_env(airflow_home)
    conf = {"config_path": str(registry["config_path"]), "work_dir": str(work), "shards": 2, "model_name": MODEL}
    done = subprocess.run([airflow_executable(), "dags", "test", "auditai_audit", "--conf", json.dumps(conf)], env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return {**call(env, "states", "auditai_audit"), "work": work}


@pytest.fixture(scope="module")
def failing_run(airflow_home: Path, registry: dict[str, Any], passing_run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`dag.test()` of a config whose slant test asks for more than the model certifies."""
    folder = tmp_path_factory.mktemp("failing")
    work = folder / "work"
    for part in ("latent", "directions", "classifier"):
        shutil.copytree(passing_run["work"] / part, work / part)
    config = registry["config"] | {"unit_tests": [{**registry["config"]["unit_tests"][0], "threshold": 0.95}, *registry["config"]["unit_tests"][1:]]}
    path = folder / "failing.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    conf = {"config_path": str(path), "work_dir": str(work), "shards": 2, "model_name": MODEL}
    return {**call(airflow_env(airflow_home), "test", "auditai_audit", json.dumps(conf), REUSED_STEPS), "work": work}


@pytest.fixture(scope="module")
def repair_run(airflow_home: Path, registry: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`dag.test()` with finetune.repair on the synthetic audit (tests/finetune_synthetic.py): its spec fails, fine-tuning repairs it."""
    folder = tmp_path_factory.mktemp("repair")
    work = folder / "work"
    write_synthetic_audit(work)  # latents, directions, VAE and a head that leans on x1: the first three steps are marked done
    config = {
        "tracking": registry["config"]["tracking"],
        "verify": {"samples": 300, "batch_size": 512, "max_pieces": 16},
        "finetune": {"repair": True, "epochs": 12, "ramp_epochs": 2, "pieces": 4, "batch_size": 256, "samples_per_epoch": None, "learning_rate": 0.02, "kappa_end": 0.5},
        "unit_tests": [{"name": "x1_within_3", "direction": "x1", "range": {"low": -3, "high": 3, "units": "latent"}, "threshold": 0.9}],
    }
    path = folder / "repair.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    conf = {"config_path": str(path), "work_dir": str(work), "shards": 2, "model_name": REPAIRED_MODEL}
    return {**call(airflow_env(airflow_home), "test", "auditai_audit", json.dumps(conf), REUSED_STEPS), "work": work}


def test_airflow_dags_test_gives_the_verdicts_of_auditai_run_certifies_and_promotes(passing_run: dict[str, Any], small_run: Path, registry: dict[str, Any]) -> None:
    tasks = passing_run["tasks"]
    skipped = {"submit_to_kfp", "repair", "candidate_passed", "promote_candidate"}  # no KFP host; nothing to repair
    assert passing_run["run"] == "success" and {tasks[task] for task in skipped} == {"skipped"}, tasks
    assert {state for task, state in tasks.items() if task not in skipped} == {"success"}, tasks
    assert {"verify_shard[0]", "verify_shard[1]", "gate", "audit_passed", "promote"} <= set(tasks)
    expected = json.loads((small_run / "summary.json").read_text())
    summary = json.loads((passing_run["work"] / "summary.json").read_text())
    assert [(t["name"], t["verdict"]) for t in summary["unit_tests"]] == [(t["name"], t["verdict"]) for t in expected["unit_tests"]]
    assert summary["verdict"] == expected["verdict"] == "pass"
    assert (passing_run["work"] / "report.html").is_file()
    client = _client(registry)
    certified = client.get_model_version_by_alias(MODEL, "certified")
    assert certified.tags["auditai.gate"] == "PASS" and certified.tags["auditai.verdict"] == "pass"
    assert client.get_model_version_by_alias(MODEL, "production").version == certified.version


def test_a_failing_audit_is_registered_refused_and_promote_is_skipped_while_the_run_succeeds(failing_run: dict[str, Any], registry: dict[str, Any]) -> None:
    tasks = failing_run["tasks"]
    assert failing_run["run"] == "success"  # the run state alone does not tell a failing audit apart
    assert tasks["promote"] == "skipped" and tasks["audit_passed"] == tasks["gate"] == tasks["report"] == "success"
    summary = json.loads((failing_run["work"] / "summary.json").read_text())
    assert summary["verdict"] == "fail"
    assert [(t["name"], t["verdict"]) for t in summary["unit_tests"]] == [("slant_small", "fail"), ("thickness_small", "pass"), ("pca1_small", "pass")]
    gate = json.loads((failing_run["work"] / "gate.json").read_text())
    client = _client(registry)
    refused = client.get_model_version(MODEL, gate["version"])
    assert gate["decision"] == "FAIL" and refused.tags["auditai.gate"] == "FAIL"
    assert client.get_model_version_by_alias(MODEL, "production").version != refused.version


def test_a_failing_audit_with_repair_promotes_the_certified_candidate_not_the_original(repair_run: dict[str, Any], registry: dict[str, Any]) -> None:
    tasks = repair_run["tasks"]
    assert repair_run["run"] == "success"
    assert tasks["promote"] == "skipped" and tasks["gate"] == "success"
    assert tasks["repair"] == tasks["candidate_passed"] == tasks["promote_candidate"] == "success", tasks
    work = repair_run["work"]
    assert json.loads((work / "summary.json").read_text())["verdict"] == "fail"
    repaired = json.loads((work / "repaired" / "summary.json").read_text())
    record = json.loads((work / "repair.json").read_text())
    assert repaired["verdict"] == "pass" and record["verdict_before"] == "fail" and record["passed"] is True
    client = _client(registry)
    original = json.loads((work / "gate.json").read_text())
    assert client.get_model_version(REPAIRED_MODEL, original["version"]).tags["auditai.gate"] == "FAIL"
    production = client.get_model_version_by_alias(REPAIRED_MODEL, "production")
    assert production.version != original["version"] and production.tags["auditai.gate"] == "PASS"
    assert production.tags["auditai.weights.head_sha256"] == record["candidate_sha256"] != record["parent_sha256"]


def test_without_repair_the_repair_tasks_are_skipped(failing_run: dict[str, Any]) -> None:
    tasks = failing_run["tasks"]
    assert tasks["repair"] == tasks["candidate_passed"] == tasks["promote_candidate"] == "skipped"


def _deploy(airflow_home: Path, registry: dict[str, Any], version: str, on_refusal: str = "fail") -> dict[str, Any]:
    conf = {"model_name": MODEL, "version": version, "config_path": str(registry["config_path"]), "on_refusal": on_refusal}
    return call(airflow_env(airflow_home), "test", "auditai_deploy_gate", json.dumps(conf))


def test_the_deploy_gate_refuses_an_unaudited_version(airflow_home: Path, registry: dict[str, Any], passing_run: dict[str, Any], tmp_path: Path) -> None:
    plain = tmp_path / "plain-model"
    plain.mkdir()
    (plain / "weights.bin").write_bytes(b"not audited")
    client = _client(registry)
    unaudited = client.create_model_version(MODEL, plain.as_uri())

    result = _deploy(airflow_home, registry, str(unaudited.version))

    assert result["run"] == "failed"
    assert result["tasks"] == {"check_certificate": "failed", "deploy_model_placeholder": "upstream_failed"}
    assert "carries no audit" in result["output"]  # dag.test() logs the tasks to the console


def test_the_deploy_gate_refuses_a_failed_version_and_passes_the_certified_one(airflow_home: Path, registry: dict[str, Any], failing_run: dict[str, Any]) -> None:
    failed_version = json.loads((failing_run["work"] / "gate.json").read_text())["version"]
    refused = _deploy(airflow_home, registry, failed_version, on_refusal="skip")
    assert refused["run"] == "success"
    assert refused["tasks"] == {"check_certificate": "success", "deploy_model_placeholder": "skipped"}
    assert "slant_small: the certificate's threshold is 0.95, the config asks 0.5" in refused["output"]  # audited under another config

    certified = _deploy(airflow_home, registry, "certified")
    assert certified["run"] == "success"
    assert certified["tasks"] == {"check_certificate": "success", "deploy_model_placeholder": "success"}
    assert "check: PASS" in certified["output"]
