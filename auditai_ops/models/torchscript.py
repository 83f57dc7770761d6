"""Rebuild a loaded TorchScript module as plain torch layers, when it provably is made of them.

A `torch.jit.load`ed module is a tree of RecursiveScriptModules whose `original_name` is
the class name they were scripted from. When every node of the tree names a layer that the
verifier supports (Sequential, Linear, Conv2d, MaxPool2d, Upsample, GELU, ...: `_LEAVES`),
the same tree is rebuilt from torch's own classes with the scripted module's constants,
and accepted only if it is the same program: the rebuilt tree, scripted and round-tripped
through `torch.jit.save`/`load` like the user's file was, must have the same inlined
TorchScript graph (every operator, constant and attribute access, value names aside) as
the loaded module. A class merely *named* Linear with another forward, or a model saved by
a torch whose layers compile differently, fails that comparison, and the caller falls back
to exporting the module to ONNX; so does any class with its own forward (a residual
block), whose ONNX graph becomes a GraphModule.
"""

from __future__ import annotations

import io
import re
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["NotRebuildable", "canonical_graph", "rebuild_script_module"]


class NotRebuildable(Exception):
    """The scripted module is not (provably) a tree of supported torch layers."""


def _conv(module: Any) -> nn.Conv2d:
    return nn.Conv2d(
        module.in_channels,
        module.out_channels,
        tuple(module.kernel_size),
        stride=tuple(module.stride),
        padding=module.padding if isinstance(module.padding, str) else tuple(module.padding),
        dilation=tuple(module.dilation),
        groups=module.groups,
        bias=module.bias is not None,
        padding_mode=module.padding_mode,
    )


def _conv_transpose(module: Any) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(
        module.in_channels,
        module.out_channels,
        tuple(module.kernel_size),
        stride=tuple(module.stride),
        padding=tuple(module.padding),
        output_padding=tuple(module.output_padding),
        groups=module.groups,
        bias=module.bias is not None,
        dilation=tuple(module.dilation),
        padding_mode=module.padding_mode,
    )


def _batch_norm(cls: type[nn.BatchNorm1d | nn.BatchNorm2d]) -> Callable[[Any], nn.Module]:
    def build(module: Any) -> nn.Module:
        return cls(module.num_features, eps=module.eps, momentum=module.momentum, affine=module.weight is not None, track_running_stats=module.running_mean is not None)

    return build


_LEAVES: dict[str, Callable[[Any], nn.Module]] = {
    "Linear": lambda m: nn.Linear(m.in_features, m.out_features, bias=m.bias is not None),
    "Conv2d": _conv,
    "ConvTranspose2d": _conv_transpose,
    "BatchNorm1d": _batch_norm(nn.BatchNorm1d),
    "BatchNorm2d": _batch_norm(nn.BatchNorm2d),
    "ReLU": lambda m: nn.ReLU(),
    "LeakyReLU": lambda m: nn.LeakyReLU(m.negative_slope),
    "Sigmoid": lambda m: nn.Sigmoid(),
    "Tanh": lambda m: nn.Tanh(),
    "Flatten": lambda m: nn.Flatten(m.start_dim, m.end_dim),
    "Identity": lambda m: nn.Identity(),
    "Dropout": lambda m: nn.Dropout(m.p),
    "MaxPool2d": lambda m: nn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation, return_indices=m.return_indices, ceil_mode=m.ceil_mode),
    "AvgPool2d": lambda m: nn.AvgPool2d(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad, m.divisor_override),
    "AdaptiveAvgPool2d": lambda m: nn.AdaptiveAvgPool2d(m.output_size),
    "Upsample": lambda m: nn.Upsample(m.size, m.scale_factor, m.mode, m.align_corners, m.recompute_scale_factor),
    "ELU": lambda m: nn.ELU(m.alpha),
    "Softplus": lambda m: nn.Softplus(m.beta, m.threshold),
    "GELU": lambda m: nn.GELU(m.approximate),
    "SiLU": lambda m: nn.SiLU(),
}
"""Builders of torch's layers from their scripted counterparts; in-place variants are not rebuilt (their graphs differ)."""


def rebuild_script_module(scripted: torch.jit.ScriptModule) -> nn.Module:
    """The plain-module tree that `scripted` provably is; raises NotRebuildable otherwise.

    Dropout layers are replaced by nn.Identity (the result is in eval mode).
    """
    plain = _build(scripted, "<root>")
    try:
        plain.load_state_dict(scripted.state_dict(), strict=True)
    except RuntimeError as error:
        raise NotRebuildable(f"its weights do not fit the rebuilt layers ({error})") from None
    plain.eval()
    try:
        same = canonical_graph(scripted) == canonical_graph(_round_trip(plain))
    except RuntimeError as error:
        raise NotRebuildable(f"the rebuilt layers cannot be scripted ({error})") from None
    if not same:
        raise NotRebuildable("its TorchScript code differs from torch's code for the layers it names (a custom class, or another torch version)")
    for parent in list(plain.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Dropout):
                setattr(parent, name, nn.Identity())
    return plain


def _build(module: Any, path: str) -> nn.Module:
    name = getattr(module, "original_name", type(module).__name__)
    children = list(module.named_children())
    if name == "Sequential":
        return nn.Sequential(OrderedDict((child_name, _build(child, f"{path}.{child_name}" if path != "<root>" else child_name)) for child_name, child in children))
    builder = _LEAVES.get(name)
    if builder is None or children:
        raise NotRebuildable(f"module '{path}' is a scripted {name}, not a supported torch layer")
    try:
        return builder(module)
    except (AttributeError, TypeError, ValueError, RuntimeError) as error:
        raise NotRebuildable(f"module '{path}' ({name}) cannot be rebuilt ({error})") from None


def _round_trip(module: nn.Module) -> torch.jit.ScriptModule:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(module), buffer)
        buffer.seek(0)
        return torch.jit.load(buffer, map_location="cpu")


def canonical_graph(module: torch.jit.ScriptModule) -> str:
    """The module's inlined TorchScript graph as text, without source ranges, value names or name mangling."""
    text = module.inlined_graph.str(False)
    text = re.sub(r"___torch_mangle_\d+\.", "", text)
    names: dict[str, str] = {}
    return re.sub(r"%[\w.]+", lambda match: names.setdefault(match.group(0), f"%v{len(names)}"), text)
