"""Every KFP component's body (`.python_func`) on the small config, with artifacts as local folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

kfp_dsl = pytest.importorskip("kfp.dsl", reason="the kfp extra is not installed")
from kfp.dsl import HTML, Artifact, Dataset, Metrics, Model  # noqa: E402

from components.begin_audit import begin_audit  # noqa: E402
from components.discover_directions import discover_directions  # noqa: E402
from components.finetune import finetune  # noqa: E402
from components.gate import gate  # noqa: E402
from components.map_latents import map_latents  # noqa: E402
from components.merge import merge  # noqa: E402
from components.promote import promote  # noqa: E402
from components.report import report  # noqa: E402
from components.runtime import CPU_IMAGE  # noqa: E402
from components.train_classifier import train_classifier  # noqa: E402
from components.verify_shard import verify_shard  # noqa: E402

SMALL_CONFIG = Path(__file__).parents[1] / "cli" / "small.yaml"


def test_components_are_thin_and_install_nothing() -> None:
    for component in (begin_audit, map_latents, discover_directions, train_classifier, verify_shard, merge, finetune, report, gate, promote):
        container = component.component_spec.implementation.container
        assert container.image == CPU_IMAGE
        command = " ".join(container.command)
        assert "pip install" not in command, f"{component.name} installs packages at run time"
        source = Path(component.python_func.__code__.co_filename).read_text()
        assert "from auditai_ops.steps import" in source, f"{component.name} must call one auditai_ops step"


def test_map_latents_component(tmp_path: Path) -> None:
    config = yaml.safe_load(SMALL_CONFIG.read_text())
    config["data"] = {"train_limit": 600, "test_limit": 50}
    config["latent"] = {"epochs": 1}
    latent, metrics = Dataset(name="latent", uri=str(tmp_path / "latent")), Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    map_latents.python_func(config_yaml=yaml.safe_dump(config), latent=latent, metrics=metrics, mlflow_run=_untracked(tmp_path))
    assert (tmp_path / "latent" / "latent" / "latents.npz").is_file()
    assert (tmp_path / "latent" / "latent" / "vae.safetensors").is_file()
    assert 0 < metrics.metadata["reconstruction_mse_per_pixel"] < 1


def test_later_components_on_the_small_run(small_run: Path, tmp_path: Path) -> None:
    """directions, classifier, two shards and the merge, reading the small run's latent folder as the map-latents artifact."""
    config_yaml = SMALL_CONFIG.read_text()
    latent = Dataset(name="latent", uri=str(small_run))
    directions = Artifact(name="directions", uri=str(tmp_path / "directions"))
    discover_directions.python_func(config_yaml=config_yaml, latent=latent, directions=directions, mlflow_run=_untracked(tmp_path))
    assert {"slant", "thickness", "pca1"} <= set(directions.metadata["directions"])
    head, head_metrics = Model(name="head", uri=str(tmp_path / "head")), Metrics(name="m", uri=str(tmp_path / "m"))
    train_classifier.python_func(config_yaml=config_yaml, latent=latent, head=head, metrics=head_metrics, mlflow_run=_untracked(tmp_path))
    assert head_metrics.metadata["test_accuracy"] > 0.8
    shards = [Artifact(name="shard", uri=str(tmp_path / f"shard{i}")) for i in range(2)]
    for index, shard in enumerate(shards):
        verify_shard.python_func(
            config_yaml=config_yaml, device="cpu", shard_index=index, shard_count=2, latent=latent, directions=directions, head=head, shard=shard, mlflow_run=_untracked(tmp_path)
        )
    audit, metrics = Artifact(name="audit", uri=str(tmp_path / "audit")), Metrics(name="metrics", uri=str(tmp_path / "metrics"))
    upstream = {"latent": latent, "directions": directions, "head": head, "mlflow_run": _untracked(tmp_path)}
    verdict = merge.python_func(config_yaml=config_yaml, shards=shards, audit=audit, metrics=metrics, **upstream)
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert verdict == summary["verdict"] == audit.metadata["verdict"]
    assert metrics.metadata["slant_small.certified_accuracy"] == next(t for t in summary["unit_tests"] if t["name"] == "slant_small")["certified_accuracy"]
    assert sorted(p.name for p in (tmp_path / "audit" / "certificates").iterdir()) == ["pca1_small.json", "slant_small.json", "thickness_small.json"]


