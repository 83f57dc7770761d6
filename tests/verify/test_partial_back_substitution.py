"""The partial back-substitution (auditai_ops/verify/partial_back_substitution.py, used by linear_bounds).

Its checkpoint is chosen by cost, which small test networks never reach, so the soundness tests
force one (every activation output a candidate) and check, on random networks of every layer type
and on the MNIST pixel architecture, that the margins' lower bounds with it lie below 1,000
sampled margins, and that it proves every box the full back-substitution alone proves.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from auditai_ops.latent.vae import VAE, VAEArchitecture
from auditai_ops.layers import PerChannelNormalize, ViewAs
from auditai_ops.verify import linear_bounds as lb
from auditai_ops.verify import partial_back_substitution as pbs
from auditai_ops.verify.engine import margin_specification
from auditai_ops.verify.linear_bounds import flatten_layers, latent_line_input, margin_lower_bounds

TOL = 1e-5


def _cnn() -> nn.Sequential:
    """The example's pixel classifier (examples/mnist/train_pixel_cnn.py)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def _shapes(layers: list[nn.Module], example: torch.Tensor) -> list[tuple[int, ...]]:
    shapes = [tuple(example.shape[1:])]
    with torch.no_grad():
        for module in layers:
            example = module(example)
            shapes.append(tuple(example.shape[1:]))
    return shapes


def test_the_checkpoint_of_the_mnist_pixel_network_is_the_decoders_sigmoid() -> None:
    torch.manual_seed(0)
    layers = [module for _, module in flatten_layers([VAE(VAEArchitecture()).decoder.eval(), _cnn().eval()], torch.zeros(1, 16))]
    position = pbs.checkpoint(layers, _shapes(layers, torch.zeros(1, 16)))
    assert position is not None and isinstance(layers[position], nn.Sigmoid)


def test_small_networks_and_latent_heads_have_no_checkpoint() -> None:
    head = [nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)]
    assert pbs.checkpoint(head, _shapes(head, torch.zeros(1, 16))) is None
    tiny = [nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)]
    assert pbs.checkpoint(tiny, _shapes(tiny, torch.zeros(1, 4))) is None
    with pytest.raises(ValueError, match="shapes"):
        pbs.checkpoint(tiny, [(4,)])


def test_transpose_costs_count_multiply_adds() -> None:
    assert pbs.transpose_cost(nn.Linear(3, 5), (3,), (5,)) == 15
    assert pbs.transpose_cost(nn.Conv2d(2, 3, 4, stride=2, padding=1), (2, 8, 8), (3, 4, 4)) == 3 * 2 * 16 * 16
    assert pbs.transpose_cost(nn.ConvTranspose2d(3, 2, 4, stride=2, padding=1), (3, 4, 4), (2, 8, 8)) == 3 * 2 * 16 * 16
    assert pbs.transpose_cost(nn.ReLU(), (2, 3), (2, 3)) == 6
    assert pbs.transpose_cost(nn.Flatten(), (2, 3), (6,)) == 0


