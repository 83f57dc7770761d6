"""Colour images through map-latents and pixel mode: (N, H, W, 3) in, (B, 3, H, W) to the classifier, sound bounds on the colour decoder."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from auditai_ops.config import DataConfig, LatentConfig, ModelConfig
from auditai_ops.errors import AuditInputError
from auditai_ops.latent.generator import vae_generator
from auditai_ops.latent.mapping import load_vae, map_latents
from auditai_ops.latent.vae import VAE, VAEArchitecture
from auditai_ops.layout import StepInputs
from auditai_ops.modelio import read_record
from auditai_ops.verify.audited_model import build_audited_model
from auditai_ops.verify.linear_bounds import latent_line_input, output_bounds

SMALL_VAE = LatentConfig(latent_dim=4, channels=(4, 8), epochs=1, batch_size=16)


def _shapes(path: Path, count: int = 48, side: int = 32) -> Path:
    """Squares of random colours at random places, stored channels-last as (N, side, side, 3) uint8."""
    rng = np.random.default_rng(0)
    images = np.zeros((count, side, side, 3), np.uint8)
    for i in range(count):
        top, left = rng.integers(2, side - 10, 2)
        images[i, top : top + 8, left : left + 8] = rng.integers(60, 256, 3)
    np.savez(path, images=images, labels=np.arange(count) % 2)
    return path


def test_map_latents_on_colour_images(tmp_path: Path) -> None:
    dataset = _shapes(tmp_path / "shapes.npz")
    artifacts = map_latents(DataConfig(dataset=str(dataset)), SMALL_VAE, tmp_path / "out")
    assert artifacts.vae_path is not None
    assert read_record(artifacts.vae_path)["architecture"]["image_channels"] == 3
    vae, _ = load_vae(artifacts.vae_path)
    assert (vae.arch.image_channels, vae.arch.image_height, vae.arch.stages) == (3, 32, 2)
    reconstructions = Image.open(artifacts.reconstruction_png)
    assert reconstructions.mode == "RGB" and reconstructions.size == (3 * (4 * (32 + 2) + 2), 3 * (2 * (32 + 2) + 2))  # 4 test images, originals over reconstructions
    originals = np.asarray(reconstructions)[6:102:3, 6:102:3]  # the first original, every 3rd pixel of the x3 upscale
    with np.load(dataset) as stored:
        test_ids = np.load(artifacts.latents_path)["test_ids"]
        first = stored["images"][int(test_ids[0].split(":")[1])]
    np.testing.assert_array_equal(originals, first)
    with np.load(artifacts.latents_path) as latents:
        assert latents["train_z"].shape == (40, 4) and latents["test_z"].shape == (4, 4)


def test_a_generator_for_other_channels_is_refused(tmp_path: Path) -> None:
    dataset = _shapes(tmp_path / "shapes.npz")
    grey = vae_generator(VAE(VAEArchitecture(32, 32, 4, (4, 8), image_channels=1)).eval())
    with pytest.raises(AuditInputError, match=r"the generator takes images of 1 channel\(s\) of \[32, 32\], but the dataset's are 3 channel\(s\) of 32x32"):
        map_latents(DataConfig(dataset=str(dataset)), SMALL_VAE, tmp_path / "out", generator=grey)


def test_pixel_mode_feeds_colour_images_to_the_classifier_and_bounds_hold(tmp_path: Path) -> None:
    """A 64x64 RGB VAE (three stages) composed with a TorchScript CNN taking (B, 3, 64, 64): the network runs, and its bounds contain sampled outputs."""
    torch.manual_seed(0)
    generator = vae_generator(VAE(VAEArchitecture(64, 64, 4, (4, 8), image_channels=3)).eval())
    classifier = nn.Sequential(nn.Conv2d(3, 2, 4, stride=4), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 16 * 16, 3)).eval()
    scripted = tmp_path / "cnn.pt"
    torch.jit.script(classifier).save(str(scripted))
    settings = ModelConfig(mode="pixel", classifier=str(scripted), normalization={"mean": [0.5] * 3, "std": [0.25] * 3})
    audited = build_audited_model(settings, generator, StepInputs(*(tmp_path / name for name in ("vae", "latents", "directions", "head"))))
    assert (audited.latent_dim, audited.num_classes) == (4, 3)
    z = torch.randn(3, 4)
    with torch.no_grad():
        images = generator.decoder(z)
        assert images.shape == (3, 3, 64, 64)
        np.testing.assert_allclose(audited.network(z).numpy(), classifier((images - 0.5) / 0.25).numpy(), rtol=1e-5, atol=1e-5)
    direction = torch.randn(1, 4)
    low, high = output_bounds(list(audited.network), latent_line_input(z, direction), torch.full((3, 1), -0.5), torch.full((3, 1), 0.5))
    assert torch.isfinite(low).all() and torch.isfinite(high).all()
    ts = torch.linspace(-0.5, 0.5, 101)
    with torch.no_grad():
        outputs = torch.stack([audited.network(z + t * direction) for t in ts])  # [T, B, classes]
    assert (outputs >= low - 1e-5).all() and (outputs <= high + 1e-5).all()


def test_a_run_with_a_grayscale_vae_on_colour_data_stops_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The checks before any training compare the channels too: inputs.vae makes 1-channel images, the dataset has 3."""
    from auditai_ops.cli.main import main
    from auditai_ops.modelio import save_module

    _shapes(tmp_path / "shapes.npz")
    arch = VAEArchitecture(32, 32, 4, (4, 8), image_channels=1)
    save_module(VAE(arch), tmp_path / "grey" / "vae.safetensors", "vae", arch.as_dict())
    config = tmp_path / "audit.yaml"
    config.write_text(
        "data: {dataset: shapes.npz}\ninputs: {vae: grey/vae.safetensors}\ndirections: {attributes: [], pca_components: 1}\ntracking: {enabled: false}\n"
        "unit_tests: [{name: pca, direction: pca1, range: {low: -0.1, high: 0.1, units: latent}, threshold: 0.5}]\n"
    )
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert "inputs.vae: the generator makes images of 1 channel(s), but data.dataset 'shapes.npz' has 3" in error and len(error.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "latent").exists()


def test_an_own_colour_generator_loads_with_its_channel_count(tmp_path: Path) -> None:
    """generator.image_channels: 3 loads a TorchScript encoder and decoder of RGB images; declared as 1 channel, the same pair is refused."""
    from auditai_ops.config import GeneratorConfig
    from auditai_ops.models.generator import load_generator

    torch.manual_seed(0)
    vae = VAE(VAEArchitecture(32, 32, 4, (4, 8), image_channels=3)).eval()
    own = vae_generator(vae)
    torch.jit.script(own.encoder).save(str(tmp_path / "encoder.pt"))
    torch.jit.script(own.decoder).save(str(tmp_path / "decoder.pt"))
    settings = GeneratorConfig(encoder="encoder.pt", decoder="decoder.pt", image_shape=(32, 32), image_channels=3)
    loaded = load_generator(settings, tmp_path / "unused.safetensors", tmp_path)
    assert (loaded.input_shape, loaded.latent_dim) == ((3, 32, 32), 4)
    z = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(loaded.decoder(z), own.decoder(z))
    with pytest.raises(AuditInputError, match=r"encoder.pt': fails on inputs of shape \(2, 1, 32, 32\)"):
        load_generator(settings.model_copy(update={"image_channels": 1}), tmp_path / "unused.safetensors", tmp_path)
