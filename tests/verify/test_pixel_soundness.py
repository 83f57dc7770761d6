"""Soundness in pixel mode: random decoders and CNN classifiers of every supported layer type.

The network is classifier(normalize(decoder(z + t D))); a verified sample must never be
contradicted by 1,000 sampled t, and planted counterexamples must never come out verified.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from auditai_ops.layers import PerChannelNormalize, ViewAs
from auditai_ops.verify.engine import FALSIFIED, VERIFIED, Budget, Falsifier, LineVerifier

CPU = torch.device("cpu")
PIXEL_METHODS = [("IBP", "CROWN"), ("CROWN-IBP",), ("CROWN",), ("forward",), ("forward", "forward+backward")]


def random_pixel_network(seed: int) -> nn.Sequential:
    """Decoder 4 -> 1x16x16 (Linear, LeakyReLU, view, ConvTranspose2d, BatchNorm2d, Tanh, ConvTranspose2d, Sigmoid),
    normalisation, then a CNN (Conv2d, BatchNorm2d, ReLU, Flatten, Linear, BatchNorm1d, ReLU, Linear) with 3 classes."""
    torch.manual_seed(seed)
    network = nn.Sequential(
        nn.Linear(4, 8 * 4 * 4),
        nn.LeakyReLU(0.1),
        ViewAs((8, 4, 4)),
        nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1),
        nn.BatchNorm2d(4),
        nn.Tanh(),
        nn.ConvTranspose2d(4, 1, 4, stride=2, padding=1),
        nn.Sigmoid(),
        PerChannelNormalize([0.5], [0.25]),
        nn.Conv2d(1, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 12),
        nn.BatchNorm1d(12),
        nn.ReLU(),
        nn.Linear(12, 3),
    )
    with torch.no_grad():
        for module in network:
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
        network[0].weight.mul_(3.0)
        network[-1].weight.mul_(20.0)  # random nets are nearly constant; make the class depend on z
    return network.eval()


def _assert_sound(network: nn.Module, direction: np.ndarray, latents: np.ndarray, low: float, high: float, methods: tuple[str, ...]) -> np.ndarray:
    with torch.no_grad():
        targets = network(torch.from_numpy(latents)).argmax(dim=1).numpy()
    out = LineVerifier(network, direction, CPU, batch_size=16).verify(latents, targets, np.array([low]), np.array([high]), methods, Falsifier(9, 5, 2), Budget(8), 1e-5)
    ts = torch.linspace(low, high, 1000)
    d = torch.from_numpy(direction.astype(np.float32))
    with torch.no_grad():
        for row in np.flatnonzero(out.verdicts == VERIFIED):
            points = torch.from_numpy(latents[row])[None, :] + ts[:, None] * d
            assert (network(points).argmax(dim=1) == int(targets[row])).all(), f"verified sample {row} flips under sampling"
        for row in np.flatnonzero(out.verdicts == FALSIFIED):
            point = torch.from_numpy(latents[row]) + float(out.counterexample_t[row, 0]) * d
            assert int(network(point[None]).argmax()) != int(targets[row])
    return out.verdicts


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 1000), half_width=st.floats(0.05, 1.5), methods=st.sampled_from(PIXEL_METHODS))
def test_pixel_networks_are_never_contradicted(seed: int, half_width: float, methods: tuple[str, ...]) -> None:
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=4)
    direction /= np.linalg.norm(direction)
    latents = rng.normal(size=(16, 4)).astype(np.float32)
    _assert_sound(random_pixel_network(seed), direction, latents, -half_width, half_width, methods)


@pytest.mark.parametrize("seed", [1, 2])
def test_the_pixel_check_sees_both_verdicts(seed: int) -> None:
    """Not vacuous: narrow boxes verify, and over a wide box the samples whose class really changes are falsified."""
    rng = np.random.default_rng(seed)
    direction = np.array([1.0, 0.0, 0.0, 0.0])
    latents = rng.normal(size=(16, 4)).astype(np.float32)
    network = random_pixel_network(seed)
    narrow = _assert_sound(network, direction, latents, -0.01, 0.01, ("IBP", "CROWN"))
    wide = _assert_sound(network, direction, latents, -3.0, 3.0, ("IBP", "CROWN"))
    assert (narrow == VERIFIED).sum() >= 12
    assert (wide == FALSIFIED).sum() >= 1
