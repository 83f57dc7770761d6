"""The registry gate and promotion on the embedded store: pass, every refusal, idempotency, and failing closed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from safetensors.torch import load_file, save_file

from auditai_ops.cli.main import main
from auditai_ops.config import AuditConfig, parse_config
from auditai_ops.gate.decision import ERROR, FAIL, PASS
from auditai_ops.gate.package import certificates_digest
from auditai_ops.gate.step import check_version, gate_audit, promote_version
from auditai_ops.tracking.store import PARENT_RUN_ENV, resolve_target

pytestmark = pytest.mark.slow
SMALL = Path(__file__).parents[1] / "cli" / "small.yaml"
MODEL = "auditai-model"


def _config(**sections: object) -> AuditConfig:
    raw = yaml.safe_load(SMALL.read_text())
    raw.update(sections)
    return parse_config(raw)


@pytest.fixture(autouse=True)
def _no_ambient_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)


@pytest.fixture
def audit(small_run_copy: Path, empty_mlflow_store: Path) -> Path:
    """The small audit's files with an empty MLflow store of their own."""
    for name in ("mlflow", "tracking.json", "gate.json"):
        path = small_run_copy / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    (small_run_copy / "mlflow").mkdir()
    shutil.copy2(empty_mlflow_store, small_run_copy / "mlflow" / "mlflow.db")
    return small_run_copy


def _client(out: Path) -> MlflowClient:
    return MlflowClient(resolve_target(_config().tracking, out).tracking_uri)


def _alias(client: MlflowClient, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(MODEL, alias).version)
    except MlflowException:
        return None


def _versions(client: MlflowClient) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))


def test_gate_registers_tags_and_certifies_once_and_promotion_follows(audit: Path) -> None:
    assert main(["gate", "--config", str(SMALL), "--out", str(audit)]) == 0
    client = _client(audit)
    version = client.get_model_version_by_alias(MODEL, "certified")
    summary = json.loads((audit / "summary.json").read_text())
    assert version.tags["auditai.verdict"] == "pass" and version.tags["auditai.gate"] == PASS
    assert "| slant_small |" in client.get_model_version(MODEL, version.version).description  # the audit's table in the registry UI
    assert version.tags["auditai.certificates_digest"] == certificates_digest({t["name"]: t["certificate_sha256"] for t in summary["unit_tests"]})
    assert {k.removeprefix("auditai.weights."): v for k, v in version.tags.items() if k.startswith("auditai.weights.")} == summary["models"]
    gate_record = json.loads((audit / "gate.json").read_text())
    assert gate_record["decision"] == PASS and gate_record["version"] == str(version.version) and gate_record["promoted"]
    gate_run = client.get_run(version.run_id)
    assert gate_run.info.run_name == "gate" and gate_run.data.tags["auditai.decision"] == PASS
    assert gate_run.data.tags["mlflow.parentRunId"] == json.loads((audit / "tracking.json").read_text())["parent_run_id"]

    # idempotent: the same audit gated again reuses its version
    again = gate_audit(_config(), audit)
    assert (again.decision, again.version, again.promoted) == (PASS, str(version.version), True)
    assert _versions(client) == [str(version.version)]

    # the registered pyfunc (defined by code, no pickle) predicts like head o encoder
    import mlflow.pyfunc

    from auditai_ops.classifier.head import load_head
    from auditai_ops.latent.generator import vae_generator
    from auditai_ops.latent.mapping import load_vae

    mlflow.set_tracking_uri(resolve_target(_config().tracking, audit).tracking_uri)  # the version's source is a models:/ URI of this store
    try:
        model = mlflow.pyfunc.load_model(f"{version.source}")
    finally:
        mlflow.set_tracking_uri(None)
    images = np.random.default_rng(0).random((16, 28, 28)).astype(np.float32)
    head, _ = load_head(audit / "classifier" / "head.safetensors")
    with torch.no_grad():
        expected = head(vae_generator(load_vae(audit / "latent" / "vae.safetensors")[0]).encoder(torch.from_numpy(images)[:, None])).argmax(1).numpy()
    np.testing.assert_array_equal(model.predict(images), expected)

    # promotion re-checks the version's own files
    assert main(["promote", "--config", str(SMALL), "--out", str(audit), "--model", MODEL, "--alias", "certified", "--to", "production"]) == 0
    assert _alias(client, "production") == str(version.version)
    assert client.get_model_version(MODEL, version.version).tags["auditai.promote.production"] == PASS

    # a certificate altered inside the registry is caught at promotion
    stored = next((audit / "mlflow" / "artifacts").rglob("certificates/slant_small.json"))
    certificate = json.loads(stored.read_text())
    certificate["aggregates"]["certified_accuracy"] = 1.0
    stored.write_text(json.dumps(certificate))
    refused = promote_version(_config(), audit, MODEL, str(version.version), None, "staging")
    assert refused.decision == FAIL and refused.exit_code == 1
    assert any("registered package: its files differ from those registered" in reason for reason in refused.reasons)
    assert _alias(client, "staging") is None


