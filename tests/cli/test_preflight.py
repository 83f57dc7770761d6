"""`auditai run` and the single steps check every input before training, and `auditai run` reuses the artifacts `inputs` hands in."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from auditai_ops.cli.main import main
from auditai_ops.config import parse_config
from auditai_ops.errors import AuditInputError
from auditai_ops.layout import resolve_inputs
from auditai_ops.preflight import DISCOVER_DIRECTIONS, MAP_LATENTS, TRAIN_CLASSIFIER, TRAINING_STEPS, VERIFY, plan_run, preflight
from auditai_ops.verify.certificate import artifact_sha256

HERE = Path(__file__).parent
SMALL = (HERE / "small.yaml").read_text()
UNTRACKED = "tracking: {enabled: false}\n"


def _config(tmp_path: Path, text: str, name: str = "audit.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _scripted(tmp_path: Path, name: str, *layers: nn.Module) -> str:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(nn.Sequential(*layers).eval()), str(tmp_path / name))
    return name


def _run_subprocess(config: Path, out: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "auditai_ops", "run", str(config), "--out", str(out)], capture_output=True, text=True, timeout=300)
    return result, time.perf_counter() - started


def test_an_unboundable_classifier_fails_in_seconds_before_any_training(tmp_path: Path) -> None:
    """A TorchScript CNN with LPPool2d (exported as Pow: no verifier bounds it) used to cost the whole training first; now nothing trains."""
    classifier = _scripted(tmp_path, "lppool.pt", nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.LPPool2d(2, 2), nn.Flatten(), nn.Linear(4 * 14 * 14, 10))
    config = _config(tmp_path, SMALL + UNTRACKED + f"model: {{mode: pixel, classifier: {classifier}}}\n")
    out = tmp_path / "out"
    result, seconds = _run_subprocess(config, out)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "lppool.pt" in lines[0] and "'Pow' is not supported by the verifier" in lines[0]
    assert not (out / "latent").exists() and "map-latents" not in result.stdout, "no training started"
    assert seconds < 60, f"took {seconds:.1f} s"  # the small audit's training alone takes longer; the checks take under 10 s on 2 cores


@pytest.mark.parametrize(
    ("dataset", "content", "message"),
    [
        ("missing.npz", None, "missing.npz': file not found"),
        ("corrupt.npz", b"PK\x03\x04 not really a zip archive", "corrupt.npz"),
        ("nothing-here", None, "expected 'mnist', a .npz file or an image folder"),
    ],
)
def test_a_missing_or_corrupt_dataset_fails_before_any_training(tmp_path: Path, capsys: pytest.CaptureFixture[str], dataset: str, content: bytes | None, message: str) -> None:
    if content is not None:
        (tmp_path / dataset).write_bytes(content)
    config = _config(tmp_path, SMALL.replace("data:\n", f"data:\n  dataset: {dataset}\n") + UNTRACKED)
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert message in error and "data" in error and len(error.strip().splitlines()) == 1
    assert not (out / "latent").exists()


def _pixel(classifier: str, extra: str = "") -> str:
    return SMALL + UNTRACKED + f"model: {{mode: pixel, classifier: {classifier}{extra}}}\n"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong_input", "inputs of shape (2, 1, 28, 28)"),
        ("five_classes", "returns shape (2, 5); expected (batch, classes) with at least the 10 classes"),
        ("three_channel_normalization", ("model.classifier 'cnn.pt': ", "but got 3 channels")),  # the normalisation makes 3 channels of the decoder's 1
        ("unknown_direction", "unit_tests[0] ('slant_small').direction: unknown direction 'curvature'"),
        ("pca_in_attribute_units", "unit_tests[2] ('pca1_small').range.units: direction 'pca1' has no attribute calibration"),
        ("too_many_pca", "directions.pca_components: 17 exceeds the latent dimension 16"),
        ("unknown_attribute", "directions.attributes: unknown attribute(s) ['curvature']"),
        ("batch_too_large", "latent.batch_size: 8000 is larger than the training split (5000 images)"),
        ("missing_input", "inputs.vae: '"),
        ("latents_without_vae", "inputs.latents: latents are reused only with the generator that encoded them"),
    ],
)
def test_bad_inputs_of_a_run_fail_before_any_training(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str | tuple[str, ...]) -> None:
    conv = (nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten())
    texts = {
        "wrong_input": lambda: _pixel(_scripted(tmp_path, "cnn.pt", *conv, nn.Linear(4 * 32 * 32, 10))),
        "five_classes": lambda: _pixel(_scripted(tmp_path, "cnn.pt", *conv, nn.Linear(4 * 28 * 28, 5))),
        "three_channel_normalization": lambda: _pixel(_scripted(tmp_path, "cnn.pt", *conv, nn.Linear(4 * 28 * 28, 10)), ", normalization: {mean: [0, 0, 0], std: [1, 1, 1]}"),
        "unknown_direction": lambda: SMALL.replace("direction: slant", "direction: curvature") + UNTRACKED,
        "pca_in_attribute_units": lambda: SMALL.replace(", units: latent", "") + UNTRACKED,
        "too_many_pca": lambda: SMALL.replace("pca_components: 2", "pca_components: 17") + UNTRACKED,
        "unknown_attribute": lambda: SMALL.replace("directions:\n", "directions:\n  attributes: [slant, curvature]\n") + UNTRACKED,
        "batch_too_large": lambda: SMALL.replace("epochs: 4", "epochs: 4\n  batch_size: 8000") + UNTRACKED,
        "missing_input": lambda: SMALL + UNTRACKED + "inputs: {vae: nowhere/vae.safetensors, latents: nowhere/latents.npz}\n",
        "latents_without_vae": lambda: SMALL + UNTRACKED + "inputs: {latents: nowhere/latents.npz}\n",
    }
    config = _config(tmp_path, texts[case]())
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert all(part in error for part in ((message,) if isinstance(message, str) else message)), error
    assert len(error.strip().splitlines()) == 1
    assert not (out / "latent").exists()


def test_a_boundable_pixel_classifier_passes_the_checks(tmp_path: Path) -> None:
    """The checks refuse what the verifier cannot bound, not pixel classifiers as such: the same CNN without LPPool2d passes them, and they train nothing."""
    classifier = _scripted(tmp_path, "cnn.pt", nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 28 * 28, 10))
    config = parse_config(yaml.safe_load(_pixel(classifier)), source="test")
    out = tmp_path / "out"
    checked = preflight(config, tmp_path, out, (*TRAINING_STEPS, VERIFY), resolve_inputs(out, config.inputs, tmp_path))
    assert checked.generator is None, "the VAE is still to be trained"
    assert (checked.latent_dim, checked.num_classes) == (16, 10)
    assert [p.name for p in out.iterdir()] == []


def _plan(text: str, tmp_path: Path) -> tuple[tuple[str, ...], dict[str, list[str]]]:
    plan = plan_run(parse_config(yaml.safe_load(text), source="test"), tmp_path)
    return plan.steps, {step: sorted(reused) for step, reused in plan.skipped.items()}


def test_run_plan_skips_the_steps_whose_outputs_are_given(tmp_path: Path) -> None:
    every = (MAP_LATENTS, DISCOVER_DIRECTIONS, TRAIN_CLASSIFIER)
    assert _plan("{}", tmp_path) == (every, {})
    assert _plan("inputs: {vae: v.safetensors}", tmp_path) == (every, {})  # map-latents encodes with the given VAE
    assert _plan("inputs: {vae: v.safetensors, latents: l.npz}", tmp_path) == ((DISCOVER_DIRECTIONS, TRAIN_CLASSIFIER), {MAP_LATENTS: ["latents", "vae"]})
    assert _plan("inputs: {vae: v.safetensors, latents: l.npz, directions: d, head: h.safetensors}", tmp_path) == (
        (),
        {MAP_LATENTS: ["latents", "vae"], DISCOVER_DIRECTIONS: ["directions"], TRAIN_CLASSIFIER: ["head"]},
    )
    assert _plan("inputs: {vae: v.safetensors, head: h.safetensors}", tmp_path) == ((MAP_LATENTS, DISCOVER_DIRECTIONS), {TRAIN_CLASSIFIER: ["head"]})
    own = "generator: {encoder: e.onnx, decoder: d.onnx}\n"
    assert _plan(own + "inputs: {latents: l.npz, directions: d}", tmp_path) == ((TRAIN_CLASSIFIER,), {MAP_LATENTS: ["latents"], DISCOVER_DIRECTIONS: ["directions"]})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("inputs: {directions: d}", "inputs.directions: reused directions belong to the latent space"),
        ("inputs: {head: h.safetensors, latents: l.npz}", "inputs.latents: latents are reused only with the generator"),
        ("inputs: {head: h.safetensors}", "inputs.head: reused head belong to the latent space"),
        ("generator: {encoder: e.onnx, decoder: d.onnx}\ninputs: {vae: v.safetensors}", "inputs.vae: the config brings its own generator"),
    ],
)
def test_run_plan_refuses_artifacts_of_another_latent_space(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(AuditInputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        _plan(text, tmp_path)


def test_a_run_reuses_the_generator_and_directions_of_an_earlier_run(small_run: Path, tmp_path: Path) -> None:
    """Re-audit a new head on the VAE, latents and directions a team already trusted: map-latents and discover-directions are skipped."""
    reused = {"vae": small_run / "latent" / "vae.safetensors", "latents": small_run / "latent" / "latents.npz", "directions": small_run / "directions"}
    inputs = "inputs:\n" + "".join(f"  {name}: {path}\n" for name, path in reused.items())
    config = _config(tmp_path, SMALL.replace("classifier:\n  epochs: 10", "classifier:\n  epochs: 10\n  seed: 1") + UNTRACKED + inputs)
    out = tmp_path / "again"
    result, seconds = _run_subprocess(config, out)
    assert result.returncode == 0, result.stderr
    printed = result.stdout
    assert f"[auditai run] map-latents skipped: reusing inputs.vae {reused['vae']}, inputs.latents {reused['latents']}" in printed
    assert f"[auditai run] discover-directions skipped: reusing inputs.directions {reused['directions']}" in printed
    assert "[auditai run] map-latents ..." not in printed and "[auditai run] discover-directions ..." not in printed
    assert "[auditai run] train-classifier ..." in printed
    assert not (out / "latent").exists() and not (out / "directions").exists()
    assert (out / "classifier" / "head.safetensors").is_file() and (out / "report.html").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "pass" and len(summary["unit_tests"]) == 3
    certificate = json.loads((out / "certificates" / "slant_small.json").read_text())
    assert certificate["reused_artifacts"] == {name: artifact_sha256(path) for name, path in reused.items()}
    earlier = json.loads((small_run / "certificates" / "slant_small.json").read_text())
    assert earlier["reused_artifacts"] == {}
    assert certificate["hashes"]["decoder_sha256"] == earlier["hashes"]["decoder_sha256"]
    assert certificate["hashes"]["head_sha256"] != earlier["hashes"]["head_sha256"], "the new head (seed 1) is the one audited"
    print(f"re-audit with reused artifacts: {seconds:.1f} s")


def test_a_single_step_checks_its_inputs_before_training(small_run_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """discover-directions refuses more PCA components than latent dimensions before probing any attribute."""
    config = _config(tmp_path, SMALL.replace("pca_components: 2", "pca_components: 17") + UNTRACKED)
    out = tmp_path / "directions-only"
    (out / "latent").mkdir(parents=True)
    for name in ("vae.safetensors", "vae.json", "latents.npz"):
        (out / "latent" / name).write_bytes((small_run_copy / "latent" / name).read_bytes())
    assert main(["discover-directions", "--config", str(config), "--out", str(out)]) == 2
    assert "directions.pca_components: 17 exceeds the latent dimension 16" in capsys.readouterr().err
    assert not (out / "directions").exists()
