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

from auditai_ops.layers import ViewAs


@dataclass(frozen=True)
class VAEArchitecture:
    """Everything needed to rebuild the modules before loading weights (no pickle)."""

    image_height: int = 28
    image_width: int = 28
    latent_dim: int = 16
    channels: tuple[int, int] = (32, 64)

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