def test_failing_audit_is_registered_without_alias_and_cannot_be_promoted(audit: Path, capsys: pytest.CaptureFixture[str]) -> None:
    strict = yaml.safe_load(SMALL.read_text())
    strict["unit_tests"] = [{**strict["unit_tests"][0], "threshold": 0.99}]
    config_file = audit / "strict.yaml"
    config_file.write_text(yaml.safe_dump(strict))
    assert main(["verify", "--config", str(config_file), "--out", str(audit)]) == 1
    assert main(["gate", "--config", str(config_file), "--out", str(audit)]) == 1
    out = capsys.readouterr().out
    assert "gate: FAIL" in out and "alias 'certified' not set" in out and "vs threshold 0.99" in out
    client = _client(audit)
    (version,) = client.search_model_versions(f"name = '{MODEL}'")
    assert version.tags["auditai.verdict"] == "fail" and version.tags["auditai.gate"] == FAIL
    assert _alias(client, "certified") is None
    assert main(["promote", "--config", str(config_file), "--out", str(audit), "--model", MODEL, "--version", str(version.version), "--to", "production"]) == 1
    out = capsys.readouterr().out
    assert "promote: FAIL" in out and "slant_small: verdict" in out and "threshold 0.99" in out
    assert _alias(client, "production") is None
    assert client.get_model_version(MODEL, version.version).tags["auditai.promote.production"] == FAIL


def _drop_certificate(out: Path) -> str:
    (out / "certificates" / "slant_small.json").unlink()
    return "slant_small: certificate: summary.json unit_tests[0].certificate: 'certificates/slant_small.json' is not a file"


def _tamper_certificate(out: Path) -> str:
    path = out / "certificates" / "thickness_small.json"
    certificate = json.loads(path.read_text())
    certificate["threshold"] = 0.1
    path.write_text(json.dumps(certificate))
    return "thickness_small: integrity: content hash mismatch"


def _swap_weights(out: Path) -> str:
    path = out / "classifier" / "head.safetensors"
    state = load_file(str(path))
    first = sorted(state)[0]
    state[first] = state[first] + 1e-3
    save_file(state, str(path))
    return "slant_small: head_sha256: recorded"


def _unit_test_error(out: Path) -> str:
    summary = json.loads((out / "summary.json").read_text())
    summary["unit_tests"][2] = {**summary["unit_tests"][2], "verdict": "error", "error": "RuntimeError: out of memory", "certificate": None, "samples": 0}
    summary["verdict"] = "error"
    (out / "summary.json").write_text(json.dumps(summary))
    return "pca1_small: no certificate (unit test error: RuntimeError: out of memory)"


def _unfinished_audit(out: Path) -> str:
    (out / "summary.json").unlink()
    shutil.rmtree(out / "certificates")
    return "summary: summary.json missing or unreadable: the audit did not finish"


@pytest.mark.parametrize("break_audit", [_drop_certificate, _tamper_certificate, _swap_weights, _unit_test_error, _unfinished_audit])
def test_gate_refuses_with_the_reason_and_registers_nothing(audit: Path, break_audit: object) -> None:
    reason = break_audit(audit)  # type: ignore[operator]
    decision = gate_audit(_config(), audit)
    assert decision.decision == FAIL and not decision.promoted and decision.exit_code == 1
    assert any(reason in r for r in decision.reasons), decision.reasons
    assert decision.version is None and decision.reasons[0].startswith("nothing registered")
    client = _client(audit)
    assert _alias(client, "certified") is None
    assert _versions(client) == []
    assert json.loads((audit / "gate.json").read_text())["decision"] == FAIL


def test_nothing_to_register_is_refused(audit: Path) -> None:
    (audit / "classifier" / "head.safetensors").unlink()
    decision = gate_audit(_config(), audit)
    assert decision.decision == FAIL and decision.version is None
    assert decision.reasons[0].startswith("nothing registered") and any("head.safetensors" in reason for reason in decision.reasons)


