"""Soundness and tightness of the low-dimensional forward bounds (auditai_ops/verify/linear_bounds.py).

Every case bounds a small random network whose input is affine in t, x(t) = z + t @ G, over
random boxes of k = 1, 2, 3 dimensions; the outputs at 1,000 sampled t per box (all 2^k corners
included) must lie within the bounds up to 1e-5. Each case runs forward bounds with and
without the interval propagated alongside, split into sub-boxes, and with CROWN-style
back-substitution of the specification.
"""

from __future__ import annotations

import copy
import itertools
import zlib
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from auditai_ops.latent.vae import VAE, Decoder, Encoder, VAEArchitecture
from auditai_ops.layers import PerChannelNormalize, UnsupportedLayerError, ViewAs
from auditai_ops.verify import linear_bounds as lb
from auditai_ops.verify.engine import margin_specification
from auditai_ops.verify.line_model import LatentLine
from auditai_ops.verify.linear_bounds import (
    AffineBounds,
    affine,
    affine_input,
    affine_output_bounds,
    concretize,
    driver,
    flatten_layers,
    kinks,
    latent_line_input,
    margin_lower_bounds,
    output_bounds,
    relaxations,
    specification,
    split_box,
)
from auditai_ops.verify.linear_bounds.state import _State
from auditai_ops.verify.lirpa_compat import build_bounded_module, compute_margin_lower_bounds

TOL = 1e-5
SAMPLES = 1000
BOXES = 3
DIM = 3
MODES: dict[str, dict[str, object]] = {
    "forward": {"interval": False},
    "forward+interval": {"interval": True},
    "pieces3": {"interval": True, "pieces": 3},
    "back-substitute": {"interval": True, "back_substitute": True},
    "back-substitute+pieces2": {"interval": False, "back_substitute": True, "pieces": 2},
    "back-substitute, minimum only": {"interval": False, "back_substitute": True, "minimum_only": True},
}


def _random_bn(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Module:
    with torch.no_grad():
        bn.running_mean.normal_(0.0, 0.5)
        bn.running_var.uniform_(0.3, 2.0)
        bn.weight.normal_(1.0, 0.5)
        bn.bias.normal_(0.0, 0.5)
    return bn.eval()


def _mlp(act: Callable[[], nn.Module]) -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, 8), act(), nn.Linear(8, 8), act(), nn.Linear(8, 4))


def _conv(act: Callable[[], nn.Module]) -> nn.Module:
    return nn.Sequential(nn.Linear(DIM, 2 * 4 * 4), act(), ViewAs((2, 4, 4)), nn.Conv2d(2, 3, 3, padding=1), act(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4))


CASES: dict[str, Callable[[], nn.Module]] = {
    "Linear": lambda: nn.Sequential(nn.Linear(DIM, 6), nn.Linear(6, 4)),
    "Linear-no-bias": lambda: nn.Sequential(nn.Linear(DIM, 6, bias=False), nn.ReLU(), nn.Linear(6, 4, bias=False)),
    "Conv2d": lambda: _conv(nn.ReLU),
    "Conv2d-stride-dilation-groups": lambda: nn.Sequential(
        nn.Linear(DIM, 4 * 6 * 6), nn.ReLU(), ViewAs((4, 6, 6)), nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 4)
    ),
    "Conv2d-reflect-padding": lambda: nn.Sequential(
        nn.Linear(DIM, 2 * 4 * 4), nn.Tanh(), ViewAs((2, 4, 4)), nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)
    ),
    "ConvTranspose2d": lambda: nn.Sequential(
        nn.Linear(DIM, 2 * 3 * 3),
        nn.ReLU(),
        ViewAs((2, 3, 3)),
        nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1),  # -> 6x6
        nn.ReLU(),
        nn.Conv2d(3, 2, 3, stride=2),  # -> 2x2
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 4),
    ),
    "ConvTranspose2d-k4s2p1": lambda: nn.Sequential(
        nn.Linear(DIM, 4 * 3 * 3),
        nn.ReLU(),
        ViewAs((4, 3, 3)),
        nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1),  # -> 6x6, as the VAE decoder
        nn.ReLU(),
        nn.ConvTranspose2d(2, 1, 4, 2, 1),  # -> 12x12
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(144, 4),
    ),
    "ConvTranspose2d-groups-dilation": lambda: nn.Sequential(
        nn.Linear(DIM, 4 * 3 * 3),
        nn.ReLU(),
        ViewAs((4, 3, 3)),
        nn.ConvTranspose2d(4, 2, 3, stride=3, padding=1, output_padding=2, groups=2, dilation=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.LazyLinear(4),
    ),
    "BatchNorm1d": lambda: nn.Sequential(nn.Linear(DIM, 8), _random_bn(nn.BatchNorm1d(8)), nn.ReLU(), nn.Linear(8, 4)),
    "BatchNorm2d": lambda: nn.Sequential(
        nn.Linear(DIM, 2 * 4 * 4), ViewAs((2, 4, 4)), nn.Conv2d(2, 3, 3), _random_bn(nn.BatchNorm2d(3)), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 2 * 2, 4)
    ),
    "PerChannelNormalize": lambda: nn.Sequential(
        nn.Linear(DIM, 2 * 3 * 3), nn.Sigmoid(), ViewAs((2, 3, 3)), PerChannelNormalize([0.5, 0.1], [0.25, 2.0]), nn.Conv2d(2, 2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4)
    ),
    "ReLU": lambda: _mlp(nn.ReLU),
    "LeakyReLU": lambda: _mlp(lambda: nn.LeakyReLU(0.1)),
    "LeakyReLU-slope-above-1": lambda: _mlp(lambda: nn.LeakyReLU(1.7)),
    "Sigmoid": lambda: _mlp(nn.Sigmoid),
    "Tanh": lambda: _mlp(nn.Tanh),
    "Sigmoid-after-conv": lambda: _conv(nn.Sigmoid),
    "Tanh-after-conv": lambda: _conv(nn.Tanh),
    "Flatten": lambda: nn.Sequential(nn.Linear(DIM, 12), ViewAs((3, 2, 2)), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)),
    "Identity": lambda: nn.Sequential(nn.Linear(DIM, 8), nn.Identity(), nn.ReLU(), nn.Linear(8, 4)),
    "activation-output": lambda: nn.Sequential(nn.Linear(DIM, 8), nn.ReLU(), nn.Linear(8, 4), nn.Tanh()),
    "image-output": lambda: nn.Sequential(nn.Linear(DIM, 2 * 3 * 3), nn.ReLU(), ViewAs((2, 3, 3)), nn.Conv2d(2, 1, 2), nn.Sigmoid()),
    "nested-containers": lambda: nn.Sequential(nn.Sequential(nn.Linear(DIM, 8), nn.ReLU()), Decoder(VAEArchitecture(8, 8, 8, (2, 3))), nn.Flatten(), nn.Linear(64, 4)),
}


