"""Soundness of the linear-in-t engine on the pooling, resampling, dropout and new activation layers.

Per layer: a small random network containing it is bounded over random boxes in t (k = 1 and 2);
1,000 sampled points of every box (corners included) must lie inside every bound (output bounds,
with and without the interval track; margins with back-substitution). Hypothesis varies the
weights and boxes. The relaxation lines themselves are checked on dense grids.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from auditai_ops.layers import UnsupportedLayerError, ViewAs, check_supported
from auditai_ops.verify.linear_bounds import affine_input, affine_output_bounds, margin_lower_bounds, output_bounds, relaxations
from auditai_ops.verify.linear_bounds.pooling import max_pool_lines

TOL = 1e-5
SAMPLES = 1000


def _image_net(layer: Callable[[], nn.Module], act: Callable[[], nn.Module] = nn.ReLU, size: int = 6, out: int = 4) -> nn.Sequential:
    """latent (3) -> Linear -> view (2, size, size) -> act -> LAYER -> Conv2d -> act -> Flatten -> Linear."""
    body = nn.Sequential(nn.Linear(3, 2 * size * size), ViewAs((2, size, size)), act(), layer())
    with torch.no_grad():
        shape = body(torch.zeros(1, 3)).shape[1:]
    return nn.Sequential(*body, nn.Conv2d(shape[0], 3, 1), act(), nn.Flatten(), nn.Linear(3 * shape[1] * shape[2], out)).eval()


def _mlp(act: Callable[[], nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 8), act(), nn.Linear(8, 8), act(), nn.Linear(8, 4)).eval()


CASES: dict[str, Callable[[], nn.Module]] = {
    "MaxPool2d": lambda: _image_net(lambda: nn.MaxPool2d(2)),
    "MaxPool2d-overlapping-padded": lambda: _image_net(lambda: nn.MaxPool2d(3, stride=2, padding=1)),
    "AvgPool2d": lambda: _image_net(lambda: nn.AvgPool2d(2)),
    "AvgPool2d-padded": lambda: _image_net(lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)),
    "AdaptiveAvgPool2d-global": lambda: _image_net(lambda: nn.AdaptiveAvgPool2d(1)),
    "AdaptiveAvgPool2d-3": lambda: _image_net(lambda: nn.AdaptiveAvgPool2d(3)),
    "Upsample-nearest": lambda: _image_net(lambda: nn.Upsample(scale_factor=2, mode="nearest"), size=3),
    "Upsample-bilinear": lambda: _image_net(lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), size=3),
    "Dropout": lambda: nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 4)).eval(),
    "ELU": lambda: _mlp(nn.ELU),
    "ELU-0.3": lambda: _mlp(lambda: nn.ELU(0.3)),
    "Softplus": lambda: _mlp(nn.Softplus),
    "Softplus-beta2": lambda: _mlp(lambda: nn.Softplus(beta=2.0, threshold=5.0)),
    "GELU": lambda: _mlp(nn.GELU),
    "GELU-tanh": lambda: _mlp(lambda: nn.GELU(approximate="tanh")),
    "SiLU": lambda: _mlp(nn.SiLU),
    "GELU-after-conv": lambda: _image_net(nn.Identity, act=nn.GELU),
    "SiLU-maxpool": lambda: _image_net(lambda: nn.MaxPool2d(2), act=nn.SiLU),
}


def _problem(seed: int, k: int, batch: int = 4, scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, 3, generator=gen)
    directions = torch.randn(batch, k, 3, generator=gen)
    t_low = -scale * torch.rand(batch, k, generator=gen)
    t_high = t_low + scale * (0.05 + torch.rand(batch, k, generator=gen))
    return z, directions, t_low, t_high


def _samples(t_low: torch.Tensor, t_high: torch.Tensor, n: int = SAMPLES, seed: int = 0) -> torch.Tensor:
    """[n, B, k]: every corner of each box, then uniform points."""
    k = t_low.shape[1]
    corners = torch.tensor(list(itertools.product((0.0, 1.0), repeat=k)))
    u = torch.cat([corners, torch.rand(n - len(corners), k, generator=torch.Generator().manual_seed(seed))])
    return t_low + u[:, None, :] * (t_high - t_low)


def _outputs(model: nn.Module, z: torch.Tensor, directions: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    points = z + torch.einsum("nbk,bkd->nbd", ts, directions)
    with torch.no_grad():
        return model(points.reshape(-1, z.shape[1])).reshape(*ts.shape[:2], -1)


def assert_sound(model: nn.Module, seed: int, k: int, scale: float = 1.0, label: str = "") -> None:
    """Every sampled output and margin lies inside the engine's output bounds and margin bounds."""
    z, directions, t_low, t_high = _problem(seed, k, scale=scale)
    inputs = affine_input(z, directions)
    ys = _outputs(model, z, directions, _samples(t_low, t_high, seed=seed))  # [n, B, out]
    for interval in (False, True):
        low, high = output_bounds(model, inputs, t_low, t_high, interval=interval)
        excess = torch.maximum(low - ys, ys - high).max().item()
        assert excess <= TOL, f"{label} output bounds (interval={interval}) violated by {excess:.3g}"
    n_out = ys.shape[2]
    labels = ys[0].argmax(dim=1)
    eye = torch.eye(n_out)
    C = torch.stack([(eye[y] - eye)[torch.arange(n_out) != y] for y in labels.tolist()])
    margins = torch.einsum("bsn,kbn->kbs", C, ys)
    for options in ({}, {"back_substitute": True}, {"back_substitute": True, "pieces": 3}, {"back_substitute": True, "refine_below": 0.0, "interval": True}):
        bound = margin_lower_bounds(model, inputs, C, t_low, t_high, **options)  # type: ignore[arg-type]
        excess = (bound - margins).max().item()
        assert excess <= TOL, f"{label} margin bounds {options} violated by {excess:.3g}"


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("case", list(CASES))
def test_sampled_points_lie_inside_every_bound(case: str, k: int) -> None:
    torch.manual_seed(sum(map(ord, case)))
    model = CASES[case]()
    check_supported(model)
    assert_sound(model, seed=k, k=k, label=case)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(sorted(CASES)), seed=st.integers(0, 10_000), scale=st.floats(0.05, 3.0), k=st.integers(1, 2))
