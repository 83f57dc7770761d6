"""`auditai run` with no MLflow settings leaves a complete local store: the acceptance check without a server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_small_run_is_tracked_in_the_audit_folder(small_run: Path) -> None:
    tracking = json.loads((small_run / "tracking.json").read_text())
    assert tracking["tracking_uri"] == f"sqlite:///{small_run.resolve()}/mlflow/mlflow.db"
    client = MlflowClient(tracking["tracking_uri"])
    parent = client.get_run(tracking["parent_run_id"])
    summary = json.loads((small_run / "summary.json").read_text())

    # one nested run per step, all finished, each with its own settings as params
    children = {run.info.run_name: run for run in client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert set(children) == {"map-latents", "discover-directions", "train-classifier", "verify", "gate", "report"}
    assert {run.info.status for run in children.values()} == {"FINISHED"} and parent.info.status == "FINISHED"
    assert children["map-latents"].data.params["latent.epochs"] == "4"
    assert children["verify"].data.params["verify.samples"] == "200"

    # the parent: the whole config, the figures, the curve as steps, the verdict and weight hashes, the audit's files
    assert parent.data.params["unit_tests.slant_small.threshold"] == "0.5" and parent.data.params["data.train_limit"] == "5000"
    for test in summary["unit_tests"]:
        assert parent.data.metrics[f"{test['name']}.certified_accuracy"] == pytest.approx(test["certified_accuracy"])
        assert parent.data.metrics[f"{test['name']}.unknown_fraction"] == pytest.approx(test["unknown_fraction"])
        history = client.get_metric_history(parent.info.run_id, f"{test['name']}.certified_accuracy_vs_range")
        assert sorted(m.step for m in history) == [25, 50, 75, 100]
        assert {m.step: m.value for m in history}[100] == pytest.approx(test["certified_accuracy"])
    assert parent.data.tags["auditai.verdict"] == "pass"
    assert parent.info.run_name == "audit small", "named by the config file, tests/cli/small.yaml"
    assert parent.data.tags["mlflow.note.content"].startswith(f"**Audit verdict: pass**: {len(summary['unit_tests'])} of {len(summary['unit_tests'])} unit tests pass.")
    assert client.get_experiment(parent.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    assert {k.removeprefix("auditai.weights."): v for k, v in parent.data.tags.items() if k.startswith("auditai.weights.")} == summary["models"]
    assert {"report.html", "summary.json", "junit.xml", *(f"certificates/{t['name']}.json" for t in summary["unit_tests"])} <= _artifacts(client, parent.info.run_id)

    # step artifacts: reconstructions, traversal strips, counterexamples
    assert "latent/reconstructions.png" in _artifacts(client, children["map-latents"].info.run_id)
    assert "directions/traversal_slant.png" in _artifacts(client, children["discover-directions"].info.run_id)
    assert any(path.startswith("counterexamples/slant_small/") for path in _artifacts(client, children["verify"].info.run_id))
    assert children["discover-directions"].data.metrics["direction.slant.calibration"] > 0
    assert children["train-classifier"].data.metrics["test_accuracy"] > 0.5

    # the registered version carries its verdict and the alias
    version = client.get_model_version_by_alias("auditai-model", "certified")
    assert version.tags["auditai.verdict"] == "pass" and version.tags["auditai.audit_run_id"] == parent.info.run_id
