"""Decide, for every sample, whether a classifier keeps its target class along a latent segment.

For a sample with latent z and target class y, the set is {z + t D : lo <= t <= hi}. The
property holds when every margin m_j(t) = f_y(z + t D) - f_j(z + t D), j != y, stays > 0.

Per sample, in batches:
1. falsify: evaluate f on a grid of t (endpoints included) in one forward pass; a point with
   a negative margin is a counterexample, re-confirmed by a separate plain forward pass;
2. bound: for the rest, lower-bound every margin with each bound method in turn (IBP, then
   CROWN, ...), passing only the samples still undecided to the next, tighter method;
   min_j lower_j > min_margin proves the property on the whole segment.
Verdicts: verified (proved), falsified (a confirmed counterexample), unknown (neither).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from auditai_ops.errors import AuditInputError
from auditai_ops.verify.line_model import LatentLine
from auditai_ops.verify.lirpa_compat import BoundMethod, build_bounded_module, compute_margin_lower_bounds

VERIFIED, FALSIFIED, UNKNOWN = "verified", "falsified", "unknown"


@dataclass(frozen=True)
class SampleOutcomes:
    """Per-sample results; counterexample fields are NaN / -1 where there is none."""

    verdicts: np.ndarray
    margin_lower_bounds: np.ndarray
    decided_by: np.ndarray
    counterexample_t: np.ndarray
    counterexample_class: np.ndarray
    counterexample_margin: np.ndarray

    def fraction(self, verdict: str) -> float:
        return float(np.mean(self.verdicts == verdict)) if len(self.verdicts) else 0.0


def float32_box(t_low: np.ndarray, t_high: np.ndarray, outward: bool) -> tuple[np.ndarray, np.ndarray]:
    """The interval in float32, rounded outward (it contains [t_low, t_high]: for bounds) or inward (inside it: for test points)."""
    low, high = np.asarray(t_low, np.float64), np.asarray(t_high, np.float64)
    low32, high32 = low.astype(np.float32), high.astype(np.float32)
    toward_low, toward_high = (-np.inf, np.inf) if outward else (np.inf, -np.inf)
    low_wrong = low32 > low if outward else low32 < low
    high_wrong = high32 < high if outward else high32 > high
    low32 = np.where(low_wrong, np.nextafter(low32, np.float32(toward_low)), low32)
    high32 = np.where(high_wrong, np.nextafter(high32, np.float32(toward_high)), high32)
    return low32, high32


def resolve_device(device: str) -> torch.device:
    """The torch device for `verify.device`; 'cuda' without CUDA is bad input, not a silent fallback."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise AuditInputError(f"verify.device: '{device}' was requested but CUDA is not available on this machine")
    return torch.device(device)


