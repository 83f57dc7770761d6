"""A model version's package holds a team's pixel classifier exactly as audited: same hashes, same predictions."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from auditai_ops.config import parse_config
from auditai_ops.gate.package import build_package, load_packaged_classifier, package_hashes, predict_classes, read_manifest
from auditai_ops.layout import resolve_inputs
from auditai_ops.models.generator import load_generator
from auditai_ops.verify.audited_model import build_audited_model


@pytest.mark.parametrize("form", ["torchscript", "onnx"])
def test_a_teams_pixel_classifier_is_packaged_as_audited(small_run: Path, tmp_path: Path, form: str) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 13 * 13, 10)).eval()
    models = tmp_path / "models"
    models.mkdir()
    file = models / ("cnn.pt" if form == "torchscript" else "cnn.onnx")
    with warnings.catch_warnings():  # torch deprecates TorchScript and the legacy ONNX exporter; teams still ship both
        warnings.simplefilter("ignore", DeprecationWarning)
        if form == "torchscript":
            torch.jit.save(torch.jit.script(net), str(file))
        else:
            torch.onnx.export(net, (torch.zeros(1, 1, 28, 28),), str(file), dynamo=False, dynamic_axes={"x": {0: "b"}}, input_names=["x"])
    config = parse_config(
        {
            "inputs": {"vae": str(small_run / "latent" / "vae.safetensors"), "latents": str(small_run / "latent" / "latents.npz")},
            "model": {"mode": "pixel", "classifier": "models/" + file.name, "normalization": {"mean": [0.1307], "std": [0.3081]}},
        }
    )
    inputs = resolve_inputs(small_run, config.inputs, tmp_path)
    audited = build_audited_model(config.model, load_generator(config.generator, inputs.vae, tmp_path), inputs, tmp_path)

    package = tmp_path / "package"
    build_package(config, small_run, tmp_path, package)
    manifest = read_manifest(package)
    assert manifest["model"]["classifier"] == f"classifier/{file.name}" and manifest["files"] == {"vae": "latent/vae.safetensors", "head": None}
    assert manifest["image_shape"] == [28, 28]
    assert package_hashes(package) == audited.hashes

    images = np.random.default_rng(0).random((8, 28, 28)).astype(np.float32)
    with torch.no_grad():
        expected = net((torch.from_numpy(images)[:, None] - 0.1307) / 0.3081).argmax(1).numpy()
    np.testing.assert_array_equal(predict_classes(load_packaged_classifier(package), images), expected)