def _random_network(seed: int, activation: type[nn.Module]) -> nn.Sequential:
    """Decoder 4 -> 1x8x8 and a CNN, with every kind of layer between the checkpoint candidates."""
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(4)
    network = nn.Sequential(
        nn.Linear(4, 8 * 2 * 2),
        nn.ReLU(),
        ViewAs((8, 2, 2)),
        nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1),
        bn,
        activation(),
        nn.ConvTranspose2d(4, 1, 4, stride=2, padding=1),
        nn.Sigmoid(),
        PerChannelNormalize([0.5], [0.25]),
        nn.Conv2d(1, 6, 3, stride=2, padding=1),
        nn.LeakyReLU(0.1),
        nn.Conv2d(6, 5, 3, stride=1, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 12),
        nn.Tanh(),
        nn.Linear(12, 3),
    )
    with torch.no_grad():
        bn.running_mean.normal_(0.0, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
        network[0].weight.mul_(3.0)
        network[-1].weight.mul_(10.0)
    return network.eval()


@pytest.fixture
def checkpoints(monkeypatch: pytest.MonkeyPatch) -> list[int | None]:
    """The checkpoints that `margin_lower_bounds` chooses, recorded."""
    chosen: list[int | None] = []
    original = pbs.checkpoint

    def recording(modules, shapes):  # type: ignore[no-untyped-def]
        position = original(modules, shapes)
        chosen.append(position)
        return position

    monkeypatch.setattr(pbs, "checkpoint", recording)
    return chosen


@pytest.fixture
def every_checkpoint(monkeypatch: pytest.MonkeyPatch, checkpoints: list[int | None]) -> list[int | None]:
    """A checkpoint for any network with two activations or more, at the first candidate."""
    monkeypatch.setattr(pbs, "MIN_FULL_COST", 0)
    monkeypatch.setattr(pbs, "MAX_COST_SHARE", 1.0)
    return checkpoints


def _problem(network: nn.Module, seed: int, batch: int, half_width: float) -> tuple[lb.AffineBounds, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs, boxes, specification and the margins at 1,000 evenly spaced t per box ([1000, B, S])."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 4, generator=generator)
    direction = torch.nn.functional.normalize(torch.randn(1, 4, generator=generator), dim=1)
    low, high = torch.full((batch, 1), -half_width), torch.full((batch, 1), half_width)
    ts = torch.linspace(-half_width, half_width, 1000)
    with torch.no_grad():
        logits = torch.stack([network(z + float(t) * direction) for t in ts])  # [1000, B, n]
    targets = logits[len(ts) // 2].argmax(dim=1)
    C = margin_specification(targets, logits.shape[2])
    return latent_line_input(z, direction), low, high, C, torch.einsum("bsn,tbn->tbs", C, logits)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), half_width=st.floats(0.02, 1.0), activation=st.sampled_from([nn.ReLU, nn.Tanh, nn.Sigmoid]), interval=st.booleans())
def test_partial_bounds_are_sound_and_prove_what_the_full_one_proves(
    every_checkpoint: list[int | None], seed: int, half_width: float, activation: type[nn.Module], interval: bool
) -> None:
    network = _random_network(seed, activation)
    inputs, low, high, C, sampled = _problem(network, seed, 16, half_width)
    threshold = 1e-5
    every_checkpoint.clear()  # hypothesis runs every example with the same fixture
    full_only = margin_lower_bounds(network, inputs, C, low, high, back_substitute=True, refine_below=threshold, interval=interval, partial=False)
    assert every_checkpoint == []
    for full in (True, False):
        bounds = margin_lower_bounds(network, inputs, C, low, high, back_substitute=True, refine_below=threshold, interval=interval, full=full)
        assert every_checkpoint[-1] is not None
        excess = bounds - sampled.min(dim=0).values
        assert float(excess.max()) <= TOL, f"full={full}: a lower bound exceeds a sampled margin by {float(excess.max()):.3g}"
        if full:
            proved_before = full_only.min(dim=1).values > threshold
            proved_now = bounds.min(dim=1).values > threshold
            assert bool((proved_now | ~proved_before).all()), "the partial back-substitution lost a proof of the full one"


def test_partial_bounds_on_the_mnist_pixel_architecture(checkpoints: list[int | None]) -> None:
    """The example's decoder (random weights) and CNN along one direction; the checkpoint chosen by cost (not forced)."""
    torch.manual_seed(1)
    network = nn.Sequential(*[module for _, module in flatten_layers([VAE(VAEArchitecture()).decoder.eval(), _cnn().eval()], torch.zeros(1, 16))]).eval()
    with torch.no_grad():
        network[-1].weight.mul_(30.0)
    generator = torch.Generator().manual_seed(2)
    z = torch.randn(16, 16, generator=generator)
    direction = torch.nn.functional.normalize(torch.randn(1, 16, generator=generator), dim=1)
    low, high = torch.full((16, 1), -0.3), torch.full((16, 1), 0.3)
    ts = torch.linspace(-0.3, 0.3, 1000)
    with torch.no_grad():
        logits = torch.stack([network(z + float(t) * direction) for t in ts])
    C = margin_specification(logits[500].argmax(dim=1), 10)
    sampled = torch.einsum("bsn,tbn->tbs", C, logits).min(dim=0).values
    for full in (True, False):
        bounds = margin_lower_bounds(network, latent_line_input(z, direction), C, low, high, back_substitute=True, refine_below=1e-5, full=full)
        assert float((bounds - sampled).max()) <= TOL
    assert checkpoints[-1] is not None and isinstance(network[checkpoints[-1]], nn.Sigmoid)


@pytest.mark.parametrize("k", [2, 3])
def test_partial_bounds_along_several_directions(every_checkpoint: list[int | None], k: int) -> None:
    """Boxes of k directions (no exact first layer): the partial bounds still lie below every sampled margin."""
    network = _random_network(k, nn.Tanh)
    generator = torch.Generator().manual_seed(k)
    z = torch.randn(12, 4, generator=generator)
    directions = torch.randn(12, k, 4, generator=generator)
    low, high = -0.3 * torch.rand(12, k, generator=generator), 0.3 * torch.rand(12, k, generator=generator)
    ts = low + torch.rand(1000, 12, k, generator=generator) * (high - low)
    with torch.no_grad():
        logits = network((z + torch.einsum("nbk,bkd->nbd", ts, directions)).reshape(-1, 4)).reshape(1000, 12, -1)
    C = margin_specification(logits[0].argmax(dim=1), logits.shape[2])
    sampled = torch.einsum("bsn,tbn->tbs", C, logits).min(dim=0).values
    for full in (True, False):
        bounds = margin_lower_bounds(network, lb.affine_input(z, directions), C, low, high, back_substitute=True, refine_below=1e-5, full=full)
        assert every_checkpoint[-1] is not None
        assert float((bounds - sampled).max()) <= TOL
