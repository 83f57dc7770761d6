"""Linear probes of an attribute from the latents: ridge regression for continuous attributes, logistic regression for binary ones.

A probe's weight vector w gives the attribute's direction d = w / |w| in latent space. For a
continuous attribute a(z) ~ w . z + b, |w| is attribute units per latent unit. For a binary
attribute (values 0 and 1, CelebA-style) the probe is P(a = 1 | z) = sigmoid(w . z + b): moving
by t along d moves the logit by exactly t |w|, so |w| is the calibration in logit units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit
from scipy.stats import rankdata

NEWTON_ITERATIONS = 100
"""Most Newton steps of the logistic fit (it converges in about ten when the penalty keeps it well posed)."""


@dataclass(frozen=True)
class Probe:
    """A fitted probe: `binary` ones read probabilities sigmoid(w . z + b), the others attribute values w . z + b."""

    weights: np.ndarray
    bias: float
    binary: bool

    def read(self, latents: np.ndarray) -> np.ndarray:
        """The probe's reading of latents (N, D): probabilities for a binary attribute, attribute values otherwise."""
        score = latents.astype(np.float64) @ self.weights + self.bias
        return expit(score) if self.binary else score


def is_binary(values: np.ndarray) -> bool:
    """Whether every finite value is 0 or 1 (a CelebA-style yes/no attribute)."""
    finite = values[np.isfinite(values)]
    return len(finite) > 0 and bool(np.all((finite == 0) | (finite == 1)))


def fit_probe(latents: np.ndarray, target: np.ndarray, ridge: float) -> tuple[np.ndarray, float]:
    """Ridge regression target ~ w . z + b with centred inputs; returns (w, b).

    Minimises mean (target - w . z - b)^2 + ridge |w|^2 (the bias unpenalised), in closed form.
    """
    z_mean, t_mean = latents.mean(axis=0), float(target.mean())
    centred = latents - z_mean
    gram = centred.T @ centred + ridge * len(latents) * np.eye(latents.shape[1])
    weights = np.linalg.solve(gram, centred.T @ (target - t_mean))
    return weights, t_mean - float(z_mean @ weights)


def fit_logistic_probe(latents: np.ndarray, labels: np.ndarray, ridge: float) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression P(label = 1 | z) = sigmoid(w . z + b); returns (w, b).

    Minimises the mean log-loss ``mean(log(1 + e^s) - y s)``, ``s = w . z + b``, plus
    ``ridge / 2 |w|^2`` (the bias unpenalised) by Newton's method on centred latents, starting
    from w = 0 and b = logit(mean label). Each step is halved until the loss does not increase,
    so the loss never rises; with ridge > 0 the loss is strictly convex and the minimum unique.
    Deterministic: no random initialisation, no sampling.
    """
    z_mean = latents.mean(axis=0)
    n, dim = latents.shape
    design = np.hstack([latents - z_mean, np.ones((n, 1))])
    y = labels.astype(np.float64)
    penalty = np.diag(np.r_[np.full(dim, ridge), 0.0])
    rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    theta = np.r_[np.zeros(dim), np.log(rate / (1 - rate))]

    def loss(parameters: np.ndarray) -> float:
        score = design @ parameters
        return float(np.mean(np.logaddexp(0.0, score) - y * score) + 0.5 * ridge * parameters[:dim] @ parameters[:dim])

    current = loss(theta)
    for _ in range(NEWTON_ITERATIONS):
        p = expit(design @ theta)
        gradient = design.T @ (p - y) / n + penalty @ theta
        hessian = (design.T * (p * (1 - p))) @ design / n + penalty + 1e-12 * np.eye(dim + 1)
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while (candidate := loss(theta - scale * step)) > current and scale > 1e-10:
            scale /= 2
        if candidate > current:  # no decrease along the Newton step: at the minimum, to rounding
            break
        theta, current = theta - scale * step, candidate
        if np.max(np.abs(scale * step)) < 1e-10:
            break
    weights = theta[:dim]
    return weights, float(theta[dim] - z_mean @ weights)


def r_squared(prediction: np.ndarray, target: np.ndarray) -> float:
    """1 - residual / total sum of squares (for probabilities against 0/1 labels: Efron's pseudo-R2); 0 for a constant target."""
    residual = float(np.sum((target - prediction) ** 2))
    total = float(np.sum((target - target.mean()) ** 2))
    return 1.0 - residual / total if total > 0 else 0.0


def roc_auc(score: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve: the probability that a random positive scores above a random negative (ties count half).

    By the Mann-Whitney statistic on the ranks of the scores; None without both classes.
    """
    positive = labels == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
