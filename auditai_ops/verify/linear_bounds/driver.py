"""The entry points: plan the layers, split and chunk the boxes, run the forward pass.

See the package docstring for the API. A computation graph is one `graph.GraphBlock` step here
(followed by its chain tail as ordinary leaves): the block propagates itself forward and records
what back-substitution needs to walk it backwards.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import nn

from auditai_ops.verify import mlp_kernels, partial_back_substitution
from auditai_ops.verify.linear_bounds import affine, graph, pooling, specification
from auditai_ops.verify.linear_bounds.activations import _activation
from auditai_ops.verify.linear_bounds.affine import _affine_layer, _reshape, _sparse_gap_linear
from auditai_ops.verify.linear_bounds.back_substitution import GraphTape, Tape, _back_substitute, _refine, _Step
from auditai_ops.verify.linear_bounds.bounds import AffineBounds, _check_box, split_box
from auditai_ops.verify.linear_bounds.kinks import _exact_relu_linear, _ExactRelu, _Kinks
from auditai_ops.verify.linear_bounds.layer_kinds import _ACTIVATIONS, _AFFINE, _IDENTITIES, _LEAVES
from auditai_ops.verify.linear_bounds.relaxations import _evaluate
from auditai_ops.verify.linear_bounds.specification import _spec_layer
from auditai_ops.verify.linear_bounds.state import _range, _State
from auditai_ops.verify.linear_bounds.tracing import LayerList, _check_leaf, flatten_layers

Layers = list[tuple[str, nn.Module]]


def _plan(layers: LayerList, input_bounds: AffineBounds, t_low: torch.Tensor, t_high: torch.Tensor) -> tuple[Layers, int, list[tuple[int, ...]]]:
    """The flat, checked layers, the largest per-sample tensor size along them (for chunking), and
    the per-sample shapes along them (the input of each layer, then the output).

    Containers are checked on the input at the centre of the first box.
    """
    _check_box(t_low, t_high, input_bounds.batch, input_bounds.k)
    centre = ((t_low[:1] + t_high[:1]) / 2).to(input_bounds.lower_bias.dtype)
    low, high = _rows(input_bounds, slice(0, 1)).evaluate(centre) if input_bounds.batch else (input_bounds.lower_bias, input_bounds.upper_bias)
    example = (low + high) / 2

    def flat_already(item: object) -> bool:
        if not isinstance(item, tuple):
            return False
        module = item[1]
        return type(module) in _LEAVES or isinstance(module, graph.GraphBlock) or getattr(module, "auditai_reshape_only", False) is True

    if isinstance(layers, nn.Module) or not all(flat_already(item) for item in layers):
        flat = flatten_layers(layers, example)  # containers, chains and graphs expanded (and checked)
    else:
        flat = list(layers)  # type: ignore[arg-type]
        for where, module in flat:
            _check_leaf(where, module)
    largest = example[0].numel() if input_bounds.batch else 1
    shapes = [tuple(example.shape[1:])]
    with torch.no_grad():
        x = example
        for _, module in flat:
            if isinstance(module, graph.GraphBlock):
                largest = max(largest, module.inspect(x))
            x = _evaluate(module, x) if isinstance(module, _ACTIVATIONS) else module(x)
            largest = max(largest, x[0].numel() if len(x) else 1)
            shapes.append(tuple(x.shape[1:]))
    return flat, largest, shapes


def _prepare(flat: Layers, input_bounds: AffineBounds, t_low: torch.Tensor, t_high: torch.Tensor, pieces: int | Sequence[int]) -> tuple[_State, int]:
    """Split the boxes and rescale the input to s in [-1, 1]^k per (sub-)box: rows [N, k + 1, *S]."""
    batch, k = input_bounds.batch, input_bounds.k
    low, high = split_box(t_low, t_high, pieces)
    count = low.shape[0] // batch
    dtype = input_bounds.lower_bias.dtype
    extra = [1] * len(input_bounds.shape)
    centre = ((low + high) / 2).to(dtype).reshape(-1, k, *extra)
    radius = ((high - low) / 2).to(dtype).reshape(-1, k, *extra)

    def rows(coeff: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        if count > 1:
            coeff, bias = coeff.repeat_interleave(count, dim=0), bias.repeat_interleave(count, dim=0)
        return torch.cat([coeff * radius, (bias + (coeff * centre).sum(dim=1)).unsqueeze(1)], dim=1)

    lower = rows(input_bounds.lower_coeff, input_bounds.lower_bias)
    upper = None if input_bounds.is_exact else rows(input_bounds.upper_coeff, input_bounds.upper_bias)
    return _State(lower, upper, k), count


Spec = tuple[torch.Tensor, int, list[tuple[int, int]] | None]


def _propagate(
    flat: Layers, state: _State, interval: bool, spec: Spec | None, tape: Tape | None = None, stop: int | None = None, saved: list[tuple[_State, int]] | None = None
) -> _State:
    """All layers; with spec = (C, pieces, runs) the margins C f, C folded into a final nn.Linear,
    of which only the lower bounds are computed (returned as the rows of an exact state).

    With a `tape`, records a `_Step` per layer (and `_Kinks` at a piecewise-linear activation
    of an exact input when k = 1). With `stop` (a layer index) and a `tape`, appends to `saved`
    the state after that layer and the length of the tape then (not when that layer is fused
    with the next).
    """
    end = len(flat)
    final = None
    if spec is not None and flat and isinstance(flat[-1][1], nn.Linear):
        end, final = end - 1, flat[-1][1]
    last_activation = max((i for i, (_, module) in enumerate(flat[:end]) if isinstance(module, _ACTIVATIONS)), default=-1)
    position = -1
    while position + 1 < end:
        position += 1
        where, module = flat[position]
        step = _Step(module, tuple(state.lower.shape[2:]))
        following = flat[position + 1][1] if position + 1 < end else None
        if type(module) is nn.ReLU and state.upper is None and not interval and type(following) is nn.Linear and state.lower.dim() == 3:
            fused = _fused_relu_linear(state, module, following, step, tape is not None)
            if fused is not None:
                state, linear_step = fused
                if tape is not None:
                    tape += [step, linear_step]
                position += 1
                continue
        if isinstance(module, _ACTIVATIONS):
            before = state
            # The last activation's lines only reach the output: relax it as back-substitution will, once.
            over_interval = tape is not None and position == last_activation and not state.tracked
            state, step.low, step.high, lines = _activation(state, module, interval, over_interval)
            step.lines = lines if over_interval else None
            if tape is not None and state.unstable is not None and state.k == 1 and before.upper is None and state.unstable.index.shape[1] <= _MAX_KINKS:
                step.kinks = _Kinks(module, before.lower[:, :2], lines[0], state.unstable)
        elif isinstance(module, nn.Linear) and tape and tape[-1].kinks is not None and state.unstable is tape[-1].kinks.unstable:
            sparse = _sparse_gap_linear(state, module)
            if sparse is None:
                state = _affine_layer(state, module)
            else:
                state, step.midpoint = sparse
                step.finish = tape[-1].kinks
        elif isinstance(module, _AFFINE):
            state = _affine_layer(state, module)
        elif isinstance(module, nn.MaxPool2d):
            state, step.low, step.high = pooling.max_pool_forward(state, module)
        elif isinstance(module, graph.GraphBlock):
            if tape is not None:
                step.graph = GraphTape(module.nodes, module.end)
            state = module.propagate(state, step.graph)
        elif not isinstance(module, _IDENTITIES):
            state = _reshape(state, module, where)
        if tape is not None:
            tape.append(step)
            if position == stop and saved is not None:
                saved.append((state, len(tape)))
    if spec is not None:
        assert final is None or isinstance(final, nn.Linear)
        if tape is not None:
            # Back-substitution starts from C [N, S, n_out]: the final layer, or a reshape to the output's shape.
            tape.append(_Step(final if final is not None else nn.Flatten(), tuple(state.lower.shape[2:])))
        state = _State(_spec_layer(state, spec[0], final, spec[1], spec[2]), None, state.k)  # the margins' lower rows only
    return state


def _fused_relu_linear(state: _State, relu: nn.ReLU, linear: nn.Linear, step: _Step, tape: bool) -> tuple[_State, _Step] | None:
    """`_exact_relu_linear` with its tape steps (`step` for the ReLU is filled in); None if too many neurons are unstable."""
    parts = _ExactRelu.of(state)
    unstable = parts.unstable
    if int(unstable.count.sum()) > affine._SPARSE_GAP_DENSITY * unstable.mask.numel():
        return None
    after, mid, middle_u = _exact_relu_linear(parts, state.k, linear)
    linear_step = _Step(linear, tuple(state.lower.shape[2:]))
    if tape and state.k == 1 and unstable.index.shape[1] <= _MAX_KINKS:
        step.kinks = linear_step.finish = _Kinks(relu, state.lower[:, :2], parts.lower_slope, unstable)
        linear_step.midpoint = (mid, unstable.padded(middle_u))
    elif tape:
        step.low, step.high = parts.interval()  # back-substitution relaxes this ReLU
    return after, linear_step


_MAX_KINKS = 256
"""`_Kinks` keeps [boxes, M, M + 2] values; above this many unstable neurons back-substitution relaxes the layer instead."""


def _finish(state: _State) -> tuple[torch.Tensor, torch.Tensor]:
    k = state.k
    low, _ = _range(state.lower, k)
    _, high = _range(state.up, k)
    if state.tracked:
        low, high = torch.maximum(low, state.lower[:, k + 1]), torch.minimum(high, state.up[:, k + 1])
    return low, high


def _pieces_count(pieces: int | Sequence[int], k: int) -> int:
    counts = [int(pieces)] * k if isinstance(pieces, int) else [int(p) for p in pieces]
    return math.prod(counts)


_CHUNK_BYTES = 16_000_000
"""Automatic chunks keep one row tensor [boxes, k + 2, largest layer] near 16 MB (at most 4096
boxes): back-substitution of chosen rows and the sparse products take many small operations per
chunk, so on the 16-256-256-10 head one chunk of 4096 boxes is fastest (1 MB chunks of 325 boxes
were 1.3x slower, on a shared 2-core CPU)."""


def _chunks(batch: int, per_sample: int, max_boxes: int | None, k: int, largest: int, itemsize: int) -> list[slice]:
    """Slices of the samples so that at most max_boxes sub-boxes (None: automatic) are bounded at once."""
    if max_boxes is None:
        max_boxes = min(4096, max(32, _CHUNK_BYTES // (itemsize * (k + 2) * max(1, largest))))
    if max_boxes < 1:
        raise ValueError(f"max_boxes must be >= 1 or None, got {max_boxes}")
    step = max(1, max_boxes // per_sample)
    return [slice(start, min(start + step, batch)) for start in range(0, batch, step)]


def _rows(bounds: AffineBounds, part: slice | torch.Tensor) -> AffineBounds:
    if bounds.is_exact:
        return AffineBounds.exact(bounds.lower_bias[part], bounds.lower_coeff[part])
    return AffineBounds(bounds.lower_coeff[part], bounds.lower_bias[part], bounds.upper_coeff[part], bounds.upper_bias[part])


@torch.no_grad()
def output_bounds(
    layers: LayerList,
    input_bounds: AffineBounds,
    t_low: torch.Tensor,
    t_high: torch.Tensor,
    *,
    pieces: int | Sequence[int] = 1,
    interval: bool = False,
    max_boxes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval bounds [B, *S_out] of the network's outputs over the boxes t_low <= t <= t_high ([B, k]).

    pieces: sub-boxes per axis (see `split_box`), bounded as one batch; the bounds are the min / max
    over them. interval: propagate an interval alongside and intersect (never looser than IBP;
    about 1.5x the time; on the benchmarks it changed widths by under 1%, hence off by default).
    max_boxes: bound at most this many sub-boxes at once (memory, speed); None: automatic chunks
    of about 1 MB per row tensor (at least 32, at most 4096 sub-boxes).
    """
    flat, largest, _ = _plan(layers, input_bounds, t_low, t_high)
    lows, highs = [], []
    itemsize = input_bounds.lower_bias.element_size()
    for part in _chunks(input_bounds.batch, _pieces_count(pieces, input_bounds.k), max_boxes, input_bounds.k, largest, itemsize):
        state, count = _prepare(flat, _rows(input_bounds, part), t_low[part], t_high[part], pieces)
        low, high = _finish(_propagate(flat, state, interval, None))
        shape = low.shape[1:]
        lows.append(low.reshape(-1, count, *shape).amin(dim=1))
        highs.append(high.reshape(-1, count, *shape).amax(dim=1))
    return torch.cat(lows), torch.cat(highs)


