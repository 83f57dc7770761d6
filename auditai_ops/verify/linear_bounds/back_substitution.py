"""CROWN-style back-substitution of the margin rows (`back_substitute=True`).

Forward bounds lose where the relaxation errors of one layer meet weights of mixed signs in the
next (they pay |A| |W| where CROWN pays |A W|). CROWN's back-substitution of C through every
layer (lower line where the running coefficient is positive, upper where negative, lines valid
on the forward pass's intervals of each activation input) avoids that at the cost of one row per
row of C through every layer; it is run after the forward pass and the larger of the two bounds
is kept. With two hidden layers on an affine input, the forward intermediate bounds are exactly
CROWN's. Refinements:

* Exact first layer (k = 1): see `kinks`.
* Rows (`minimum_only`, `refine_below`): the verifier needs min over rows > min_margin, so
  only the rows that can decide that are back-substituted (`_refine`).
* Partial first (`refine_below`, deep networks: pixel mode). The deciding rows are first
  back-substituted only down to a checkpoint layer (`partial_back_substitution`: by cost, the
  decoder's output in pixel mode) and bounded there with that layer's forward linear bounds;
  only rows this leaves at or below refine_below are then back-substituted fully. Proves every
  box the full one proves, at about a third of its cost where forward mode is loose after the
  checkpoint and tight before it (`full=False` skips the full step, for callers that split).

The last activation is relaxed over its input interval in forward mode too (the lines
back-substitution needs, computed once), so forward bounds in this mode can be slightly looser
than `back_substitute=False` on a row that is not back-substituted.

Lines of any slope sign are handled the same way here (a . h >= a+ h_lower + a- h_upper needs
only h_lower <= h <= h_upper on the input interval), so GELU and SiLU need nothing special;
max pooling is relaxed by CROWN's lines (see `pooling`); computation graphs are walked backwards
node by node, summing coefficients where a tensor has several readers (`_transpose_graph`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx
from torch import nn

from auditai_ops.verify import mlp_kernels
from auditai_ops.verify.linear_bounds import pooling
from auditai_ops.verify.linear_bounds.affine import _transpose_affine
from auditai_ops.verify.linear_bounds.kinks import _Kinks
from auditai_ops.verify.linear_bounds.layer_kinds import _ACTIVATIONS, _AFFINE
from auditai_ops.verify.linear_bounds.relaxations import Lines, _lines
from auditai_ops.verify.linear_bounds.state import _State


@dataclass
class _Step:
    """One layer as the forward pass saw it: the module and its input shape; for an activation, its input interval."""

    module: nn.Module
    shape: tuple[int, ...]
    low: torch.Tensor | None = None
    high: torch.Tensor | None = None
    kinks: _Kinks | None = None  # a piecewise-linear activation of an exact input, k = 1: back-substitution ends here, exactly
    finish: _Kinks | None = None  # an nn.Linear right after such an activation: back-substitution ends here (`_Kinks.minimum_after_linear`)
    midpoint: tuple[torch.Tensor, torch.Tensor] | None = None  # for `finish`: W m + b of the lines' midpoint m [N, 2, out], m's unstable entries [N, M, 2]
    lines: Lines | None = None  # lines over [low, high], when the forward pass used them (see `_step_lines`)
    transposed_lines: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None] | None = None  # cached by `_step_lines`
    pool_lines: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # a max pool's lines (`pooling.max_pool_lines`), cached
    graph: GraphTape | None = None  # a `graph.GraphBlock`: its own record, walked backwards by `_transpose_graph`


Tape = list[_Step]


def _refine(low: torch.Tensor, back_substitute: mlp_kernels.BackSubstitute, refine_below: float | None, minimum_only: bool) -> torch.Tensor:
    """max(forward, back-substituted) lower bounds [N, S] on the rows that the options select (all rows by default).

    back_substitute(boxes, rows): lower bounds of those rows by back-substitution (`_back_substitute`).

    With `minimum_only` or `refine_below`, two rounds: first, per box, the row (refine_below) or
    the two rows (minimum_only) with the lowest forward bounds; then every row whose forward
    bound is below what the first round gave (only those can still lower the minimum over
    rows). With `refine_below` only rows at or below it are candidates, and a box whose first
    row comes out <= refine_below stops (it cannot be proved). So the minimum over rows equals
    that of back-substituting every row (minimum_only), or is > refine_below exactly when that
    one is (refine_below); the other rows keep their forward bounds, sound and looser.
    """
    if refine_below is None and not minimum_only:
        every = torch.arange(low.shape[1], device=low.device).expand(low.shape[0], -1)
        return torch.maximum(low, back_substitute(None, every))
    threshold = float("inf") if refine_below is None else refine_below
    best = low.clone()
    # First round: the lowest row (refine_below), or the two lowest (minimum_only: usually both are needed).
    first = low.topk(min(low.shape[1], 1 if refine_below is not None else _FIRST_ROUND_ROWS), dim=1, largest=False).indices  # [N, r]
    lowest = low.gather(1, first)
    todo = lowest[:, 0] <= threshold
    if not bool(todo.any()):
        return best
    boxes = None if bool(todo.all()) else todo.nonzero().squeeze(1)
    at = torch.arange(low.shape[0], device=low.device) if boxes is None else boxes
    row = first[at]
    reached = torch.maximum(lowest[at], back_substitute(boxes, row))
    best[at[:, None], row] = reached
    # Second round: rows whose forward bound is below the first round's smallest bound (minimum_only),
    # or at or below refine_below in boxes whose first row passed (refine_below).
    cutoff = torch.full_like(lowest[:, :1], -torch.inf)
    if refine_below is None:
        cutoff[at] = reached.amin(dim=1, keepdim=True)
        second = low < cutoff
    else:
        cutoff[at] = torch.where(reached > threshold, threshold, -torch.inf)
        second = low <= cutoff
    second.scatter_(1, first, False)
    pair_boxes, pair_rows = second.nonzero(as_tuple=True)
    if len(pair_boxes):
        bound = back_substitute(pair_boxes, pair_rows[:, None]).squeeze(1)
        best[pair_boxes, pair_rows] = torch.maximum(low[pair_boxes, pair_rows], bound)
    return best


_FIRST_ROUND_ROWS = 2
"""minimum_only: rows per box in the first round. Forward bounds are looser than back-substituted ones, so about two rows per
box have a forward bound below the minimum (1.97 on benchmarks/bench_verify.py); both in one batch avoid gathering per-box data."""


def _step_lines(step: _Step) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(lower slope, upper - lower slope, lower intercept, upper - lower intercept) over the activation's input interval, [N, F]; cached."""
    if step.transposed_lines is None:
        assert step.low is not None and step.high is not None
        if step.lines is None:
            low, high = step.low, step.high
            step.lines = (*_lines(step.module, low, high, upper=False), *_lines(step.module, low, high, upper=True))
        s_lo, b_lo, s_up, b_up = (None if line is None else line.flatten(1) for line in step.lines)
        assert s_lo is not None and s_up is not None
        if b_lo is None and b_up is None:
            b_gap = None
        else:
            b_gap = (torch.zeros_like(s_lo) if b_up is None else b_up) - (0.0 if b_lo is None else b_lo)
        step.transposed_lines = (s_lo, s_up - s_lo, b_lo, b_gap)
    return step.transposed_lines


