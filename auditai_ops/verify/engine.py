"""Decide, for every sample, whether a classifier keeps its target class over a latent box.

For a sample with latent z and target class y, the set is {z + t D : t_low <= t <= t_high},
with D the (k, latent_dim) matrix of k directions. The property holds when every margin
m_j(t) = f_y(z + t D) - f_j(z + t D), j != y, stays > 0 on the box.

Per sample, in batches:
1. falsify: evaluate f on a grid of t (every corner included) and refine the worst points by
   signed-gradient descent on the margin inside the box; a point with a negative margin is a
   counterexample, re-confirmed by a separate plain forward pass;
2. branch and bound: lower-bound every margin on each open piece of the box with each bound
   method in turn (cheap first: bounds linear in t, see auditai_ops.verify.linear_bounds, or
   auto_LiRPA's IBP / CROWN / CROWN-IBP / alpha-CROWN); pieces whose min_j lower bound exceeds `min_margin` are
   proved. Unproved pieces are searched for counterexamples, then split in two along their
   widest axis (relative to the box), all pieces of all samples in one batch, until every
   piece is proved, a counterexample is found, or the budget runs out (`Budget`: pieces per
   sample, splits of all samples together, and, only when asked for, wall-clock seconds).
Verdicts: verified (every piece proved), falsified (a confirmed counterexample), unknown.
The reported margin lower bound of a sample is the minimum over its final pieces, a sound
lower bound of min_t min_j m_j(t) on the whole box.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from auditai_ops.errors import AuditInputError
from auditai_ops.verify.line_model import LatentLine
from auditai_ops.verify.linear_bounds import AffineBounds, latent_line_input
from auditai_ops.verify.linear_bounds import margin_lower_bounds as linear_margin_lower_bounds
from auditai_ops.verify.lirpa_compat import build_bounded_module, compute_margin_lower_bounds
from auditai_ops.verify.memory import MIB, PointCost, point_cost

VERIFIED, FALSIFIED, UNKNOWN = "verified", "falsified", "unknown"
LINEAR_METHODS = ("forward", "forward+backward")
"""Bounds linear in t (auditai_ops.verify.linear_bounds): forward mode, and forward mode plus CROWN's back-substitution."""


def linear_margin_bounds(model: nn.Module, line_input: AffineBounds, spec: torch.Tensor, t_low: torch.Tensor, t_high: torch.Tensor, method: str, min_margin: float) -> torch.Tensor:
    """Margin lower bounds [B, S] by a linear method, as the verifier computes them.

    forward+backward back-substitutes only the margins that decide whether min_j > min_margin
    (`refine_below`): it proves exactly the boxes that back-substituting every margin proves.
    """
    if method not in LINEAR_METHODS:
        raise ValueError(f"not a linear bound method: {method!r}")
    backward = method == "forward+backward"
    return linear_margin_lower_bounds(model, line_input, spec, t_low, t_high, back_substitute=backward, refine_below=min_margin if backward else None)


@dataclass(frozen=True)
class Falsifier:
    """Counterexample search: `grid_points` per axis on the whole box, then `steps` signed-gradient steps from `restarts` starts."""

    grid_points: int = 65
    steps: int = 20
    restarts: int = 4
    seed: int = 0


STOPPED_BY_PIECES, STOPPED_BY_SPLITS, STOPPED_BY_TIME = "max_pieces", "max_splits_per_test", "seconds_per_test"
"""Which budget stopped a sample's branch and bound (`SampleOutcomes.stopped_by`); '' where none did."""


@dataclass(frozen=True)
class Budget:
    """When branch and bound stops: a sample at `max_pieces` pieces; any sample whose splits would take
    the samples' total past `splits` (None: no total); every sample after `seconds` of wall-clock time.

    The first two are deterministic. `seconds` (default: none) makes the result depend on the
    machine's speed; samples it stops are marked, and re-checking a proof never sets it.
    """

    max_pieces: int = 64
    seconds: float = math.inf
    splits: int | None = None