def _model(case: str) -> nn.Module:
    torch.manual_seed(zlib.crc32(case.encode()))
    model = CASES[case]().eval()
    with torch.no_grad():
        model(torch.zeros(1, DIM))  # materialise lazy layers
        for module in model.modules():  # larger weights: more unstable neurons, more curvature
            if isinstance(module, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
                module.weight.mul_(1.5)
    return model


def _problem(seed: int, k: int, batch: int = BOXES, dim: int = DIM, width: float = 0.6) -> tuple[AffineBounds, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, dim, generator=gen)
    directions = torch.randn(batch, k, dim, generator=gen)
    centre = 0.3 * torch.randn(batch, k, generator=gen)
    radius = width * torch.rand(batch, k, generator=gen) + 0.02
    if batch > 1:
        radius[0, 0] = 0.0  # a degenerate axis
    return affine_input(z, directions), centre - radius, centre + radius, z, directions


def _sample_t(t_low: torch.Tensor, t_high: torch.Tensor, n: int = SAMPLES, seed: int = 0) -> torch.Tensor:
    """[n, B, k]: all 2^k corners of every box, then uniform samples."""
    k = t_low.shape[1]
    corners = torch.tensor(list(itertools.product((0.0, 1.0), repeat=k))).reshape(-1, k)
    u = torch.cat([corners, torch.rand(n - len(corners), k, generator=torch.Generator().manual_seed(seed))])
    return t_low + u[:, None, :] * (t_high - t_low)


@torch.no_grad()
def _outputs(model: nn.Module, z: torch.Tensor, directions: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """[n, B, n_out] outputs at x = z + t @ G (flattened per sample)."""
    n, batch = ts.shape[:2]
    x = z + torch.einsum("nbk,bkd->nbd", ts, directions)
    return model(x.reshape(n * batch, -1)).reshape(n, batch, -1)


def _assert_within(values: torch.Tensor, low: torch.Tensor, high: torch.Tensor | None, label: str) -> None:
    high = torch.full_like(low, float("inf")) if high is None else high
    assert torch.isfinite(low).all() and not torch.isnan(high).any(), label
    excess = torch.maximum(low - values, values - high)
    violations = int((excess > TOL).sum())
    assert violations == 0, f"{label}: {violations} of {excess.numel()} sampled outputs outside the bounds (worst excess {excess.max().item():.3g})"


def _box_bounds(model: nn.Module, inputs: AffineBounds, t_low: torch.Tensor, t_high: torch.Tensor, n_out: int, mode: dict[str, object]) -> tuple[torch.Tensor, torch.Tensor]:
    """Output bounds: via output_bounds for forward modes, via C = [I; -I] for back-substitution."""
    if not mode.get("back_substitute"):
        low, high = output_bounds(model, inputs, t_low, t_high, **mode)  # type: ignore[arg-type]
        return low.flatten(1), high.flatten(1)
    eye = torch.eye(n_out)
    C = torch.cat([eye, -eye]).expand(inputs.batch, 2 * n_out, n_out)
    bounds = margin_lower_bounds(model, inputs, C, t_low, t_high, **mode)  # type: ignore[arg-type]
    return bounds[:, :n_out], -bounds[:, n_out:]


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("case", list(CASES))
def test_sampled_outputs_lie_within_bounds(case: str, k: int) -> None:
    model = _model(case)
    inputs, t_low, t_high, z, directions = _problem(zlib.crc32(f"{case}/{k}".encode()), k)
    values = _outputs(model, z, directions, _sample_t(t_low, t_high))
    for name, mode in MODES.items():
        low, high = _box_bounds(model, inputs, t_low, t_high, values.shape[2], mode)
        _assert_within(values, low, high, f"{case} / k={k} / {name}")


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("case", ["ReLU", "Tanh-after-conv", "ConvTranspose2d", "BatchNorm2d"])
def test_affine_output_bounds_hold_pointwise(case: str, k: int) -> None:
    """The linear functions themselves (not only their ranges) bound the outputs at every sampled t."""
    model = _model(case)
    inputs, t_low, t_high, z, directions = _problem(11 * k, k)
    ts = _sample_t(t_low, t_high)
    values = _outputs(model, z, directions, ts)
    bounds = affine_output_bounds(model, inputs, t_low, t_high)
    for i in range(0, SAMPLES, 97):
        lower, upper = bounds.evaluate(ts[i])
        _assert_within(values[i], lower.flatten(1), upper.flatten(1), f"{case} / k={k} / t sample {i}")


def test_margins_with_margin_specification_and_random_C() -> None:
    """Grouped (samples sharing C) and per-sample folding; random C never groups."""
    model = _model("Tanh")
    inputs, t_low, t_high, z, directions = _problem(5, 2, batch=40)
    values = _outputs(model, z, directions, _sample_t(t_low, t_high))
    targets = values[0].argmax(dim=1)
    for C in (margin_specification(targets, 4), torch.randn(40, 5, 4)):
        margins = torch.einsum("bsn,kbn->kbs", C, values)
        for mode in MODES.values():
            _assert_within(margins, margin_lower_bounds(model, inputs, C, t_low, t_high, **mode), None, f"C {tuple(C.shape)} / {mode}")  # type: ignore[arg-type]


def test_grouped_and_per_sample_folding_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model("ReLU")
    inputs, t_low, t_high, z, directions = _problem(6, 1, batch=64)
    targets = _outputs(model, z, directions, t_low[None])[0].argmax(dim=1)
    C = margin_specification(targets, 4)
    for mode in MODES.values():
        grouped = margin_lower_bounds(model, inputs, C, t_low, t_high, **mode)  # type: ignore[arg-type]
        monkeypatch.setattr(specification, "_group_samples", lambda c: None)
        single = margin_lower_bounds(model, inputs, C, t_low, t_high, **mode)  # type: ignore[arg-type]
        monkeypatch.undo()
        torch.testing.assert_close(grouped, single, rtol=1e-5, atol=1e-5)
        chunked = margin_lower_bounds(model, inputs, C, t_low, t_high, max_boxes=10, **mode)  # type: ignore[arg-type]
        torch.testing.assert_close(grouped, chunked, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Hand-computable cases


def test_linear_network_bounds_are_exact() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Linear(5, 2)).eval()
    z, directions = torch.randn(4, 3), torch.randn(4, 2, 3)
    t_low, t_high = -torch.rand(4, 2), torch.rand(4, 2)
    inputs = affine_input(z, directions)
    with torch.no_grad():
        weight = model[1].weight @ model[0].weight
        bias = model[1].weight @ model[0].bias + model[1].bias
    coeff = torch.einsum("od,bkd->bko", weight, directions)
    centre = z @ weight.T + bias
    bounds = affine_output_bounds(model, inputs, t_low, t_high)
    for got in (bounds.lower_coeff, bounds.upper_coeff):
        torch.testing.assert_close(got, coeff, rtol=1e-5, atol=1e-5)
    for got in (bounds.lower_bias, bounds.upper_bias):
        torch.testing.assert_close(got, centre, rtol=1e-5, atol=1e-5)
    corners = _sample_t(t_low, t_high, 4)  # exactly the corners for k = 2
    values = _outputs(model, z, directions, corners)
    low, high = output_bounds(model, inputs, t_low, t_high)
    torch.testing.assert_close(low, values.min(dim=0).values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(high, values.max(dim=0).values, rtol=1e-5, atol=1e-5)


def test_relu_of_t_on_minus_one_two() -> None:
    """relu(t), t in [-1, 2]: range [0, 2]; upper line the chord (2/3)(t + 1); lower line t (2 > 1)."""
    inputs = affine_input(torch.zeros(1, 1), torch.ones(1, 1, 1))
    t_low, t_high = torch.tensor([[-1.0]]), torch.tensor([[2.0]])
    relu = nn.Sequential(nn.ReLU())
    low, high = output_bounds(relu, inputs, t_low, t_high, interval=True)  # the interval track: relu([-1, 2])
    assert (low.item(), high.item()) == pytest.approx((0.0, 2.0), abs=1e-6)
    low, high = output_bounds(relu, inputs, t_low, t_high, interval=False)  # the lines' range only
    assert (low.item(), high.item()) == pytest.approx((-1.0, 2.0), abs=1e-6)
    bounds = affine_output_bounds(relu, inputs, t_low, t_high, interval=False)
    assert bounds.upper_coeff.item() == pytest.approx(2 / 3, abs=1e-6)
    assert bounds.upper_bias.item() == pytest.approx(2 / 3, abs=1e-6)
    assert (bounds.lower_coeff.item(), bounds.lower_bias.item()) == pytest.approx((1.0, 0.0), abs=1e-6)
    # Split at t = 0.5: [-1, 0.5] (slope 0 below, chord 0.5 / 1.5) and [0.5, 2] (exact).
    low, high = output_bounds(relu, inputs, t_low, t_high, pieces=2, interval=False)
    assert (low.item(), high.item()) == pytest.approx((0.0, 2.0), abs=1e-6)


def test_relu_interval_track_is_exact_at_the_output() -> None:
    inputs = affine_input(torch.zeros(1, 1), torch.ones(1, 1, 1))
    t_low, t_high = torch.tensor([[-1.0]]), torch.tensor([[2.0]])
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU())
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(0.0)
    low, high = output_bounds(model, inputs, t_low, t_high, interval=True)
    assert (low.item(), high.item()) == pytest.approx((0.0, 2.0), abs=1e-6)


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_s_shaped_lines_are_valid_on_random_intervals(name: str) -> None:
    """The relaxation lines alone, on 20,000 random intervals of every kind (convex, concave, mixed, tiny)."""
    gen = torch.Generator().manual_seed(3)
    centre = 4 * torch.randn(20_000, generator=gen)
    radius = torch.rand(20_000, generator=gen) * torch.tensor([0.0, 1e-6, 1e-3, 0.5, 3.0, 10.0])[torch.randint(0, 6, (20_000,), generator=gen)]
    lo, hi = centre - radius, centre + radius
    function = torch.sigmoid if name == "sigmoid" else torch.tanh
    x = lo + torch.linspace(0, 1, 201)[:, None] * (hi - lo)
    y = function(x)
    for upper in (True, False):
        s, b = relaxations._s_shaped_lines(name, lo, hi, upper)
        assert b is not None and bool((s >= 0).all())
        line = s * x + b
        gap = (y - line) if upper else (line - y)
        assert gap.max().item() <= 1e-6, f"{name} upper={upper}: worst violation {gap.max().item():.3g}"


@pytest.mark.parametrize("slope", [0.0, 0.01, 0.5, 1.0, 3.0])
def test_relu_like_lines_are_valid(slope: float) -> None:
    gen = torch.Generator().manual_seed(4)
    lo = 3 * torch.randn(5_000, generator=gen)
    hi = lo + 3 * torch.rand(5_000, generator=gen) * (torch.rand(5_000, generator=gen) > 0.1)
    x = lo + torch.linspace(0, 1, 101)[:, None] * (hi - lo)
    y = torch.where(x >= 0, x, slope * x)
    module = nn.ReLU() if slope == 0.0 else nn.LeakyReLU(slope)
    for upper in (True, False):
        s, b = relaxations._lines(module, lo, hi, upper)
        line = s * x + (0.0 if b is None else b)
        gap = (y - line) if upper else (line - y)
        assert bool((s >= 0).all()) and gap.max().item() <= 1e-5


# --------------------------------------------------------------------------------------------
# Property test: random MLP heads 6-16-16-4, random boxes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(1, 3),
    activation=st.sampled_from(["relu", "leaky", "sigmoid", "tanh"]),
    width=st.floats(0.0, 2.0),
    pieces=st.integers(1, 3),
    interval=st.booleans(),
    back=st.booleans(),
)
def test_property_random_heads(seed: int, k: int, activation: str, width: float, pieces: int, interval: bool, back: bool) -> None:
    torch.manual_seed(seed)
    act = {"relu": nn.ReLU, "leaky": lambda: nn.LeakyReLU(0.2), "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[activation]
    head = nn.Sequential(nn.Linear(6, 16), act(), nn.Linear(16, 16), act(), nn.Linear(16, 4)).eval()
    z = torch.randn(4, 6)
    directions = nn.functional.normalize(torch.randn(k, 6), dim=1)
    centre = torch.randn(4, k)
    radius = width * torch.rand(4, k)
    t_low, t_high = centre - radius, centre + radius
    ts = _sample_t(t_low, t_high, seed=seed % 1000)
    values = _outputs(head, z, directions.expand(4, k, 6), ts)
    targets = values[0].argmax(dim=1)
    C = margin_specification(targets, 4)
    margins = torch.einsum("bsn,kbn->kbs", C, values)
    bounds = margin_lower_bounds(head, latent_line_input(z, directions), C, t_low, t_high, pieces=pieces, interval=interval, back_substitute=back)
    _assert_within(margins, bounds, None, f"seed {seed}")
    low, high = output_bounds(head, latent_line_input(z, directions), t_low, t_high, pieces=pieces, interval=interval)
    _assert_within(values, low, high, f"seed {seed} outputs")


# --------------------------------------------------------------------------------------------
# Back-substitution that ends exactly at the first activation (k = 1, piecewise-linear)


def _abs_minus_half(depth: int) -> nn.Module:
    """|t| - 1/2 as relu(t) + relu(-t) - 1/2; depth 2 adds a ReLU that stays active (input |t| + 10) and a Linear after it."""
    first = nn.Linear(1, 2)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0], [-1.0]]))
        first.bias.zero_()
    if depth == 1:
        last = nn.Linear(2, 1)
        with torch.no_grad():
            last.weight.fill_(1.0)
            last.bias.fill_(-0.5)
        return nn.Sequential(first, nn.ReLU(), last).eval()
    middle, last = nn.Linear(2, 1), nn.Linear(1, 1)
    with torch.no_grad():
        middle.weight.fill_(1.0)
        middle.bias.fill_(10.0)
        last.weight.fill_(1.0)
        last.bias.fill_(-10.5)
    return nn.Sequential(first, nn.ReLU(), middle, nn.ReLU(), last).eval()


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("sparse", [True, False])
def test_kinks_give_the_exact_minimum_where_crown_cannot(depth: int, sparse: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """min of |t| - 1/2 on [-1, 2] is -1/2 (at t = 0). CROWN relaxes relu(t) by t (2 > 1) and relu(-t) by 0: -3/2 at t = -1."""
    monkeypatch.setattr(affine, "_SPARSE_GAP_DENSITY", 1.0 if sparse else 0.0)  # depth 2: the Linear after the ReLU, sparse or dense
    model = _abs_minus_half(depth)
    inputs = affine_input(torch.zeros(1, 1), torch.ones(1, 1, 1))
    t_low, t_high = torch.tensor([[-1.0]]), torch.tensor([[2.0]])
    C = torch.ones(1, 1, 1)
    for compiled in (False, True):  # depth 2 with compiled: auditai_ops/verify/mlp_kernels.py
        exact = margin_lower_bounds(model, inputs, C, t_low, t_high, back_substitute=True, compiled=compiled)
        assert exact.item() == pytest.approx(-0.5, abs=1e-6)
        assert exact.item() <= -0.5
    forward = margin_lower_bounds(model, inputs, C, t_low, t_high)
    assert forward.item() == pytest.approx(-1.5, abs=1e-5)
    monkeypatch.setattr(driver, "_MAX_KINKS", -1)  # no exact ending: CROWN's relaxation of the first ReLU (on the general path)
    assert margin_lower_bounds(model, inputs, C, t_low, t_high, back_substitute=True, compiled=False).item() == pytest.approx(-1.5, abs=1e-5)


def _exact_minimum(
    first: nn.Linear, last: nn.Module, act: nn.Module, z: torch.Tensor, direction: torch.Tensor, t_low: torch.Tensor, t_high: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """min over t of C f(z + t d) for f = last o act o first, one hidden layer: at the kinks of the hidden neurons or the ends, in float64."""
    weight, bias = first.weight.double(), first.bias.double()
    centre, slope = z.double() @ weight.T + bias, direction.double() @ weight.T  # x(t) = centre + t slope
    kinks = (-centre / slope).clamp(t_low.double(), t_high.double())  # [B, H]
    points = torch.cat([kinks, t_low.double(), t_high.double()], dim=1)  # [B, P]
    hidden = act(centre[:, None, :] + points[..., None] * slope[:, None, :])
    outputs = copy.deepcopy(last).double()(hidden)  # [B, P, n_out]
    return torch.einsum("bsn,bpn->bps", C.double(), outputs).amin(dim=1)


@pytest.mark.parametrize("activation", ["relu", "leaky", "leaky-steep"])
def test_one_hidden_layer_bounds_are_the_exact_minimum(activation: str) -> None:
    """With one activation, back-substitution ends at it exactly: the bound is the true minimum (the network is piecewise linear in t)."""
    torch.manual_seed(7)
    act = {"relu": nn.ReLU(), "leaky": nn.LeakyReLU(0.1), "leaky-steep": nn.LeakyReLU(2.5)}[activation]
    first, last = nn.Linear(6, 40), nn.Linear(40, 5)
    model = nn.Sequential(first, act, last).eval()
    z, direction = torch.randn(32, 6), nn.functional.normalize(torch.randn(1, 6), dim=1)
    t_low = -torch.rand(32, 1) * 2
    t_high = t_low + torch.rand(32, 1) * 3
    C = torch.randn(32, 7, 5)
    exact = _exact_minimum(first, last, act, z, direction, t_low, t_high, C)
    for options in ({}, {"minimum_only": True}, {"pieces": 3}):
        bound = margin_lower_bounds(model, latent_line_input(z, direction), C, t_low, t_high, back_substitute=True, **options)  # type: ignore[arg-type]
        assert bool((bound.double() <= exact + 1e-5).all()), "sound"
        if not options:
            torch.testing.assert_close(bound.double(), exact, rtol=0, atol=2e-5)
        else:
            torch.testing.assert_close(bound.double().amin(dim=1), exact.amin(dim=1), rtol=0, atol=2e-5)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    hidden=st.lists(st.integers(3, 24), min_size=1, max_size=3),
    leaky=st.booleans(),
    width=st.floats(0.0, 2.0),
    pieces=st.integers(1, 3),
    rows=st.sampled_from(["every", "minimum_only", "refine_below"]),
    sparse=st.booleans(),
)
def test_property_exact_first_layer(seed: int, hidden: list[int], leaky: bool, width: float, pieces: int, rows: str, sparse: bool) -> None:
    """Random ReLU / LeakyReLU MLPs, k = 1: sampled margins lie above the bounds, the exact ending is never looser than relaxing
    the first layer, and the sparse and dense products after it agree."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    size = 5
    for width_out in hidden:
        layers += [nn.Linear(size, width_out), nn.LeakyReLU(0.3) if leaky else nn.ReLU()]
        size = width_out
    head = nn.Sequential(*layers, nn.Linear(size, 4)).eval()
    z, direction = torch.randn(6, 5), nn.functional.normalize(torch.randn(1, 5), dim=1)
    centre = torch.randn(6, 1)
    t_low, t_high = centre - width * torch.rand(6, 1), centre + width * torch.rand(6, 1)
    values = _outputs(head, z, direction.expand(6, 1, 5), _sample_t(t_low, t_high, seed=seed % 1000))
    C = margin_specification(values[0].argmax(dim=1), 4)
    margins = torch.einsum("bsn,kbn->kbs", C, values)
    options = {"every": {}, "minimum_only": {"minimum_only": True}, "refine_below": {"refine_below": 0.0}}[rows]
    inputs = latent_line_input(z, direction)

    def bound(density: float, kinks: int) -> torch.Tensor:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(affine, "_SPARSE_GAP_DENSITY", density)
            patch.setattr(driver, "_MAX_KINKS", kinks)
            return margin_lower_bounds(head, inputs, C, t_low, t_high, pieces=pieces, back_substitute=True, compiled=False, **options)  # type: ignore[arg-type]

    exact = bound(1.0 if sparse else 0.0, driver._MAX_KINKS)
    _assert_within(margins, exact, None, f"seed {seed}")
    torch.testing.assert_close(exact, bound(0.0 if sparse else 1.0, driver._MAX_KINKS), rtol=1e-4, atol=1e-5)
    if rows != "refine_below":  # (which stops at the first row that fails, a different row with other relaxations)
        assert bool((exact.amin(dim=1) >= bound(1.0, -1).amin(dim=1) - 1e-5).all()), "exact ending at least as tight as CROWN's relaxation"


@pytest.mark.parametrize("slope", [0.0, 0.2, 2.0])
def test_lines_coincide_where_the_input_does_not_cross_zero(slope: float) -> None:
    """The sparse products rely on it: a piecewise-linear activation's two lines are identical (bit for bit) unless lo < 0 < hi."""
    gen = torch.Generator().manual_seed(5)
    special = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e-30, 3.0, -3.0])
    lo = torch.cat([3 * torch.randn(5000, generator=gen), special, special])
    hi = torch.cat([lo[:5000] + 3 * torch.rand(5000, generator=gen) * (torch.rand(5000, generator=gen) > 0.2), special, special.flip(0).abs()])
    hi = torch.maximum(hi, lo)
    module = nn.ReLU() if slope == 0.0 else nn.LeakyReLU(slope)
    s_lo, b_lo = relaxations._lines(module, lo, hi, upper=False)
    s_up, b_up = relaxations._lines(module, lo, hi, upper=True)
    stable = ~((lo < 0) & (hi > 0))
    assert bool(stable.any()) and bool((~stable).any())
    assert torch.equal(s_lo[stable], s_up[stable])
    for intercept in (b_lo, b_up):
        assert intercept is None or bool((intercept[stable] == 0).all())


