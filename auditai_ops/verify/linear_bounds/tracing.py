"""The supported layers, and flattening a model into the chain of leaf modules it runs.

Layers (exact types, as `auditai_ops.layers.SUPPORTED_LAYERS`; convolutions more generally than
auto_LiRPA 0.3 takes them):

* affine: nn.Linear, nn.Conv2d (any padding, padding_mode, stride, dilation, groups),
  nn.ConvTranspose2d (any padding/output_padding/stride/dilation/groups), nn.BatchNorm1d/2d
  in eval mode with running statistics, PerChannelNormalize, nn.AvgPool2d,
  nn.AdaptiveAvgPool2d (any output size: averages over fixed windows), nn.Upsample (nearest,
  bilinear) and nn.Dropout in eval mode (the identity). See `affine`.
* reshapes: nn.Flatten (start_dim >= 1), nn.Identity, any module with
  `auditai_reshape_only = True` (its forward is applied to every row, the rows folded into the
  batch dimension).
* activations: the monotone non-decreasing nn.ReLU, nn.LeakyReLU (negative_slope >= 0),
  nn.Sigmoid, nn.Tanh, nn.ELU (alpha >= 0), nn.Softplus; the non-monotone nn.GELU and nn.SiLU.
  See `relaxations`.
* nn.MaxPool2d (no dilation, no ceil_mode): see `pooling`.
* anything else: UnsupportedLayerError(path, module).

Containers: nn.Sequential, and modules declaring `auditai_container = True` whose forward is a
plain chain of their children. The latter is checked, not assumed: the container's forward is
run on an example input (the input at the centre of the first box) and compared with the chain
of its children. `LatentLine` (two inputs) and the VAE's `Encoder` are therefore rejected; pass
the head (or [decoder, classifier]) and the affine input (`latent_line_input`) instead. Any
other module with children, and any torch.fx.GraphModule, is a computation graph: traced by
`auditai_ops.layers.trace_graph`, checked node by node, and bounded by `graph` (a chain-shaped
graph is expanded into its leaves). A list may mix leaves, chains and graphs (pixel mode:
[decoder modules..., classifier]).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx
from torch import nn

from auditai_ops.layers import UnsupportedLayerError, leaf_problem, trace_graph
from auditai_ops.verify.linear_bounds import graph
from auditai_ops.verify.linear_bounds.layer_kinds import _LEAVES

LayerList = nn.Module | Sequence[nn.Module] | Sequence[tuple[str, nn.Module]]
"""A model (nn.Sequential or a checked chain container), a list of modules, or `flatten_layers` output."""


def flatten_layers(model: LayerList, example: torch.Tensor | None = None) -> list[tuple[str, nn.Module]]:
    """The leaf modules that `model` runs in sequence, as (path, module).

    nn.Sequential is expanded; a module with `auditai_container = True` is expanded only if its
    forward on `example` (one input batch) equals the chain of its children, else (or without an
    example) UnsupportedLayerError. Leaves must be supported (see the module docstring).
    """
    if isinstance(model, nn.Module):
        items: list[tuple[str, nn.Module]] = [("", model)]
    else:
        items = [item if isinstance(item, tuple) else (str(i), item) for i, item in enumerate(model)]
    out: list[tuple[str, nn.Module]] = []
    x = example
    with torch.no_grad():
        for path, module in items:
            x = _visit(module, path, x, out)
    return out


def _visit(module: nn.Module, path: str, x: torch.Tensor | None, out: list[tuple[str, nn.Module]]) -> torch.Tensor | None:
    where = path or "<root>"
    children = list(module.named_children())
    if type(module) is nn.Sequential:
        for name, child in children:
            x = _visit(child, f"{path}.{name}" if path else name, x, out)
        return x
    if type(module) in _LEAVES or getattr(module, "auditai_reshape_only", False) is True:
        _check_leaf(where, module)
        out.append((where, module))
        return None if x is None else module(x)
    if getattr(module, "auditai_container", False) is True and children:
        if x is None:
            raise UnsupportedLayerError(where, module, "is an auditai_container; pass an example input so that its forward can be checked to be the plain chain of its children")
        start = len(out)
        try:
            chained: torch.Tensor | None = x
            for name, child in children:
                chained = _visit(child, f"{path}.{name}" if path else name, chained, out)
            direct = module(x)
        except UnsupportedLayerError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure means "not a one-input chain"
            del out[start:]
            raise UnsupportedLayerError(where, module, f"is not a plain chain of its children on one input ({type(exc).__name__}: {exc})") from exc
        if not isinstance(direct, torch.Tensor) or chained is None or direct.shape != chained.shape or not torch.allclose(direct, chained, rtol=1e-4, atol=1e-5):
            del out[start:]
            raise UnsupportedLayerError(where, module, "is an auditai_container whose forward is not the plain chain of its children")
        return chained
    if not children and not isinstance(module, torch.fx.GraphModule):
        raise UnsupportedLayerError(where, module)
    for item_path, item in graph.split(trace_graph(module, where), where):
        if isinstance(item, graph.GraphBlock):
            out.append((item_path, item))
            x = None if x is None else item(x)
        else:
            x = _visit(item, item_path, x, out)
    return x


def _check_leaf(where: str, module: nn.Module) -> None:
    """Refuse, naming the layer, a leaf of a supported type in a configuration the bounds do not cover."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if module.training:
            raise UnsupportedLayerError(where, module, "is in training mode (batch statistics); call model.eval() first")
        if module.running_mean is None or module.running_var is None:
            raise UnsupportedLayerError(where, module, "has no running statistics (track_running_stats=False uses batch statistics)")
    if isinstance(module, nn.LeakyReLU) and module.negative_slope < 0:
        raise UnsupportedLayerError(where, module, f"has negative_slope {module.negative_slope} < 0 (not monotone)")
    if isinstance(module, nn.Flatten) and module.start_dim in (0,):
        raise UnsupportedLayerError(where, module, "flattens the batch dimension (start_dim=0)")
    if isinstance(module, nn.ConvTranspose2d) and module.padding_mode != "zeros":
        raise UnsupportedLayerError(where, module, f"uses padding_mode={module.padding_mode!r}")
    reason = leaf_problem(module)
    if reason is not None:
        raise UnsupportedLayerError(where, module, reason)
