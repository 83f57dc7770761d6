"""The compiled path for two-hidden-layer ReLU heads (auditai_ops/verify/mlp_kernels.py).

It must give the general path's bounds (auditai_ops/verify/linear_bounds.py, `compiled=False`)
up to float32 rounding, hold against sampled margins, never prove a planted narrow failure, and
take only the networks it was written for.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

from auditai_ops.config import VerifyConfig
from auditai_ops.verify import mlp_kernels
from auditai_ops.verify.engine import margin_specification
from auditai_ops.verify.linear_bounds import affine_input, flatten_layers, latent_line_input, margin_lower_bounds

TOL = 1e-5
REFINE_BELOW = VerifyConfig().min_margin
"""The verifier's threshold (min over rows > it proves a box); a margin of exactly 0 (a dead network without biases) is common here."""


def _head(dim: int, hidden: tuple[int, int], outputs: int, bias: bool, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    first, second, last = nn.Linear(dim, hidden[0], bias=bias), nn.Linear(hidden[0], hidden[1], bias=bias), nn.Linear(hidden[1], outputs, bias=bias)
    with torch.no_grad():
        for layer in (first, second, last):
            layer.weight.mul_(2.0)  # more unstable neurons
    return nn.Sequential(first, nn.ReLU(), second, nn.ReLU(), last).eval()


@pytest.fixture
def compiled_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the compiled path's runs (a spy on its entry point)."""
    calls: list[int] = []
    run = mlp_kernels.two_layer_margin_bounds

    def spy(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return run(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(mlp_kernels, "two_layer_margin_bounds", spy)
    return calls


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**31 - 1),
    dim=st.integers(1, 8),
    hidden=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    outputs=st.integers(2, 6),
    bias=st.booleans(),
    width=st.floats(0.0, 2.0),
    pieces=st.integers(1, 3),
    rows=st.sampled_from(["every", "minimum_only", "refine_below"]),
    shared_spec=st.booleans(),
)
# Margins exactly 0 (every first-layer neuron dead over part of a box, no biases): with a threshold of 0, float32
# rounding put one path's bound just above it and the other's just below. Verdicts are compared away from such ties.
@example(seed=3, dim=2, hidden=(3, 32), outputs=2, bias=False, width=0.9609375, pieces=3, rows="refine_below", shared_spec=False)
def test_compiled_bounds_equal_the_general_path_and_hold(
    compiled_calls: list[int], seed: int, dim: int, hidden: tuple[int, int], outputs: int, bias: bool, width: float, pieces: int, rows: str, shared_spec: bool
) -> None:
    head = _head(dim, hidden, outputs, bias, seed)
    batch = 12
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, dim, generator=generator)
    direction = nn.functional.normalize(torch.randn(1, dim, generator=generator), dim=1)
    centre = torch.randn(batch, 1, generator=generator)
    t_low, t_high = centre - width * torch.rand(batch, 1, generator=generator), centre + width * torch.rand(batch, 1, generator=generator)
    ts = t_low + torch.linspace(0, 1, 501)[:, None, None] * (t_high - t_low)  # [501, B, 1], both ends included
    with torch.no_grad():
        values = head((z + ts * direction).reshape(-1, dim)).reshape(len(ts), batch, outputs)
    if shared_spec:  # margin specifications: samples sharing a target class share C (folded per run)
        C = margin_specification(values[0].argmax(dim=1), outputs)
    else:  # a C of its own per sample (folded per sample)
        C = torch.randn(batch, 3, outputs, generator=generator)
    options = {"every": {}, "minimum_only": {"minimum_only": True}, "refine_below": {"refine_below": REFINE_BELOW}}[rows]
    inputs = latent_line_input(z, direction)
    compiled = margin_lower_bounds(head, inputs, C, t_low, t_high, pieces=pieces, back_substitute=True, **options)  # type: ignore[arg-type]
    assert compiled_calls, "the compiled path ran"
    general = margin_lower_bounds(head, inputs, C, t_low, t_high, pieces=pieces, back_substitute=True, compiled=False, **options)  # type: ignore[arg-type]
    margins = torch.einsum("bsn,kbn->kbs", C, values).amin(dim=0)
    assert bool((compiled <= margins + TOL).all()), "sound: sampled margins lie above the bounds"
    if rows == "every":
        torch.testing.assert_close(compiled, general, rtol=1e-5, atol=TOL)
    elif rows == "minimum_only":  # the same minimum over rows (other rows may differ: which rows are refined follows ties of the forward bounds)
        torch.testing.assert_close(compiled.amin(dim=1), general.amin(dim=1), rtol=1e-5, atol=TOL)
    else:  # the same verdict, min > REFINE_BELOW, except where the exact minimum (every row) is within rounding of it:
        # a box stops at its first row <= REFINE_BELOW, so the minimum itself depends on which row came first
        exact = margin_lower_bounds(head, inputs, C, t_low, t_high, pieces=pieces, back_substitute=True, compiled=False).amin(dim=1)
        clear = (exact - REFINE_BELOW).abs() > TOL + 1e-5 * exact.abs()
        assert torch.equal((compiled.amin(dim=1) > REFINE_BELOW)[clear], (exact > REFINE_BELOW)[clear])
        assert torch.equal((general.amin(dim=1) > REFINE_BELOW)[clear], (exact > REFINE_BELOW)[clear])


