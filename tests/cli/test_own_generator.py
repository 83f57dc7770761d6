"""A team's own generator: encoder and decoder brought as files instead of training the VAE."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from auditai_ops.cli.main import main
from auditai_ops.latent.generator import vae_generator
from auditai_ops.latent.mapping import load_vae


def test_pipeline_runs_on_a_brought_generator(small_run: Path, tmp_path: Path) -> None:
    generator = vae_generator(load_vae(small_run / "latent" / "vae.safetensors")[0])
    encoder_file, decoder_file = tmp_path / "encoder.onnx", tmp_path / "decoder.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(generator.encoder, (torch.zeros(1, 1, 28, 28),), str(encoder_file), dynamo=False, dynamic_axes={"x": {0: "b"}}, input_names=["x"])
        torch.jit.save(torch.jit.script(generator.decoder), str(decoder_file))
    config = tmp_path / "own.yaml"
    small = (Path(__file__).parent / "small.yaml").read_text()
    config.write_text(small.replace("latent:\n  epochs: 4\n", f"generator:\n  encoder: {encoder_file.name}\n  decoder: {decoder_file.name}\n"))
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out)]) == 0
    assert not (out / "latent" / "vae.safetensors").exists(), "no VAE is trained when the team brings its generator"
    with np.load(out / "latent" / "latents.npz") as own, np.load(small_run / "latent" / "latents.npz") as trained:
        np.testing.assert_allclose(own["test_z"], trained["test_z"], atol=1e-4)
    certificate = json.loads((out / "certificates" / "slant_small.json").read_text())
    assert certificate["aggregates"]["certified_accuracy"] > 0.5
    assert main(["certificate", "check", str(out / "certificates" / "slant_small.json"), "--config", str(config), "--out", str(out)]) == 0


def _dcgan_decoder(latent_dim: int) -> torch.nn.Sequential:
    """A DCGAN-style generator: Linear, unflatten, nearest Upsample + Conv + BatchNorm + LeakyReLU twice, Sigmoid (28 x 28 x 1)."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(latent_dim, 32 * 7 * 7),
        nn.LeakyReLU(0.2),
        nn.Unflatten(1, (32, 7, 7)),
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(32, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.LeakyReLU(0.2),
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(16, 1, 3, padding=1),
        nn.Sigmoid(),
    )


@pytest.mark.slow
def test_a_dcgan_style_generator_with_its_own_encoder_is_audited_in_pixel_mode(small_run: Path, tmp_path: Path) -> None:
    """A GAN-style decoder (Upsample, BatchNorm, LeakyReLU) beside a separately trained encoder goes through the same engine in pixel mode."""
    vae_generator_ = vae_generator(load_vae(small_run / "latent" / "vae.safetensors")[0])
    torch.manual_seed(0)
    decoder = _dcgan_decoder(vae_generator_.latent_dim)
    with np.load(small_run / "latent" / "latents.npz") as latents:
        z = torch.from_numpy(latents["train_z"][:2000].astype(np.float32))
    with torch.no_grad():
        target = vae_generator_.decoder(z)
    optimiser = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    for _ in range(150):  # distil the VAE's decoder, so that directions and the head mean something
        for rows in torch.randperm(len(z)).split(250):
            loss = torch.nn.functional.mse_loss(decoder(z[rows]), target[rows])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    decoder.eval()
    encoder_file, decoder_file = tmp_path / "encoder.onnx", tmp_path / "dcgan.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(vae_generator_.encoder, (torch.zeros(1, 1, 28, 28),), str(encoder_file), dynamo=False, dynamic_axes={"x": {0: "b"}}, input_names=["x"])
        torch.onnx.export(decoder, (torch.zeros(1, vae_generator_.latent_dim),), str(decoder_file), dynamo=False, dynamic_axes={"z": {0: "b"}}, input_names=["z"])
    config = tmp_path / "gan.yaml"
    small = (Path(__file__).parent / "small.yaml").read_text()
    config.write_text(
        small.replace("latent:\n  epochs: 4\n", f"generator:\n  encoder: {encoder_file.name}\n  decoder: {decoder_file.name}\nmodel:\n  mode: pixel\n").replace(
            "  samples: 200\n", "  samples: 60\n"
        )
        + "tracking:\n  enabled: false\n"
    )
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out)]) in (0, 1)
    certificate = json.loads((out / "certificates" / "slant_small.json").read_text())
    assert certificate["aggregates"]["unknown_fraction"] < 1.0 and certificate["aggregates"]["certified_accuracy"] > 0.0
    assert main(["certificate", "check", str(out / "certificates" / "slant_small.json"), "--config", str(config), "--out", str(out)]) == 0
