"""Forged audits: each is refused by `certificate check`, by `gate` and by `promote`, with and without a signing key, and no alias moves.

The attacker here can edit every file in the output folder and recompute every hash that needs
no key (content hashes, aggregates, spec and sample-id hashes, summary rows), and can run the
pipeline with a config of their own. The real config is `tests/cli/small.yaml`; a genuine audit
of it is registered first (alias `certified` on version 1), so a refusal that moved or kept an
alias wrongly shows.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from safetensors.torch import load_file, save_file

from auditai_ops.cli.main import main
from auditai_ops.config import parse_config
from auditai_ops.tracking.store import PARENT_RUN_ENV, resolve_target
from auditai_ops.verify.certificate import SIGNING_KEY_ENV, content_hash, sample_ids_sha256
from auditai_ops.verify.stats import clopper_pearson_lower

pytestmark = pytest.mark.slow
SMALL = Path(__file__).parents[1] / "cli" / "small.yaml"
MODEL = "auditai-model"
KEY = "the pipeline's signing key"
CERTIFICATE = "certificates/slant_small.json"


def _write_config(path: Path, signed: bool, edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
    raw = yaml.safe_load(SMALL.read_text())
    raw["gate"] = {"require_signature": signed}
    if edit is not None:
        edit(raw)
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module", params=["unsigned", "signed"])
def registered(request: pytest.FixtureRequest, small_run: Path, empty_mlflow_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, bool]]:
    """A genuine audit of the real config, gated into its own store (version 1, alias `certified`); with 'signed', certificates signed and signatures required."""
    signed = request.param == "signed"
    root = tmp_path_factory.mktemp(f"genuine-{request.param}")
    out = root / "run"
    shutil.copytree(small_run, out, ignore=shutil.ignore_patterns("mlflow", "tracking.json", "gate.json"))
    (out / "mlflow").mkdir()
    shutil.copy2(empty_mlflow_store, out / "mlflow" / "mlflow.db")
    config = _write_config(root / "audit.yaml", signed)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv(PARENT_RUN_ENV, raising=False)
        patch.delenv(SIGNING_KEY_ENV, raising=False)
        if signed:
            patch.setenv(SIGNING_KEY_ENV, KEY)
            assert main(["verify", "--config", str(config), "--out", str(out)]) == 0
        assert main(["gate", "--config", str(config), "--out", str(out)]) == 0
    yield out, config, signed


@pytest.fixture
def audit(registered: tuple[Path, Path, bool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """A private copy of the registered audit (folder and store) and the real config; the signing key set for the signed variant."""
    source, config, signed = registered
    out = tmp_path / "run"
    shutil.copytree(source, out)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    if signed:
        monkeypatch.setenv(SIGNING_KEY_ENV, KEY)
    registered_files = sorted(f for f in _registered_root(out).rglob("*") if f.is_file())
    snapshot = {f: f.read_bytes() for f in registered_files}
    yield out, config
    for path, data in snapshot.items():  # the copied store still points at the module's registered artifacts: undo what a test forged there
        path.write_bytes(data)


def _registered_root(out: Path) -> Path:
    """Where version 1's files live (the store's artifact location, shared by every copy of the registered folder)."""
    client = _client(out)
    uri = client.get_run(client.get_model_version(MODEL, "1").run_id).info.artifact_uri
    return Path(urlparse(uri).path if uri.startswith("file:") else uri)


def _signed(config: Path) -> bool:
    return bool(yaml.safe_load(config.read_text())["gate"]["require_signature"])


def _client(out: Path) -> MlflowClient:
    return MlflowClient(resolve_target(parse_config({}).tracking, out).tracking_uri)


def _aliases(out: Path) -> dict[str, str | None]:
    client, found = _client(out), {}
    for alias in ("certified", "production"):
        try:
            found[alias] = str(client.get_model_version_by_alias(MODEL, alias).version)
        except MlflowException:
            found[alias] = None
    return found


def _forge(out: Path, edit: Callable[[dict[str, Any]], None], name: str = CERTIFICATE) -> None:
    """Edit a certificate as a careful attacker would: then recompute its aggregates, verdict, sample and spec hashes, content hash, and its summary row."""
    path = out / name
    certificate = json.loads(path.read_text())
    edit(certificate)
    samples = certificate["samples"]
    verified = sum(s["verdict"] == "verified" for s in samples)
    aggregates = certificate["aggregates"]
    aggregates.update(
        samples=len(samples),
        certified_accuracy=verified / len(samples),
        certified_accuracy_lower_bound=clopper_pearson_lower(verified, len(samples), aggregates["confidence"]),
        falsified_fraction=sum(s["verdict"] == "falsified" for s in samples) / len(samples),
        unknown_fraction=sum(s["verdict"] == "unknown" for s in samples) / len(samples),
    )
    ids_hash = sample_ids_sha256([s["id"] for s in samples])
    certificate["hashes"]["sample_ids_sha256"] = ids_hash
    certificate["spec"].update(samples=len(samples), sample_ids_sha256=ids_hash)
    certificate["verdict"] = "pass" if aggregates["certified_accuracy"] >= certificate["threshold"] else "fail"
    from auditai_ops.fileio import canonical_json, sha256_bytes

    certificate["spec_sha256"] = sha256_bytes(canonical_json(certificate["spec"]))
    certificate["content_sha256"] = content_hash(certificate)
    path.write_text(json.dumps(certificate, indent=2))
    summary = json.loads((out / "summary.json").read_text())
    for row in summary["unit_tests"]:
        if row.get("certificate") == name:
            row.update(certificate_sha256=certificate["content_sha256"], verdict=certificate["verdict"], samples=len(samples))
    summary["verdict"] = "pass" if all(row["verdict"] == "pass" for row in summary["unit_tests"]) else "fail"
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


def _lower_threshold(certificate: dict[str, Any]) -> None:
    for holder in (certificate, certificate["unit_test"], certificate["spec"]):
        holder["threshold"] = 0.01


def _drop_falsified(certificate: dict[str, Any]) -> None:
    assert any(s["verdict"] == "falsified" for s in certificate["samples"]), "the small audit has counterexamples to drop"
    certificate["samples"] = [s for s in certificate["samples"] if s["verdict"] != "falsified"]


def _flip_verdicts(certificate: dict[str, Any]) -> None:
    for sample in certificate["samples"]:
        if sample["verdict"] != "verified":
            sample.update(verdict="verified", reason=None, counterexample=None)
    certificate["aggregates"].update(misclassified_at_t0=0, flipped=0)


def _hide_counterexamples(certificate: dict[str, Any]) -> None:
    for sample in certificate["samples"]:
        if sample["verdict"] == "falsified":
            sample.update(verdict="unknown", counterexample=None)


def _swap_head(out: Path) -> None:
    """Another head in the folder and in the registered version's files (the artifact store is writable too)."""
    registered = list(_registered_root(out).rglob("classifier/head.safetensors"))
    assert registered, "the registered package holds the head"
    for path in [out / "classifier" / "head.safetensors", *registered]:
        weights = load_file(str(path))
        first = sorted(weights)[0]
        weights[first] = weights[first] * 1.05
        save_file(weights, str(path))