@torch.no_grad()
def margin_lower_bounds(
    layers: LayerList,
    input_bounds: AffineBounds,
    C: torch.Tensor,
    t_low: torch.Tensor,
    t_high: torch.Tensor,
    *,
    pieces: int | Sequence[int] = 1,
    interval: bool = False,
    back_substitute: bool = False,
    refine_below: float | None = None,
    minimum_only: bool = False,
    max_boxes: int | None = None,
    compiled: bool = True,
    partial: bool = True,
    full: bool = True,
) -> torch.Tensor:
    """Lower bounds [B, S] of C[b] @ f(x_b(t)) over the boxes t_low <= t <= t_high, for C [B, S, n_out].

    For upper bounds of row c, ask for the lower bound of -c (both in one call: C = cat([C, -C], 1)).
    pieces, interval, max_boxes: as in `output_bounds`.
    back_substitute: also bound C f by CROWN's back-substitution (one row of C at a time through
    every layer, transposed) using the forward pass's intermediate intervals, and keep the larger
    bound. Much tighter on deep networks (forward bounds lose where relaxation errors of one
    layer meet weights of mixed signs in the next). With k = 1 it ends exactly at the first
    ReLU / LeakyReLU (see "Back-substitution" in the module docstring): tighter than CROWN.
    minimum_only: with back_substitute, back-substitute only the rows that can be the minimum
    over rows of their box (per box: the two lowest forward bounds, then any row whose forward
    bound is below the smallest back-substituted one). min over rows is then that of
    back-substituting every row; the other rows keep their (sound) forward bounds.
    refine_below: with back_substitute, for a caller that needs min over rows > refine_below:
    per box, the row with the lowest forward bound, then, if it came out > refine_below, every
    other row at or below it. Proves (min > refine_below) exactly the boxes that
    back-substituting every row proves (with `partial`: those and any the partial bounds prove),
    usually at the cost of about one row per box.
    compiled: with back_substitute, use `mlp_kernels` where they apply (a Linear-ReLU-Linear-ReLU-Linear
    network along one direction, on the CPU): the same bounds, several times faster.
    partial: with back_substitute and refine_below, on deep networks (pixel mode), first back-substitute
    every row only down to a checkpoint layer chosen by `partial_back_substitution.checkpoint`, bounded
    there with that layer's forward linear bounds; the full back-substitution then runs only for rows
    that this left at or below refine_below. Proves every box the full one alone proves (and any that
    the partial bound proves), at a fraction of the cost.
    full: with partial (where the network has a checkpoint), False skips the full back-substitution:
    looser, for a caller that splits what is not proved rather than searching it (see `prove_first`).
    """
    if C.dim() != 3 or C.shape[0] != input_bounds.batch:
        raise ValueError(f"C must have shape [B={input_bounds.batch}, S, n_out], got {tuple(C.shape)}")
    flat, largest, shapes = _plan(layers, input_bounds, t_low, t_high)
    use_checkpoint = back_substitute and refine_below is not None and partial
    stop = partial_back_substitution.checkpoint([module for _, module in flat], shapes) if use_checkpoint else None
    out = []
    itemsize = input_bounds.lower_bias.element_size()
    for part in _chunks(input_bounds.batch, _pieces_count(pieces, input_bounds.k), max_boxes, input_bounds.k, largest, itemsize):
        bounds = _margin_lower_bounds(
            flat, _rows(input_bounds, part), C[part], t_low[part], t_high[part], pieces, interval, back_substitute, refine_below, minimum_only, compiled, stop, full
        )
        out.append(bounds)
    return torch.cat(out)


