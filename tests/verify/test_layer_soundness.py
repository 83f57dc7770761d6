"""Soundness of every supported layer under every bound method, checked by dense sampling.

For each case a small random network containing the layer is bounded over random boxes;
every sampled output (box corners included) must lie within [lower, upper]. A future
auto_LiRPA or torch upgrade that breaks one layer fails here with the layer's name.
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable

import pytest
import torch
from torch import nn

from auditai_ops.layers import ViewAs
from auditai_ops.verify.lirpa_compat import (
    METHODS,
    BoundMethod,
    build_bounded_module,
    compute_margin_lower_bounds,
)

TOL = 1e-5
SAMPLES = 1000
BOXES = 4


def _random_bn(bn: nn.BatchNorm1d | nn.BatchNorm2d) -> nn.Module:
    with torch.no_grad():
        bn.running_mean.normal_(0.0, 0.5)
        bn.running_var.uniform_(0.3, 2.0)
        bn.weight.normal_(1.0, 0.5)
        bn.bias.normal_(0.0, 0.5)
    return bn


def _mlp(act: Callable[[], nn.Module]) -> nn.Module:
    return nn.Sequential(nn.Linear(3, 8), act(), nn.Linear(8, 8), act(), nn.Linear(8, 4))


def _conv(act: Callable[[], nn.Module]) -> nn.Module:
    """Decoder-like: latent -> Linear -> view -> Conv2d -> act -> Flatten -> Linear."""
    return nn.Sequential(
        nn.Linear(3, 2 * 4 * 4),
        act(),
        ViewAs((2, 4, 4)),
        nn.Conv2d(2, 3, 3, padding=1),
        act(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 4),
    )


CASES: dict[str, Callable[[], nn.Module]] = {
    "Linear": lambda: nn.Sequential(nn.Linear(3, 6), nn.Linear(6, 4)),
    "Conv2d": lambda: _conv(nn.ReLU),
    "ConvTranspose2d": lambda: nn.Sequential(
        nn.Linear(3, 2 * 3 * 3),
        nn.ReLU(),
        ViewAs((2, 3, 3)),
        nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1),  # -> 6x6
        nn.ReLU(),
        nn.Conv2d(3, 2, 3, stride=2),  # -> 2x2
        nn.Flatten(),
        nn.Linear(2 * 2 * 2, 4),
    ),
    "BatchNorm1d": lambda: nn.Sequential(
        nn.Linear(3, 8), _random_bn(nn.BatchNorm1d(8)), nn.ReLU(), nn.Linear(8, 4)
    ),
    "BatchNorm2d": lambda: nn.Sequential(
        nn.Linear(3, 2 * 4 * 4),
        ViewAs((2, 4, 4)),
        nn.Conv2d(2, 3, 3),
        _random_bn(nn.BatchNorm2d(3)),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 4),
    ),
    "ReLU": lambda: _mlp(nn.ReLU),
    "LeakyReLU": lambda: _mlp(lambda: nn.LeakyReLU(0.1)),
    "Sigmoid": lambda: _mlp(nn.Sigmoid),
    "Tanh": lambda: _mlp(nn.Tanh),
    "Sigmoid-after-conv": lambda: _conv(nn.Sigmoid),
    "Tanh-after-conv": lambda: _conv(nn.Tanh),
    "Flatten": lambda: nn.Sequential(
        nn.Linear(3, 12), ViewAs((3, 2, 2)), nn.ReLU(), nn.Flatten(), nn.Linear(12, 4)
    ),
    "Identity": lambda: nn.Sequential(nn.Linear(3, 8), nn.Identity(), nn.ReLU(), nn.Linear(8, 4)),
    "view(-1,C,H,W)": lambda: nn.Sequential(
        nn.Linear(3, 8), nn.ReLU(), ViewAs((2, 2, 2)), nn.Flatten(), nn.Linear(8, 4)
    ),
}
SLOW = {"Sigmoid", "Tanh", "Sigmoid-after-conv", "Tanh-after-conv"}  # lookup-table builds


@pytest.fixture(scope="module")
def built() -> dict[str, tuple[nn.Module, nn.Module]]:
    """Cache of (model, bounded module) per case, built lazily once per test module."""
    return {}


def _get(built: dict[str, tuple[nn.Module, nn.Module]], case: str) -> tuple[nn.Module, nn.Module]:
    if case not in built:
        torch.manual_seed(sum(map(ord, case)))
        model = CASES[case]().eval()
        built[case] = (model, build_bounded_module(model, (torch.zeros(2, 3),)))
    return built[case]


def output_bounds(
    bounded: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    lower: torch.Tensor,
    upper: torch.Tensor,
    n_out: int,
    method: BoundMethod,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output bounds from margin lower bounds with C = [I; -I] (upper = -lower bound of -y)."""
    eye = torch.eye(n_out)
    C = torch.cat([eye, -eye]).expand(inputs[0].shape[0], 2 * n_out, n_out)
    lb = compute_margin_lower_bounds(bounded, inputs, lower, upper, C, method)
    return lb[:, :n_out], -lb[:, n_out:]