def stop_for_splits(open_count: np.ndarray, candidates: np.ndarray, splits_left: int) -> np.ndarray:
    """Which of the `candidates` (sample indices, each about to split `open_count[s]` pieces) must stop so the rest fit in `splits_left`.

    The samples with the most open pieces stop first (ties: the later sample), so the budget
    goes to as many samples as it can; the choice depends only on the pieces, never on timing.
    """
    needed = open_count[candidates]
    if needed.sum() <= splits_left:
        return np.zeros(len(candidates), dtype=bool)
    order = np.lexsort((-candidates, -needed))  # most pieces first, later samples first among equals
    remaining = np.cumsum(needed[order][::-1])[::-1]  # splits of this sample and of every one after it in `order`
    first_kept = int(np.argmax(remaining <= splits_left)) if (remaining <= splits_left).any() else len(order)
    stop = np.zeros(len(candidates), dtype=bool)
    stop[order[:first_kept]] = True
    return stop


@dataclass(frozen=True)
class SampleOutcomes:
    """Per-sample results; counterexample fields are NaN / -1 where there is none."""

    verdicts: np.ndarray
    margin_lower_bounds: np.ndarray
    decided_by: np.ndarray
    pieces: np.ndarray
    counterexample_t: np.ndarray
    counterexample_class: np.ndarray
    counterexample_margin: np.ndarray
    stopped_by: np.ndarray
    """Which budget stopped the sample's branch and bound (STOPPED_BY_*), '' where none did."""

    def fraction(self, verdict: str) -> float:
        return float(np.mean(self.verdicts == verdict)) if len(self.verdicts) else 0.0


def float32_box(t_low: np.ndarray, t_high: np.ndarray, outward: bool) -> tuple[np.ndarray, np.ndarray]:
    """The box in float32, rounded outward (it contains [t_low, t_high]: for bounds) or inward (inside it: for test points)."""
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


@dataclass
class _Pieces:
    """Open pieces of the boxes: owning sample, lower and upper corners (float64, shape (P, k))."""

    owner: np.ndarray
    low: np.ndarray
    high: np.ndarray

    def keep(self, mask: np.ndarray) -> _Pieces:
        return _Pieces(self.owner[mask], self.low[mask], self.high[mask])

    def split(self, scale: np.ndarray) -> _Pieces:
        """Halve every piece along its widest axis, measured relative to `scale` (the original box widths)."""
        axis = np.argmax((self.high - self.low) / scale, axis=1)
        rows = np.arange(len(self.owner))
        middle = (self.low[rows, axis] + self.high[rows, axis]) / 2
        left_high, right_low = self.high.copy(), self.low.copy()
        left_high[rows, axis] = middle
        right_low[rows, axis] = middle
        return _Pieces(np.concatenate([self.owner, self.owner]), np.concatenate([self.low, right_low]), np.concatenate([left_high, self.high]))