def test_random_networks_and_boxes_are_sound(case: str, seed: int, scale: float, k: int) -> None:
    torch.manual_seed(seed)
    assert_sound(CASES[case](), seed=seed, k=k, scale=scale, label=f"{case} seed {seed}")


@pytest.mark.parametrize("module", [nn.ELU(), nn.ELU(0.5), nn.Softplus(), nn.Softplus(beta=3.0, threshold=4.0), nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU()])
def test_lines_bound_the_activation_on_a_dense_grid(module: nn.Module) -> None:
    """Both lines hold at 200 points of each of 2,000 random intervals (wide, narrow, degenerate, around the minimum)."""
    gen = torch.Generator().manual_seed(1)
    centre = 4 * torch.randn(2000, generator=gen)
    width = torch.cat([6 * torch.rand(1000, generator=gen), 1e-3 * torch.rand(900, generator=gen), torch.zeros(100)])
    lo, hi = centre - width / 2, centre + width / 2
    grid = torch.minimum(lo[:, None] + torch.linspace(0, 1, 200)[None] * (hi - lo)[:, None], hi[:, None])
    values = relaxations._evaluate(module, grid)
    s_up, b_up = relaxations._lines(module, lo, hi, upper=True)
    s_lo, b_lo = relaxations._lines(module, lo, hi, upper=False)
    assert b_up is not None and b_lo is not None
    assert bool((s_up[:, None] * grid + b_up[:, None] >= values).all())
    assert bool((s_lo[:, None] * grid + b_lo[:, None] <= values).all())
    image_low, image_high = relaxations._image(module, lo, hi)
    assert bool((image_low[:, None] <= values).all() and (image_high[:, None] >= values).all())