def test_exact_relu_lines_match_the_generic_ones() -> None:
    """`_exact_relu` (and the fused ReLU + Linear) relax exactly as `_relu_lines` over [low, high]."""
    torch.manual_seed(3)
    rows = torch.randn(50, 2, 30)
    state = _State(rows, None, 1)
    new, low, high, (lower_slope, _, upper_slope, upper_intercept) = kinks._exact_relu(state)
    generic_lo, _ = lb._relu_lines(low, high, upper=False)
    generic_up, generic_b = lb._relu_lines(low, high, upper=True)
    assert torch.equal(lower_slope, generic_lo)
    torch.testing.assert_close(upper_slope, generic_up, rtol=1e-6, atol=0)
    assert generic_b is not None
    torch.testing.assert_close(upper_intercept, generic_b, rtol=1e-5, atol=1e-7)
    linear = nn.Linear(30, 8)
    fused, _, _ = kinks._exact_relu_linear(kinks._ExactRelu.of(state), 1, linear)
    dense = affine._affine(new, F.linear, linear.weight, linear.bias)
    torch.testing.assert_close(fused.lower, dense.lower, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fused.upper, dense.upper, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# A planted narrow failure is never proved


def _narrow_failure(at: float, width: float, depth: float) -> nn.Module:
    """Margin (logit 0 - logit 1) = 1 everywhere except a spike of width `width` at t = `at`, where it reaches 1 - depth < 0."""
    half = width / 2
    first = nn.Linear(1, 3)
    second = nn.Linear(3, 2)
    with torch.no_grad():
        first.weight.fill_(1.0)
        first.bias.copy_(torch.tensor([-(at - half), -at, -(at + half)]))
        scale = depth / half
        second.weight.copy_(torch.tensor([[-scale, 2 * scale, -scale], [0.0, 0.0, 0.0]]))
        second.bias.copy_(torch.tensor([1.0, 0.0]))
    last = nn.Linear(2, 2)
    with torch.no_grad():
        last.weight.copy_(torch.eye(2))
        last.bias.zero_()
    return nn.Sequential(first, nn.ReLU(), second, nn.Tanh(), last).eval()


@pytest.mark.parametrize("width", [1e-3, 1e-5])
def test_planted_narrow_failure_is_never_proved(width: float) -> None:
    at = 0.123457  # not on any grid of the split pieces
    head = _narrow_failure(at, width, 3.0)
    inputs = affine_input(torch.zeros(2, 1), torch.ones(2, 1, 1))
    t_low, t_high = torch.tensor([[-1.0], [at - width]]), torch.tensor([[1.0], [at + width]])
    C = margin_specification(torch.zeros(2, dtype=torch.long), 2)
    with torch.no_grad():
        worst = head(torch.tensor([[at]]))
    assert (worst[0, 0] - worst[0, 1]).item() < 0  # the planted counterexample
    for pieces in (1, 2, 7, 64, 501):
        for mode in MODES.values():
            options = {**mode, "pieces": pieces}
            bound = margin_lower_bounds(head, inputs, C, t_low, t_high, **options)  # type: ignore[arg-type]
            assert (bound <= (worst[0, 0] - worst[0, 1]).item() + TOL).all(), f"pieces {pieces}, {mode}: {bound.tolist()}"


def test_planted_failure_is_proved_away_from_it() -> None:
    """The same head is provable where the spike is not: bounds are not trivially loose."""
    head = _narrow_failure(0.5, 1e-3, 3.0)
    inputs = affine_input(torch.zeros(1, 1), torch.ones(1, 1, 1))
    C = margin_specification(torch.zeros(1, dtype=torch.long), 2)
    bound = margin_lower_bounds(head, inputs, C, torch.tensor([[-1.0]]), torch.tensor([[0.4]]), back_substitute=True)
    assert bound.item() > 0


# --------------------------------------------------------------------------------------------
# Against auto_LiRPA


@pytest.fixture(scope="module")
def lirpa_problem() -> dict[str, object]:
    torch.manual_seed(21)
    head = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    direction = nn.functional.normalize(torch.randn(1, 16), dim=1)
    z = torch.randn(32, 16)
    with torch.no_grad():
        targets = head(z).argmax(dim=1)
    low = torch.full((32, 1), -0.5)
    line = LatentLine(head, direction).eval()
    bounded = build_bounded_module(line, (torch.zeros(2, 1), z[:2]))
    C = margin_specification(targets, 10)
    lirpa = {method: compute_margin_lower_bounds(bounded, (low * 0, z), low, -low, C, method) for method in ("IBP", "CROWN")}
    return {"head": head, "direction": direction, "z": z, "C": C, "low": low, "lirpa": lirpa}


def test_at_least_as_tight_as_ibp_and_compared_with_crown(lirpa_problem: dict[str, object]) -> None:
    head, direction, z, C, low = (lirpa_problem[key] for key in ("head", "direction", "z", "C", "low"))
    lirpa = lirpa_problem["lirpa"]
    assert isinstance(head, nn.Module) and isinstance(z, torch.Tensor) and isinstance(C, torch.Tensor) and isinstance(low, torch.Tensor) and isinstance(lirpa, dict)
    assert isinstance(direction, torch.Tensor)
    inputs = latent_line_input(z, direction)
    ours = {
        "forward": margin_lower_bounds(head, inputs, C, low, -low),
        "forward+interval": margin_lower_bounds(head, inputs, C, low, -low, interval=True),
        "forward, 4 pieces": margin_lower_bounds(head, inputs, C, low, -low, pieces=4),
        "back-substitute": margin_lower_bounds(head, inputs, C, low, -low, back_substitute=True, interval=False),
        "back-substitute+interval": margin_lower_bounds(head, inputs, C, low, -low, back_substitute=True),
    }
    ibp, crown = lirpa["IBP"], lirpa["CROWN"]
    print(f"\nmean margin lower bound: auto_LiRPA IBP {ibp.mean():.4f}, CROWN {crown.mean():.4f}; " + ", ".join(f"ours {k} {v.mean():.4f}" for k, v in ours.items()))
    # With the interval propagated alongside, every interval is inside IBP's: never looser than IBP.
    assert (ours["forward+interval"] >= ibp - 1e-4).all()
    # Back-substitution over forward intermediate bounds: on two hidden layers these equal CROWN's.
    # (Tighter intermediate intervals can flip CROWN's adaptive lower slopes either way: with the
    # interval track some bounds are tighter than CROWN's, some looser; no test for that.)
    assert (ours["back-substitute"] >= crown - 1e-4).all()
    assert ours["back-substitute+interval"].mean() >= crown.mean() - 1e-3
    # Forward bounds alone are looser than CROWN; splitting closes the gap (loose check only).
    assert ours["forward, 4 pieces"].mean() >= ours["forward"].mean()
    assert ours["forward, 4 pieces"].mean() >= crown.mean() - 0.5 * (crown.mean() - ibp.mean()).abs()


# --------------------------------------------------------------------------------------------
# Pixel mode: latent -> decoder -> classifier


def test_pixel_mode_decoder_and_cnn_is_sound() -> None:
    torch.manual_seed(2)
    decoder = VAE(VAEArchitecture()).decoder.eval()
    cnn = nn.Sequential(nn.Conv2d(1, 4, 4, 2, 1), nn.ReLU(), nn.Conv2d(4, 8, 4, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 7 * 7, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    model = nn.Sequential(decoder, cnn)
    layers = flatten_layers([decoder, cnn], torch.zeros(1, 16))
    assert len(layers) == 7 + 8
    z, direction = torch.randn(3, 16), nn.functional.normalize(torch.randn(1, 16), dim=1)
    t_low, t_high = torch.full((3, 1), -0.3), torch.full((3, 1), 0.3)
    ts = _sample_t(t_low, t_high)
    values = _outputs(model, z, direction.expand(3, 1, 16), ts)
    C = margin_specification(values[0].argmax(dim=1), 10)
    margins = torch.einsum("bsn,kbn->kbs", C, values)
    for mode in MODES.values():
        _assert_within(margins, margin_lower_bounds(layers, latent_line_input(z, direction), C, t_low, t_high, **mode), None, f"pixel / {mode}")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Layers that cannot be bounded, and the helpers


def test_unsupported_layers_are_rejected() -> None:
    inputs = affine_input(torch.zeros(1, 4), torch.ones(1, 1, 4))
    box = (torch.zeros(1, 1), torch.ones(1, 1))
    bn = nn.BatchNorm1d(4)
    for model, path in [
        (nn.Sequential(nn.Linear(4, 4), nn.Dropout()), "1"),
        (nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(-0.5)), "1"),
        (nn.Sequential(bn.train()), "0"),
        (nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=1)), "1"),
    ]:
        with pytest.raises(UnsupportedLayerError) as error:
            output_bounds(model, inputs, *box)
        assert error.value.path == path