def margin_specification(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C of shape (B, n-1, n) with rows e_y - e_j for every j != y, so C f = the margins."""
    others = torch.arange(num_classes - 1, device=targets.device)[None, :]
    others = others + (others >= targets[:, None]).long()
    eye = torch.eye(num_classes, device=targets.device)
    return eye[targets][:, None, :] - eye[others]


def margins(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """min_j (logit_y - logit_j) over j != y, for logits (..., n) and targets broadcastable to (...)."""
    target_logit = logits.gather(-1, targets[..., None])
    others = logits.scatter(-1, targets[..., None], float("-inf"))
    return (target_logit - others.max(dim=-1, keepdim=True).values)[..., 0]


class LineVerifier:
    """Verifies one classifier along one direction matrix; the bound graph is built once and reused."""

    def __init__(self, head: nn.Module, directions: np.ndarray, device: torch.device, batch_size: int) -> None:
        self.device = device
        self.batch_size = batch_size
        self.directions = torch.from_numpy(np.atleast_2d(directions).astype(np.float32)).to(device)
        self.line = LatentLine(head, self.directions).to(device).eval()
        self._bounded = None

    def _bounded_module(self):  # noqa: ANN202 - auto_LiRPA's BoundedModule, imported lazily
        if self._bounded is None:
            k, dim = self.directions.shape
            example = (torch.zeros(2, k, device=self.device), torch.zeros(2, dim, device=self.device))
            self._bounded = build_bounded_module(self.line, example, self.device)
        return self._bounded

    @torch.no_grad()
    def logits(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """A plain forward pass of the classifier at z + t D."""
        return self.line(t.to(self.device), z.to(self.device))

    def verify(
        self,
        latents: np.ndarray,
        targets: np.ndarray,
        t_low: np.ndarray,
        t_high: np.ndarray,
        methods: Sequence[BoundMethod],
        grid_points: int,
        min_margin: float,
    ) -> SampleOutcomes:
        """Verdicts for every sample (rows of `latents`) over the box t_low <= t <= t_high."""
        count, k = len(latents), self.directions.shape[0]
        verdicts = np.full(count, UNKNOWN, dtype=object)
        lower = np.full(count, np.nan)
        decided = np.full(count, "", dtype=object)
        cex_t = np.full((count, k), np.nan)
        cex_class = np.full(count, -1, dtype=np.int64)
        cex_margin = np.full(count, np.nan)
        grid = self._grid(t_low, t_high, grid_points)
        for start in range(0, count, self.batch_size):
            rows = slice(start, start + self.batch_size)
            z = torch.from_numpy(latents[rows].astype(np.float32)).to(self.device)
            y = torch.from_numpy(targets[rows].astype(np.int64)).to(self.device)
            found = self._falsify(z, y, grid)
            for offset, (t, predicted, margin) in found.items():
                index = start + offset
                verdicts[index], decided[index] = FALSIFIED, f"grid:{grid_points}"
                cex_t[index], cex_class[index], cex_margin[index] = t, predicted, margin
            open_rows = np.setdiff1d(np.arange(len(z)), np.fromiter(found, dtype=np.int64, count=len(found)))
            for method in methods:
                if len(open_rows) == 0:
                    break
                bound = self._lower_bound(z[open_rows], y[open_rows], t_low, t_high, method)
                index = start + open_rows
                lower[index] = np.fmax(lower[index], bound)
                proved = bound > min_margin
                verdicts[index[proved]], decided[index[proved]] = VERIFIED, method
                open_rows = open_rows[~proved]
        return SampleOutcomes(verdicts.astype(str), lower, decided.astype(str), cex_t, cex_class, cex_margin)

    def _grid(self, t_low: np.ndarray, t_high: np.ndarray, points: int) -> torch.Tensor:
        """Grid points (G, k) inside the box: a regular grid per axis (endpoints included), all combinations."""
        inner_low, inner_high = float32_box(t_low, t_high, outward=False)
        axes = [torch.linspace(float(lo), float(hi), points).clamp(float(lo), float(hi)) for lo, hi in zip(inner_low, inner_high, strict=True)]
        return torch.cartesian_prod(*axes).reshape(-1, len(axes)).to(self.device)

    @torch.no_grad()
    def _falsify(self, z: torch.Tensor, y: torch.Tensor, grid: torch.Tensor) -> dict[int, tuple[np.ndarray, int, float]]:
        """Counterexamples on the grid: {row: (t, predicted class, margin)}, each re-confirmed."""
        batch, points = len(z), len(grid)
        logits = self.line(grid.repeat(batch, 1), z.repeat_interleave(points, dim=0)).view(batch, points, -1)
        grid_margins = margins(logits, y[:, None].expand(batch, points))
        worst_margin, worst_point = grid_margins.min(dim=1)
        rows = torch.nonzero(worst_margin < 0).flatten()
        points_t = grid[worst_point[rows]]
        confirm = self.line(points_t, z[rows])
        confirmed = margins(confirm, y[rows])
        predicted = confirm.argmax(dim=1)
        found: dict[int, tuple[np.ndarray, int, float]] = {}
        for i, row in enumerate(rows.tolist()):
            if float(confirmed[i]) < 0:
                found[row] = (points_t[i].cpu().numpy().astype(np.float64), int(predicted[i]), float(confirmed[i]))
        return found

    def _lower_bound(self, z: torch.Tensor, y: torch.Tensor, t_low: np.ndarray, t_high: np.ndarray, method: BoundMethod) -> np.ndarray:
        """min_j of the lower bounds of the margins, for each sample of the batch."""
        batch = len(z)
        outer_low, outer_high = float32_box(t_low, t_high, outward=True)
        low = torch.from_numpy(outer_low).to(self.device).expand(batch, -1).contiguous()
        high = torch.from_numpy(outer_high).to(self.device).expand(batch, -1).contiguous()
        num_classes = int(self.logits(low[:1], z[:1]).shape[1])
        spec = margin_specification(y, num_classes)
        bounds = compute_margin_lower_bounds(self._bounded_module(), ((low + high) / 2, z), low, high, spec, method)
        return bounds.min(dim=1).values.detach().cpu().numpy().astype(np.float64)
