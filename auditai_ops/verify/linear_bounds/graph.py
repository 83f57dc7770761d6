"""Computation graphs: residual additions, channel concatenations and tensors used by several branches.

A module that is neither a supported leaf nor a chain container is traced by torch.fx
(`auditai_ops.layers.trace_graph`, supported layers kept as leaves; a torch.fx.GraphModule, as
the model loaders produce, is taken as it is). Forward propagation of linear bounds in t goes
through the graph node by node: a leaf as in a chain; at an addition x + y of two tensors,
lower_x + lower_y and upper_x + upper_y (both sums of bounds valid for the same t, exact for
affine functions of t); a concatenation concatenates the bounds; flatten / view / reshape
reshape them; a tensor with several users is simply read by each.

`split` cuts the graph where its last stretch of single-input, single-user nodes begins: the
graph part becomes one `GraphBlock` and the tail ordinary leaves, so the chain machinery (the
specification folded into the last Linear, the fused and exact layers) applies to the tail, and a
graph that is a chain is expanded into its leaves entirely (chains give the chain engine's bounds
exactly). Back-substitution walks a block's nodes backwards (`back_substitution._transpose_graph`):
at a tensor read by several nodes the coefficients of all its readers are summed (a . y1 + b . y2
for y1, y2 functions of the same x), an addition passes its coefficients to both summands, a
concatenation splits them, reshapes undo; each leaf is transposed as in a chain with the lines
over the intervals its forward pass recorded. The graph part is propagated without the optional
interval track (sound, only never tightened by it) and without the exact first-layer ending.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterator

import torch
import torch.fx
from torch import nn

from auditai_ops.layers import UnsupportedLayerError
from auditai_ops.verify.linear_bounds.activations import _activation
from auditai_ops.verify.linear_bounds.affine import _affine_layer, _reshape
from auditai_ops.verify.linear_bounds.back_substitution import GraphTape, _Step
from auditai_ops.verify.linear_bounds.layer_kinds import _ACTIVATIONS, _AFFINE, _IDENTITIES, _LEAVES
from auditai_ops.verify.linear_bounds.pooling import max_pool_forward
from auditai_ops.verify.linear_bounds.state import _State

_ADDS = (operator.add, torch.add)


def is_addition(node: torch.fx.Node) -> bool:
    """operator.add / torch.add (call_function) or x.add(y) (call_method)."""
    return (node.op == "call_function" and node.target in _ADDS) or (node.op == "call_method" and node.target == "add")


def _leaves(module: nn.Module, path: str) -> Iterator[tuple[str, nn.Module]]:
    """The leaves of a call_module target: itself, or the children of an nn.Sequential in order."""
    if type(module) is nn.Sequential:
        for name, child in module.named_children():
            yield from _leaves(child, f"{path}.{name}")
    elif type(module) in _LEAVES or getattr(module, "auditai_reshape_only", False) is True:
        yield path, module
    else:
        raise UnsupportedLayerError(path, module, "is called inside a graph; only supported layers (or nn.Sequential chains of them) may be")


class GraphBlock(nn.Module):
    """The graph part of a traced model, from its input to the node `end` (the rest is a chain of leaves)."""

    def __init__(self, graph_module: torch.fx.GraphModule, end: torch.fx.Node, where: str) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.end = end
        self.where = where
        self.nodes = [node for node in graph_module.graph.nodes if node.op != "output"]
        self.nodes = self.nodes[: self.nodes.index(end) + 1]
        # (leaf, input shape, output shape) per leaf call, filled by `inspect`: what `partial_back_substitution` counts.
        self.bound_leaves: list[tuple[nn.Module, tuple[int, ...], tuple[int, ...]]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The graph's values up to `end` on concrete inputs."""
        return self.run(x, _call, operator.add, torch.cat, _reshape_tensor)  # type: ignore[return-value]

    def inspect(self, x: torch.Tensor) -> int:
        """Run the block on the concrete input x: fills `bound_leaves` and returns the largest per-sample size of any value
        in it (for chunking)."""
        sizes = [x[0].numel() if len(x) else 1]
        self.bound_leaves = []

        def leaf(value: torch.Tensor, module: nn.Module, where: str) -> torch.Tensor:
            out = module(value)
            self.bound_leaves.append((module, tuple(value.shape[1:]), tuple(out.shape[1:])))
            return out

        def visit(node: torch.fx.Node, value: object) -> None:
            if isinstance(value, torch.Tensor) and len(value):
                sizes.append(value[0].numel())

        self.run(x, leaf, operator.add, torch.cat, _reshape_tensor, visit)
        return max(sizes)

    def propagate(self, state: _State, record: GraphTape | None = None) -> _State:
        """The linear bounds in t at `end` (rows [N, R, *S]; see the module docstring); with a `record`, the
        per-node shapes and leaf steps that back-substitution needs (`back_substitution._transpose_graph`)."""
        if record is None:
            return self.run(state, _leaf, _add, _cat, _reshape_rows)  # type: ignore[return-value]
        current: list[torch.fx.Node] = []

        def leaf(value: _State, module: nn.Module, where: str) -> _State:
            step = _Step(module, tuple(value.lower.shape[2:]))
            record.steps.setdefault(current[0], []).append(step)
            return _leaf(value, module, where, step)

        def visit(node: torch.fx.Node, value: object) -> None:
            current[:] = [node]
            if isinstance(value, _State):
                record.shapes[node] = tuple(value.lower.shape[2:])

        return self.run(state, leaf, _add, _cat, _reshape_rows, visit)  # type: ignore[return-value]

    def run(
        self,
        x: object,
        leaf: Callable[..., object],
        add: Callable[..., object],
        cat: Callable[..., object],
        reshape: Callable[..., object],
        visit: Callable[[torch.fx.Node, object], None] | None = None,
    ) -> object:
        """Evaluate the nodes with the given operations (on tensors or on states); reshape gets (value, [batch, *rest]).

        visit(node, value) is called before each node is evaluated (value None) and after it (its value).
        """
        values: dict[torch.fx.Node, object] = {}
        for node in self.nodes:
            if visit is not None:
                visit(node, None)
            where = f"{self.where}:{node.name}"
            args = node.args
            if node.op == "placeholder":
                values[node] = x
            elif node.op == "call_module":
                value = values[args[0]]  # type: ignore[index]
                prefix = "" if self.where == "<root>" else f"{self.where}."
                for path, module in _leaves(self.graph_module.get_submodule(str(node.target)), f"{prefix}{node.target}"):
                    value = leaf(value, module, path)
                values[node] = value
            elif is_addition(node):
                if len(args) != 2 or not all(isinstance(a, torch.fx.Node) for a in args) or node.kwargs.get("alpha", 1) != 1:
                    raise UnsupportedLayerError(where, self.graph_module, "adds something other than two tensors")
                first, second = values[args[0]], values[args[1]]  # type: ignore[index]
                if _sample_shape(first) != _sample_shape(second):
                    shapes = f"{_sample_shape(first)} and {_sample_shape(second)}"
                    raise UnsupportedLayerError(where, self.graph_module, f"adds tensors of shapes {shapes}; only additions of equal shapes (residual connections) are supported")
                values[node] = add(first, second)
            elif node.op == "call_function" and node.target is torch.cat:
                tensors = args[0]
                dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
                if not isinstance(dim, int) or dim <= 0:
                    raise UnsupportedLayerError(where, self.graph_module, f"concatenates along dim {dim}; only non-batch dimensions (dim >= 1) are supported")
                values[node] = cat([values[t] for t in tensors], dim)  # type: ignore[union-attr]
            elif (node.op == "call_function" and node.target is torch.flatten) or (node.op == "call_method" and node.target == "flatten"):
                start = args[1] if len(args) > 1 else node.kwargs.get("start_dim", 0)
                end = args[2] if len(args) > 2 else node.kwargs.get("end_dim", -1)
                if start != 1 or end != -1:
                    raise UnsupportedLayerError(where, self.graph_module, f"flattens dims {start}..{end}; only flatten(x, 1) is supported")
                values[node] = reshape(values[args[0]], [-1, -1])  # type: ignore[index]
            elif node.op == "call_method" and node.target in ("view", "reshape"):
                shape = list(args[1]) if len(args) == 2 and isinstance(args[1], list | tuple) else list(args[1:])
                rest = shape[1:]
                batch_ok = shape and (shape[0] == -1 or (isinstance(shape[0], torch.fx.Node) and shape[0].target == "size" and shape[0].args[1:] == (0,)))
                if not batch_ok or not all(isinstance(v, int) for v in rest):
                    raise UnsupportedLayerError(where, self.graph_module, f"reshapes to {shape}; only (batch, *fixed sizes) is supported")
                values[node] = reshape(values[args[0]], [-1, *rest])  # type: ignore[index]
            elif node.op == "call_method" and node.target == "size":
                values[node] = None  # only read as the batch size of a view / reshape
            else:
                raise UnsupportedLayerError(where, self.graph_module, f"has node {node.op} {node.target!r}, which the graph engine cannot bound")
            if visit is not None:
                visit(node, values[node])
        return values[self.end]


