"""Linear bounds in t and boxes: `AffineBounds`, concretisation, affine inputs, box splitting.

A linear function a . t + b over a box [t_low, t_high] ranges over mid -/+ spread with
mid = a . centre + b and spread = sum_j |a_j| radius_j (centre, radius of the box).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AffineBounds:
    """lower_coeff . t + lower_bias <= x(t) <= upper_coeff . t + upper_bias, for t in a box.

    Shapes: coefficients [B, k, *S], biases [B, *S], where B is the batch, k the number of
    perturbed dimensions and S the shape of one sample's tensor. The bounds hold for the box
    they were computed on (`t_low`, `t_high` of shape [B, k]).
    """

    lower_coeff: torch.Tensor
    lower_bias: torch.Tensor
    upper_coeff: torch.Tensor
    upper_bias: torch.Tensor

    def __post_init__(self) -> None:
        lc, lb, uc, ub = self.lower_coeff, self.lower_bias, self.upper_coeff, self.upper_bias
        if lc.dim() < 2 or lc.shape != uc.shape:
            raise ValueError(f"coefficients must have the same shape [B, k, *S], got {tuple(lc.shape)} and {tuple(uc.shape)}")
        expected = (lc.shape[0], *lc.shape[2:])
        if tuple(lb.shape) != expected or tuple(ub.shape) != expected:
            raise ValueError(f"biases must have shape {expected} (coefficients {tuple(lc.shape)}), got {tuple(lb.shape)} and {tuple(ub.shape)}")

    @classmethod
    def exact(cls, center: torch.Tensor, generators: torch.Tensor) -> AffineBounds:
        """x(t) = center + sum_j t_j generators[:, j]: lower and upper coincide."""
        return cls(generators, center, generators, center)

    @property
    def batch(self) -> int:
        return int(self.lower_coeff.shape[0])

    @property
    def k(self) -> int:
        return int(self.lower_coeff.shape[1])

    @property
    def shape(self) -> tuple[int, ...]:
        """S, the shape of one sample."""
        return tuple(self.lower_coeff.shape[2:])

    @property
    def is_exact(self) -> bool:
        """Lower and upper are the same function (an affine input, not yet relaxed)."""
        same_coeff = self.lower_coeff is self.upper_coeff or torch.equal(self.lower_coeff, self.upper_coeff)
        return same_coeff and (self.lower_bias is self.upper_bias or torch.equal(self.lower_bias, self.upper_bias))

    def evaluate(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two linear functions at points t [B, k] (one point per sample): ([B, *S], [B, *S])."""
        return _apply(self.lower_coeff, self.lower_bias, t), _apply(self.upper_coeff, self.upper_bias, t)

    def concretize(self, t_low: torch.Tensor, t_high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval [min of lower, max of upper] over the boxes t_low <= t <= t_high ([B, k] each)."""
        low, _ = concretize(self.lower_coeff, self.lower_bias, t_low, t_high)
        _, high = concretize(self.upper_coeff, self.upper_bias, t_low, t_high)
        return low, high


def _apply(coeff: torch.Tensor, bias: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.to(coeff.dtype).reshape(*t.shape, *([1] * (coeff.dim() - 2)))
    return bias + (coeff * t).sum(dim=1)


def concretize(coeff: torch.Tensor, bias: torch.Tensor, t_low: torch.Tensor, t_high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of coeff . t + bias over t_low <= t <= t_high; coeff [B, k, *S], boxes [B, k]."""
    _check_box(t_low, t_high, coeff.shape[0], coeff.shape[1])
    extra = [1] * (coeff.dim() - 2)
    center = ((t_low + t_high) / 2).to(coeff.dtype).reshape(*t_low.shape, *extra)
    radius = ((t_high - t_low) / 2).to(coeff.dtype).reshape(*t_low.shape, *extra)
    mid = bias + (coeff * center).sum(dim=1)
    spread = (coeff.abs() * radius).sum(dim=1)
    return mid - spread, mid + spread


def affine_input(center: torch.Tensor, generators: torch.Tensor) -> AffineBounds:
    """The exact affine input x(t) = center + sum_j t_j generators[:, j] (center [B, *S], generators [B, k, *S])."""
    if generators.dim() != center.dim() + 1 or generators.shape[0] != center.shape[0] or generators.shape[2:] != center.shape[1:]:
        raise ValueError(f"generators must have shape [B, k, *S] for center [B, *S] = {tuple(center.shape)}, got {tuple(generators.shape)}")
    return AffineBounds.exact(center, generators)


def latent_line_input(z: torch.Tensor, directions: torch.Tensor) -> AffineBounds:
    """z + t @ directions, the input of `LatentLine`'s head: z [B, D], directions [k, D] or [B, k, D]."""
    if z.dim() != 2:
        raise ValueError(f"z must have shape [B, D], got {tuple(z.shape)}")
    if directions.dim() == 2:
        directions = directions[None].expand(z.shape[0], -1, -1)
    if directions.dim() != 3 or directions.shape[0] != z.shape[0] or directions.shape[2] != z.shape[1]:
        raise ValueError(f"directions must have shape [k, D] or [B, k, D] with D = {z.shape[1]}, got {tuple(directions.shape)}")
    return AffineBounds.exact(z, directions.to(z.dtype))


def _check_box(t_low: torch.Tensor, t_high: torch.Tensor, batch: int, k: int) -> None:
    if tuple(t_low.shape) != (batch, k) or tuple(t_high.shape) != (batch, k):
        raise ValueError(f"t_low and t_high must have shape [B={batch}, k={k}], got {tuple(t_low.shape)} and {tuple(t_high.shape)}")
    if bool((t_low > t_high).any()) or not bool(torch.isfinite(t_low).all() and torch.isfinite(t_high).all()):
        raise ValueError("t_low must be <= t_high, both finite")


def split_box(t_low: torch.Tensor, t_high: torch.Tensor, pieces: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut every box [B, k] into equal sub-boxes: `pieces` per axis (an int for all axes, or one per axis).

    Returns (t_low, t_high) of shape [B * P, k], P = the product of the pieces, sample-major (the
    P sub-boxes of sample 0 first). Neighbouring sub-boxes share their faces exactly, and the
    outer faces are the box's own, so the sub-boxes cover the box.
    """
    k = t_low.shape[1]
    counts = [int(pieces)] * k if isinstance(pieces, int) else [int(p) for p in pieces]
    if len(counts) != k or min(counts) < 1:
        raise ValueError(f"pieces must be a positive int or k = {k} positive ints, got {pieces!r}")
    if all(c == 1 for c in counts):
        return t_low, t_high
    lows, highs = [], []
    for axis, count in enumerate(counts):
        fractions = torch.arange(count + 1, dtype=t_low.dtype, device=t_low.device) / count
        lo, hi = t_low[:, axis : axis + 1], t_high[:, axis : axis + 1]
        edges = lo + fractions * (hi - lo)  # [B, count + 1]
        edges[:, -1:] = hi  # exact outer face despite rounding
        lows.append(edges[:, :-1])
        highs.append(edges[:, 1:])
    grid_low = torch.stack(torch.meshgrid(*[torch.arange(c) for c in counts], indexing="ij"), dim=-1).reshape(-1, k)
    batch = t_low.shape[0]
    out_low = torch.stack([lows[a][:, grid_low[:, a]] for a in range(k)], dim=-1)  # [B, P, k]
    out_high = torch.stack([highs[a][:, grid_low[:, a]] for a in range(k)], dim=-1)
    return out_low.reshape(batch * len(grid_low), k), out_high.reshape(batch * len(grid_low), k)
