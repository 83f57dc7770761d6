"""Semantically aligned unit tests: resolve specs into latent intervals and run them.

A unit test names a direction d and a range. A range in attribute units [a, b] becomes the
latent interval [a / c, b / c], where c > 0 is the direction's measured calibration
(attribute units per latent unit); a range in latent units is used as is. The property is
that the prediction stays the true label (or the clean prediction) for every sample z and
every t in the interval; the requirement is certified accuracy >= threshold.
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
from auditai_ops.verify.engine import FALSIFIED, UNKNOWN, VERIFIED, LineVerifier, SampleOutcomes

PASS, FAIL, ERROR = "pass", "fail", "error"


@dataclass(frozen=True)
class ResolvedUnitTest:
    """A unit test with its latent interval [t_low, t_high] along `direction`."""

    spec: UnitTestConfig
    direction: Direction
    t_low: float
    t_high: float


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
    seconds: float

    @property
    def certified_accuracy(self) -> float:
        return self.outcomes.fraction(VERIFIED)

    @property
    def falsified_fraction(self) -> float:
        return self.outcomes.fraction(FALSIFIED)

    @property
    def unknown_fraction(self) -> float:
        return self.outcomes.fraction(UNKNOWN)

    @property
    def verdict(self) -> str:
        return PASS if self.certified_accuracy >= self.test.spec.threshold else FAIL


def resolve_unit_tests(tests: tuple[UnitTestConfig, ...], directions: dict[str, Direction]) -> list[ResolvedUnitTest]:
    """Check every unit test against the discovered directions and convert its range to latent units."""
    resolved = []
    for index, spec in enumerate(tests):
        where = f"unit_tests[{index}] ('{spec.name}')"
        direction = directions.get(spec.direction)
        if direction is None:
            raise AuditInputError(f"{where}.direction: unknown direction '{spec.direction}'; discovered directions are {sorted(directions)}")
        if spec.range.units == "latent":
            low, high = spec.range.low, spec.range.high
        elif direction.calibration is None:
            raise AuditInputError(f"{where}.range.units: direction '{direction.name}' has no attribute calibration; give the range with units: latent")
        elif direction.calibration <= 1e-6:
            raise AuditInputError(f"{where}.range.units: direction '{direction.name}' barely changes its attribute (calibration {direction.calibration:.3g} per latent unit)")
        else:
            low, high = spec.range.low / direction.calibration, spec.range.high / direction.calibration
        resolved.append(ResolvedUnitTest(spec, direction, float(low), float(high)))
    return resolved


@torch.no_grad()
def clean_predictions(head: nn.Module, latents: np.ndarray, device: torch.device) -> np.ndarray:
    return head(torch.from_numpy(latents.astype(np.float32)).to(device)).argmax(dim=1).cpu().numpy()


def run_unit_test(test: ResolvedUnitTest, head: nn.Module, samples: AuditSamples, settings: VerifyConfig, device: torch.device) -> UnitTestResult:
    """Falsify, then bound, every sample of the unit test in batches."""
    started = time.perf_counter()
    chosen = samples.first(test.spec.samples or settings.samples)
    predictions = clean_predictions(head, chosen.latents, device)
    targets = chosen.labels if test.spec.property == "true_label" else predictions
    verifier = LineVerifier(head, test.direction.vector[None, :], device, settings.batch_size)
    outcomes = verifier.verify(
        chosen.latents, targets, np.array([test.t_low]), np.array([test.t_high]), settings.methods, settings.falsify_grid, settings.min_margin
    )
    clean_accuracy = float(np.mean(predictions == chosen.labels))
    return UnitTestResult(test, chosen, targets, outcomes, clean_accuracy, time.perf_counter() - started)