def test_containers_must_be_plain_chains() -> None:
    arch = VAEArchitecture(8, 8, 4, (2, 3))
    decoder = Decoder(arch).eval()
    assert [type(m) for _, m in flatten_layers(decoder, torch.zeros(1, 4))] == [nn.Linear, nn.ReLU, ViewAs, nn.ConvTranspose2d, nn.ReLU, nn.ConvTranspose2d, nn.Sigmoid]
    with pytest.raises(UnsupportedLayerError, match="example input"):
        flatten_layers(decoder)
    with pytest.raises(UnsupportedLayerError, match="chain"):
        flatten_layers(Encoder(arch).eval(), torch.zeros(1, 1, 8, 8))  # children trunk, mu, log_var; forward skips log_var
    line = LatentLine(nn.Sequential(nn.Linear(4, 2)), torch.ones(1, 4))
    with pytest.raises(UnsupportedLayerError, match="chain"):
        output_bounds(line, affine_input(torch.zeros(1, 1), torch.ones(1, 1, 1)), torch.zeros(1, 1), torch.ones(1, 1))


def test_split_box_covers_the_box() -> None:
    t_low, t_high = torch.tensor([[-1.0, 0.0], [0.3, 0.3]]), torch.tensor([[1.0, 3.0], [0.7, 0.3]])
    low, high = split_box(t_low, t_high, (4, 3))
    assert low.shape == (24, 2)
    for b in range(2):
        sub_low, sub_high = low[b * 12 : (b + 1) * 12], high[b * 12 : (b + 1) * 12]
        assert torch.equal(sub_low.min(dim=0).values, t_low[b]) and torch.equal(sub_high.max(dim=0).values, t_high[b])
        assert torch.isclose((sub_high - sub_low).prod(dim=1).sum(), (t_high[b] - t_low[b]).prod(), atol=1e-6)
    with pytest.raises(ValueError):
        split_box(t_low, t_high, (2,))


