"""Tracking: where runs go, one parent run per audit, nested step runs, and tracking that never takes a step down."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from auditai_ops.config import AuditConfig, TrackingConfig, parse_config
from auditai_ops.tracking.steps import track_step
from auditai_ops.tracking.store import PARENT_RUN_ENV, audit_run, flatten_params, resolve_target


@pytest.fixture(autouse=True)
def _no_ambient_tracking(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, empty_mlflow_store: Path) -> None:
    """No tracking URI from the environment; the embedded store in tmp_path starts as a copy of an empty one."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    (tmp_path / "mlflow").mkdir()
    shutil.copy2(empty_mlflow_store, tmp_path / "mlflow" / "mlflow.db")


def test_tracking_uri_comes_from_config_then_environment_then_the_audit_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    embedded = resolve_target(TrackingConfig(), tmp_path)
    assert embedded.tracking_uri == f"sqlite:///{tmp_path.resolve()}/mlflow/mlflow.db"
    assert embedded.artifact_location == (tmp_path.resolve() / "mlflow" / "artifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_target(TrackingConfig(), tmp_path).tracking_uri == "http://127.0.0.1:5000"
    assert resolve_target(TrackingConfig(), tmp_path).artifact_location is None
    configured = resolve_target(TrackingConfig(uri="sqlite:///x.db", artifact_location="s3://bucket/a"), tmp_path)
    assert (configured.tracking_uri, configured.artifact_location) == ("sqlite:///x.db", "s3://bucket/a")


def test_params_flatten_with_unit_tests_keyed_by_name() -> None:
    config = parse_config({"unit_tests": [{"name": "slant5", "direction": "slant", "range": {"low": -5, "high": 5}}]})
    params = flatten_params(config.model_dump(mode="json"))
    assert params["unit_tests.slant5.range"] == '[{"low": -5.0, "high": 5.0, "units": "attribute"}]'
    assert params["unit_tests.slant5.threshold"] == "0.9"
    assert params["verify.methods"] == '["forward+backward"]'
    assert len(flatten_params({"long": "x" * 10_000})["long"]) == 6000


def test_one_parent_run_per_audit_shared_by_separate_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = TrackingConfig()
    first = audit_run(settings, tmp_path, params={"a": "1"})
    record = json.loads((tmp_path / "tracking.json").read_text())
    assert record["parent_run_id"] == first.run_id and record["tracking_uri"] == first.target.tracking_uri
    again = audit_run(settings, tmp_path)  # a later step in another process reads tracking.json
    assert again.run_id == first.run_id
    fresh = audit_run(settings, tmp_path, new=True)  # `auditai run` starts a new audit
    assert fresh.run_id != first.run_id
    monkeypatch.setenv(PARENT_RUN_ENV, first.run_id)  # an orchestrator names the parent explicitly
    assert audit_run(settings, tmp_path, new=True).run_id == first.run_id
    assert json.loads((tmp_path / "tracking.json").read_text())["parent_run_id"] == first.run_id
    client = MlflowClient(first.target.tracking_uri)
    assert client.get_run(first.run_id).data.params == {"a": "1"}


def test_step_runs_nest_and_record_failure(tmp_path: Path) -> None:
    config = AuditConfig()
    with track_step(config.tracking, tmp_path, "train-classifier", config) as tracking:
        assert tracking.run_id is not None
    with pytest.raises(RuntimeError), track_step(config.tracking, tmp_path, "verify", config):
        raise RuntimeError("boom")
    client = MlflowClient(resolve_target(config.tracking, tmp_path).tracking_uri)
    parent_id = json.loads((tmp_path / "tracking.json").read_text())["parent_run_id"]
    children = client.search_runs([client.get_run(parent_id).info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    statuses = {run.info.run_name: run.info.status for run in children}
    assert statuses == {"train-classifier": "FINISHED", "verify": "FAILED"}
    assert client.get_run(parent_id).info.status == "FAILED"
    params = next(run for run in children if run.info.run_name == "train-classifier").data.params
    assert params["classifier.epochs"] == "30" and not any(key.startswith("verify.") for key in params)


def test_disabled_tracking_writes_nothing(tmp_path: Path) -> None:
    config = parse_config({"tracking": {"enabled": False}})
    with track_step(config.tracking, tmp_path, "verify", config) as tracking:
        assert tracking.audit is None
    assert not (tmp_path / "tracking.json").exists()
    assert MlflowClient(resolve_target(config.tracking, tmp_path).tracking_uri).get_experiment_by_name("auditai") is None, "nothing was logged"


def test_unreachable_tracking_server_is_a_warning_and_the_step_result_stands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    config = parse_config({"tracking": {"uri": "http://127.0.0.1:9"}})
    ran = []
    with caplog.at_level(logging.WARNING), track_step(config.tracking, tmp_path, "verify", config) as tracking:
        ran.append(True)
    assert ran and tracking.audit is None
    assert "tracking: step 'verify' is not logged to MLflow" in caplog.text
