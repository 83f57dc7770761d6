"""Per-channel input normalisation as a boundable layer: y = (x - mean_c) / std_c."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class PerChannelNormalize(nn.Module):
    """Normalise images (B, C, H, W) channel by channel with fixed mean and std (std > 0).

    It is affine with a positive diagonal, so bounds pass through exactly: an interval
    [l, u] maps to [(l - m) / s, (u - m) / s].
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not mean:
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std must be > 0 for every channel, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("inverse_std", 1.0 / torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inverse_std
