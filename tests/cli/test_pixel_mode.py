"""Pixel mode: a pixel-space CNN audited through the decoder, brought as TorchScript and as ONNX."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

from auditai_ops.cli.main import main
from auditai_ops.config import GeneratorConfig, InputsConfig, ModelConfig
from auditai_ops.layout import resolve_inputs
from auditai_ops.models.generator import load_generator
from auditai_ops.verify.resample import resample_certificates

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "mnist"


@pytest.fixture(scope="module")
def cnn_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The example CNN, trained briefly, saved as TorchScript and ONNX."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        import train_pixel_cnn
    finally:
        sys.path.remove(str(EXAMPLES))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model, accuracy = train_pixel_cnn.train(epochs=3, limit=4000, seed=0)
        assert accuracy > 0.8
        return train_pixel_cnn.save(model, tmp_path_factory.mktemp("cnn"))


def _audit(run: Path, classifier: Path | None, out: Path, tmp_path: Path) -> dict:
    config = tmp_path / f"{out.name}.yaml"
    model = f"model: {{mode: pixel, classifier: {classifier}}}\n" if classifier else "model: {mode: pixel}\n"
    config.write_text(
        "inputs:\n"
        f"  vae: {run / 'latent' / 'vae.safetensors'}\n"
        f"  latents: {run / 'latent' / 'latents.npz'}\n"
        f"  directions: {run / 'directions'}\n"
        f"  head: {run / 'classifier' / 'head.safetensors'}\n"
        + model
        + "verify: {samples: 12, batch_size: 12, max_pieces: 8}\n"
        "unit_tests:\n  - {name: slant_1deg, direction: slant, range: {low: -1, high: 1}, threshold: 0.0}\n"
    )
    assert main(["verify", "--config", str(config), "--out", str(out)]) == 0
    return json.loads((out / "certificates" / "slant_1deg.json").read_text())


def test_torchscript_and_onnx_certificates_agree(small_run: Path, cnn_files: tuple[Path, Path], tmp_path: Path) -> None:
    scripted, onnx_file = cnn_files
    from_script = _audit(small_run, scripted, tmp_path / "ts", tmp_path)
    from_onnx = _audit(small_run, onnx_file, tmp_path / "onnx", tmp_path)
    assert from_script["model"]["mode"] == from_onnx["model"]["mode"] == "pixel"
    assert [s["verdict"] for s in from_script["samples"]] == [s["verdict"] for s in from_onnx["samples"]]
    assert from_script["aggregates"]["certified_accuracy"] == from_onnx["aggregates"]["certified_accuracy"] > 0
    bounds = [(a["margin_lower_bound"], b["margin_lower_bound"]) for a, b in zip(from_script["samples"], from_onnx["samples"], strict=True)]
    assert all(a is None and b is None or abs(a - b) < 1e-3 for a, b in bounds)
    for out, classifier in ((tmp_path / "ts", scripted), (tmp_path / "onnx", onnx_file)):
        inputs = resolve_inputs(small_run, InputsConfig())
        generator = load_generator(GeneratorConfig(), inputs.vae)
        results = resample_certificates(out, ModelConfig(mode="pixel", classifier=str(classifier)), generator, inputs, points=200)
        assert [r.contradicted_samples for r in results] == [0]


def test_head_over_encoder_in_pixel_mode(small_run: Path, tmp_path: Path) -> None:
    certificate = _audit(small_run, None, tmp_path / "encoder", tmp_path)
    assert certificate["model"] == {"mode": "pixel", "classifier": "head o encoder"}
    assert {"head_sha256", "encoder_sha256", "decoder_sha256"} <= set(certificate["hashes"])
    assert certificate["aggregates"]["certified_accuracy"] > 0
    assert torch.isfinite(torch.tensor([s["margin_lower_bound"] or 0.0 for s in certificate["samples"]])).all()
