import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import expit, logit

from auditai_ops.directions.probes import Probe, fit_logistic_probe, is_binary, r_squared, roc_auc


def synthetic_binary(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Latents z ~ N(0, I_6) and labels drawn with P(1 | z) = sigmoid(w* . z + b*), |w*| = 2.5."""
    rng = np.random.default_rng(seed)
    latents = rng.normal(size=(count, 6))
    truth = np.array([1.5, 0.0, -2.0, 0.0, 0.0, 0.0])
    bias = -0.5
    labels = (rng.random(count) < expit(latents @ truth + bias)).astype(np.float32)
    return latents, labels, truth, bias


def test_logistic_probe_recovers_the_direction_and_the_logit_scale() -> None:
    latents, labels, truth, bias = synthetic_binary(20000, seed=0)
    weights, fitted_bias = fit_logistic_probe(latents, labels, ridge=1e-6)
    # The maximum-likelihood estimate is within a few standard errors (about 0.03 here) of the truth.
    np.testing.assert_allclose(weights, truth, atol=0.1)
    assert fitted_bias == pytest.approx(bias, abs=0.06)
    direction = weights / np.linalg.norm(weights)
    assert float(direction @ truth / np.linalg.norm(truth)) > 0.999
    # Calibration in logits: |w| logits per latent unit, so a step of 1 / |w| along d moves every logit by exactly 1.
    probe = Probe(weights, fitted_bias, binary=True)
    z = latents[:100]
    moved = z + direction / np.linalg.norm(weights)
    np.testing.assert_allclose(logit(probe.read(moved)) - logit(probe.read(z)), 1.0, atol=1e-6)


def test_logistic_probe_is_deterministic_and_a_penalty_shrinks_it() -> None:
    latents, labels, _, _ = synthetic_binary(3000, seed=1)
    first, second = fit_logistic_probe(latents, labels, 1e-3), fit_logistic_probe(latents, labels, 1e-3)
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1] == second[1]
    strong, _ = fit_logistic_probe(latents, labels, 1.0)
    assert np.linalg.norm(strong) < 0.5 * np.linalg.norm(first[0])


def test_logistic_probe_on_separable_labels_stays_finite() -> None:
    latents = np.random.default_rng(2).normal(size=(500, 3))
    labels = (latents[:, 0] > 0).astype(np.float64)  # perfectly separable: only the penalty bounds |w|
    for ridge, accuracy in ((1e-4, 0.99), (0.0, 1.0)):  # without a penalty the Newton steps stop after NEWTON_ITERATIONS
        weights, bias = fit_logistic_probe(latents, labels, ridge)
        assert np.all(np.isfinite(weights)) and math.isfinite(bias)
        assert abs(weights[0]) > 20 * max(abs(weights[1]), abs(weights[2]))
        assert np.mean((Probe(weights, bias, binary=True).read(latents) >= 0.5) == (labels == 1)) >= accuracy


def test_logistic_probe_minimises_its_objective() -> None:
    """The gradient of mean log-loss + ridge / 2 |w|^2 vanishes at the fit."""
    latents, labels, _, _ = synthetic_binary(2000, seed=3)
    ridge = 0.05
    weights, bias = fit_logistic_probe(latents, labels, ridge)
    residual = expit(latents @ weights + bias) - labels
    np.testing.assert_allclose(latents.T @ residual / len(labels) + ridge * weights, 0.0, atol=1e-8)
    assert abs(residual.mean()) < 1e-8


def test_is_binary() -> None:
    assert is_binary(np.array([0.0, 1.0, 1.0, np.nan]))
    assert is_binary(np.array([1.0, 1.0]))
    assert not is_binary(np.array([0.0, 0.5, 1.0]))
    assert not is_binary(np.array([np.nan, np.nan]))


def test_roc_auc_by_hand() -> None:
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(np.array([0.1, 0.2, 0.3, 0.4]), labels) == 1.0
    assert roc_auc(np.array([0.4, 0.3, 0.2, 0.1]), labels) == 0.0
    assert roc_auc(np.array([0.1, 0.3, 0.2, 0.4]), labels) == 0.75  # 3 of the 4 positive-negative pairs ordered
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), labels) == 0.5  # ties count half
    assert roc_auc(np.array([0.1, 0.2]), np.array([1, 1])) is None


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_efron_r2_is_at_most_one_and_perfect_only_for_exact_probabilities(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = (rng.random(50) < 0.5).astype(np.float64)
    probabilities = rng.random(50)
    assert r_squared(probabilities, labels) <= 1.0
    assert r_squared(labels, labels) == (1.0 if labels.std() > 0 else 0.0)
