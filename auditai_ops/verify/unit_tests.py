"""Semantically aligned unit tests: resolve specs into latent boxes and run them.

A unit test names k directions d_1..d_k (usually one) and a range for each. A range in
attribute units [a, b] becomes the latent interval [a / c, b / c], where c > 0 is the
direction's measured calibration (attribute units per latent unit); a range in latent units
is used as is. The property is that the prediction stays the true label (or the clean
prediction) for every sample z and every t in the box; the requirement is certified accuracy
(or its Clopper-Pearson lower confidence bound) >= threshold.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from auditai_ops.config import UnitTestConfig, VerifyConfig
from auditai_ops.directions.discover import Direction
from auditai_ops.errors import AuditInputError
from auditai_ops.verify.engine import FALSIFIED, STOPPED_BY_SPLITS, STOPPED_BY_TIME, UNKNOWN, VERIFIED, Budget, Falsifier, LineVerifier, SampleOutcomes
from auditai_ops.verify.memory import MIB
from auditai_ops.verify.prove_first import verify_prove_first
from auditai_ops.verify.stats import clopper_pearson_lower

PASS, FAIL, ERROR = "pass", "fail", "error"
BUDGET_TIME, BUDGET_PIECES = "time", "pieces"
"""`budget_exhausted` of a unit test: the wall-clock budget stopped a sample (the result depends on the machine's speed), or the total split budget did."""


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
    predictions: np.ndarray
    """The clean predictions (at t = 0)."""
    outcomes: SampleOutcomes
    confidence: float
    seconds: float
    positions: np.ndarray
    """Each sample's position among the unit test's samples (all of them, in order, unless sharded)."""

    @property
    def clean_accuracy(self) -> float:
        return float(np.mean(self.predictions == self.samples.labels)) if len(self.predictions) else 0.0

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
    def budget_exhausted(self) -> str | None:
        """'time' when `seconds_per_test` stopped any sample's branch and bound, else 'pieces' when `max_splits_per_test` did, else None."""
        return budget_exhausted(self.outcomes)

    @property
    def stopped_by_budget(self) -> int:
        """How many samples the test-wide budgets (time, total splits) stopped; the per-sample `max_pieces` is not counted."""
        return int(np.isin(self.outcomes.stopped_by, (STOPPED_BY_TIME, STOPPED_BY_SPLITS)).sum())

    @property
    def verdict(self) -> str:
        spec = self.test.spec
        measured = self.certified_accuracy if spec.threshold_on == "estimate" else self.certified_accuracy_lower_bound
        return PASS if measured >= spec.threshold else FAIL


def budget_exhausted(outcomes: SampleOutcomes) -> str | None:
    """'time' if the wall-clock budget stopped any sample, else 'pieces' if the total split budget did, else None."""
    if np.any(outcomes.stopped_by == STOPPED_BY_TIME):
        return BUDGET_TIME
    if np.any(outcomes.stopped_by == STOPPED_BY_SPLITS):
        return BUDGET_PIECES
    return None


def split_share(total: int, start: int, stop: int, count: int) -> int:
    """The splits of a total budget that samples [start, stop) of `count` get: floor(total stop / count) - floor(total start / count).

    The shares of any partition into consecutive ranges add up to `total` exactly, and a block's
    share depends only on its positions, so it is the same in every shard layout.
    """
    if count <= 0:
        return 0
    return total * stop // count - total * start // count


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


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based): the blocks index, index + count, index + 2 count, ... of a unit test's samples.

    Samples are verified in fixed blocks of `block_size`, each with its own seed, so a block's
    results do not depend on which other blocks run beside it: shards merged back together
    equal an unsharded run.
    """

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise AuditInputError(f"--shard: expected i/N with 0 <= i < N, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'i/N' -> Shard(i, N)."""
        index, _, count = text.partition("/")
        try:
            return cls(int(index), int(count))
        except ValueError:
            raise AuditInputError(f"--shard: expected i/N with 0 <= i < N (for example 0/4), got '{text}'") from None

    def positions(self, sample_count: int, block_size: int) -> np.ndarray:
        """The positions (into the unit test's samples) this shard verifies, in order."""
        blocks = range(self.index, -(-sample_count // block_size), self.count)
        return np.concatenate([np.arange(b * block_size, min((b + 1) * block_size, sample_count)) for b in blocks] or [np.zeros(0, np.int64)])


def block_seed(seed: int, block: int) -> int:
    """An independent counterexample-search seed per block, the same in every shard layout."""
    return int(np.random.SeedSequence([seed, block]).generate_state(1)[0])


def empty_outcomes(k: int) -> SampleOutcomes:
    """Outcomes of no samples (k directions)."""
    return SampleOutcomes(np.zeros(0, "<U9"), np.zeros(0), np.zeros(0, "<U16"), np.zeros(0, np.int64), np.zeros((0, k)), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, "<U19"))


def concatenate_outcomes(parts: list[SampleOutcomes]) -> SampleOutcomes:
    """The outcomes of consecutive sample groups as one."""
    fields = SampleOutcomes.__dataclass_fields__
    return SampleOutcomes(**{name: np.concatenate([getattr(part, name) for part in parts]) for name in fields})


def unit_test_samples(test: ResolvedUnitTest, samples: AuditSamples, settings: VerifyConfig) -> AuditSamples:
    """The samples a unit test runs on: the first `samples` of the test split (the spec's own count, else the setting)."""
    return samples.first(test.spec.samples or settings.samples)


def line_verifier(model: nn.Module, test: ResolvedUnitTest, settings: VerifyConfig, device: torch.device) -> LineVerifier:
    """The verifier of a unit test with the settings' batch size and chunk memory."""
    return LineVerifier(model, test.matrix, device, settings.batch_size, settings.chunk_memory_mb * MIB)


def block_budget(settings: VerifyConfig, start: int, stop: int, count: int, seconds_left: float | None) -> Budget:
    """The budget of samples [start, stop) of a unit test's `count`: max_pieces each, their share of max_splits_per_test, and the time left (None: no time budget)."""
    return Budget(settings.max_pieces, math.inf if seconds_left is None else max(seconds_left, 1e-3), split_share(settings.max_splits_per_test, start, stop, count))


def run_unit_test(test: ResolvedUnitTest, model: nn.Module, samples: AuditSamples, settings: VerifyConfig, device: torch.device, shard: Shard = Shard()) -> UnitTestResult:
    """Prove, then search, the shard's samples of the unit test, block by block (`verify_prove_first`).

    Each block gets its share of `max_splits_per_test` (`split_share`), so results depend on
    neither timing nor the shard layout; `seconds_per_test`, when set, is the wall-clock budget
    of the shard's blocks together.
    """
    started = time.perf_counter()
    chosen = unit_test_samples(test, samples, settings)
    positions = shard.positions(len(chosen.ids), settings.block_size)
    mine = AuditSamples(chosen.ids[positions], chosen.latents[positions], chosen.labels[positions])
    verifier = line_verifier(model, test, settings, device)
    points_at_once = min(settings.batch_size, verifier.point_cost.points(verifier.chunk_bytes))
    predictions, outcomes = [np.zeros(0, np.int64)], [empty_outcomes(len(test.directions))]
    for first in range(0, len(positions), settings.block_size):
        rows = slice(first, first + settings.block_size)
        block_predictions = clean_predictions(model, mine.latents[rows], device, points_at_once)
        targets = mine.labels[rows] if test.spec.property == "true_label" else block_predictions
        falsifier = Falsifier(settings.falsify_grid, settings.falsify_steps, settings.falsify_restarts, block_seed(settings.seed, int(positions[first]) // settings.block_size))
        seconds_left = None if settings.seconds_per_test is None else settings.seconds_per_test - (time.perf_counter() - started)
        start = int(positions[first])
        budget = block_budget(settings, start, start + len(mine.ids[rows]), len(chosen.ids), seconds_left)
        arguments = (mine.latents[rows], targets, test.t_low, test.t_high, settings.methods, falsifier, budget, settings.min_margin, settings.refine_method)
        outcomes.append(verify_prove_first(verifier, *arguments))
        predictions.append(block_predictions)
    all_predictions = np.concatenate(predictions)
    targets = mine.labels if test.spec.property == "true_label" else all_predictions
    return UnitTestResult(test, mine, targets, all_predictions, concatenate_outcomes(outcomes), settings.confidence, time.perf_counter() - started, positions)
