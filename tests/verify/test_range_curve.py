"""Certified accuracy against range: nested sub-boxes, monotone, and never contradicted by sampling."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auditai_ops.classifier.head import build_head
from auditai_ops.config import RangeConfig, UnitTestConfig, VerifyConfig
from auditai_ops.directions.discover import Direction
from auditai_ops.verify.range_curve import curve_points, range_curve, sub_box
from auditai_ops.verify.unit_tests import AuditSamples, ResolvedUnitTest, run_unit_test

CPU = torch.device("cpu")


@pytest.mark.parametrize(("low", "high"), [(-2.0, 1.0), (0.5, 3.0), (-4.0, -1.0), (0.0, 2.0)])
def test_sub_boxes_are_nested_and_end_at_the_box(low: float, high: float) -> None:
    t_low, t_high = np.array([low]), np.array([high])
    previous = None
    for fraction in (0.1, 0.25, 0.5, 0.9, 1.0):
        a, b = sub_box(t_low, t_high, fraction)
        assert t_low[0] <= a[0] <= b[0] <= t_high[0]
        if previous is not None:
            assert a[0] <= previous[0] and b[0] >= previous[1]
        previous = (a[0], b[0])
    assert previous == (low, high)
    nearest_zero = min(max(0.0, low), high)
    a, b = sub_box(t_low, t_high, 1e-9)
    assert a[0] == pytest.approx(nearest_zero, abs=1e-8) and b[0] == pytest.approx(nearest_zero, abs=1e-8)


def _unit_test(seed: int, low: float, high: float) -> tuple[torch.nn.Module, ResolvedUnitTest, AuditSamples, VerifyConfig]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    latent_dim = 6
    head = build_head(latent_dim, (16, 16), 4).eval()
    vector = rng.normal(size=latent_dim).astype(np.float32)
    vector /= np.linalg.norm(vector)
    spec = UnitTestConfig(name="t", direction="d", range=RangeConfig(low=low, high=high, units="latent"), property="clean_prediction")
    test = ResolvedUnitTest(spec, (Direction("d", "pca", vector, "latent", None),), np.array([low]), np.array([high]))
    samples = AuditSamples(np.array([f"s{i}" for i in range(48)]), rng.normal(size=(48, latent_dim)).astype(np.float32), np.zeros(48, np.int64))
    verify = VerifyConfig(samples=48, batch_size=32, falsify_grid=9, falsify_steps=4, falsify_restarts=1, max_pieces=8, curve_fractions=(0.2, 0.5, 0.8))
    return head, test, samples, verify


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), low=st.floats(-2.5, 0.5), width=st.floats(0.1, 3.0))
def test_curve_is_sound_and_monotone(seed: int, low: float, width: float) -> None:
    """Per sub-box: every certified sample keeps its target at 400 evenly spaced points, every counterexample lies inside and flips."""
    head, test, samples, verify = _unit_test(seed, low, low + width)
    result = run_unit_test(test, head, samples, verify, CPU)
    points = curve_points(result, head, verify, CPU)

    assert [p.fraction for p in points] == [0.2, 0.5, 0.8, 1.0]
    assert points[-1].verified.mean() == pytest.approx(result.certified_accuracy)
    for smaller, larger in zip(points, points[1:], strict=False):
        assert np.all(smaller.verified >= larger.verified), "a sample proved on a box is proved on every box inside it"
    d = torch.from_numpy(test.matrix[0])
    with torch.no_grad():
        for point in points:
            assert not np.any(point.verified & point.falsified)
            ts = torch.linspace(float(point.low[0]), float(point.high[0]), 400)
            moved = torch.from_numpy(samples.latents[point.verified])[:, None, :] + ts[None, :, None] * d
            assert (head(moved).argmax(dim=-1).numpy() == result.targets[point.verified, None]).all(), "a certified sample flips under sampling"
            t = point.counterexample_t[point.falsified, 0]
            assert np.all((t >= point.low[0]) & (t <= point.high[0]))
            flipped = torch.from_numpy(samples.latents[point.falsified]) + torch.from_numpy(t.astype(np.float32))[:, None] * d
            assert (head(flipped).argmax(dim=1).numpy() != result.targets[point.falsified]).all()
    curve = range_curve(result, head, verify, CPU)
    assert [p["certified_accuracy"] for p in curve] == pytest.approx([p.verified.mean() for p in points])
    assert all(p["certified_accuracy"] + p["falsified_fraction"] + p["unknown_fraction"] == pytest.approx(1.0) for p in curve)


def test_curve_reuses_counterexamples_inside_sub_boxes() -> None:
    """A counterexample of the full box that lies in a sub-box refutes it there: falsified counts never exceed what flips."""
    head, test, samples, verify = _unit_test(3, -3.0, 3.0)
    result = run_unit_test(test, head, samples, verify, CPU)
    curve = range_curve(result, head, verify, CPU)
    assert curve[-1]["falsified_fraction"] == pytest.approx(result.falsified_fraction)
    assert curve[-1]["falsified_fraction"] > 0, "the check needs a box wide enough to falsify some samples"
    assert curve[0]["certified_accuracy"] >= curve[-1]["certified_accuracy"]