class LineVerifier:
    """Verifies one classifier along one direction matrix; the bound graph is built once and reused.

    `model` maps a latent point (B, latent_dim) to logits: the head in latent mode, or
    classifier o decoder in pixel mode.
    """

    def __init__(self, model: nn.Module, directions: np.ndarray, device: torch.device, batch_size: int, chunk_bytes: int = 256 * MIB) -> None:
        """chunk_bytes: the estimated activation memory of one chunk of points or auto_LiRPA boxes (`auditai_ops.verify.memory`)."""
        self.device = device
        self.batch_size = batch_size
        self.chunk_bytes = chunk_bytes
        self.directions = torch.from_numpy(np.atleast_2d(directions).astype(np.float32)).to(device)
        self.line = LatentLine(copy.deepcopy(model), self.directions).to(device).eval().requires_grad_(False)
        with torch.no_grad():
            self.num_classes = int(self.line(torch.zeros(1, self.directions.shape[0], device=device), torch.zeros(1, self.directions.shape[1], device=device)).shape[1])
        self._bounded = None
        self._cost: PointCost | None = None

    @property
    def point_cost(self) -> PointCost:
        """The network's activation memory per point, measured once on one point."""
        if self._cost is None:
            k, dim = self.directions.shape
            t, z = torch.zeros(1, k, device=self.device), torch.zeros(1, dim, device=self.device)
            self._cost = point_cost(lambda: self.line(t, z), self.line)
        return self._cost

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

    def on_device(self, latents: np.ndarray, targets: np.ndarray, t_low: np.ndarray, t_high: np.ndarray) -> tuple[np.ndarray, np.ndarray, torch.Tensor, torch.Tensor]:
        """The box as float64 arrays of shape (k,), the latents (float32) and targets (int64) as tensors on the verifier's device."""
        k = self.directions.shape[0]
        low, high = np.asarray(t_low, np.float64).reshape(k), np.asarray(t_high, np.float64).reshape(k)
        return low, high, torch.from_numpy(latents.astype(np.float32)).to(self.device), torch.from_numpy(targets.astype(np.int64)).to(self.device)

    def grid_counterexamples(self, latents: np.ndarray, targets: np.ndarray, t_low: np.ndarray, t_high: np.ndarray, grid_points: int) -> np.ndarray:
        """Which samples misclassify at a point of the falsifier's deterministic grid over the whole box (every corner included).

        `verify` searches this grid before anything else, so a sample it left 'unknown' has no
        such point: an auditor uses it to refute a counterexample relabelled 'unknown'.
        """
        t_low, t_high, z_all, y_all = self.on_device(latents, targets, t_low, t_high)
        count = len(latents)
        whole = _Pieces(np.arange(count), np.tile(t_low, (count, 1)), np.tile(t_high, (count, 1)))
        found = self._falsify(z_all, y_all, whole, grid_points, Falsifier(grid_points, steps=0, restarts=1))
        return np.isin(np.arange(count), list(found))

    def verify(
        self,
        latents: np.ndarray,
        targets: np.ndarray,
        t_low: np.ndarray,
        t_high: np.ndarray,
        methods: Sequence[str],
        falsifier: Falsifier,
        budget: Budget,
        min_margin: float,
        refine_method: str | None = None,
    ) -> SampleOutcomes:
        """Verdicts for every sample (rows of `latents`) over the box t_low <= t <= t_high (shape (k,))."""
        started = time.perf_counter()
        count, k = len(latents), self.directions.shape[0]
        t_low, t_high, z_all, y_all = self.on_device(latents, targets, t_low, t_high)
        verdicts = np.full(count, UNKNOWN, dtype=object)
        decided = np.full(count, "", dtype=object)
        lower = np.full(count, np.inf)
        pieces_used = np.ones(count, dtype=np.int64)
        cex_t = np.full((count, k), np.nan)
        cex_class = np.full(count, -1, dtype=np.int64)
        cex_margin = np.full(count, np.nan)
        stopped_by = np.full(count, "", dtype=object)
        splits_left = budget.splits if budget.splits is not None else math.inf

        def record(found: dict[int, tuple[np.ndarray, int, float]], how: str) -> None:
            for sample, (t, predicted, margin) in found.items():
                verdicts[sample], decided[sample] = FALSIFIED, how
                cex_t[sample], cex_class[sample], cex_margin[sample] = t, predicted, margin

        ranks = [*methods, *([refine_method] if refine_method else [])]
        proof_rank = np.full(count, -1, dtype=np.int64)
        given_up = np.zeros(count, dtype=bool)

        def close(pieces: _Pieces, bounds: np.ndarray, proved_by: np.ndarray | None) -> None:
            """Make pieces leaves: their bounds enter the samples' margin lower bounds (and, when proved, the method ranks)."""
            np.minimum.at(lower, pieces.owner, bounds)
            if proved_by is not None:
                np.maximum.at(proof_rank, pieces.owner, proved_by)

        whole = _Pieces(np.arange(count), np.tile(t_low, (count, 1)), np.tile(t_high, (count, 1)))
        record(self._falsify(z_all, y_all, whole, falsifier.grid_points, falsifier), "search")
        open_pieces = whole.keep(verdicts[whole.owner] != FALSIFIED)
        scale = np.where(t_high > t_low, t_high - t_low, 1.0)
        within_pieces = replace(falsifier, steps=min(falsifier.steps, 5), restarts=1)  # the whole box was searched thoroughly already
        while len(open_pieces.owner):
            piece_lower = np.full(len(open_pieces.owner), -np.inf)
            piece_rank = np.full(len(open_pieces.owner), -1)
            for rank, method in enumerate(methods):
                unproved = piece_lower <= min_margin
                if not unproved.any():
                    break
                piece_lower[unproved] = np.fmax(piece_lower[unproved], self._lower_bound(z_all, y_all, open_pieces.keep(unproved), method, min_margin))
                piece_rank[unproved & (piece_lower > min_margin)] = rank
            proved = piece_lower > min_margin
            close(open_pieces.keep(proved), piece_lower[proved], piece_rank[proved])
            open_pieces, piece_lower = open_pieces.keep(~proved), piece_lower[~proved]
            if not len(open_pieces.owner):
                break
            record(self._falsify(z_all, y_all, open_pieces, 3, within_pieces), "search")
            alive = verdicts[open_pieces.owner] != FALSIFIED
            open_pieces, piece_lower = open_pieces.keep(alive), piece_lower[alive]
            open_count = np.bincount(open_pieces.owner, minlength=count)
            owners = np.unique(open_pieces.owner)
            reason = np.full(count, "", dtype=object)
            if math.isfinite(budget.seconds) and time.perf_counter() - started > budget.seconds:
                reason[owners] = STOPPED_BY_TIME
            else:
                reason[owners[pieces_used[owners] + open_count[owners] > budget.max_pieces]] = STOPPED_BY_PIECES
                going_on = owners[reason[owners] == ""]
                reason[going_on[stop_for_splits(open_count, going_on, splits_left)]] = STOPPED_BY_SPLITS
            exhausted = reason[open_pieces.owner] != ""
            stopped_by[reason != ""] = reason[reason != ""]
            if exhausted.any() and refine_method is not None:
                refined = self._lower_bound(z_all, y_all, open_pieces.keep(exhausted), refine_method, min_margin)
                piece_lower[exhausted] = np.fmax(piece_lower[exhausted], refined)
                now_proved = exhausted & (piece_lower > min_margin)
                close(open_pieces.keep(now_proved), piece_lower[now_proved], np.full(int(now_proved.sum()), len(methods)))
                open_pieces, piece_lower, exhausted = open_pieces.keep(~now_proved), piece_lower[~now_proved], exhausted[~now_proved]
            stopped = np.isin(open_pieces.owner, open_pieces.owner[exhausted])
            given_up[open_pieces.owner[stopped]] = True
            close(open_pieces.keep(stopped), piece_lower[stopped], None)
            open_pieces = open_pieces.keep(~stopped)
            np.add.at(pieces_used, open_pieces.owner, 1)
            splits_left -= len(open_pieces.owner)
            open_pieces = open_pieces.split(scale)

        falsified = verdicts == FALSIFIED
        verified = ~falsified & ~given_up
        verdicts[verified] = VERIFIED
        decided[verified] = [ranks[r] for r in proof_rank[verified]]
        lower[falsified] = np.nan
        return SampleOutcomes(verdicts.astype(str), lower, decided.astype(str), pieces_used, cex_t, cex_class, cex_margin, stopped_by.astype(str))

    def _rows(self, z_all: torch.Tensor, y_all: torch.Tensor, pieces: _Pieces, outward: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latents, targets and float32 corners (outward for bounds, inward for test points) of some pieces."""
        low32, high32 = float32_box(pieces.low, pieces.high, outward=outward)
        owner = torch.from_numpy(pieces.owner).to(self.device)
        return z_all[owner], y_all[owner], torch.from_numpy(low32).to(self.device), torch.from_numpy(high32).to(self.device)

    def _falsify(self, z_all: torch.Tensor, y_all: torch.Tensor, pieces: _Pieces, grid_points: int, falsifier: Falsifier) -> dict[int, tuple[np.ndarray, int, float]]:
        """Counterexamples inside the pieces: {sample: (t, predicted class, margin)}, each re-confirmed.

        Pieces are searched in chunks of at most 65,536 points and of an estimated activation
        memory under `chunk_bytes`. Random starts are drawn for every piece in order, those of
        pieces skipped (their sample already falsified) included, so each piece gets the same
        starts however the pieces are chunked (torch's CPU generator draws a tensor's numbers in sequence).
        """
        k = self.directions.shape[0]
        per_axis = max(2, round(grid_points ** (1.0 / k)))
        unit = torch.cartesian_prod(*[torch.linspace(0.0, 1.0, per_axis, device=self.device)] * k).reshape(-1, k)
        generator = torch.Generator(device="cpu").manual_seed(falsifier.seed)
        starts = 1 + max(0, falsifier.restarts - 1)
        cost = self.point_cost
        piece_bytes = (len(unit) + starts) * cost.peak + (starts * cost.saved if falsifier.steps else 0)
        chunk = max(1, min(65536 // (len(unit) + starts), self.chunk_bytes // piece_bytes))
        found: dict[int, tuple[np.ndarray, int, float]] = {}
        for first in range(0, len(pieces.owner), chunk):
            rows = np.arange(first, min(first + chunk, len(pieces.owner)))
            random = torch.rand((len(rows), starts - 1, k), generator=generator) if falsifier.steps else None
            kept = np.array([owner not in found for owner in pieces.owner[rows]], dtype=bool)
            rows, random = rows[kept], (random[torch.from_numpy(kept)].to(self.device) if random is not None else None)
            if not len(rows):
                continue
            part = pieces.keep(rows)
            z, y, low, high = self._rows(z_all, y_all, part, outward=False)
            grid = (low[:, None, :] + unit[None] * (high - low)[:, None, :]).clamp(low[:, None, :], high[:, None, :])
            candidates = self._descend(z, y, grid, low, high, random, falsifier, starts)
            with torch.no_grad():
                n, m = candidates.shape[:2]
                values = margins(self.line(candidates.reshape(-1, k), z.repeat_interleave(m, dim=0)).view(n, m, -1), y[:, None].expand(n, m))
                best = values.argmin(dim=1)
                points = candidates[torch.arange(n), best]
                confirm = self.line(points, z)
                confirmed = margins(confirm, y)
                predicted = confirm.argmax(dim=1)
            for row in torch.nonzero(confirmed < 0).flatten().tolist():
                sample = int(part.owner[row])
                if sample not in found:
                    found[sample] = (points[row].cpu().numpy().astype(np.float64), int(predicted[row]), float(confirmed[row]))
        return found

    def _descend(
        self, z: torch.Tensor, y: torch.Tensor, grid: torch.Tensor, low: torch.Tensor, high: torch.Tensor, random: torch.Tensor | None, falsifier: Falsifier, starts: int
    ) -> torch.Tensor:
        """Grid points plus the end points of signed-gradient descent on the margin (from the worst grid point and the random starts, in [0, 1]^k per piece)."""
        n, points, k = grid.shape
        with torch.no_grad():
            values = margins(self.line(grid.reshape(-1, k), z.repeat_interleave(points, dim=0)).view(n, points, -1), y[:, None].expand(n, points))
        if falsifier.steps == 0 or random is None:
            return grid
        worst = grid[torch.arange(n), values.argmin(dim=1)][:, None, :]
        t = torch.cat([worst, low[:, None, :] + random * (high - low)[:, None, :]], dim=1)
        spacing = (high - low)[:, None, :] / max(1, round(points ** (1.0 / k)) - 1)
        for step in range(falsifier.steps):
            t = t.detach().requires_grad_(True)
            with torch.enable_grad():
                value = margins(self.line(t.reshape(-1, k), z.repeat_interleave(starts, dim=0)).view(n, starts, -1), y[:, None].expand(n, starts))
                (gradient,) = torch.autograd.grad(value.sum(), t)
            size = 0.5 * spacing * (1.0 - step / falsifier.steps)  # from half a grid spacing down to zero
            t = torch.minimum(torch.maximum(t.detach() - size * gradient.sign(), low[:, None, :]), high[:, None, :])
        return torch.cat([grid, t.detach()], dim=1)

    def _lower_bound(self, z_all: torch.Tensor, y_all: torch.Tensor, pieces: _Pieces, method: str, min_margin: float) -> np.ndarray:
        """min_j of the lower bounds of the margins on each piece, in batches of `batch_size` pieces.

        forward+backward back-substitutes only the margins that decide the proof (see `linear_margin_bounds`);
        the linear methods chunk their boxes by memory themselves. auto_LiRPA's methods take
        batches whose estimated memory, a point's activations per margin and per bound, stays under `chunk_bytes`.
        """
        batch = self.batch_size
        if method not in LINEAR_METHODS:
            batch = min(batch, self.point_cost.points(self.chunk_bytes) // (2 * self.num_classes + 2) or 1)
        results = []
        for first in range(0, len(pieces.owner), batch):
            part = pieces.keep(np.arange(first, min(first + batch, len(pieces.owner))))
            z, y, low, high = self._rows(z_all, y_all, part, outward=True)
            spec = margin_specification(y, self.num_classes)
            if method in LINEAR_METHODS:
                bounds = linear_margin_bounds(self.line.head, latent_line_input(z, self.directions), spec, low, high, method, min_margin)
            else:
                bounds = compute_margin_lower_bounds(self._bounded_module(), ((low + high) / 2, z), low, high, spec, method)
            results.append(bounds.min(dim=1).values.detach().cpu().numpy().astype(np.float64))
        return np.concatenate(results) if results else np.zeros(0)
