"""Tracking: where runs go, one parent run per audit, nested step runs, and tracking that never takes a step down."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from auditai_ops.config import AuditConfig, TrackingConfig, parse_config
from auditai_ops.tracking import store
from auditai_ops.tracking.description import audit_table_markdown
from auditai_ops.tracking.steps import audit_run_name, begin_audit, track_step
from auditai_ops.tracking.store import EXPERIMENT_KIND_TAG, PARENT_RUN_ENV, audit_run, flatten_params, resolve_target, ui_url


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
    monkeypatch.setattr(store, "PROBE_SECONDS", 1.0)
    config = parse_config({"tracking": {"uri": "http://127.0.0.1:9"}})
    ran = []
    with caplog.at_level(logging.WARNING), track_step(config.tracking, tmp_path, "verify", config) as tracking:
        ran.append(True)
    assert ran and tracking.audit is None
    assert "tracking: step 'verify' is not logged to MLflow (AuditInputError: tracking.uri 'http://127.0.0.1:9': the MLflow server does not answer" in caplog.text


def test_the_experiment_is_marked_as_model_training_when_created_and_when_it_lacks_the_mark(tmp_path: Path) -> None:
    fresh = audit_run(TrackingConfig(experiment="fresh"), tmp_path)
    client = MlflowClient(fresh.target.tracking_uri)
    assert client.get_experiment(fresh.experiment_id).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"

    # experiments made before (or by someone else) get the mark on first use; one the user marked keeps its kind
    unmarked = client.create_experiment("unmarked")
    genai = client.create_experiment("genai", tags={EXPERIMENT_KIND_TAG: "genai_development"})
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(unmarked).tags
    assert audit_run(TrackingConfig(experiment="unmarked"), tmp_path, new=True).experiment_id == unmarked
    assert client.get_experiment(unmarked).tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    audit_run(TrackingConfig(experiment="genai"), tmp_path, new=True)
    assert client.get_experiment(genai).tags[EXPERIMENT_KIND_TAG] == "genai_development"


def test_ui_links_open_the_machine_learning_view_and_hide_credentials() -> None:
    assert ui_url("http://u:secret@mlflow:5000/", "3", "abc") == "http://***@mlflow:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert ui_url("https://mlflow.example.org", "3") == "https://mlflow.example.org/#/experiments/3?workflowType=machine_learning"
    assert ui_url("sqlite:///x.db", "3") is None


def test_parent_runs_are_named_by_the_config_file_and_step_runs_by_the_step(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples" / "mnist"
    assert audit_run_name(examples / "audit-failing.yaml") == "audit audit-failing"
    assert audit_run_name(examples / "audit.yaml") == "audit mnist", "not 'audit audit'"
    assert audit_run_name(None) == "audit defaults"
    config = AuditConfig()
    client = MlflowClient(resolve_target(config.tracking, tmp_path).tracking_uri)
    for config_file, name, step in ((examples / "audit-failing.yaml", "audit audit-failing", "verify"), (None, "audit defaults", "map-latents")):
        parent_id = begin_audit(config, tmp_path, config_file)
        with track_step(config.tracking, tmp_path, step, config, config_file):
            pass
        assert parent_id is not None
        parent = client.get_run(parent_id)
        assert parent.info.run_name == name
        (child,) = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
        assert child.info.run_name == step


def test_the_verify_step_describes_the_audit_on_its_run_and_on_the_parent(tmp_path: Path) -> None:
    test = {"name": "slant5", "direction": "slant", "ranges": [{"low": -5, "high": 5, "units": "attribute", "direction_units": "degrees"}]}
    summary = {"verdict": "pass", "unit_tests": [{**test, "certified_accuracy": 0.96, "threshold": 0.9, "threshold_on": "estimate", "verdict": "pass"}]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    config = AuditConfig()
    with track_step(config.tracking, tmp_path, "verify", config) as tracking:
        pass
    assert tracking.audit is not None and tracking.run_id is not None
    client = MlflowClient(tracking.audit.target.tracking_uri)
    expected = "**Audit verdict: pass**: 1 of 1 unit tests pass.\n\n" + audit_table_markdown(summary)
    assert "| slant5 | slant ±5 degrees | 0.960 | ≥ 0.9 | pass |" in expected
    for run_id in (tracking.run_id, tracking.audit.run_id):
        assert client.get_run(run_id).data.tags["mlflow.note.content"] == expected