def test_report_gate_and_promote_components(small_run: Path, tmp_path: Path) -> None:
    """The small run's folders as the upstream artifacts; MLflow in a local sqlite store."""
    pytest.importorskip("mlflow", reason="the tracking extra is not installed")
    config = yaml.safe_load(SMALL_CONFIG.read_text())
    config["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "artifact_location": (tmp_path / "artifacts").as_uri()}
    config_yaml = yaml.safe_dump(config)
    upstream = {"latent": Dataset(name="latent", uri=str(small_run)), "directions": Artifact(name="d", uri=str(small_run)), "head": Model(name="h", uri=str(small_run))}
    audit = Artifact(name="audit", uri=str(small_run))
    page = HTML(name="report", uri=str(tmp_path / "report.html"))
    report.python_func(config_yaml=config_yaml, audit=audit, report=page, mlflow_run=_untracked(tmp_path), **upstream)
    html = (tmp_path / "report.html").read_text()
    assert "slant_small" in html and "<svg" in html
    decision = Artifact(name="decision", uri=str(tmp_path / "gate"))
    assert gate.python_func(config_yaml=config_yaml, audit=audit, decision=decision, mlflow_run=_untracked(tmp_path), **upstream) == "PASS"
    assert decision.metadata["promoted"] is True and decision.metadata["alias"] == "certified"
    version = decision.metadata["version"]
    promoted = Artifact(name="promoted", uri=str(tmp_path / "promote"))
    assert promote.python_func(config_yaml=config_yaml, model_name="auditai-model", version=version, target_alias="production", decision=promoted) == "PASS"
    assert promoted.metadata["promoted"] is True
    assert json.loads((tmp_path / "gate" / "gate.json").read_text())["decision"] == "PASS"


def test_finetune_component_repairs_a_failing_spec_into_a_head_artifact(small_run: Path, tmp_path: Path) -> None:
    """The small run's audit with a strict spec added; the candidate is a head artifact later steps read like train-classifier's."""
    from safetensors.torch import load_file

    from auditai_ops.classifier.head import load_head
    from auditai_ops.steps import folder_inputs, verify_shard_step

    config = yaml.safe_load(SMALL_CONFIG.read_text())
    config["unit_tests"] = [{"name": "slant_strict", "direction": "slant", "range": {"low": -6, "high": 6}, "threshold": 0.99}]
    config["finetune"] = {"repair": False, "epochs": 3, "warmup_epochs": 0, "ramp_epochs": 1, "samples_per_epoch": 400, "validation_samples": 60, "clean_accuracy_drop": 0.05}
    upstream = {"latent": Dataset(name="latent", uri=str(small_run)), "directions": Artifact(name="d", uri=str(small_run)), "head": Model(name="h", uri=str(small_run))}
    audit = Artifact(name="audit", uri=str(tmp_path / "audit"))
    (tmp_path / "audit").mkdir()
    summary = {"verdict": "fail", "unit_tests": [{"name": "slant_strict", "verdict": "fail"}]}
    (tmp_path / "audit" / "summary.json").write_text(json.dumps(summary))

    off = Model(name="candidate", uri=str(tmp_path / "off"))
    assert finetune.python_func(config_yaml=yaml.safe_dump(config), audit=audit, candidate=off, mlflow_run=_untracked(tmp_path), **upstream) == "repair off"
    assert not (tmp_path / "off" / "classifier").exists()

    config["finetune"]["repair"] = True
    candidate = Model(name="candidate", uri=str(tmp_path / "candidate"))
    status = finetune.python_func(config_yaml=yaml.safe_dump(config), audit=audit, candidate=candidate, mlflow_run=_untracked(tmp_path), **upstream)
    record = json.loads((tmp_path / "candidate" / "finetune" / "finetune.json").read_text())
    assert status == "candidate" and record["candidate"] is not None, record["message"]  # seeded: 0.733 -> 0.767 on 60 valid digits, below 0.99
    assert candidate.metadata["status"] == record["status"] and record["specs"] == ["slant_strict"]
    assert candidate.metadata["candidate_run_id"] == "" and not (tmp_path / "candidate" / "mlflow").exists()  # untracked audit: no run for the candidate
    head, head_record = load_head(tmp_path / "candidate" / "classifier" / "head.safetensors")
    assert head_record["weights_sha256"] == candidate.metadata["candidate_sha256"] != candidate.metadata["parent_sha256"]
    assert head_record["lineage"]["parent"]["weights_sha256"] == candidate.metadata["parent_sha256"]
    parent = load_file(str(small_run / "classifier" / "head.safetensors"))
    assert any(not bool((parent[k] == v).all()) for k, v in head.state_dict().items())
    shard_dir = verify_shard_step(yaml.safe_dump(config), small_run, small_run, tmp_path / "candidate", 0, 1, tmp_path / "shard")
    assert shard_dir.is_file() and folder_inputs(small_run, small_run, tmp_path / "candidate").head == tmp_path / "candidate" / "classifier" / "head.safetensors"


def test_steps_log_nested_runs_under_the_parent_run_begin_audit_records(small_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("mlflow", reason="the tracking extra is not installed")
    from mlflow import MlflowClient

    config = yaml.safe_load(SMALL_CONFIG.read_text())
    config["tracking"] = {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "artifact_location": (tmp_path / "artifacts").as_uri()}
    config_yaml = yaml.safe_dump(config)
    run = Artifact(name="mlflow_run", uri=str(tmp_path / "run"))
    begin_audit.python_func(config_yaml=config_yaml, mlflow_run=run)
    parent = run.metadata["mlflow_run_id"]
    assert json.loads((tmp_path / "run" / "tracking.json").read_text())["parent_run_id"] == parent
    latent = Dataset(name="latent", uri=str(small_run))
    head, head_metrics = Model(name="head", uri=str(tmp_path / "head")), Metrics(name="m", uri=str(tmp_path / "m"))
    train_classifier.python_func(config_yaml=config_yaml, latent=latent, head=head, metrics=head_metrics, mlflow_run=run)
    upstream = {"latent": latent, "directions": Artifact(name="d", uri=str(small_run)), "head": Model(name="h", uri=str(small_run))}
    page = HTML(name="report", uri=str(tmp_path / "report.html"))
    report.python_func(config_yaml=config_yaml, audit=Artifact(name="audit", uri=str(small_run)), report=page, mlflow_run=run, **upstream)
    decision = Artifact(name="decision", uri=str(tmp_path / "gate"))
    assert gate.python_func(config_yaml=config_yaml, audit=Artifact(name="audit", uri=str(small_run)), decision=decision, mlflow_run=run, **upstream) == "PASS"

    client = MlflowClient(tracking_uri=config["tracking"]["uri"])
    parent_run = client.get_run(parent)
    assert parent_run.data.params["unit_tests.slant_small.threshold"] == "0.5"
    children = client.search_runs([parent_run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    by_name = {child.info.run_name: child for child in children}
    assert set(by_name) == {"train-classifier", "report", "gate"} and all(child.info.status == "FINISHED" for child in children)
    assert len({r.info.run_id for r in client.search_runs([parent_run.info.experiment_id]) if "mlflow.parentRunId" not in r.data.tags}) == 1  # one parent, no stray ones
    assert by_name["train-classifier"].data.metrics["test_accuracy"] == head_metrics.metadata["test_accuracy"]
    assert [a.path for a in client.list_artifacts(by_name["report"].info.run_id)] == ["report.html"]
    assert "report.html" in [a.path for a in client.list_artifacts(parent)]


def _untracked(tmp_path: Path) -> Artifact:
    """An MLflow run folder with no run recorded in it (tracking off, or begin-audit could not reach MLflow): steps run untracked."""
    folder = tmp_path / "no-mlflow-run"
    folder.mkdir(exist_ok=True)
    return Artifact(name="mlflow_run", uri=str(folder))