def _margin_lower_bounds(
    flat: Layers,
    input_bounds: AffineBounds,
    C: torch.Tensor,
    t_low: torch.Tensor,
    t_high: torch.Tensor,
    pieces: int | Sequence[int],
    interval: bool,
    back_substitute: bool,
    refine_below: float | None,
    minimum_only: bool,
    compiled: bool,
    stop: int | None = None,
    full: bool = True,
) -> torch.Tensor:
    grouping = specification._group_samples(C)
    runs = None
    if grouping is not None:
        # Samples sharing C made contiguous (cheap: only the input and the boxes are permuted).
        order, runs = grouping
        input_bounds, C, t_low, t_high = _rows(input_bounds, order), C[order], t_low[order], t_high[order]
    state, count = _prepare(flat, input_bounds, t_low, t_high, pieces)
    if back_substitute and compiled and state.upper is None and mlp_kernels.applies(flat, state.lower, interval):
        refine = functools.partial(_refine, refine_below=refine_below, minimum_only=minimum_only)
        low = mlp_kernels.two_layer_margin_bounds(flat, state.lower, C, count, runs, refine)
    else:
        tape: Tape | None = [] if back_substitute else None
        inputs = state
        saved: list[tuple[_State, int]] = []
        state = _propagate(flat, state, interval, (C, count, runs), tape, stop, saved)
        low, _ = _finish(state)
        if tape is not None and saved and refine_below is not None:
            # The deciding rows back-substituted down to the checkpoint first (see `partial_back_substitution`).
            checkpoint_state, steps = saved[0]
            low = _refine(low, functools.partial(_back_substitute, tape[steps:], C, count, checkpoint_state), refine_below, False)
            if not full:
                tape = None
        if tape is not None:
            low = _refine(low, functools.partial(_back_substitute, tape, C, count, inputs), refine_below, minimum_only)
    bounds = low.reshape(-1, count, C.shape[1]).amin(dim=1)
    if grouping is None:
        return bounds
    return torch.empty_like(bounds).index_copy_(0, grouping[0], bounds)


