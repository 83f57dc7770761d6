"""The `map-latents` step: train the VAE generator (or take a team's own), report reconstruction, encode the dataset.

Writes into `<out>/latent/`: `vae.safetensors` + `vae.json` (architecture, metrics) when
it trains the VAE, `reconstructions.png` (originals above reconstructions) and `latents.npz`
with, per split, the latents `<split>_z` (the VAE's posterior means), labels, sample ids
and measured attributes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from auditai_ops.config import DataConfig, DirectionsConfig, LatentConfig
from auditai_ops.data.attributes import measured_attribute_names
from auditai_ops.data.cache import split_attributes
from auditai_ops.data.datasets import SPLITS, Dataset, load_dataset
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import write_npz
from auditai_ops.latent.generator import Generator, vae_generator
from auditai_ops.latent.vae import VAE, VAEArchitecture, vae_loss
from auditai_ops.layout import LATENT_DIR, LATENTS_FILE, RECONSTRUCTIONS_PNG, VAE_FILE
from auditai_ops.modelio import load_module, save_module
from auditai_ops.progress import progress as progress_bar
from auditai_ops.report.images import save_grid_png

MAX_BATCH_ACTIVATIONS = 2**30
"""Most activations one VAE training batch may keep for the backward pass (4 GiB as float32, twice that with gradients)."""


@dataclass(frozen=True)
class LatentArtifacts:
    vae_path: Path | None
    latents_path: Path
    reconstruction_png: Path
    metrics: dict[str, float]


def _batches(count: int, batch_size: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    order = torch.randperm(count, generator=generator) if generator is not None else torch.arange(count)
    return list(order.split(batch_size))


def train_vae(images: np.ndarray, arch: VAEArchitecture, settings: LatentConfig) -> VAE:
    """Fit the VAE to images (N, C, H, W) with Adam on the negative ELBO."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    vae = VAE(arch)
    optimiser = torch.optim.Adam(vae.parameters(), lr=settings.learning_rate)
    data = torch.from_numpy(images)
    vae.train()
    steps = settings.epochs * len(_batches(len(data), settings.batch_size))
    with progress_bar(total=steps, desc="train VAE", unit="batch") as progress:
        for epoch in range(settings.epochs):
            for index in _batches(len(data), settings.batch_size, generator):
                batch = data[index]
                reconstruction, mu, log_var = vae(batch)
                loss = vae_loss(batch, reconstruction, mu, log_var, settings.beta)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                progress.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.1f}")
                progress.update()
    vae.eval()
    return vae


@torch.no_grad()
def encode(encoder: nn.Module, images: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """Posterior means mu(x) for images (N, C, H, W)."""
    data = torch.from_numpy(images)
    return torch.cat([encoder(data[i : i + batch_size]) for i in range(0, len(data), batch_size)]).numpy()


@torch.no_grad()
def decode(decoder: nn.Module, latents: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """Decoded images (N, C, H, W) for latents (N, D)."""
    data = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32))
    return torch.cat([decoder(data[i : i + batch_size]) for i in range(0, len(data), batch_size)]).numpy()


def reconstruction_metrics(generator: Generator, images: np.ndarray) -> dict[str, float]:
    """Mean squared error per pixel and mean binary cross-entropy per image of decode(encode(x))."""
    reconstructed = decode(generator.decoder, encode(generator.encoder, images))
    clipped = np.clip(reconstructed, 1e-6, 1 - 1e-6)
    bce = -(images * np.log(clipped) + (1 - images) * np.log(1 - clipped)).sum(axis=(1, 2, 3))
    return {"reconstruction_mse_per_pixel": float(np.mean((reconstructed - images) ** 2)), "reconstruction_bce_per_image": float(bce.mean())}


def load_vae(path: Path) -> tuple[VAE, dict[str, Any]]:
    """Rebuild the VAE from `vae.json` and load `vae.safetensors` (no pickle)."""
    module, record = load_module(path, "vae", lambda arch: VAE(VAEArchitecture.from_dict(arch)))
    assert isinstance(module, VAE)
    return module, record


def map_latents(
    data: DataConfig, settings: LatentConfig, out_dir: Path, base_dir: Path | None = None, generator: Generator | None = None, directions: DirectionsConfig | None = None
) -> LatentArtifacts:
    """Train the VAE on the training split and save it (unless a `generator` is given), then encode every split into `latents.npz`.

    The attributes stored with the latents are those `directions` (default: `DirectionsConfig()`) needs, measured.
    """
    started = time.perf_counter()
    dataset: Dataset = load_dataset(data.dataset, base_dir)
    train = dataset.train.head(data.train_limit)
    channels, height, width = train.images.shape[1:]
    folder = Path(out_dir) / LATENT_DIR
    test = dataset.test.head(data.test_limit)
    vae_path: Path | None = None
    if generator is None:
        arch = VAEArchitecture(height, width, settings.latent_dim, settings.channels, channels)
        activations = settings.batch_size * arch.activations_per_image()
        if activations > MAX_BATCH_ACTIVATIONS:
            raise AuditInputError(
                f"latent.batch_size: {settings.batch_size} images of {height}x{width}{'' if channels == 1 else f'x{channels}'} "
                f"with channels {list(settings.channels)} keep {activations:,} "
                f"activations per batch, more than the limit of {MAX_BATCH_ACTIVATIONS:,}; lower latent.batch_size or latent.channels"
            )
        if len(train) < settings.batch_size:
            raise AuditInputError(f"latent.batch_size: {settings.batch_size} is larger than the training split ({len(train)} images)")
        vae = train_vae(train.images, arch, settings)
        generator = vae_generator(vae)
        metrics = reconstruction_metrics(generator, test.images)
        metrics["train_seconds"] = time.perf_counter() - started
        vae_path = folder / VAE_FILE
        record = {"dataset": dataset.name, "num_classes": dataset.num_classes, "training": settings.model_dump(mode="json"), "metrics": metrics}
        save_module(vae, vae_path, "vae", arch.as_dict(), record)
    elif generator.input_shape != (channels, height, width):
        raise AuditInputError(
            f"generator.image_shape, generator.image_channels: the generator takes images of {generator.image_channels} channel(s) of "
            f"{list(generator.image_shape)}, but the dataset's are {channels} channel(s) of {height}x{width}"
        )
    else:
        metrics = reconstruction_metrics(generator, test.images)

    shown = test.images[:12]
    reconstructed = decode(generator.decoder, encode(generator.encoder, shown))
    png = folder / RECONSTRUCTIONS_PNG
    save_grid_png(np.stack([shown, reconstructed]), png)

    arrays: dict[str, np.ndarray] = {}
    directions = directions or DirectionsConfig()
    measured = measured_attribute_names(directions.attributes, directions.measure, channels, set(train.attributes or {}))
    for name in SPLITS:
        split = dataset.split(name).head(data.train_limit if name != "test" else data.test_limit)
        arrays[f"{name}_z"] = encode(generator.encoder, split.images)
        arrays[f"{name}_labels"] = split.labels
        arrays[f"{name}_ids"] = split.ids.astype(str)
        for attr, values in split_attributes(split, measured).items():
            arrays[f"{name}_attr_{attr}"] = values
    arrays["num_classes"] = np.array(dataset.num_classes)
    latents_path = folder / LATENTS_FILE
    write_npz(latents_path, arrays)
    return LatentArtifacts(vae_path, latents_path, png, metrics)