def box_samples(lower: torch.Tensor, upper: torch.Tensor, n: int) -> torch.Tensor:
    """[n, B, d]: all 2^d corners of each box (d <= 10), then uniform samples."""
    d = lower.shape[1]
    corners = torch.tensor(list(itertools.product((0.0, 1.0), repeat=d)) if d <= 10 else [])
    corners = corners.reshape(-1, d)
    u = torch.cat([corners, torch.rand(n - len(corners), d)])
    return lower + u[:, None, :] * (upper - lower)


def assert_contains(
    samples_out: torch.Tensor, lb: torch.Tensor, ub: torch.Tensor | None, label: str
) -> None:
    """Every sample [n, B, S] lies within [lb, ub] (each [B, S]) up to TOL."""
    ub = torch.full_like(lb, float("inf")) if ub is None else ub
    assert torch.isfinite(lb).all() and not torch.isnan(ub).any(), label
    excess = torch.maximum(lb - samples_out, samples_out - ub)
    violations = int((excess > TOL).sum())
    assert violations == 0, (
        f"{label}: {violations} of {excess.numel()} sampled outputs outside the bounds "
        f"(worst excess {excess.max().item():.3g})"
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in CASES]
)
def test_sampled_outputs_lie_within_bounds(
    built: dict[str, tuple[nn.Module, nn.Module]], case: str, method: BoundMethod
) -> None:
    model, bounded = _get(built, case)
    gen = torch.Generator().manual_seed(zlib.crc32(f"{case}/{method}".encode()))
    center = torch.randn(BOXES, 3, generator=gen)
    radius = 0.05 + 0.5 * torch.rand(BOXES, 3, generator=gen)
    lower, upper = center - radius, center + radius
    lb, ub = output_bounds(bounded, (center,), lower, upper, 4, method)
    xs = box_samples(lower, upper, SAMPLES)
    with torch.no_grad():
        ys = model(xs.reshape(-1, 3)).reshape(SAMPLES, BOXES, 4)
    assert_contains(ys, lb, ub, f"{case} / {method}")


@pytest.mark.parametrize(
    "case", ["ReLU", "Conv2d", pytest.param("Tanh-after-conv", marks=pytest.mark.slow)]
)
def test_alpha_crown_is_at_least_crown(
    built: dict[str, tuple[nn.Module, nn.Module]], case: str
) -> None:
    _, bounded = _get(built, case)
    center = torch.randn(BOXES, 3, generator=torch.Generator().manual_seed(1))
    lower, upper = center - 0.4, center + 0.4
    crown = output_bounds(bounded, (center,), lower, upper, 4, "CROWN")
    alpha = output_bounds(bounded, (center,), lower, upper, 4, "alpha-CROWN")
    assert (alpha[0] >= crown[0]).all() and (alpha[1] <= crown[1]).all()


class LatentShiftClassifier(nn.Module):
    """The product's use: logits = head(z + t @ D), scalar t perturbed, latent z fixed."""

    auditai_container = True

    def __init__(self, direction: torch.Tensor, head: nn.Module) -> None:
        super().__init__()
        self.register_buffer("direction", direction)
        self.head = head

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.head(z + t @ self.direction)


@pytest.fixture(scope="module")
def latent_shift() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(7)
    head = nn.Sequential(
        nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 10)
    )
    model = LatentShiftClassifier(torch.randn(1, 16), head).eval()
    return model, build_bounded_module(model, (torch.zeros(8, 1), torch.zeros(8, 16)))


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_only_first_input_perturbed_at_larger_batch(
    latent_shift: tuple[nn.Module, nn.Module], method: BoundMethod
) -> None:
    """Built at batch 8, served at batch 64: margin bounds logit[label] - logit[j] are sound."""
    model, bounded = latent_shift
    batch, n_t = 64, 1000
    z = torch.randn(batch, 16)
    t0 = torch.randn(batch, 1)
    lower, upper = t0 - 0.3, t0 + 0.3
    with torch.no_grad():
        labels = model(t0, z).argmax(1)
    eye = torch.eye(10)
    C = torch.stack([(eye[y] - eye)[torch.arange(10) != y] for y in labels.tolist()])  # [B, 9, 10]
    lb = compute_margin_lower_bounds(bounded, (t0, z), lower, upper, C, method)
    assert lb.shape == (batch, 9)
    # [n_t, B, 1], both ends of every interval included.
    ts = lower + torch.linspace(0.0, 1.0, n_t)[:, None, None] * (upper - lower)
    with torch.no_grad():
        logits = model(ts.reshape(-1, 1), z.repeat(n_t, 1)).reshape(n_t, batch, 10)
    margins = torch.einsum("bsn,kbn->kbs", C, logits)
    assert_contains(margins, lb, None, f"latent shift / {method}")
