"""Certified accuracy against range: the unit test's verifier run on nested sub-boxes of its box.

For a fraction s in (0, 1] the sub-box is B_s = c + s (B - c), with c the point of the box B
nearest to t = 0 (c = 0 whenever B contains 0), so B_s grows with s and B_1 = B. Two facts
let most samples skip the work: a sample proved on a box is proved on every box inside it
(B_s is inside B_s' for s < s'), and a confirmed counterexample t* that lies in B_s refutes
B_s too. Every other sample is bounded, falsified and split on B_s from scratch with the unit
test's methods and budget (its share of the split budget for the samples re-run). Certified accuracy on B_s is therefore as sound a figure for the
range scaled by s as the unit test's own result is for B (unknown never counts as certified).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from auditai_ops.config import VerifyConfig
from auditai_ops.verify.engine import FALSIFIED, VERIFIED, Falsifier
from auditai_ops.verify.prove_first import verify_prove_first
from auditai_ops.verify.unit_tests import ResolvedUnitTest, UnitTestResult, block_budget, block_seed, line_verifier


def sub_box(t_low: np.ndarray, t_high: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """B_s = c + s (B - c), with c the point of B nearest to 0 (clipped into B against rounding)."""
    centre = np.clip(0.0, t_low, t_high)
    low, high = centre + fraction * (t_low - centre), centre + fraction * (t_high - centre)
    return np.clip(low, t_low, t_high), np.clip(high, t_low, t_high)


def _inside(points: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Rows of `points` (n, k) with every coordinate in [low, high]; NaN rows (no counterexample) are outside."""
    return np.all((points >= low) & (points <= high), axis=1)


@dataclass(frozen=True)
class CurvePoint:
    """Per-sample outcomes on the sub-box [low, high] for `fraction`; counterexample rows are NaN where there is none."""

    fraction: float
    low: np.ndarray
    high: np.ndarray
    verified: np.ndarray
    falsified: np.ndarray
    counterexample_t: np.ndarray


def curve_points(result: UnitTestResult, model: nn.Module, settings: VerifyConfig, device: torch.device, count: int | None = None) -> list[CurvePoint]:
    """Outcomes on B_s for every s in `settings.curve_fractions` and s = 1, in increasing s.

    Samples are re-run block by block, in the unit test's blocks of `block_size` (found from
    `result.positions`), each block with its own seed and, for its samples re-run, their share
    of `max_splits_per_test` among the unit test's `count` samples (default: the result's): a
    sample's outcomes depend only on its block, so a shard's points are those of the same
    samples in an unsharded run, and shards' counts add up to the unsharded curve.
    """
    test, outcomes = result.test, result.outcomes
    total = len(outcomes.verdicts) if count is None else count
    verified = outcomes.verdicts == VERIFIED
    counterexamples = np.asarray(outcomes.counterexample_t, np.float64)
    points = [CurvePoint(1.0, test.t_low, test.t_high, verified, outcomes.verdicts == FALSIFIED, counterexamples)]
    verifier = line_verifier(model, test, settings, device)
    blocks = np.asarray(result.positions, np.int64) // settings.block_size
    for fraction in sorted(set(settings.curve_fractions), reverse=True):
        low, high = sub_box(test.t_low, test.t_high, fraction)
        falsified = ~verified & _inside(counterexamples, low, high)
        counterexamples = np.where(falsified[:, None], counterexamples, np.nan)
        verified = verified.copy()
        rest = np.flatnonzero(~verified & ~falsified)
        for block in np.unique(blocks[rest]):
            rows = rest[blocks[rest] == block]
            start = int(block) * settings.block_size
            falsifier = Falsifier(settings.falsify_grid, settings.falsify_steps, settings.falsify_restarts, block_seed(settings.seed, int(block)))
            found = verify_prove_first(
                verifier,
                result.samples.latents[rows],
                result.targets[rows],
                low,
                high,
                settings.methods,
                falsifier,
                block_budget(settings, start, start + len(rows), total, settings.seconds_per_test),
                settings.min_margin,
                settings.refine_method,
            )
            verified[rows[found.verdicts == VERIFIED]] = True
            refuted = found.verdicts == FALSIFIED
            falsified[rows[refuted]] = True
            counterexamples[rows[refuted]] = found.counterexample_t[refuted]
        points.append(CurvePoint(fraction, low, high, verified, falsified, counterexamples))
    return sorted(points, key=lambda point: point.fraction)


@dataclass(frozen=True)
class CurveCounts:
    """How many samples are certified and falsified on B_s, per fraction s (increasing, ending at 1), out of `samples`.

    Counts of disjoint sample sets (shards) add up: `merge` sums the shards' counts.
    """

    fractions: tuple[float, ...]
    certified: np.ndarray
    falsified: np.ndarray
    samples: int

    @classmethod
    def of(cls, points: list[CurvePoint]) -> CurveCounts:
        count = len(points[0].verified) if points else 0
        certified = np.array([int(p.verified.sum()) for p in points], np.int64)
        return cls(tuple(p.fraction for p in points), certified, np.array([int(p.falsified.sum()) for p in points], np.int64), count)

    def __add__(self, other: CurveCounts) -> CurveCounts:
        if self.fractions != other.fractions:
            raise ValueError(f"curves of other fractions: {self.fractions} and {other.fractions}")
        return CurveCounts(self.fractions, self.certified + other.certified, self.falsified + other.falsified, self.samples + other.samples)


def curve_counts(result: UnitTestResult, model: nn.Module, settings: VerifyConfig, device: torch.device, count: int | None = None) -> CurveCounts:
    """The curve's counts for the result's samples (see `curve_points`)."""
    return CurveCounts.of(curve_points(result, model, settings, device, count))


def curve_record(test: ResolvedUnitTest, counts: CurveCounts) -> list[dict[str, Any]]:
    """The curve as summary.json records it: per fraction, the sub-box, the spec's ranges shrunk alike, and the three fractions."""
    count = counts.samples
    curve = []
    for fraction, certified, refuted in zip(counts.fractions, counts.certified.tolist(), counts.falsified.tolist(), strict=True):
        low, high = (test.t_low, test.t_high) if fraction == 1.0 else sub_box(test.t_low, test.t_high, fraction)
        curve.append(
            {
                "fraction": fraction,
                "latent_box": {"low": low.tolist(), "high": high.tolist()},
                "ranges": [_scaled_range(span.low, span.high, fraction) for span in test.spec.range],
                "certified_accuracy": certified / count if count else 0.0,
                "falsified_fraction": refuted / count if count else 0.0,
                "unknown_fraction": (count - certified - refuted) / count if count else 0.0,
            }
        )
    return curve


def range_curve(result: UnitTestResult, model: nn.Module, settings: VerifyConfig, device: torch.device) -> list[dict[str, Any]]:
    """The curve as summary.json records it (see `curve_record`), for an unsharded result."""
    return curve_record(result.test, curve_counts(result, model, settings, device))


def _scaled_range(low: float, high: float, fraction: float) -> dict[str, float]:
    """The spec's range, in its own units, shrunk the same way: the map to latent units is linear through 0."""
    scaled_low, scaled_high = sub_box(np.array([low]), np.array([high]), fraction)
    return {"low": float(scaled_low[0]), "high": float(scaled_high[0])}
