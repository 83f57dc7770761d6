"""The generator as the pipeline uses it: an encoder and a decoder, as flat chains of boundable layers.

It is either the VAE that `map-latents` trains, or a team's own pair of modules (see
auditai_ops.models.generator). The hashes identify the weights in certificates.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from auditai_ops.fileio import sha256_state_dict
from auditai_ops.latent.vae import VAE


@dataclass(frozen=True)
class Generator:
    """encoder: images (B, C, H, W) -> latents (B, D); decoder: latents -> images (B, C, H, W) in [0, 1].

    `image_shape` is (H, W) and `image_channels` is C (1 or 3); `input_shape` is (C, H, W).
    """

    encoder: nn.Sequential
    decoder: nn.Sequential
    image_shape: tuple[int, int]
    latent_dim: int
    hashes: dict[str, str]
    source: str
    image_channels: int = 1

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The shape of one image, (C, H, W): the encoder's input and the decoder's output."""
        return (self.image_channels, *self.image_shape)


def flat_layers(module: nn.Module) -> list[nn.Module]:
    """The leaves of nested nn.Sequential containers, in execution order."""
    if isinstance(module, nn.Sequential):
        return [leaf for child in module for leaf in flat_layers(child)]
    return [module]


def vae_generator(vae: VAE, source: str = "auditai VAE") -> Generator:
    """The trained VAE as a generator: the encoder's mean path mu(x) and the decoder."""
    encoder = nn.Sequential(*flat_layers(vae.encoder.trunk), vae.encoder.mu).eval()
    decoder = nn.Sequential(*flat_layers(vae.decoder.layers)).eval()
    hashes = {"encoder_sha256": sha256_state_dict(vae.encoder.state_dict()), "decoder_sha256": sha256_state_dict(vae.decoder.state_dict())}
    return Generator(encoder, decoder, (vae.arch.image_height, vae.arch.image_width), vae.arch.latent_dim, hashes, source, vae.arch.image_channels)