def _sample_shape(value: object) -> tuple[int, ...]:
    """The per-sample shape of a concrete tensor [B, *S] or of a state's rows [N, R, *S]."""
    return tuple(value.lower.shape[2:]) if isinstance(value, _State) else tuple(value.shape[1:])  # type: ignore[attr-defined]


def _call(value: torch.Tensor, module: nn.Module, where: str) -> torch.Tensor:
    """A leaf on a concrete tensor."""
    return module(value)


def _reshape_tensor(value: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """A concrete tensor reshaped to (its batch, *shape[1:])."""
    return value.reshape(value.shape[0], *shape[1:])


def _leaf(state: _State, module: nn.Module, where: str, step: _Step | None = None) -> _State:
    """One leaf on linear bounds, as in a chain (without the fused and exact special cases); records the input interval
    of an activation or max pool on `step`."""
    if isinstance(module, _ACTIVATIONS):
        state, low, high, _ = _activation(state, module, False)
    elif isinstance(module, nn.MaxPool2d):
        state, low, high = max_pool_forward(state, module)
    elif isinstance(module, _AFFINE):
        return _affine_layer(state, module)
    else:
        return state if isinstance(module, _IDENTITIES) else _reshape(state, module, where)
    if step is not None:
        step.low, step.high = low, high
    return state


def _untracked(state: _State) -> _State:
    """The state without its interval row (the graph part runs without the interval track)."""
    k = state.k
    if not state.tracked:
        return state
    return _State(state.lower[:, : k + 1], None if state.upper is None else state.upper[:, : k + 1], k)


def _add(x: _State, y: _State) -> _State:
    """Bounds of x + y: lower_x + lower_y <= x + y <= upper_x + upper_y (exact where both are exact)."""
    x, y = _untracked(x), _untracked(y)
    upper = None if x.upper is None and y.upper is None else x.up + y.up
    return _State(x.lower + y.lower, upper, x.k)


def _cat(states: list[_State], dim: int) -> _State:
    """Bounds of torch.cat(values, dim): the bounds concatenated (rows [N, R, *S]: sample dim d is rows dim d + 1)."""
    states = [_untracked(s) for s in states]
    rows_dim = dim + 1
    upper = None if all(s.upper is None for s in states) else torch.cat([s.up for s in states], rows_dim)
    return _State(torch.cat([s.lower for s in states], rows_dim), upper, states[0].k)


def _reshape_rows(state: _State, shape: list[int]) -> _State:
    """Reshape every row to the sample shape shape[1:] ([-1] after flatten)."""
    n, rows = state.lower.shape[:2]

    def apply(values: torch.Tensor) -> torch.Tensor:
        return values.reshape(n, rows, *shape[1:])

    return _State(apply(state.lower), None if state.upper is None else apply(state.upper), state.k)


def _is_flatten(node: torch.fx.Node) -> bool:
    """torch.flatten(x, 1) or x.flatten(1)."""
    flatten = (node.op == "call_function" and node.target is torch.flatten) or (node.op == "call_method" and node.target == "flatten")
    return flatten and tuple(node.args[1:]) == (1,) and not node.kwargs


def split(graph_module: torch.fx.GraphModule, where: str) -> list[tuple[str, nn.Module]]:
    """The model as [GraphBlock, *tail leaves], or only leaves when the graph is a chain.

    The tail is the longest run of call_module nodes at the end of the graph, each reading only the
    previous node, which no other node reads.
    """
    nodes = list(graph_module.graph.nodes)
    output = nodes[-1]
    assert output.op == "output"
    tail: list[torch.fx.Node] = []
    node = output.args[0]
    while isinstance(node, torch.fx.Node) and len(node.users) == 1 and (_is_flatten(node) or (node.op == "call_module" and len(node.args) == 1)):
        tail.insert(0, node)
        node = node.args[0]
    prefix = "" if where == "<root>" else f"{where}."
    leaves: list[tuple[str, nn.Module]] = []
    for t in tail:
        if t.op == "call_module":
            leaves += list(_leaves(graph_module.get_submodule(str(t.target)), f"{prefix}{t.target}"))
        else:
            leaves.append((f"{prefix}{t.name}", nn.Flatten()))
    if isinstance(node, torch.fx.Node) and node.op == "placeholder":
        return leaves
    assert isinstance(node, torch.fx.Node)
    return [(f"{where}:graph", GraphBlock(graph_module, node, where)), *leaves]
