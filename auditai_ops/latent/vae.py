"""A small convolutional VAE whose decoder uses only layers the verifier can bound.

Encoder: `stages` stride-2 4x4 convolutions with ReLU, then linear maps to the posterior
mean mu(x) and log-variance. Decoder: Linear -> ReLU -> view(-1, C, H/2^s, W/2^s) -> `stages`
stride-2 transposed convolutions -> Sigmoid, giving images of `image_channels` channels. The
audited model is head(mu(x)); the generator is the decoder, so both halves must stay inside
Linear/Conv/ConvTranspose/ReLU/Sigmoid and reshape.

The depth grows with the image size: two stages (28x28 MNIST: 7x7 feature maps), and one
more for each further halving that keeps both sides whole and at least 7 pixels (56 and 64
px: three stages, 128 px: four). The first stage has channels[0] feature maps, every later
one channels[1]. With two stages and one image channel the modules, and so the names and
shapes of the weights, are those of the original 28x28 MNIST VAE.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from auditai_ops.errors import AuditInputError
from auditai_ops.layers import ViewAs

MAX_VAE_WEIGHTS = 250_000_000
"""Most weights of a VAE (1 GB as float32, about 4 GB while Adam trains it); the MNIST default has 0.3 M."""
MIN_STAGES = 2
SMALLEST_FEATURE_SIDE = 7
"""A further stride-2 stage is added only while the smaller side of its feature maps stays at least this (MNIST's 7x7)."""


class VAEArchitectureError(AuditInputError, ValueError):
    """An architecture that cannot or should not be built: bad input from the config, or (a ValueError) from a model record."""


@dataclass(frozen=True)
class VAEArchitecture:
    """Everything needed to rebuild the modules before loading weights (no pickle).

    Checked when made: positive sizes, image sides divisible by 2^stages, image_channels 1 or 3,
    and at most MAX_VAE_WEIGHTS weights, since the linear layers hold
    channels[1] x (H/2^s) x (W/2^s) x latent_dim weights each.
    """

    image_height: int = 28
    image_width: int = 28
    latent_dim: int = 16
    channels: tuple[int, int] = (32, 64)
    image_channels: int = 1

    def __post_init__(self) -> None:
        sizes = (self.image_height, self.image_width, self.latent_dim, self.image_channels, *self.channels)
        if len(self.channels) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes):
            raise VAEArchitectureError(f"a VAE needs positive integer sizes, got {self.as_dict()}")
        if self.image_channels not in (1, 3):
            raise VAEArchitectureError(f"a VAE needs images of 1 or 3 channels, got image_channels {self.image_channels}")
        step = 2**MIN_STAGES
        if self.image_height % step or self.image_width % step:
            raise VAEArchitectureError(f"a VAE needs image sides that are multiples of {step}, got {self.image_height}x{self.image_width}")
        weights = self.parameter_count()
        if weights > MAX_VAE_WEIGHTS:
            raise VAEArchitectureError(
                f"a VAE for {self.image_height}x{self.image_width} images with latent_dim {self.latent_dim} and channels {list(self.channels)} "
                f"has {weights:,} weights, more than the limit of {MAX_VAE_WEIGHTS:,}; lower latent.latent_dim or latent.channels"
            )

    @property
    def stages(self) -> int:
        """The number of stride-2 stages: MIN_STAGES, plus one per further halving that keeps both sides whole and >= SMALLEST_FEATURE_SIDE."""
        stages = MIN_STAGES
        while all(side % 2 ** (stages + 1) == 0 and side // 2 ** (stages + 1) >= SMALLEST_FEATURE_SIDE for side in (self.image_height, self.image_width)):
            stages += 1
        return stages

    def widths(self) -> list[int]:
        """Channels of the image and of each stage's feature maps: [image_channels, channels[0], channels[1], channels[1], ...]."""
        c1, c2 = self.channels
        return [self.image_channels, c1] + [c2] * (self.stages - 1)

    def feature_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the deepest feature maps, which the linear layers connect to the latents."""
        scale = 2**self.stages
        return self.widths()[-1], self.image_height // scale, self.image_width // scale

    def parameter_count(self) -> int:
        """The number of weights of `VAE(self)`, computed without building it."""
        widths = self.widths()
        channels, height, width = self.feature_shape()
        features = channels * height * width
        encoder_convolutions = sum(16 * a * b + b for a, b in zip(widths, widths[1:], strict=False))
        decoder_convolutions = sum(16 * b * a + a for a, b in zip(widths, widths[1:], strict=False))
        encoder = encoder_convolutions + 2 * (features * self.latent_dim + self.latent_dim)
        decoder = (self.latent_dim * features + features) + decoder_convolutions
        return encoder + decoder

    def activations_per_image(self) -> int:
        """Floats that one image's forward pass keeps for the backward pass (every stage's feature maps), per half."""
        widths = self.widths()
        return sum(widths[k] * (self.image_height // 2**k) * (self.image_width // 2**k) for k in range(1, len(widths)))

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> VAEArchitecture:
        """The architecture of a `vae.json` record; records written before colour images lack `image_channels` (1)."""
        values = dict(data)
        values["channels"] = tuple(values["channels"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]


class Encoder(nn.Module):
    """x (B, image_channels, H, W) -> posterior mean mu (B, latent_dim); `distribution` also gives log-variance."""

    auditai_container = True

    def __init__(self, arch: VAEArchitecture) -> None:
        super().__init__()
        widths = arch.widths()
        features = arch.feature_shape()
        layers: list[nn.Module] = []
        for a, b in zip(widths, widths[1:], strict=False):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.ReLU()]
        self.trunk = nn.Sequential(*layers, nn.Flatten())
        self.mu = nn.Linear(features[0] * features[1] * features[2], arch.latent_dim)
        self.log_var = nn.Linear(features[0] * features[1] * features[2], arch.latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mu(self.trunk(x))

    def distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.trunk(x)
        return self.mu(hidden), self.log_var(hidden)


class Decoder(nn.Module):
    """z (B, latent_dim) -> image (B, image_channels, H, W) in (0, 1)."""

    auditai_container = True

    def __init__(self, arch: VAEArchitecture) -> None:
        super().__init__()
        widths = arch.widths()
        channels, height, width = arch.feature_shape()
        layers: list[nn.Module] = [nn.Linear(arch.latent_dim, channels * height * width), nn.ReLU(), ViewAs((channels, height, width))]
        for index in range(len(widths) - 1, 0, -1):
            layers += [nn.ConvTranspose2d(widths[index], widths[index - 1], 4, stride=2, padding=1), nn.ReLU() if index > 1 else nn.Sigmoid()]
        self.layers = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.layers(z)


class VAE(nn.Module):
    """Encoder and decoder; `forward` returns reconstruction, mu and log-variance."""

    def __init__(self, arch: VAEArchitecture) -> None:
        super().__init__()
        self.arch = arch
        self.encoder = Encoder(arch)
        self.decoder = Decoder(arch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, log_var = self.encoder.distribution(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var) if self.training else mu
        return self.decoder(z), mu, log_var


def vae_loss(x: torch.Tensor, reconstruction: torch.Tensor, mu: torch.Tensor, log_var: torch.Tensor, beta: float) -> torch.Tensor:
    """Negative ELBO per image: Bernoulli reconstruction log-loss plus beta * KL(q(z|x) || N(0, I))."""
    bce = nn.functional.binary_cross_entropy(reconstruction, x, reduction="sum")
    kl = -0.5 * torch.sum(1 + log_var - mu.pow(2) - log_var.exp())
    return (bce + beta * kl) / x.shape[0]
