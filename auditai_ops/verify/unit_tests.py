"""Semantically aligned unit tests: resolve specs into latent boxes and run them.

A unit test names k directions d_1..d_k (usually one) and a range for each. A range in
attribute units [a, b] becomes the latent interval [a / c, b / c], where c > 0 is the
direction's measured calibration (attribute units per latent unit); a range in latent units
is used as is. The property is that the prediction stays the true label (or the clean
prediction) for every sample z and every t in the box; the requirement is certified accuracy
(or its Clopper-Pearson lower confidence bound) >= threshold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from auditai_ops.config import UnitTestConfig, VerifyConfig
from auditai_ops.directions.discover import Direction
from auditai_ops.errors import AuditInputError
from auditai_ops.verify.engine import FALSIFIED, UNKNOWN, VERIFIED, Budget, Falsifier, LineVerifier, SampleOutcomes
from auditai_ops.verify.stats import clopper_pearson_lower

PASS, FAIL, ERROR = "pass", "fail", "error"


@dataclass(frozen=True)
class ResolvedUnitTest:
    """A unit test with its latent box [t_low, t_high] (shape (k,)) along `directions`."""

    spec: UnitTestConfig
    directions: tuple[Direction, ...]
    t_low: np.ndarray
    t_high: np.ndarray

    @property
    def matrix(self) -> np.ndarray:
        """The (k, latent_dim) direction matrix D: the set is {z + t D}."""
        return np.stack([d.vector for d in self.directions])


@dataclass(frozen=True)
class AuditSamples:
    """The test samples a unit test runs on: ids, latents and labels."""

    ids: np.ndarray
    latents: np.ndarray
    labels: np.ndarray

    def first(self, count: int) -> AuditSamples:
        return AuditSamples(self.ids[:count], self.latents[:count], self.labels[:count])


@dataclass(frozen=True)
class UnitTestResult:
    test: ResolvedUnitTest
    samples: AuditSamples
    targets: np.ndarray
    outcomes: SampleOutcomes
    clean_accuracy: float
    confidence: float
    seconds: float

    @property
    def certified_accuracy(self) -> float:
        return self.outcomes.fraction(VERIFIED)

    @property
    def certified_accuracy_lower_bound(self) -> float:
        """One-sided Clopper-Pearson lower bound on the population's certified accuracy."""
        return clopper_pearson_lower(int(np.sum(self.outcomes.verdicts == VERIFIED)), len(self.outcomes.verdicts), self.confidence)

    @property
    def falsified_fraction(self) -> float:
        return self.outcomes.fraction(FALSIFIED)

    @property
    def unknown_fraction(self) -> float:
        return self.outcomes.fraction(UNKNOWN)

    @property
    def verdict(self) -> str:
        spec = self.test.spec
        measured = self.certified_accuracy if spec.threshold_on == "estimate" else self.certified_accuracy_lower_bound
        return PASS if measured >= spec.threshold else FAIL


def _latent_interval(where: str, direction: Direction, low: float, high: float, units: str) -> tuple[float, float]:
    if units == "latent":
        return low, high
    if direction.calibration is None:
        raise AuditInputError(f"{where}.range.units: direction '{direction.name}' has no attribute calibration; give the range with units: latent")
    if direction.calibration <= 1e-6:
        raise AuditInputError(f"{where}.range.units: direction '{direction.name}' barely changes its attribute (calibration {direction.calibration:.3g} per latent unit)")
    return low / direction.calibration, high / direction.calibration


def resolve_unit_tests(tests: tuple[UnitTestConfig, ...], directions: dict[str, Direction]) -> list[ResolvedUnitTest]:
    """Check every unit test against the discovered directions and convert its ranges to a latent box."""
    resolved = []
    for index, spec in enumerate(tests):
        where = f"unit_tests[{index}] ('{spec.name}')"
        chosen, lows, highs = [], [], []
        for name, span in zip(spec.direction, spec.range, strict=True):
            direction = directions.get(name)
            if direction is None:
                raise AuditInputError(f"{where}.direction: unknown direction '{name}'; discovered directions are {sorted(directions)}")
            low, high = _latent_interval(where, direction, span.low, span.high, span.units)
            chosen.append(direction)
            lows.append(low)
            highs.append(high)
        resolved.append(ResolvedUnitTest(spec, tuple(chosen), np.array(lows, np.float64), np.array(highs, np.float64)))
    return resolved


@torch.no_grad()
def clean_predictions(model: nn.Module, latents: np.ndarray, device: torch.device, batch_size: int) -> np.ndarray:
    """The model's predictions at the samples' own latents (t = 0)."""
    inputs = torch.from_numpy(latents.astype(np.float32))
    return torch.cat([model(inputs[i : i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, len(inputs), batch_size)]).numpy()


def run_unit_test(test: ResolvedUnitTest, model: nn.Module, samples: AuditSamples, settings: VerifyConfig, device: torch.device) -> UnitTestResult:
    """Falsify, then branch and bound, every sample of the unit test in batches."""
    started = time.perf_counter()
    chosen = samples.first(test.spec.samples or settings.samples)
    predictions = clean_predictions(model, chosen.latents, device, settings.batch_size)
    targets = chosen.labels if test.spec.property == "true_label" else predictions
    verifier = LineVerifier(model, test.matrix, device, settings.batch_size)
    outcomes = verifier.verify(
        chosen.latents,
        targets,
        test.t_low,
        test.t_high,
        settings.methods,
        Falsifier(settings.falsify_grid, settings.falsify_steps, settings.falsify_restarts, settings.seed),
        Budget(settings.max_pieces, settings.seconds_per_test),
        settings.min_margin,
        settings.refine_method,
    )
    clean_accuracy = float(np.mean(predictions == chosen.labels))
    return UnitTestResult(test, chosen, targets, outcomes, clean_accuracy, settings.confidence, time.perf_counter() - started)
