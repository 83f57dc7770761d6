"""The whole audit pipeline through kfp.local.SubprocessRunner, offline: the verdicts of `auditai run`, and the gate only when passing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp", reason="the kfp extra is not installed")
pytest.importorskip("mlflow", reason="the tracking extra is not installed")

from mlflow import MlflowClient  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402

from auditai_ops.cli.main import main  # noqa: E402

SMALL_CONFIG = Path(__file__).parents[1] / "cli" / "small.yaml"


def _run_local(config: Path, root: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict, str]:
    code = main(["kfp", "run-local", "--config", str(config), "--pipeline-root", str(root), "--shards", "2"])
    (summary_path,) = root.glob("auditai-audit-*/merge/audit/summary.json")
    return code, json.loads(summary_path.read_text()), capsys.readouterr().out


def _registry(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root.resolve() / 'mlflow' / 'mlflow.db'}")


def _logged_steps(root: Path, parent_name: str) -> dict[str, str]:
    """The nested runs (name -> status) of the parent run `parent_name`; the parent's verify outputs are checked on the way."""
    client = _registry(root)
    (experiment,) = [e.experiment_id for e in client.search_experiments() if e.name == "auditai"]
    (parent,) = client.search_runs([experiment], filter_string=f"attributes.run_name = '{parent_name}'")
    assert "summary.json" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert parent.data.tags["auditai.verdict"] in ("pass", "fail")
    children = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return {run.info.run_name: run.info.status for run in children}


@pytest.mark.slow
@pytest.mark.integration
def test_run_local_passes_like_auditai_run_and_certifies(small_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, pipeline, printed = _run_local(SMALL_CONFIG, tmp_path, capsys)
    expected = json.loads((small_run / "summary.json").read_text())
    assert code == 0
    assert [(t["name"], t["verdict"]) for t in pipeline["unit_tests"]] == [(t["name"], t["verdict"]) for t in expected["unit_tests"]]
    assert pipeline["verdict"] == expected["verdict"] == "pass"
    assert "slant_small: pass" in printed
    assert (next(tmp_path.glob("auditai-audit-*/report/report")).read_text()).startswith("<!DOCTYPE html>")
    version = _registry(tmp_path).get_model_version_by_alias("auditai-model", "certified")
    assert version.tags["auditai.verdict"] == "pass"
    steps = _logged_steps(tmp_path, "audit")
    assert set(steps) == {"map-latents", "discover-directions", "train-classifier", "verify-shard-0-of-2", "verify-shard-1-of-2", "verify", "report", "gate"}
    assert steps["verify"] == "FINISHED" and all(status == "FINISHED" for status in steps.values())


@pytest.mark.slow
@pytest.mark.integration
def test_run_local_failing_audit_is_repaired_and_reaudited_but_not_promoted(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A spec no fine-tuning reaches (0.99 at +-15 degrees): the repair branch trains and re-audits a candidate, which fails too."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = yaml.safe_load(SMALL_CONFIG.read_text())
    config["unit_tests"].append({"name": "slant_wide_strict", "direction": "slant", "range": {"low": -15, "high": 15}, "threshold": 0.99})
    config["finetune"] = {"repair": True, "epochs": 3, "warmup_epochs": 0, "ramp_epochs": 1, "samples_per_epoch": 400, "validation_samples": 60, "clean_accuracy_drop": 0.05}
    path = tmp_path / "failing.yaml"
    path.write_text(yaml.safe_dump(config))
    code, pipeline, printed = _run_local(path, tmp_path / "root", capsys)
    assert code == 1 and pipeline["verdict"] == "fail"
    assert "slant_wide_strict: fail" in printed
    record = json.loads(next((tmp_path / "root").glob("auditai-audit-*/finetune/candidate/finetune/finetune.json")).read_text())
    assert record["specs"] == ["slant_wide_strict"] and f"finetune: {record['status']}" in printed
    (candidate_summary,) = (tmp_path / "root").glob("auditai-audit-*/merge-2/audit/summary.json")
    candidate = json.loads(candidate_summary.read_text())
    assert candidate["models"]["head_sha256"] == record["candidate"]["weights_sha256"] != pipeline["models"]["head_sha256"]
    assert candidate["verdict"] == "fail" and "candidate:" in printed
    # MLflow: the failing audit is logged although nothing is promoted, and the candidate's audit has a parent run of its own.
    assert set(_logged_steps(tmp_path / "root", "audit")) == {
        "map-latents",
        "discover-directions",
        "train-classifier",
        "verify-shard-0-of-2",
        "verify-shard-1-of-2",
        "verify",
        "report",
        "finetune",
    }
    assert set(_logged_steps(tmp_path / "root", "audit candidate")) == {"verify-shard-0-of-2", "verify-shard-1-of-2", "verify", "report"}
    for gate_task in ("gate", "gate-2"):
        assert not list((tmp_path / "root").glob(f"auditai-audit-*/{gate_task}")), f"{gate_task} must not run without a passing audit"
    with pytest.raises(MlflowException):
        _registry(tmp_path / "root").get_model_version_by_alias("auditai-model", "certified")
