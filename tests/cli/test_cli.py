"""The CLI end to end on a small config, and its exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from auditai_ops.classifier.head import load_head
from auditai_ops.cli.main import main
from auditai_ops.config import GeneratorConfig, InputsConfig, ModelConfig
from auditai_ops.fileio import canonical_json, sha256_bytes
from auditai_ops.layout import resolve_inputs
from auditai_ops.models.generator import load_generator
from auditai_ops.verify.certificate import artifact_sha256, content_hash
from auditai_ops.verify.resample import resample_certificates

HERE = Path(__file__).parent


def test_small_run_writes_every_artifact(small_run: Path) -> None:
    for relative in (
        "latent/vae.safetensors",
        "latent/vae.json",
        "latent/latents.npz",
        "latent/reconstructions.png",
        "directions/directions.json",
        "directions/directions.npz",
        "classifier/head.safetensors",
        "summary.json",
        "junit.xml",
    ):
        assert (small_run / relative).is_file(), relative
    summary = json.loads((small_run / "summary.json").read_text())
    assert summary["verdict"] == "pass"
    names = [t["name"] for t in summary["unit_tests"]]
    assert names == ["slant_small", "thickness_small", "pca1_small"]
    for name in names:
        assert (small_run / "certificates" / f"{name}.json").is_file()
    assert not list(small_run.rglob("*.tmp")), "no temporary files are left behind"


def test_certificate_contents_and_hashes(small_run: Path) -> None:
    certificate = json.loads((small_run / "certificates" / "slant_small.json").read_text())
    assert certificate["schema_version"] == 2
    assert certificate["spec"]["ranges"] == [{"low": -2.0, "high": 2.0, "units": "attribute"}] and certificate["spec"]["samples"] == 200
    assert certificate["spec_sha256"] == sha256_bytes(canonical_json(certificate["spec"]))
    reasons = {s["reason"] for s in certificate["samples"] if s["verdict"] != "verified"}
    assert reasons <= {"misclassified at t = 0", "flipped along the direction", "undecided"}
    assert all(s["reason"] is None for s in certificate["samples"] if s["verdict"] == "verified")
    assert certificate["aggregates"]["misclassified_at_t0"] + certificate["aggregates"]["flipped"] <= 200 - sum(s["verdict"] == "verified" for s in certificate["samples"])
    assert certificate["unit_test"]["range"] == [{"low": -2.0, "high": 2.0, "units": "attribute"}]
    calibration = certificate["directions"][0]["calibration"]
    assert certificate["latent_box"]["low"] == [pytest.approx(-2.0 / calibration)]
    assert certificate["settings"]["max_pieces"] == 64 and certificate["aggregates"]["confidence"] == 0.95
    assert 0 < certificate["aggregates"]["certified_accuracy_lower_bound"] < certificate["aggregates"]["certified_accuracy"]
    assert certificate["content_sha256"] == content_hash(certificate)
    samples = certificate["samples"]
    assert len(samples) == certificate["aggregates"]["samples"] == 200
    ids = [s["id"] for s in samples]
    assert certificate["hashes"]["sample_ids_sha256"] == sha256_bytes(canonical_json(ids))
    verified = [s for s in samples if s["verdict"] == "verified"]
    assert certificate["aggregates"]["certified_accuracy"] == pytest.approx(len(verified) / len(samples))
    assert all(s["margin_lower_bound"] > 0 for s in verified)
    assert all(s["counterexample"] is not None for s in samples if s["verdict"] == "falsified")
    head, record = load_head(small_run / "classifier" / "head.safetensors")
    assert certificate["hashes"]["head_sha256"] == record["weights_sha256"]
    assert set(certificate["versions"]) >= {"torch", "auto_LiRPA", "auditai-ops"}


def test_verified_samples_survive_dense_sampling(small_run: Path) -> None:
    """1,000 evenly spaced t across the verified interval never flip a verified prediction."""
    inputs = resolve_inputs(small_run, InputsConfig())
    results = resample_certificates(small_run, ModelConfig(), load_generator(GeneratorConfig(), inputs.vae), inputs, points=1000)
    assert len(results) == 3
    assert sum(r.verified_samples for r in results) > 300
    assert [r.contradicted_samples for r in results] == [0, 0, 0]


def test_junit_and_failing_spec_exit_code_1(small_run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    failing = tmp_path / "failing.yaml"
    failing.write_text(
        (HERE / "small.yaml").read_text().split("unit_tests:")[0]
        + "unit_tests:\n"
        "  - {name: slant_ok, direction: slant, range: {low: -1, high: 1}, threshold: 0.3}\n"
        "  - {name: slant_too_wide, direction: slant, range: {low: -60, high: 60}, threshold: 0.99}\n"
    )
    assert main(["verify", "--config", str(failing), "--out", str(small_run_copy)]) == 1
    printed = capsys.readouterr().out
    assert "slant_too_wide" in printed and "FAIL" in printed
    suite = ET.parse(small_run_copy / "junit.xml").getroot()
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert suite.get("failures") == "1" and suite.get("tests") == "2"
    assert cases["slant_too_wide"].find("failure") is not None
    assert cases["slant_ok"].find("failure") is None
    properties = {p.get("name"): p.get("value") for p in cases["slant_too_wide"].iter("property")}
    assert float(properties["certified_accuracy"]) < 0.99


@pytest.mark.parametrize(
    ("config_text", "message"),
    [
        ("latent:\n  epocs: 2\n", "latent.epocs: unknown field (did you mean 'epochs'?)"),
        ("unit_tests:\n  - {name: a, direction: curvature, range: {low: -1, high: 1}}\n", "unit_tests[0] ('a').direction: unknown direction 'curvature'"),
        ("unit_tests:\n  - {name: a, direction: pca1, range: {low: -1, high: 1}}\n", "has no attribute calibration"),
        ("unit_tests: []\n", "no unit tests are configured"),
    ],
)
def test_bad_input_exits_2_without_traceback(small_run_copy: Path, tmp_path: Path, config_text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(config_text)
    result = subprocess.run(
        [sys.executable, "-m", "auditai_ops", "verify", "--config", str(config), "--out", str(small_run_copy)], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_missing_earlier_step_is_bad_input(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "auditai_ops", "train-classifier", "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "run `auditai map-latents` first" in result.stderr and "Traceback" not in result.stderr


def test_tampered_model_file_is_bad_input(small_run_copy: Path) -> None:
    head = small_run_copy / "classifier" / "head.safetensors"
    head.write_bytes(head.read_bytes()[:100])
    result = subprocess.run([sys.executable, "-m", "auditai_ops", "verify", "--config", str(HERE / "small.yaml"), "--out", str(small_run_copy)], capture_output=True, text=True)
    assert result.returncode == 2 and "head.safetensors" in result.stderr and "Traceback" not in result.stderr


def test_dense_resampling_catches_a_false_verified_claim(small_run_copy: Path) -> None:
    """The cross-check is not vacuous: a falsified sample relabelled 'verified' is caught."""
    path = small_run_copy / "certificates" / "slant_small.json"
    certificate = json.loads(path.read_text())
    falsified = [s for s in certificate["samples"] if s["verdict"] == "falsified"]
    assert falsified, "the small run has falsified samples to plant"
    falsified[0]["verdict"] = "verified"
    path.write_text(json.dumps(certificate))
    inputs = resolve_inputs(small_run_copy, InputsConfig())
    by_name = {r.certificate: r for r in resample_certificates(small_run_copy, ModelConfig(), load_generator(GeneratorConfig(), inputs.vae), inputs)}
    assert by_name["slant_small.json"].contradicted_samples == 1


def test_a_step_reads_inputs_from_paths_in_the_config(small_run: Path, tmp_path: Path) -> None:
    """`inputs` points a step at another run's artifacts; outputs go to --out only."""
    config = tmp_path / "config" / "verify.yaml"
    config.parent.mkdir()
    config.write_text(
        "inputs:\n"
        f"  vae: {small_run / 'latent' / 'vae.safetensors'}\n"
        f"  latents: {small_run / 'latent' / 'latents.npz'}\n"
        f"  directions: {small_run / 'directions'}\n"
        f"  head: {small_run / 'classifier' / 'head.safetensors'}\n"
        "verify: {samples: 50}\n"
        "unit_tests:\n  - {name: slant_tiny, direction: slant, range: {low: -0.5, high: 0.5}, threshold: 0.1}\n"
    )
    out = tmp_path / "elsewhere"
    assert main(["verify", "--config", str(config), "--out", str(out)]) == 0
    tracking = {"mlflow", "tracking.json", ".tracking.lock"}  # the embedded MLflow store and the audit's parent run
    assert {p.name for p in out.iterdir()} <= {"certificates", "counterexamples", "junit.xml", "summary.json"} | tracking
    assert (out / "certificates" / "slant_tiny.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["unit_tests"][0]["samples"] == 50
    certificate = json.loads((out / "certificates" / "slant_tiny.json").read_text())
    given = {"vae": "latent/vae.safetensors", "latents": "latent/latents.npz", "directions": "directions", "head": "classifier/head.safetensors"}
    assert certificate["reused_artifacts"] == {name: artifact_sha256(small_run / path) for name, path in given.items()}, "the certificate names every artifact of the other run"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_run_on_cuda_without_cuda_fails_before_training(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "auditai_ops", "run", str(HERE / "small.yaml"), "--out", str(tmp_path), "--device", "cuda"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "verify.device: 'cuda'" in result.stderr
    assert not (tmp_path / "latent").exists()


def test_every_falsified_sample_has_a_counterexample_image(small_run: Path) -> None:
    from PIL import Image

    certificate = json.loads((small_run / "certificates" / "slant_small.json").read_text())
    falsified = [s for s in certificate["samples"] if s["verdict"] == "falsified"]
    assert falsified
    for sample in falsified:
        image = small_run / sample["counterexample"]["image"]
        with Image.open(image) as png:
            assert png.size[0] > 2 * png.size[1] - 40  # original and counterexample side by side
