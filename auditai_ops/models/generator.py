"""Load the generator a config names: the trained VAE, or a team's own encoder and decoder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from auditai_ops.config import GeneratorConfig
from auditai_ops.errors import AuditInputError
from auditai_ops.latent.generator import Generator, flat_layers, vae_generator
from auditai_ops.latent.mapping import load_vae
from auditai_ops.models.loading import load_model_detailed
from auditai_ops.models.source import parse_model_reference


def load_generator(settings: GeneratorConfig, vae_path: Path, base_dir: Path | None = None) -> Generator:
    """The VAE at `vae_path`, unless the config brings its own encoder and decoder."""
    if settings.encoder is None or settings.decoder is None:
        vae, _ = load_vae(vae_path)
        return vae_generator(vae)
    height, width = settings.image_shape
    shape = (settings.image_channels, height, width)
    encoder = load_model_detailed(parse_model_reference(settings.encoder, base_dir=base_dir), input_shape=shape, trust_pickle=settings.trust_pickle)
    with torch.no_grad():
        latent = encoder.module(torch.zeros(2, *shape))
    if latent.dim() != 2:
        raise AuditInputError(f"generator.encoder '{settings.encoder}': expected latents of shape (B, D), got {tuple(latent.shape)}")
    decoder = load_model_detailed(parse_model_reference(settings.decoder, base_dir=base_dir), input_shape=(latent.shape[1],), trust_pickle=settings.trust_pickle)
    with torch.no_grad():
        images = decoder.module(torch.zeros(2, latent.shape[1]))
    if tuple(images.shape[1:]) != shape:
        raise AuditInputError(
            f"generator.decoder '{settings.decoder}': expected images of shape (B, {', '.join(map(str, shape))}) "
            f"(generator.image_channels, generator.image_shape), got {tuple(images.shape)}"
        )
    hashes = {"encoder_sha256": encoder.weights_sha256, "decoder_sha256": decoder.weights_sha256}
    return Generator(
        nn.Sequential(*flat_layers(encoder.module)).eval(),
        nn.Sequential(*flat_layers(decoder.module)).eval(),
        (height, width),
        int(latent.shape[1]),
        hashes,
        f"encoder {settings.encoder}, decoder {settings.decoder}",
        settings.image_channels,
    )
