"""The layers the verifier can bound, and the project's own boundable modules.

Every bound backend (auto_LiRPA through auditai_ops.verify.lirpa_compat, and the
low-dimensional linear bounds of auditai_ops.verify.linear_bounds) accepts exactly these;
models are checked against them before any work, with an error that names the layer.
Models are chains of them, or computation graphs (`trace_graph`, `check_graph`): torch.fx
graphs whose nodes call these layers, add two tensors, concatenate along channels, or flatten.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.fx
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


CHAIN_LAYERS: tuple[type[nn.Module], ...] = (
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
    ViewAs,
    nn.Sequential,
    nn.ModuleList,
)
"""The layers of plain chains, which every bound backend (auto_LiRPA 0.3 and later included) handles."""

SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    *CHAIN_LAYERS,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.Dropout,
    nn.Upsample,
    nn.ELU,
    nn.Softplus,
    nn.GELU,
    nn.SiLU,
)
"""Layer types whose bounds are tested (tests/verify/test_layer_soundness.py, tests/verify/test_pooling_and_activations.py,
tests/verify/test_graph_soundness.py).

Besides these, a module may declare `auditai_reshape_only = True` (its forward only
reshapes, e.g. `x.view(-1, C, H, W)`) or `auditai_container = True` (its forward only
combines its children with additions and matrix products by constants); the children of
either are checked in turn. Any other module is accepted as a computation graph when
torch.fx traces it (`trace_graph`) into supported leaves and `GRAPH_FUNCTIONS`.
"""

GRAPH_FUNCTIONS: tuple[object, ...] = (operator.add, torch.add, torch.cat, torch.flatten)
"""Functions a traced graph may call: additions of two tensors of the same shape (residual connections),
torch.cat(tensors, dim=1) (channels), torch.flatten(x, 1). Methods: x.flatten(1), x.view / x.reshape to (batch, -1)
(shapes are checked where the graph is bounded)."""

GRAPH_METHODS = frozenset({"flatten", "view", "reshape", "size", "add"})
"""Tensor methods a traced graph may call (`size` only as x.size(0) feeding a view / reshape)."""


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


def leaf_problem(module: nn.Module) -> str | None:
    """Why a leaf of a supported type cannot be bounded in its configuration, or None."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.Dropout) and module.training:
        kind = "batch statistics" if isinstance(module, nn.modules.batchnorm._BatchNorm) else "random masks"
        return f"is in training mode ({kind}); call model.eval() first"
    if isinstance(module, nn.MaxPool2d):
        if module.dilation not in (1, (1, 1)) or module.ceil_mode or module.return_indices:
            settings = f"dilation {module.dilation}, ceil_mode {module.ceil_mode}, return_indices {module.return_indices}"
            return f"has {settings}; only dilation 1, ceil_mode False and no indices are supported"
    if isinstance(module, nn.Upsample) and module.mode not in ("nearest", "bilinear"):
        return f"uses mode={module.mode!r}; only 'nearest' and 'bilinear' (linear maps with weights >= 0) are supported"
    if isinstance(module, nn.ELU) and not 0.0 <= module.alpha <= 1.0:
        return f"has alpha {module.alpha} outside [0, 1] (then neither monotone nor convex)"
    if isinstance(module, nn.Softplus) and module.beta <= 0:
        return f"has beta {module.beta} <= 0"
    if isinstance(module, nn.GELU) and module.approximate not in ("none", "tanh"):
        return f"uses approximate={module.approximate!r}"
    return None