def _weakened_range_audit(out: Path, config: Path) -> Path:
    """The pipeline run with the attacker's config: slant_small within +-0.1 degrees at threshold 0.1, under the real name (signed when the key is set)."""

    def weaken(raw: dict[str, Any]) -> None:
        raw["unit_tests"][0].update(range={"low": -0.1, "high": 0.1}, threshold=0.1)

    weak = _write_config(config.parent.parent / f"weak-{out.parent.name}.yaml", False, weaken)
    assert main(["verify", "--config", str(weak), "--out", str(out)]) == 0
    return weak


FORGERIES: dict[str, Callable[[Path], None]] = {
    "lowered threshold": lambda out: _forge(out, _lower_threshold),
    "dropped falsified samples": lambda out: _forge(out, _drop_falsified),
    "flipped verdicts": lambda out: _forge(out, _flip_verdicts),
    "falsified turned unknown": lambda out: _forge(out, _hide_counterexamples),
    "swapped head": _swap_head,
    "deleted certificate": lambda out: (out / CERTIFICATE).unlink(),
    "edited without rehashing": lambda out: (out / CERTIFICATE).write_text((out / CERTIFICATE).read_text().replace('"verdict": "falsified"', '"verdict": "verified"')),
}


def _refused_everywhere(out: Path, config: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """certificate check, gate, check-version and promote all refuse, and no alias moves; returns what they printed."""
    before = _aliases(out)
    certificate = out / CERTIFICATE
    if certificate.exists():
        assert main(["certificate", "check", str(certificate), "--config", str(config), "--out", str(out)]) in (1, 2)
    assert main(["gate", "--config", str(config), "--out", str(out)]) == 1
    assert main(["check-version", "--config", str(config), "--out", str(out), "--model", MODEL, "--alias", "certified"]) == 1
    assert main(["promote", "--config", str(config), "--out", str(out), "--model", MODEL, "--alias", "certified", "--to", "production"]) == 1
    assert _aliases(out) == before
    return capsys.readouterr().out


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_folder_is_refused_and_moves_no_alias(forgery: str, audit: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out, config = audit
    assert _aliases(out) == {"certified": "1", "production": None}
    FORGERIES[forgery](out)
    printed = _refused_everywhere(out, config, capsys)
    assert "gate: FAIL" in printed and "promote: FAIL" in printed
    if forgery == "swapped head":
        assert "head_sha256: recorded" in printed and "its files differ from those registered" in printed
    else:  # the registered version still holds the genuine files: only the folder in front of promote differs
        assert "differ from the registered version's" in printed or "cannot be read" in printed


def test_weakened_spec_under_the_same_name_is_refused_naming_the_field(audit: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out, config = audit
    _weakened_range_audit(out, config)
    printed = _refused_everywhere(out, config, capsys)
    assert "slant_small: the certificate covers slant [-0.1, 0.1] degrees, the config asks slant [-2, 2] degrees" in printed
    assert "the certificate's threshold is 0.1, the config asks 0.5" in printed


def test_version_gated_under_a_swapped_config_is_never_promoted(audit: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The attacker's config certifies its own weak audit; promotion with the team's config refuses that version."""
    out, config = audit
    weak = _weakened_range_audit(out, config)
    assert main(["gate", "--config", str(weak), "--out", str(out)]) == 0  # a genuine audit of the attacker's own config
    weak_version = _aliases(out)["certified"]
    capsys.readouterr()
    assert main(["promote", "--config", str(config), "--out", str(out), "--model", MODEL, "--version", str(weak_version), "--to", "production"]) == 1
    assert "the config asks slant [-2, 2] degrees" in capsys.readouterr().out
    assert _aliases(out)["production"] is None


def test_certificate_edited_after_registration_is_refused(audit: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The registry holds the genuine audit; the folder's copy is edited afterwards: nothing passes on the registry's word."""
    out, config = audit
    _forge(out, _flip_verdicts)
    printed = _refused_everywhere(out, config, capsys)
    assert "recorded proofs do not reproduce" in printed


def test_tampered_folder_first_never_blocks_the_genuine_audit(
    registered: tuple[Path, Path, bool], empty_mlflow_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, config, signed = registered
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(PARENT_RUN_ENV, raising=False)
    monkeypatch.setenv(SIGNING_KEY_ENV, KEY) if signed else monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    genuine = tmp_path / "genuine"
    shutil.copytree(source, genuine, ignore=shutil.ignore_patterns("mlflow", "tracking.json", "gate.json"))
    (genuine / "mlflow").mkdir()
    shutil.copy2(empty_mlflow_store, genuine / "mlflow" / "mlflow.db")
    tampered = tmp_path / "tampered"
    shutil.copytree(genuine, tampered, ignore=shutil.ignore_patterns("mlflow"))
    (tampered / "mlflow").symlink_to(genuine / "mlflow")  # one store for both folders
    _forge(tampered, _drop_falsified)
    assert main(["gate", "--config", str(config), "--out", str(tampered)]) == 1
    assert _client(genuine).search_model_versions(f"name = '{MODEL}'") == []  # a refused folder registers nothing
    assert main(["gate", "--config", str(config), "--out", str(genuine)]) == 0
    assert _aliases(genuine)["certified"] == "1"


def test_missing_summary_registers_nothing(audit: tuple[Path, Path]) -> None:
    out, config = audit
    (out / "summary.json").unlink()
    versions = len(_client(out).search_model_versions(f"name = '{MODEL}'"))
    assert main(["gate", "--config", str(config), "--out", str(out)]) == 1
    assert len(_client(out).search_model_versions(f"name = '{MODEL}'")) == versions


def test_a_configured_unit_test_without_a_certificate_is_refused(audit: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, config = audit

    def add_test(raw: dict[str, Any]) -> None:
        raw["unit_tests"].append({"name": "width_small", "direction": "width", "range": {"low": -0.1, "high": 0.1}, "threshold": 0.5})

    more = _write_config(tmp_path / "more.yaml", _signed(config), add_test)
    assert main(["gate", "--config", str(more), "--out", str(out)]) == 1
    assert "width_small: the config asks this unit test, but the audit has no result for it" in capsys.readouterr().out


def test_other_samples_than_the_config_selects_are_refused(audit: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, config = audit
    reseeded = _write_config(tmp_path / "seed.yaml", _signed(config), lambda raw: raw["verify"].update(seed=7))
    assert main(["certificate", "check", str(out / CERTIFICATE), "--config", str(reseeded), "--out", str(out)]) == 1
    assert "the config selects 200" in capsys.readouterr().out
