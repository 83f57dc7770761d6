"""`auditai certificate check` passes on fresh certificates and fails on each kind of tampering."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from auditai_ops.cli.main import main
from auditai_ops.config import GeneratorConfig, InputsConfig, load_config
from auditai_ops.layout import resolve_inputs
from auditai_ops.models.generator import load_generator
from auditai_ops.verify.certificate import SIGNING_KEY_ENV
from auditai_ops.verify.check import check_certificate

SMALL = Path(__file__).parents[1] / "cli" / "small.yaml"


def _certificate(run: Path) -> Path:
    return run / "certificates" / "slant_small.json"


def _failed(run: Path, sample_points: int | None = None) -> dict[str, str]:
    inputs = resolve_inputs(run, InputsConfig())
    checks = check_certificate(_certificate(run), load_config(SMALL), load_generator(GeneratorConfig(), inputs.vae), inputs, sample_points=sample_points)
    return {c.name: c.detail for c in checks if not c.passed}


def test_fresh_certificates_are_valid(small_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    certificates = sorted(str(p) for p in (small_run / "certificates").glob("*.json"))
    assert main(["certificate", "check", *certificates, "--config", str(SMALL), "--out", str(small_run)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("VALID") == 3 and "FAIL" not in printed
    assert "proofs reproduced" in printed and "counterexamples confirmed" in printed


def test_dense_sampling_of_fresh_certificates_finds_no_contradiction(small_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["certificate", "check", str(_certificate(small_run)), "--config", str(SMALL), "--out", str(small_run), "--sample", "300"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "dense sampling" in line)
    assert line.lstrip().startswith("ok") and "300 points each: none leaves its target class" in line


def test_dense_sampling_catches_a_counterexample_relabelled_verified(small_run_copy: Path) -> None:
    path = _certificate(small_run_copy)
    certificate = json.loads(path.read_text())
    next(s for s in certificate["samples"] if s["verdict"] == "falsified")["verdict"] = "verified"
    path.write_text(json.dumps(certificate))
    assert "1 leave their target class at a sampled point" in _failed(small_run_copy, sample_points=300)["dense sampling"]


def test_head_option_checks_against_another_head(small_run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--head replaces the audit folder's head: a changed copy fails the hash check, the original passes."""
    original = small_run_copy / "classifier" / "head.safetensors"
    weights = load_file(str(original))
    first = sorted(weights)[0]
    weights[first] = weights[first] * 1.01
    save_file(weights, str(tmp_path / "other.safetensors"))
    shutil.copy(original.with_suffix(".json"), tmp_path / "other.json")  # the head's architecture record
    certificate = str(_certificate(small_run_copy))
    assert main(["certificate", "check", certificate, "--config", str(SMALL), "--out", str(small_run_copy), "--head", str(tmp_path / "other.safetensors")]) == 1
    assert "FAIL head_sha256" in capsys.readouterr().out
    assert main(["certificate", "check", certificate, "--config", str(SMALL), "--out", str(small_run_copy), "--head", str(original)]) == 0


@pytest.mark.parametrize("points", ["0", "-3", "many"])
def test_sample_points_must_be_positive(points: str, small_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["certificate", "check", str(_certificate(small_run)), "--config", str(SMALL), "--out", str(small_run), "--sample", points])
    assert exit_info.value.code == 2 and "expected an integer >= 1" in capsys.readouterr().err


def test_tampered_content_is_detected(small_run_copy: Path) -> None:
    path = _certificate(small_run_copy)
    certificate = json.loads(path.read_text())
    certificate["aggregates"]["certified_accuracy"] = 1.0
    path.write_text(json.dumps(certificate))
    assert "content hash mismatch" in _failed(small_run_copy)["integrity"]
    assert main(["certificate", "check", str(path), "--config", str(SMALL), "--out", str(small_run_copy)]) == 1


def test_swapped_model_is_detected(small_run_copy: Path) -> None:
    head_path = small_run_copy / "classifier" / "head.safetensors"
    weights = load_file(str(head_path))
    first = sorted(weights)[0]
    weights[first] = weights[first] * 1.01
    save_file(weights, str(head_path))
    failed = _failed(small_run_copy)
    assert set(failed) == {"head_sha256", "verdict"} and "not recomputed" in failed["verdict"]


def test_a_verdict_that_does_not_reproduce_is_detected(small_run_copy: Path) -> None:
    """A falsified sample relabelled 'verified', with the hashes recomputed so integrity still holds."""
    path = _certificate(small_run_copy)
    certificate = json.loads(path.read_text())
    falsified = next(s for s in certificate["samples"] if s["verdict"] == "falsified")
    falsified["verdict"] = "verified"
    verdicts = [s["verdict"] for s in certificate["samples"]]
    aggregates = certificate["aggregates"]
    aggregates["certified_accuracy"] = verdicts.count("verified") / len(verdicts)
    aggregates["falsified_fraction"] = verdicts.count("falsified") / len(verdicts)
    from auditai_ops.verify.certificate import content_hash
    from auditai_ops.verify.stats import clopper_pearson_lower

    aggregates["certified_accuracy_lower_bound"] = clopper_pearson_lower(verdicts.count("verified"), len(verdicts), aggregates["confidence"])
    certificate["content_sha256"] = content_hash(certificate)
    path.write_text(json.dumps(certificate))
    failed = _failed(small_run_copy)
    assert "1 recorded proofs do not reproduce" in failed["verified samples"]


def test_hmac_signature(small_run_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SIGNING_KEY_ENV, "correct horse battery staple")
    config = small_run_copy.parent / "sign.yaml"
    config.write_text("verify: {samples: 20}\nunit_tests:\n  - {name: signed, direction: slant, range: {low: -1, high: 1}, threshold: 0.1}\n")
    assert main(["verify", "--config", str(config), "--out", str(small_run_copy)]) == 0
    path = small_run_copy / "certificates" / "signed.json"
    assert json.loads(path.read_text())["signature"]["algorithm"] == "hmac-sha256"
    inputs = resolve_inputs(small_run_copy, InputsConfig())
    generator, settings = load_generator(GeneratorConfig(), inputs.vae), load_config(config)
    assert all(c.passed for c in check_certificate(path, settings, generator, inputs))
    monkeypatch.setenv(SIGNING_KEY_ENV, "another key")
    assert {c.name for c in check_certificate(path, settings, generator, inputs) if not c.passed} == {"signature"}
    monkeypatch.delenv(SIGNING_KEY_ENV)
    assert {c.name for c in check_certificate(path, settings, generator, inputs) if not c.passed} == {"signature"}
    required = settings.model_copy(update={"gate": settings.gate.model_copy(update={"require_signature": True})})
    assert "AUDITAI_SIGNING_KEY is not set" in next(c.detail for c in check_certificate(path, required, generator, inputs) if c.name == "signature")


def test_not_a_certificate_is_bad_input(tmp_path: Path, small_run: Path) -> None:
    bogus = tmp_path / "bogus.json"
    bogus.write_text("{}")
    assert main(["certificate", "check", str(bogus), "--config", str(SMALL), "--out", str(small_run)]) == 2
