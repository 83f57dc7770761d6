"""Pooling, residual and other graph ops through auto_LiRPA: bounded soundly, or refused by name and version.

Which ops the loaded auto_LiRPA bounds is probed (lirpa_compat.check_bounded_by_auto_lirpa), so
every case here holds for any version: either the build refuses the layer with a message naming
it and the version, or every method's bounds contain 1,000 sampled outputs. The ops that every
version this project runs on (0.3 from PyPI, 0.7.1 from source) bounds must not be refused.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from auditai_ops.verify import lirpa_compat
from auditai_ops.verify.lirpa_compat import (
    METHODS,
    UnsupportedLayerError,
    auto_lirpa_version,
    build_bounded_module,
    build_trainable_bounded_module,
    compute_margin_lower_bounds,
)


class Residual(nn.Module):
    """relu(x + conv(relu(conv(x)))): a residual block (an addition of two branches of x)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.conv2(self.act(self.conv1(x))))


class Concat(nn.Module):
    """Two branches of x concatenated along the channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(channels, channels, 1)
        self.b = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.a(x), self.b(x)], dim=1)


def cnn(*layers: nn.Module) -> nn.Sequential:
    """A 1x6x6 -> 3 classifier: conv, ReLU, `layers` (at 4 channels), flatten, linear."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), *layers)
    with torch.no_grad():
        features = body(torch.zeros(1, 1, 6, 6)).numel()
    return nn.Sequential(*body, nn.Flatten(), nn.Linear(features, 3)).eval()


def mlp(layer: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), layer, nn.Linear(8, 3)).eval()


BOUNDED_BY_EVERY_VERSION: dict[str, Callable[[], nn.Sequential]] = {
    "MaxPool2d": lambda: cnn(nn.MaxPool2d(2)),
    "AvgPool2d": lambda: cnn(nn.AvgPool2d(2)),
    "AdaptiveAvgPool2d": lambda: cnn(nn.AdaptiveAvgPool2d(1)),
    "residual block and MaxPool": lambda: cnn(Residual(4), nn.MaxPool2d(2), Residual(4)),
    "concatenation": lambda: cnn(Concat(4), nn.AvgPool2d(2)),
    "Dropout (eval)": lambda: mlp(nn.Sequential(nn.ReLU(), nn.Dropout(0.5))),
    "SiLU": lambda: mlp(nn.SiLU()),
}
BOUNDED_OR_REFUSED: dict[str, tuple[Callable[[], nn.Sequential], str, str]] = {
    "MaxPool2d stride < kernel": (lambda: cnn(nn.MaxPool2d(3, stride=2, padding=1)), "2", "torch.nn.modules.pooling.MaxPool2d"),
    "Upsample": (lambda: cnn(nn.Upsample(scale_factor=2)), "2", "torch.nn.modules.upsampling.Upsample"),
    "ELU": (lambda: mlp(nn.ELU()), "1", "torch.nn.modules.activation.ELU"),
    "Softplus": (lambda: mlp(nn.Softplus()), "1", "torch.nn.modules.activation.Softplus"),
    "GELU": (lambda: mlp(nn.GELU()), "1", "torch.nn.modules.activation.GELU"),
}


def assert_sound(model: nn.Sequential) -> None:
    """Every method's margin lower bounds hold at 1,000 points of the box (corners among them)."""
    shape = (1, 6, 6) if isinstance(model[0], nn.Conv2d) else (3,)
    bounded = build_bounded_module(model, (torch.zeros(2, *shape),))
    generator = torch.Generator().manual_seed(1)
    x = 0.5 * torch.randn((2, *shape), generator=generator)
    eps = 0.3
    inside = 2 * torch.rand((800, *x.shape), generator=generator) - 1
    corners = torch.randint(0, 2, (200, *x.shape), generator=generator) * 2.0 - 1
    points = x + eps * torch.cat([inside, corners])
    C = torch.cat([torch.eye(3), -torch.eye(3)]).expand(2, 6, 3)
    with torch.no_grad():
        outputs = model(points.reshape(-1, *shape)).reshape(1000, 2, 3)
    margins = torch.einsum("bsk,nbk->nbs", C, outputs)
    for method in METHODS:
        lower = compute_margin_lower_bounds(bounded, (x,), x - eps, x + eps, C, method, alpha_iterations=5)
        assert lower.shape == (2, 6)
        assert (margins >= lower - 1e-5).all(), f"{method}: a sampled margin is below its lower bound"


@pytest.mark.parametrize("name", list(BOUNDED_BY_EVERY_VERSION))
def test_ops_every_version_bounds_are_bounded_soundly(name: str) -> None:
    assert_sound(BOUNDED_BY_EVERY_VERSION[name]())


@pytest.mark.parametrize("name", list(BOUNDED_OR_REFUSED))
def test_other_ops_are_bounded_soundly_or_refused_by_name_and_version(
    name: str, capfd: pytest.CaptureFixture[str]
) -> None:
    make, path, class_path = BOUNDED_OR_REFUSED[name]
    model = make()
    try:
        assert_sound(model)
    except UnsupportedLayerError as exc:
        assert exc.path == path and exc.layer_type == class_path
        assert f"auto_LiRPA {auto_lirpa_version()}" in str(exc)
        assert "forward, forward+backward" in str(exc)
        assert capfd.readouterr() == ("", ""), "the probe must be quiet"


def test_a_refused_layer_is_found_inside_a_residual_graph() -> None:
    """ELU is bounded by no auto_LiRPA this project runs on; the refusal names its path in the graph."""
    model = cnn(Residual(4), nn.ELU(), nn.MaxPool2d(2))
    try:
        build_bounded_module(model, (torch.zeros(2, 1, 6, 6),))
    except UnsupportedLayerError as exc:
        assert exc.path == "3" and "ELU" in exc.layer_type
    else:
        assert_sound(model)


def test_certified_training_refuses_dropout() -> None:
    model = mlp(nn.Sequential(nn.ReLU(), nn.Dropout(0.5)))
    with pytest.raises(UnsupportedLayerError, match=r"layer '1\.1' .*random masks"):
        build_trainable_bounded_module(model, (torch.zeros(2, 3),), list(model.parameters()))


def test_dropout_is_dropped_from_the_private_copy_only() -> None:
    model = mlp(nn.Sequential(nn.ReLU(), nn.Dropout(0.5)))
    bounded = build_bounded_module(model, (torch.zeros(2, 3),))
    assert isinstance(model[1][1], nn.Dropout)
    x = torch.randn(5, 3)
    with torch.no_grad():
        torch.testing.assert_close(bounded(x), model(x))


def test_each_layer_configuration_is_probed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lirpa_compat, "_PROBED", {})
    built: list[nn.Module] = []
    original = lirpa_compat._verifier_bounded_module

    def spy(model: nn.Module, *args: object) -> object:
        built.append(model)
        return original(model, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(lirpa_compat, "_verifier_bounded_module", spy)
    model = cnn(nn.MaxPool2d(2), nn.AvgPool2d(1), nn.MaxPool2d(2))  # MaxPool2d(2) at 4x6x6 and at 4x3x3
    for _ in range(2):
        build_bounded_module(model, (torch.zeros(2, 1, 6, 6),))
    assert len(lirpa_compat._PROBED) == 3 and all(problem is None for problem in lirpa_compat._PROBED.values())
    assert len(built) == 3 + 2  # three probes, then the two models