class _LeafTracer(torch.fx.Tracer):
    """torch.fx tracing that keeps supported layers, reshape-only modules and modules without children as single
    call_module nodes (so an unsupported one is named by its path, not by the functions inside it)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if type(m) in (nn.Sequential, nn.ModuleList):
            return False
        return type(m) in SUPPORTED_LAYERS or getattr(m, "auditai_reshape_only", False) is True or next(m.children(), None) is None


def trace_graph(model: nn.Module, where: str = "<root>") -> torch.fx.GraphModule:
    """`model` as a torch.fx graph of supported leaves (a GraphModule is taken as it is), checked by `check_graph`."""
    if isinstance(model, torch.fx.GraphModule):
        graph_module = model
    else:
        try:
            graph = _LeafTracer().trace(model)
        except Exception as exc:  # noqa: BLE001 - any tracing failure means "not a graph we can bound"
            raise UnsupportedLayerError(where, model, f"is not a supported layer and torch.fx cannot trace it ({type(exc).__name__}: {exc})") from exc
        graph_module = torch.fx.GraphModule(model, graph)
        graph_module.train(model.training)
    check_graph(graph_module, where, model)
    return graph_module


def check_graph(graph_module: torch.fx.GraphModule, where: str = "<root>", owner: nn.Module | None = None) -> None:
    """Raise UnsupportedLayerError naming the first node the graph engine cannot bound.

    Accepted: one placeholder; call_module of supported leaf types (checked by `check_supported`),
    reshape-only modules or nn.Sequential chains; call_function of `GRAPH_FUNCTIONS`; call_method
    of `GRAPH_METHODS`; get_attr nowhere (constants would need their own bounds); one output tensor.
    Errors name `owner` (the traced module; default the graph module) and the node.
    """
    named = graph_module if owner is None else owner
    inputs = [node for node in graph_module.graph.nodes if node.op == "placeholder"]
    if len(inputs) != 1:
        raise UnsupportedLayerError(where, named, f"has {len(inputs)} inputs ({', '.join(n.name for n in inputs)}); the verifier bounds graphs of one input")
    for node in graph_module.graph.nodes:
        path = f"{where}:{node.name}"
        if node.op == "call_module":
            check_supported(graph_module.get_submodule(str(node.target)), prefix=str(node.target) if where == "<root>" else f"{where}.{node.target}")
        elif node.op == "call_function" and node.target not in GRAPH_FUNCTIONS:
            name = getattr(node.target, "__name__", str(node.target))
            allowed = "operator.add, torch.add, torch.cat, torch.flatten"
            raise UnsupportedLayerError(path, named, f"calls function {name!r}, which the verifier cannot bound; graphs may call {allowed}")
        elif node.op == "call_method" and node.target not in GRAPH_METHODS:
            allowed = ", ".join(sorted(GRAPH_METHODS))
            raise UnsupportedLayerError(path, named, f"calls tensor method {node.target!r}, which the verifier cannot bound; graphs may call {allowed}")
        elif node.op == "get_attr":
            raise UnsupportedLayerError(path, named, f"reads the constant {node.target!r} inside the graph; the verifier bounds graphs whose constants live in their layers")
        elif node.op == "output" and not isinstance(node.args[0], torch.fx.Node):
            raise UnsupportedLayerError(path, named, "returns more than one tensor; the verifier bounds graphs with one output")


def _is_graph(module: nn.Module) -> bool:
    """A module bounded as a computation graph: a GraphModule, or one with children that is neither a supported
    layer nor a flagged reshape or container (a leaf of another type is simply unsupported)."""
    flagged = getattr(module, "auditai_reshape_only", False) is True or getattr(module, "auditai_container", False) is True
    has_children = next(module.children(), None) is not None
    return isinstance(module, torch.fx.GraphModule) or (has_children and not flagged and type(module) not in SUPPORTED_LAYERS)


def check_supported(model: nn.Module, prefix: str = "") -> None:
    """Raise UnsupportedLayerError for the first module that bound propagation cannot handle.

    Types are matched exactly (a subclass may override `forward`); a subclass that keeps
    the semantics can declare `auditai_reshape_only` or `auditai_container` instead. Any
    other module must trace (`trace_graph`) into a graph of supported leaves and operations.
    """
    traced: list[str] = []  # graphs: check_graph checks the layers their nodes call, not every descendant
    for path, module in model.named_modules(prefix=prefix):
        where = path or "<root>"
        if any(path.startswith(f"{graph}.") or not graph for graph in traced):
            continue
        if _is_graph(module):
            trace_graph(module, where)
            traced.append(path)
            continue
        flagged = getattr(module, "auditai_reshape_only", False) is True or getattr(module, "auditai_container", False) is True
        if not flagged and type(module) not in SUPPORTED_LAYERS:
            raise UnsupportedLayerError(where, module)
        reason = leaf_problem(module)
        if reason is not None:
            raise UnsupportedLayerError(where, module, reason)
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