def test_concretize_and_validation() -> None:
    coeff, bias = torch.tensor([[[1.0], [-2.0]]]), torch.tensor([[0.5]])
    low, high = concretize(coeff, bias, torch.tensor([[0.0, -1.0]]), torch.tensor([[1.0, 1.0]]))
    assert (low.item(), high.item()) == (0.5 - 2.0, 0.5 + 1.0 + 2.0)
    with pytest.raises(ValueError):
        AffineBounds(coeff, bias, coeff, torch.zeros(2))
    with pytest.raises(ValueError):
        output_bounds(nn.Sequential(nn.Linear(1, 1)), affine_input(torch.zeros(1, 1), torch.ones(1, 1, 1)), torch.ones(1, 1), torch.zeros(1, 1))


@pytest.mark.parametrize("threshold", [0.0, 0.5, float("inf")])
def test_back_substituting_only_the_rows_that_decide(threshold: float) -> None:
    """refine_below proves exactly what back-substituting every row proves; minimum_only gives the same minimum over rows."""
    model = _model("ReLU")
    inputs, t_low, t_high, z, directions = _problem(6, 1, batch=64)
    values = _outputs(model, z, directions, _sample_t(t_low, t_high))
    C = margin_specification(values[0].argmax(dim=1), 4)
    true_min = torch.einsum("bsn,kbn->kbs", C, values).amin(dim=0)
    full = margin_lower_bounds(model, inputs, C, t_low, t_high, back_substitute=True)
    partial = margin_lower_bounds(model, inputs, C, t_low, t_high, back_substitute=True, refine_below=threshold)
    minimum = margin_lower_bounds(model, inputs, C, t_low, t_high, back_substitute=True, minimum_only=True)
    for bounds in (partial, minimum):
        assert bool((bounds <= true_min + TOL).all()) and bool((bounds <= full + 1e-6).all())
    assert bool(((full.amin(dim=1) > threshold) == (partial.amin(dim=1) > threshold)).all()), "the same boxes are proved"
    torch.testing.assert_close(minimum.amin(dim=1), full.amin(dim=1), rtol=0, atol=1e-6)
    assert bool((partial < full - 1e-6).any()) or threshold == float("inf"), "some rows are left to their forward bound"


def test_the_package_keeps_its_names() -> None:
    """`linear_bounds` is a package now: the public API and the private names other modules cite stay reachable."""
    for name in lb.__all__:
        assert hasattr(lb, name), name
    for name in ("_Kinks", "_group_samples", "_refine", "_relu_lines", "_spec_layer"):
        assert callable(getattr(lb, name)), name
