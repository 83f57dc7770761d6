from pathlib import Path

import numpy as np
import pytest
import torch

from auditai_ops.config import LatentConfig
from auditai_ops.errors import AuditInputError
from auditai_ops.latent.generator import vae_generator
from auditai_ops.latent.mapping import decode, encode, load_vae, reconstruction_metrics, train_vae
from auditai_ops.latent.vae import VAE, VAEArchitecture, vae_loss
from auditai_ops.layers import check_supported
from auditai_ops.modelio import save_module
from auditai_ops.verify.lirpa_compat import build_bounded_module

ARCH = VAEArchitecture(image_height=12, image_width=12, latent_dim=4, channels=(4, 8))


def _bars(count: int) -> np.ndarray:
    """Vertical bars at random columns, (N, 1, 12, 12): a dataset a tiny VAE can learn in seconds."""
    images = np.zeros((count, 1, 12, 12), np.float32)
    columns = np.random.default_rng(0).integers(2, 10, size=count)
    images[np.arange(count), 0, 2:10, columns] = 1.0
    return images


def test_shapes_and_loss() -> None:
    vae = VAE(ARCH).eval()
    x = torch.rand(3, 1, 12, 12)
    reconstruction, mu, log_var = vae(x)
    assert reconstruction.shape == x.shape and mu.shape == log_var.shape == (3, 4)
    assert torch.equal(vae.encoder(x), mu)
    assert vae_loss(x, reconstruction, mu, log_var, beta=1.0).item() > 0


def test_training_reduces_reconstruction_error() -> None:
    images = _bars(256)
    untrained = reconstruction_metrics(vae_generator(VAE(ARCH).eval()), images)
    trained = train_vae(images, ARCH, LatentConfig(latent_dim=4, channels=(4, 8), epochs=15, batch_size=32, learning_rate=5e-3))
    after = reconstruction_metrics(vae_generator(trained), images)
    assert after["reconstruction_mse_per_pixel"] < 0.5 * untrained["reconstruction_mse_per_pixel"]


def test_save_and_load_without_pickle_reproduces_outputs(tmp_path: Path) -> None:
    vae = VAE(ARCH).eval()
    path = tmp_path / "vae.safetensors"
    digest = save_module(vae, path, "vae", ARCH.as_dict())
    loaded, record = load_vae(path)
    assert record["weights_sha256"] == digest and loaded.arch == ARCH
    z = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_array_equal(decode(loaded.decoder, z), decode(vae.decoder, z))
    images = _bars(5)
    np.testing.assert_array_equal(encode(loaded.encoder, images), encode(vae.encoder, images))


def test_loading_refuses_mismatched_or_corrupt_weights(tmp_path: Path) -> None:
    path = tmp_path / "vae.safetensors"
    save_module(VAE(ARCH), path, "vae", {**ARCH.as_dict(), "latent_dim": 5})
    with pytest.raises(AuditInputError, match="do not match the recorded architecture"):
        load_vae(path)
    path.write_bytes(b"not safetensors")
    with pytest.raises(AuditInputError, match="cannot be read as safetensors"):
        load_vae(path)
    with pytest.raises(AuditInputError, match="file not found"):
        load_vae(tmp_path / "absent.safetensors")


def test_decoder_is_boundable_at_any_batch_size() -> None:
    """The decoder uses only supported layers and view(-1, C, H, W), so one traced graph serves every batch."""
    decoder = VAE(ARCH).decoder.eval()
    check_supported(decoder)
    bounded = build_bounded_module(decoder, (torch.zeros(2, 4),))
    out = bounded(torch.zeros(7, 4))
    assert out.shape == (7, 1, 12, 12)


def test_parameter_count_is_exact_and_bounded() -> None:
    from auditai_ops.latent.vae import MAX_VAE_WEIGHTS

    for arch in (VAEArchitecture(), VAEArchitecture(8, 12, 3, (2, 5))):
        assert arch.parameter_count() == sum(p.numel() for p in VAE(arch).parameters())
    with pytest.raises(AuditInputError, match=r"has [0-9,]+ weights, more than the limit of 250,000,000; lower latent.latent_dim or latent.channels"):
        VAEArchitecture(1024, 1024, 4096, (1024, 1024))
    assert MAX_VAE_WEIGHTS == 250_000_000
    with pytest.raises(ValueError, match="positive integer sizes"):  # a tampered vae.json: load_module reports it with the file
        VAEArchitecture.from_dict({"image_height": 28, "image_width": 28, "latent_dim": 0, "channels": [32, 64]})


def test_a_training_batch_too_large_for_memory_is_refused_before_training(tmp_path: Path) -> None:
    from auditai_ops.config import DataConfig
    from auditai_ops.latent.mapping import map_latents

    dataset = tmp_path / "big.npz"
    np.savez(dataset, images=np.zeros((3, 1024, 1024), np.uint8), labels=np.array([0, 1, 0]))
    with pytest.raises(AuditInputError, match=r"latent.batch_size: 4096 images of 1024x1024 with channels \[32, 64\] keep [0-9,]+ activations per batch, more than the limit"):
        map_latents(DataConfig(dataset=str(dataset)), LatentConfig(batch_size=4096), tmp_path / "out")
    assert not (tmp_path / "out").exists()