def test_gate_fails_closed_on_tracking_errors_and_the_time_limit(audit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    unreachable = gate_audit(_config(tracking={"uri": "http://127.0.0.1:9"}), audit)
    assert unreachable.decision == ERROR and unreachable.exit_code == 2 and not unreachable.promoted
    assert "127.0.0.1" in unreachable.reasons[0] or "Connection" in unreachable.reasons[0]

    timed_out = gate_audit(_config(gate={"timeout_seconds": 0.001}), audit)
    assert timed_out.decision == ERROR and timed_out.exit_code == 2
    assert "time limit" in timed_out.reasons[0] or "timed out" in timed_out.reasons[0]
    assert _alias(_client(audit), "certified") is None

    with pytest.raises(Exception, match="tracking.enabled is false"):
        gate_audit(_config(tracking={"enabled": False}), audit)
    assert main(["promote", "--config", str(SMALL), "--out", str(audit), "--model", "bad'name", "--version", "1", "--to", "production"]) == 2


def test_promote_refuses_a_version_that_carries_no_audit(audit: Path, tmp_path: Path) -> None:
    client = _client(audit)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "weights.bin").write_bytes(b"not audited")
    client.create_registered_model(MODEL)
    version = client.create_model_version(MODEL, str(tmp_path / "plain"))
    decision = promote_version(_config(), audit, MODEL, str(version.version), None, "production")
    assert decision.decision == FAIL and decision.exit_code == 1
    assert "carries no audit" in decision.reasons[0]
    assert _alias(client, "production") is None


def test_a_gate_that_loses_the_registration_race_keeps_the_first_version(audit: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two gates of one audit both find no version and both register: the later one deletes its own and uses the first."""
    from auditai_ops.gate import registry

    first = gate_audit(_config(), audit)
    searches = []
    original = registry.versions_tagged

    def blind_first_search(client: MlflowClient, name: str, tag: str, value: str) -> list[object]:
        searches.append(tag)
        return [] if len(searches) == 1 else original(client, name, tag, value)  # the other gate's version is not visible yet

    monkeypatch.setattr(registry, "versions_tagged", blind_first_search)
    second = gate_audit(_config(), audit)
    client = _client(audit)
    assert (second.decision, second.version, second.promoted) == (PASS, first.version, True)
    assert _versions(client) == [first.version], "the loser's version is deleted"
    assert _alias(client, "certified") == first.version


def test_check_version_passes_a_certified_version_refuses_the_rest_and_changes_nothing(audit: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    certified = gate_audit(_config(), audit)
    client = _client(audit)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "weights.bin").write_bytes(b"not audited")
    plain = client.create_model_version(MODEL, str(tmp_path / "plain"))
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs_before = len(client.search_runs(experiments))
    tags_before = {v.version: dict(v.tags) for v in client.search_model_versions(f"name = '{MODEL}'")}

    passed = check_version(_config(), audit, MODEL, None, "certified")
    assert (passed.decision, passed.version, passed.exit_code, passed.promoted) == (PASS, certified.version, 0, False)
    tagged = client.get_model_version(MODEL, certified.version).tags
    assert passed.weights == {k.removeprefix("auditai.weights."): v for k, v in tagged.items() if k.startswith("auditai.weights.")}
    assert passed.certificates_digest == tagged["auditai.certificates_digest"]
    assert main(["check-version", "--config", str(SMALL), "--out", str(audit), "--model", MODEL, "--version", certified.version]) == 0
    assert f"check: PASS: {MODEL} version {certified.version} passed" in capsys.readouterr().out

    unaudited = check_version(_config(), audit, MODEL, str(plain.version), None)
    assert unaudited.decision == FAIL and unaudited.exit_code == 1 and "carries no audit" in unaudited.reasons[0]
    for version, alias in (("99", None), (None, "production")):
        missing = check_version(_config(), audit, MODEL, version, alias)
        assert missing.decision == FAIL and "not in the registry" in missing.reasons[0]
    assert main(["check-version", "--config", str(SMALL), "--out", str(audit), "--model", MODEL, "--version", str(plain.version)]) == 1
    assert "check: FAIL" in capsys.readouterr().out

    assert len(client.search_runs(experiments)) == runs_before  # read-only: no runs, tags or aliases written
    assert {v.version: dict(v.tags) for v in client.search_model_versions(f"name = '{MODEL}'")} == tags_before
    assert _alias(client, "certified") == certified.version and _alias(client, "production") is None
