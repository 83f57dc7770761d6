"""The DAG files as the DAG processor sees them: no import errors, quick parsing without side effects, and the task policies."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from airflow_harness import REPO, airflow_env, call

DAG_IDS = {"auditai_audit", "auditai_deploy_gate"}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One parse of dags/ in a fresh process (no metadata DB is needed to parse)."""
    if importlib.util.find_spec("airflow") is None:  # not imported here: importing airflow configures it (and creates ~/airflow)
        pytest.skip("the airflow extra is not installed")
    home: Path = tmp_path_factory.mktemp("airflow_parse")
    return call(airflow_env(home), "parse", str(REPO / "dags"), timeout=300)


def test_every_dag_imports_without_errors(dagbag: dict[str, Any]) -> None:
    assert dagbag["import_errors"] == {}
    assert set(dagbag["dags"]) == DAG_IDS


def test_parsing_is_quick_and_does_no_work(dagbag: dict[str, Any]) -> None:
    assert dagbag["seconds"] < 2.0, dagbag["file_seconds"]
    assert dagbag["side_effects"] == []  # no Variable reads, no network
    assert dagbag["heavy_modules"] == [] and dagbag["new_heavy_modules"] == []  # auditai_ops, torch, mlflow load inside tasks only


@pytest.mark.parametrize("dag_id", sorted(DAG_IDS))
def test_every_task_has_retries_with_backoff_and_a_timeout(dagbag: dict[str, Any], dag_id: str) -> None:
    dag = dagbag["dags"][dag_id]
    assert "auditai" in dag["tags"] and dag["doc_md"].strip()
    for task_id, task in dag["tasks"].items():
        assert task["retries"] >= 1, task_id
        assert task["retry_exponential_backoff"] > 1.0, task_id
        assert task["execution_timeout_s"] is not None and 0 < task["execution_timeout_s"] <= 4 * 3600, task_id


def test_audit_dag_maps_verification_over_shards_and_short_circuits_before_promote(dagbag: dict[str, Any]) -> None:
    dag = dagbag["dags"]["auditai_audit"]
    tasks = dag["tasks"]
    assert {"config_path", "model_name", "model_version"} <= set(dag["params"])
    assert tasks["plan_shards"]["upstream"] == ["discover_directions", "prepare", "train_classifier"]
    assert tasks["verify_shard"]["mapped"] and tasks["verify_shard"]["upstream"] == ["plan_shards", "prepare"]
    assert tasks["merge"]["upstream"] == ["prepare", "verify_shard"]
    assert tasks["audit_passed"]["operator"] == "_ShortCircuitDecoratedOperator"
    assert "audit_passed" in tasks["promote"]["upstream"]
    assert tasks["repair"]["upstream"] == ["gate", "merge", "prepare"]  # after the failing audit's gate; skipped unless finetune.repair
    assert tasks["candidate_passed"]["operator"] == "_ShortCircuitDecoratedOperator" and tasks["candidate_passed"]["upstream"] == ["repair"]
    assert tasks["promote_candidate"]["upstream"] == ["candidate_passed", "prepare"]
    assert tasks["choose_runner"]["operator"] == "_BranchPythonDecoratedOperator"
    assert tasks["submit_to_kfp"]["upstream"] == ["choose_runner", "prepare"]