def _back_substitute(tape: Tape, C: torch.Tensor, pieces: int, inputs: _State, boxes: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """CROWN's back-substitution of chosen rows of C through the recorded layers: lower bounds [G, r].

    boxes [G]: the boxes (None: all N, in order), rows [G, r]: the rows of C of each. Each
    activation is relaxed by lines valid over the interval of its input that the forward pass
    found (lower line where the running coefficient is positive, upper where it is negative),
    affine layers are applied transposed, reshapes undone, graph blocks walked backwards
    (`_transpose_graph`); the result, a linear function of the input, is bounded with the input's
    own linear bounds in s. At a `_Kinks` activation the linear function of its output is
    minimised exactly instead.
    """
    samples = (torch.arange(rows.shape[0], device=rows.device) if boxes is None else boxes) // pieces
    a = C.to(inputs.lower.dtype)[samples[:, None], rows]  # [G, r, n_out]
    constant = torch.zeros(rows.shape, dtype=a.dtype, device=a.device)

    def per_box(values: torch.Tensor) -> torch.Tensor:
        return (values if boxes is None else values[boxes]).unsqueeze(1)

    for step in reversed(tape):
        module = step.module
        if step.finish is not None:
            assert isinstance(module, nn.Linear) and step.midpoint is not None
            return step.finish.minimum_after_linear(a, constant, boxes, module, *step.midpoint)
        if step.kinks is not None:
            return step.kinks.minimum(a, constant, boxes)
        a, constant = _transpose_step(step, a, constant, boxes)
    # a . x(s) for lower(s) <= x(s) <= upper(s): positive parts on the lower rows, negative on the upper.
    k = inputs.k
    flat_a = a.flatten(2)  # [G, r, F]
    lower_rows = per_box(inputs.lower[:, : k + 1].flatten(2)).squeeze(1)  # [G, k + 1, F]
    if inputs.upper is None:
        coefficients = torch.bmm(flat_a, lower_rows.transpose(1, 2))
    else:
        upper_rows = per_box(inputs.upper[:, : k + 1].flatten(2)).squeeze(1)
        negative = flat_a.clamp(max=0)
        coefficients = torch.bmm(flat_a - negative, lower_rows.transpose(1, 2)) + torch.bmm(negative, upper_rows.transpose(1, 2))
    return coefficients[..., k] + constant - coefficients[..., :k].abs().sum(dim=2)


def _transpose_step(step: _Step, a: torch.Tensor, constant: torch.Tensor, boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """a . y >= a' . x + constant' for one recorded layer y = f(x): (a' [G, r, *input shape], constant' [G, r])."""
    module = step.module

    def per_box(values: torch.Tensor) -> torch.Tensor:
        return (values if boxes is None else values[boxes]).unsqueeze(1)

    if step.graph is not None:
        return _transpose_graph(step.graph, a, constant, boxes)
    if isinstance(module, _ACTIVATIONS):
        s_lo, s_gap, b_lo, b_gap = _step_lines(step)
        # a h >= a+ (s_lo x + b_lo) + a- (s_up x + b_up) = a (s_lo x + b_lo) + a- ((s_up - s_lo) x + b_up - b_lo)
        flat = a.flatten(2)
        negative = flat.clamp(max=0)
        if b_lo is not None:
            constant = constant + (flat * per_box(b_lo)).sum(dim=2)
        if b_gap is not None:
            constant = constant + (negative * per_box(b_gap)).sum(dim=2)
        return torch.addcmul(flat * per_box(s_lo), negative, per_box(s_gap)).reshape(a.shape), constant
    if isinstance(module, _AFFINE):
        return _transpose_affine(module, a, constant, step.shape)
    if isinstance(module, nn.MaxPool2d):
        assert step.low is not None and step.high is not None
        if step.pool_lines is None:
            step.pool_lines = pooling.max_pool_lines(module, step.low, step.high)
        return pooling.max_pool_transpose(a, constant, step.pool_lines, step.shape, boxes)
    return a.reshape(*a.shape[:2], *step.shape), constant


@dataclass
class GraphTape:
    """A graph block as the forward pass saw it: its nodes in order, each node's per-sample shape, the leaf steps of each
    call_module node, and the node the block ends at. Written by `graph.GraphBlock.propagate`."""

    nodes: list[torch.fx.Node]
    end: torch.fx.Node
    shapes: dict[torch.fx.Node, tuple[int, ...]] = field(default_factory=dict)
    steps: dict[torch.fx.Node, list[_Step]] = field(default_factory=dict)


def _transpose_graph(record: GraphTape, a: torch.Tensor, constant: torch.Tensor, boxes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Back-substitution through a graph block: the nodes in reverse order, each passing its coefficients to its inputs.

    A tensor read by several nodes receives the sum of their coefficients (a . y1 + b . y2 for y1, y2 functions of the
    same x); an addition passes its coefficients to both summands; a concatenation splits them; reshapes undo.
    """
    coefficients: dict[torch.fx.Node, torch.Tensor] = {record.end: a}

    def give(node: torch.fx.Node, value: torch.Tensor) -> None:
        coefficients[node] = coefficients[node] + value if node in coefficients else value

    for node in reversed(record.nodes):
        if node not in coefficients:
            continue
        a = coefficients.pop(node)
        if node.op == "placeholder":
            return a, constant
        if node.op == "call_module":
            for step in reversed(record.steps[node]):
                a, constant = _transpose_step(step, a, constant, boxes)
            give(node.args[0], a)  # type: ignore[arg-type]
        elif node.target is torch.cat:
            parts = node.args[0]
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            sizes = [record.shapes[part][int(dim) - 1] for part in parts]  # type: ignore[index, union-attr, arg-type]
            for part, piece in zip(parts, a.split(sizes, dim=int(dim) + 1), strict=True):  # type: ignore[arg-type]
                give(part, piece)
        elif (node.op == "call_function" and node.target in (operator.add, torch.add)) or (node.op == "call_method" and node.target == "add"):
            for summand in node.args:
                give(summand, a)  # type: ignore[arg-type]
        else:  # flatten / view / reshape
            source = node.args[0]
            give(source, a.reshape(*a.shape[:2], *record.shapes[source]))  # type: ignore[index, arg-type]
    raise AssertionError("the graph's input was never reached")
