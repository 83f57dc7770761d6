"""Certified accuracy against range: the unit test's verifier run on nested sub-boxes of its box.

For a fraction s in (0, 1] the sub-box is B_s = c + s (B - c), with c the point of the box B
nearest to t = 0 (c = 0 whenever B contains 0), so B_s grows with s and B_1 = B. Two facts
let most samples skip the work: a sample proved on a box is proved on every box inside it
(B_s is inside B_s' for s < s'), and a confirmed counterexample t* that lies in B_s refutes
B_s too. Every other sample is bounded, falsified and split on B_s from scratch with the unit
test's methods and budget. Certified accuracy on B_s is therefore as sound a figure for the
range scaled by s as the unit test's own result is for B (unknown never counts as certified).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from auditai_ops.config import VerifyConfig
from auditai_ops.verify.engine import FALSIFIED, VERIFIED, Budget, Falsifier, LineVerifier
from auditai_ops.verify.unit_tests import UnitTestResult


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


def curve_points(result: UnitTestResult, model: nn.Module, settings: VerifyConfig, device: torch.device) -> list[CurvePoint]:
    """Outcomes on B_s for every s in `settings.curve_fractions` and s = 1, in increasing s."""
    test, outcomes = result.test, result.outcomes
    verified = outcomes.verdicts == VERIFIED
    counterexamples = np.asarray(outcomes.counterexample_t, np.float64)
    points = [CurvePoint(1.0, test.t_low, test.t_high, verified, outcomes.verdicts == FALSIFIED, counterexamples)]
    verifier = LineVerifier(model, test.matrix, device, settings.batch_size)
    falsifier = Falsifier(settings.falsify_grid, settings.falsify_steps, settings.falsify_restarts, settings.seed)
    for fraction in sorted(set(settings.curve_fractions), reverse=True):
        low, high = sub_box(test.t_low, test.t_high, fraction)
        falsified = ~verified & _inside(counterexamples, low, high)
        counterexamples = np.where(falsified[:, None], counterexamples, np.nan)
        rest = np.flatnonzero(~verified & ~falsified)
        if len(rest):
            found = verifier.verify(
                result.samples.latents[rest],
                result.targets[rest],
                low,
                high,
                settings.methods,
                falsifier,
                Budget(settings.max_pieces, settings.seconds_per_test),
                settings.min_margin,
                settings.refine_method,
            )
            verified = verified.copy()
            verified[rest[found.verdicts == VERIFIED]] = True
            refuted = found.verdicts == FALSIFIED
            falsified[rest[refuted]] = True
            counterexamples[rest[refuted]] = found.counterexample_t[refuted]
        points.append(CurvePoint(fraction, low, high, verified, falsified, counterexamples))
    return sorted(points, key=lambda point: point.fraction)


def range_curve(result: UnitTestResult, model: nn.Module, settings: VerifyConfig, device: torch.device) -> list[dict[str, Any]]:
    """The curve as summary.json records it: per fraction, the sub-box, the spec's ranges shrunk alike, and the three fractions."""
    count = len(result.outcomes.verdicts)
    curve = []
    for point in curve_points(result, model, settings, device):
        certified, refuted = int(point.verified.sum()), int(point.falsified.sum())
        curve.append(
            {
                "fraction": point.fraction,
                "latent_box": {"low": point.low.tolist(), "high": point.high.tolist()},
                "ranges": [_scaled_range(span.low, span.high, point.fraction) for span in result.test.spec.range],
                "certified_accuracy": certified / count if count else 0.0,
                "falsified_fraction": refuted / count if count else 0.0,
                "unknown_fraction": (count - certified - refuted) / count if count else 0.0,
            }
        )
    return curve


def _scaled_range(low: float, high: float, fraction: float) -> dict[str, float]:
    """The spec's range, in its own units, shrunk the same way: the map to latent units is linear through 0."""
    scaled_low, scaled_high = sub_box(np.array([low]), np.array([high]), fraction)
    return {"low": float(scaled_low[0]), "high": float(scaled_high[0])}
