"""The layers the verifier can bound, and the project's own boundable modules.

Every bound backend (auto_LiRPA through auditai_ops.verify.lirpa_compat, and the
low-dimensional linear bounds of auditai_ops.verify.linear_bounds) accepts exactly these;
models are checked against them before any work, with an error that names the layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from auditai_ops.errors import AuditInputError


class ViewAs(nn.Module):
    """`x.view(-1, *shape)`: keeps the batch dimension symbolic, so traced bound graphs accept any batch."""

    auditai_reshape_only = True

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, *self.shape)


class PerChannelNormalize(nn.Module):
    """Normalise images (B, C, H, W) channel by channel with fixed mean and std (std > 0).

    It is affine with a positive diagonal, so bounds pass through exactly: an interval
    [l, u] maps to [(l - m) / s, (u - m) / s].
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not mean:
            raise ValueError(f"mean and std need one value per channel, got {len(mean)} and {len(std)}")
        if min(std) <= 0:
            raise ValueError(f"std must be > 0 for every channel, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("inverse_std", 1.0 / torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inverse_std


SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv2d,
    nn.ConvTranspose2d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Flatten,
    nn.Identity,
    PerChannelNormalize,
    nn.Sequential,
    nn.ModuleList,
)
"""Layer types whose bounds are tested (tests/verify/test_layer_soundness.py).

Besides these, a module may declare `auditai_reshape_only = True` (its forward only
reshapes, e.g. `x.view(-1, C, H, W)`) or `auditai_container = True` (its forward only
combines its children with additions and matrix products by constants); the children of
either are checked in turn.
"""

class UnsupportedLayerError(AuditInputError, ValueError):
    """A model contains a layer that the verifier cannot bound (or not in this configuration)."""

    def __init__(self, path: str, module: nn.Module, reason: str = "is not supported") -> None:
        cls = type(module)
        self.path = path
        self.layer_type = f"{cls.__module__}.{cls.__qualname__}"
        supported = ", ".join(t.__name__ for t in SUPPORTED_LAYERS)
        super().__init__(
            f"layer '{path}' ({self.layer_type}) {reason}. Supported layers: {supported}; "
            "plus modules that declare auditai_reshape_only = True or auditai_container = True."
        )


def check_supported(model: nn.Module) -> None:
    """Raise UnsupportedLayerError for the first module that bound propagation cannot handle.

    Types are matched exactly (a subclass may override `forward`); a subclass that keeps
    the semantics can declare `auditai_reshape_only` or `auditai_container` instead.
    """
    for path, module in model.named_modules():
        where = path or "<root>"
        flagged = getattr(module, "auditai_reshape_only", False) is True or (
            getattr(module, "auditai_container", False) is True
        )
        if not flagged and type(module) not in SUPPORTED_LAYERS:
            raise UnsupportedLayerError(where, module)
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise UnsupportedLayerError(
                where, module, "is in training mode (batch statistics); call model.eval() first"
            )
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d) and module.padding_mode != "zeros":
            raise UnsupportedLayerError(where, module, f"uses padding_mode={module.padding_mode!r}")
        if isinstance(module, nn.ConvTranspose2d):
            _check_conv_transpose(where, module)


def _check_conv_transpose(where: str, module: nn.ConvTranspose2d) -> None:
    """auto_LiRPA 0.3 bounds only square-kernel, equal-stride, undilated, ungrouped ones."""
    k, s, d = module.kernel_size, module.stride, module.dilation
    if module.groups != 1 or tuple(d) != (1, 1) or s[0] != s[1] or k[0] != k[1]:
        raise UnsupportedLayerError(
            where,
            module,
            f"has kernel {k}, stride {s}, dilation {d}, groups {module.groups}; only square "
            "kernels, equal strides, dilation 1 and groups 1 are supported",
        )