MNIST_VAE_WEIGHTS = {
    "encoder.trunk.0.weight": (32, 1, 4, 4),
    "encoder.trunk.0.bias": (32,),
    "encoder.trunk.2.weight": (64, 32, 4, 4),
    "encoder.trunk.2.bias": (64,),
    "encoder.mu.weight": (16, 3136),
    "encoder.mu.bias": (16,),
    "encoder.log_var.weight": (16, 3136),
    "encoder.log_var.bias": (16,),
    "decoder.layers.0.weight": (3136, 16),
    "decoder.layers.0.bias": (3136,),
    "decoder.layers.3.weight": (64, 32, 4, 4),
    "decoder.layers.3.bias": (32,),
    "decoder.layers.5.weight": (32, 1, 4, 4),
    "decoder.layers.5.bias": (1,),
}
"""The weights of the 28x28 grayscale VAE that every earlier vae.safetensors holds."""


def test_the_mnist_vae_keeps_its_weight_names_and_shapes() -> None:
    arch = VAEArchitecture()
    assert (arch.stages, arch.image_channels, arch.feature_shape()) == (2, 1, (64, 7, 7))
    assert {name: tuple(value.shape) for name, value in VAE(arch).state_dict().items()} == MNIST_VAE_WEIGHTS
    assert VAEArchitecture.from_dict({"image_height": 28, "image_width": 28, "latent_dim": 16, "channels": [32, 64]}) == arch  # a record from before colour


@pytest.mark.parametrize(
    ("side", "channels", "stages", "feature_side"),
    [(28, 1, 2, 7), (28, 3, 2, 7), (32, 3, 2, 8), (48, 3, 2, 12), (56, 3, 3, 7), (64, 1, 3, 8), (64, 3, 3, 8), (128, 3, 4, 8)],
)
def test_depth_grows_with_the_image_size(side: int, channels: int, stages: int, feature_side: int) -> None:
    """One more stride-2 stage per doubling: (B, C, side, side) images round-trip, and the decoder stays a chain of boundable layers."""
    arch = VAEArchitecture(side, side, 4, (4, 8), channels)
    assert arch.stages == stages and arch.feature_shape() == (8, feature_side, feature_side)
    vae = VAE(arch).eval()
    assert arch.parameter_count() == sum(p.numel() for p in vae.parameters())
    x = torch.rand(2, channels, side, side)
    reconstruction, mu, _ = vae(x)
    assert reconstruction.shape == x.shape and mu.shape == (2, 4)
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) for m in vae.decoder.layers) == stages
    check_supported(vae.decoder)
    generator = vae_generator(vae)
    assert generator.input_shape == (channels, side, side)
    assert decode(generator.decoder, np.zeros((3, 4), np.float32)).shape == (3, channels, side, side)


def test_a_colour_vae_saves_loads_and_learns_colour(tmp_path: Path) -> None:
    """Blocks 4 px wide at random columns, red, green or blue: the trained VAE reconstructs each block in its own colour."""
    count = 512
    masks = np.zeros((count, 1, 12, 12), np.float32)
    for i, column in enumerate(np.random.default_rng(0).integers(0, 8, count)):
        masks[i, 0, :, column : column + 4] = 1.0
    colour = np.arange(count) % 3
    images = masks * np.eye(3, dtype=np.float32)[colour][:, :, None, None]
    arch = VAEArchitecture(12, 12, 4, (8, 16), image_channels=3)
    trained = train_vae(images, arch, LatentConfig(latent_dim=4, channels=(8, 16), epochs=40, batch_size=32, learning_rate=5e-3))
    generator = vae_generator(trained)
    reconstructed = decode(generator.decoder, encode(generator.encoder, images))
    assert reconstructed.shape == images.shape
    per_channel = (reconstructed * masks).sum(axis=(2, 3)) / masks.sum(axis=(2, 3))
    assert np.mean(per_channel.argmax(axis=1) == colour) > 0.95  # chance is 1/3: a VAE blind to colour would average the channels
    assert reconstruction_metrics(generator, images)["reconstruction_mse_per_pixel"] < 0.01
    path = tmp_path / "vae.safetensors"
    save_module(trained, path, "vae", arch.as_dict())
    loaded, _ = load_vae(path)
    assert loaded.arch == arch and loaded.arch.as_dict()["image_channels"] == 3
    np.testing.assert_array_equal(encode(loaded.encoder, images[:5]), encode(trained.encoder, images[:5]))


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ({"image_channels": 2}, "a VAE needs images of 1 or 3 channels, got image_channels 2"),
        ({"image_height": 30}, "a VAE needs image sides that are multiples of 4, got 30x28"),
        ({"image_channels": 0}, "a VAE needs positive integer sizes"),
    ],
)
def test_bad_architectures_are_refused(arch: dict, message: str) -> None:
    with pytest.raises(AuditInputError, match=message):
        VAEArchitecture.from_dict({"image_height": 28, "image_width": 28, "latent_dim": 16, "channels": [32, 64], **arch})