def _narrow_failure(at: float, width: float) -> nn.Sequential:
    """Two ReLU layers on t: margin(t) = 1 - 3 spike(t), spike the triangle of height 1 on [at - width, at + width]."""
    first, second, last = nn.Linear(1, 3), nn.Linear(3, 2), nn.Linear(2, 2)
    with torch.no_grad():
        first.weight.fill_(1.0)
        first.bias.copy_(torch.tensor([-(at - width), -at, -(at + width)]))  # hinges at at - width, at, at + width
        second.weight.copy_(torch.tensor([[1.0, -2.0, 1.0], [0.0, 0.0, 0.0]]) / width)
        second.bias.copy_(torch.tensor([0.0, 1.0]))  # neuron 0: the spike; neuron 1: the constant 1
        last.weight.copy_(torch.tensor([[0.0, 1.0], [3.0, 0.0]]))
        last.bias.zero_()
    return nn.Sequential(first, nn.ReLU(), second, nn.ReLU(), last).eval()


@pytest.mark.parametrize("width", [1e-3, 1e-5])
def test_planted_narrow_failure_is_never_proved(compiled_calls: list[int], width: float) -> None:
    at = 0.123457  # on no grid of the split pieces
    head = _narrow_failure(at, width)
    with torch.no_grad():
        worst = head(torch.tensor([[at]]))
    lowest = (worst[0, 0] - worst[0, 1]).item()
    assert lowest == pytest.approx(-2.0, abs=1e-3)  # the planted counterexample
    inputs = affine_input(torch.zeros(3, 1), torch.ones(3, 1, 1))
    t_low, t_high = torch.tensor([[-1.0], [at - width], [at]]), torch.tensor([[1.0], [at + width], [at]])
    C = margin_specification(torch.zeros(3, dtype=torch.long), 2)
    for pieces in (1, 2, 7, 64, 501):
        for options in ({}, {"minimum_only": True}, {"refine_below": 0.0}):
            bound = margin_lower_bounds(head, inputs, C, t_low, t_high, pieces=pieces, back_substitute=True, **options)  # type: ignore[arg-type]
            assert bool((bound <= lowest + TOL).all()), f"pieces {pieces}, {options}: {bound.tolist()}"
    assert compiled_calls
    away = margin_lower_bounds(head, affine_input(torch.zeros(1, 1), torch.ones(1, 1, 1)), C[:1], torch.tensor([[-1.0]]), torch.tensor([[0.1]]), back_substitute=True)
    assert away.item() == pytest.approx(1.0, abs=1e-5), "away from the spike the margin (exactly 1) is proved: the bounds are not trivially loose"


def test_the_compiled_path_takes_only_its_networks() -> None:
    def flat(*modules: nn.Module) -> list[tuple[str, nn.Module]]:
        return flatten_layers(nn.Sequential(*modules))

    rows = torch.zeros(4, 2, 3)
    mlp = flat(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 2))
    assert mlp_kernels.applies(mlp, rows, interval=False)
    assert not mlp_kernels.applies(mlp, rows, interval=True)
    assert not mlp_kernels.applies(mlp, torch.zeros(4, 3, 3), interval=False), "k = 2: two slope rows"
    assert not mlp_kernels.applies(mlp, rows.double(), interval=False)
    assert not mlp_kernels.applies(flat(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 2)), rows, interval=False)
    assert not mlp_kernels.applies(flat(nn.Linear(3, 5), nn.LeakyReLU(0.1), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 2)), rows, interval=False)
    three = flat(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 5), nn.ReLU(), nn.Linear(5, 2))
    assert not mlp_kernels.applies(three, rows, interval=False)
    assert not mlp_kernels.applies([(name, copy.deepcopy(module).double()) for name, module in mlp], rows, interval=False), "float64 weights"


def test_torch_threads_are_restored_even_when_refinement_fails() -> None:
    head = _head(3, (8, 8), 3, True, 0)
    flat = flatten_layers(head)
    rows = torch.randn(100, 2, 3)
    C = margin_specification(torch.zeros(100, dtype=torch.long), 3)
    threads = torch.get_num_threads()
    low = mlp_kernels.two_layer_margin_bounds(flat, rows, C, 1, [(0, 100)], lambda forward, _: forward)
    assert low.shape == (100, 2) and torch.get_num_threads() == threads

    def failing(forward: torch.Tensor, back_substitute: mlp_kernels.BackSubstitute) -> torch.Tensor:
        raise ValueError("refinement failed")

    with pytest.raises(ValueError, match="refinement failed"):
        mlp_kernels.two_layer_margin_bounds(flat, rows, C, 1, [(0, 100)], failing)
    assert torch.get_num_threads() == threads


def test_a_forked_child_starts_its_own_worker_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """fork copies the pool but not its threads: in a child (another process id) the pool is made anew, not waited on forever."""
    parent = mlp_kernels._pool(1)
    assert mlp_kernels._pool(1) is parent
    monkeypatch.setattr(mlp_kernels.os, "getpid", lambda: -1)
    child = mlp_kernels._pool(1)
    assert child is not parent
    assert child.submit(lambda: 42).result(timeout=10) == 42
