"""A small convolutional VAE whose decoder uses only layers the verifier can bound.

Encoder: two stride-2 4x4 convolutions with ReLU, then linear maps to the posterior mean
mu(x) and log-variance. Decoder: Linear -> ReLU -> view(-1, C, H/4, W/4) -> two stride-2
transposed convolutions -> Sigmoid. The audited model is head(mu(x)); the generator is the
decoder, so both halves must stay inside Linear/Conv/ConvTranspose/ReLU/Sigmoid and reshape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from auditai_ops.errors import AuditInputError
from auditai_ops.layers import ViewAs

MAX_VAE_WEIGHTS = 250_000_000
"""Most weights of a VAE (1 GB as float32, about 4 GB while Adam trains it); the MNIST default has 0.3 M."""


class VAEArchitectureError(AuditInputError, ValueError):
    """An architecture that cannot or should not be built: bad input from the config, or (a ValueError) from a model record."""


@dataclass(frozen=True)
class VAEArchitecture:
    """Everything needed to rebuild the modules before loading weights (no pickle).

    Checked when made: positive sizes, and at most MAX_VAE_WEIGHTS weights, since the linear
    layers hold channels[1] x (H/4) x (W/4) x latent_dim weights each.
    """

    image_height: int = 28
    image_width: int = 28
    latent_dim: int = 16
    channels: tuple[int, int] = (32, 64)

    def __post_init__(self) -> None:
        sizes = (self.image_height, self.image_width, self.latent_dim, *self.channels)
        if len(self.channels) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes):
            raise VAEArchitectureError(f"a VAE needs positive integer sizes, got {self.as_dict()}")
        weights = self.parameter_count()
        if weights > MAX_VAE_WEIGHTS:
            raise VAEArchitectureError(
                f"a VAE for {self.image_height}x{self.image_width} images with latent_dim {self.latent_dim} and channels {list(self.channels)} "
                f"has {weights:,} weights, more than the limit of {MAX_VAE_WEIGHTS:,}; lower latent.latent_dim or latent.channels"
            )

    def parameter_count(self) -> int:
        """The number of weights of `VAE(self)`, computed without building it."""
        c1, c2 = self.channels
        features = c2 * (self.image_height // 4) * (self.image_width // 4)
        convolutions = (16 * c1 + c1) + (16 * c1 * c2 + c2)
        encoder = convolutions + 2 * (features * self.latent_dim + self.latent_dim)
        decoder = (self.latent_dim * features + features) + (16 * c2 * c1 + c1) + (16 * c1 + 1)
        return encoder + decoder

    def activations_per_image(self) -> int:
        """Floats that one image's forward pass keeps for the backward pass (the two feature maps and the linear features), per half."""
        c1, c2 = self.channels
        return c1 * (self.image_height // 2) * (self.image_width // 2) + c2 * (self.image_height // 4) * (self.image_width // 4)

    def as_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["channels"] = list(self.channels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> VAEArchitecture:
        values = dict(data)
        values["channels"] = tuple(values["channels"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]


class Encoder(nn.Module):
    """x (B, 1, H, W) -> posterior mean mu (B, latent_dim); `distribution` also gives log-variance."""

    auditai_container = True

    def __init__(self, arch: VAEArchitecture) -> None:
        super().__init__()
        c1, c2 = arch.channels
        features = c2 * (arch.image_height // 4) * (arch.image_width // 4)
        self.trunk = nn.Sequential(
            nn.Conv2d(1, c1, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.mu = nn.Linear(features, arch.latent_dim)
        self.log_var = nn.Linear(features, arch.latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mu(self.trunk(x))

    def distribution(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.trunk(x)
        return self.mu(hidden), self.log_var(hidden)


class Decoder(nn.Module):
    """z (B, latent_dim) -> image (B, 1, H, W) in (0, 1)."""

    auditai_container = True

    def __init__(self, arch: VAEArchitecture) -> None:
        super().__init__()
        c1, c2 = arch.channels
        h, w = arch.image_height // 4, arch.image_width // 4
        self.layers = nn.Sequential(
            nn.Linear(arch.latent_dim, c2 * h * w),
            nn.ReLU(),
            ViewAs((c2, h, w)),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

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
