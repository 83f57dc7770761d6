"""The model restricted to a semantic line: g(t, z) = head(z + t D).

t (B, k) is the only perturbed input; z (B, latent_dim) is fed unperturbed, and the
direction matrix D (k, latent_dim) is a fixed buffer, so one traced bound graph serves every
sample of a unit test and every batch size.
"""

from __future__ import annotations

import torch
from torch import nn


class LatentLine(nn.Module):
    """head(z + t @ D) for a fixed direction matrix D."""

    auditai_container = True

    def __init__(self, head: nn.Module, directions: torch.Tensor) -> None:
        super().__init__()
        self.head = head
        self.register_buffer("directions", directions.detach().clone().float())

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.head(z + t @ self.directions)