@torch.no_grad()
def affine_output_bounds(
    layers: LayerList,
    input_bounds: AffineBounds,
    t_low: torch.Tensor,
    t_high: torch.Tensor,
    *,
    interval: bool = False,
) -> AffineBounds:
    """The outputs' linear bounds in t, valid on the boxes t_low <= t <= t_high (no splitting).

    The interval propagated alongside only tightens the relaxations here; `output_bounds` also
    meets the final bounds with it.
    """
    flat, _, _ = _plan(layers, input_bounds, t_low, t_high)
    state, _ = _prepare(flat, input_bounds, t_low, t_high, 1)
    state = _propagate(flat, state, interval, None)
    k = state.k
    extra = [1] * (state.lower.dim() - 2)
    centre = ((t_low + t_high) / 2).to(state.lower.dtype).reshape(-1, k, *extra)
    radius = ((t_high - t_low) / 2).to(state.lower.dtype).reshape(-1, k, *extra)

    def to_t(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # a_s . s + b with s = (t - centre) / radius; a zero radius pins t, so its coefficient is 0.
        coeff = torch.where(radius > 0, rows[:, :k] / torch.where(radius > 0, radius, torch.ones_like(radius)), torch.zeros_like(rows[:, :k]))
        return coeff, rows[:, k] - (coeff * centre).sum(dim=1)

    lc, lb = to_t(state.lower)
    uc, ub = to_t(state.up)
    return AffineBounds(lc, lb, uc, ub)