@pytest.mark.parametrize("name", ["gelu", "gelu-tanh", "silu"])
def test_curvature_constants_bound_the_second_derivative(name: str) -> None:
    """sup |f''| <= `_CURVATURE` on [-60, 60] (f'' decays like a Gaussian / exponential beyond), in float64."""
    v = torch.linspace(-60, 60, 1_200_001, dtype=torch.float64, requires_grad=True)
    module = nn.SiLU() if name == "silu" else nn.GELU(approximate="tanh" if name == "gelu-tanh" else "none")
    (first,) = torch.autograd.grad(relaxations._evaluate(module, v).sum(), v, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), v)
    assert second.abs().max().item() <= relaxations._CURVATURE[name]
    minimiser = v[relaxations._evaluate(module, v).argmin()].item()
    assert abs(minimiser - relaxations._MINIMISERS[name]) < 1e-3


def test_max_pool_back_substitution_lines_hold() -> None:
    """y >= x_j always; y = x_j where j dominates, else y <= max_i u_i: on random inputs inside random intervals."""
    gen = torch.Generator().manual_seed(2)
    module = nn.MaxPool2d(3, stride=2, padding=1)
    low = torch.randn(5, 2, 7, 7, generator=gen)
    high = low + torch.rand(5, 2, 7, 7, generator=gen) * (torch.rand(5, 2, 7, 7, generator=gen) > 0.5)
    index, dominated, top = max_pool_lines(module, low, high)
    assert bool(dominated.bool().any()) and bool((~dominated.bool()).any())
    for _ in range(50):
        x = low + torch.rand(low.shape, generator=gen) * (high - low)
        y = module(x).flatten(2)
        chosen = x.flatten(2).gather(2, index)
        assert bool((y >= chosen).all())
        assert bool(torch.where(dominated.bool(), y == chosen, y <= top).all())


@pytest.mark.parametrize(
    ("module", "words"),
    [
        (nn.Dropout(0.2), "training mode"),
        (nn.MaxPool2d(2, dilation=2), "dilation"),
        (nn.MaxPool2d(2, ceil_mode=True), "ceil_mode"),
        (nn.Upsample(scale_factor=2, mode="bicubic"), "bicubic"),
        (nn.ELU(alpha=2.0), "alpha"),
    ],
)
def test_unsupported_configurations_are_named(module: nn.Module, words: str) -> None:
    model = nn.Sequential(nn.Linear(3, 4), module)
    model.train(isinstance(module, nn.Dropout))
    with pytest.raises(UnsupportedLayerError, match=words) as info:
        check_supported(model)
    assert "'1'" in str(info.value)
    z, directions, t_low, t_high = _problem(0, 1)
    with pytest.raises(UnsupportedLayerError, match=words):
        output_bounds(model, affine_input(z, directions), t_low, t_high)


def test_max_pool_is_exact_where_one_input_dominates() -> None:
    """Window of x = (t, 5 + t, -t, 0) for t in [-1, 1]: x_1 dominates, so y = 5 + t exactly, in forward mode."""
    model = nn.Sequential(nn.Linear(1, 4), ViewAs((1, 2, 2)), nn.MaxPool2d(2), nn.Flatten()).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0], [1.0], [-1.0], [0.0]]))
        model[0].bias.copy_(torch.tensor([0.0, 5.0, 0.0, 0.0]))
    bounds = affine_output_bounds(model, affine_input(torch.zeros(1, 1), torch.ones(1, 1, 1)), torch.tensor([[-1.0]]), torch.tensor([[1.0]]))
    for coeff, bias in ((bounds.lower_coeff, bounds.lower_bias), (bounds.upper_coeff, bounds.upper_bias)):
        torch.testing.assert_close(coeff.reshape(-1), torch.tensor([1.0]))
        torch.testing.assert_close(bias.reshape(-1), torch.tensor([5.0]))


@pytest.mark.parametrize("case", ["MaxPool2d", "MaxPool2d-overlapping-padded", "SiLU-maxpool"])
def test_max_pool_with_three_directions(case: str) -> None:
    """k = 3: the upper plane is fitted to max_i U_i at the 8 vertices of the box."""
    torch.manual_seed(3)
    assert_sound(CASES[case](), seed=3, k=3, label=f"{case} k=3")
