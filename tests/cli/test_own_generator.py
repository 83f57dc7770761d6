"""A team's own generator: encoder and decoder brought as files instead of training the VAE."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
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
