"""The exact first piecewise-linear layer along one direction (k = 1).

Exact first layer. The first activation sees an exact input x(s) = c + r s. If it is piecewise
linear (ReLU, LeakyReLU), a linear function a . f(x(s)) + constant of its output is piecewise
linear in s, kinked where an unstable neuron's input crosses 0, so its minimum over [-1, 1] is
the least of its values at those kinks and the two ends: the back-substitution stops there with
that exact minimum (`_Kinks`: kinks sorted per box, values by running sums in float64, lowered
by a bound on their rounding) instead of relaxing the layer. Never looser than CROWN, whose
relaxation of that layer only loses; with one hidden layer the bound is the exact minimum.

Sparse products (`state._Unstable`). Right after such an activation the lower and upper lines
differ only at the unstable neurons (elsewhere both are the linear piece, bit for bit), so a
following nn.Linear forms W (lower + upper)/2 densely and |W| (upper - lower)/2 as a sparse
product over the unstable neurons (a ReLU followed by nn.Linear is fused, `_exact_relu_linear`).
Back-substitution through that nn.Linear needs a W only at the unstable columns (a sampled
sparse product) and a . (W m + b) for the lines' midpoint m, kept from the forward pass
(`_Kinks.minimum_after_linear`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from auditai_ops.verify import mlp_kernels
from auditai_ops.verify.linear_bounds.relaxations import Lines, _evaluate
from auditai_ops.verify.linear_bounds.state import _spread, _State, _Unstable


@dataclass
class _ExactRelu:
    """A ReLU of an exact input x(s) = centre + a . s (rows [N, k + 1, *S], no interval row), relaxed over [low, high].

    The same lines as `_relu_lines` over [low, high] = centre -/+ sum_j |a_j|: lower slope 1 where
    centre > 0, else 0 (CROWN's adaptive choice; exact where stable); upper the chord
    high (x - low) / (high - low) on the unstable neurons (|centre| < spread), computed there
    only (`chord`, `intercept` [nnz] in `_Unstable` order, `rows_u` [k + 1, nnz] the input rows
    there), and the lower line elsewhere.
    """

    rows: torch.Tensor
    spread: torch.Tensor
    unstable: _Unstable
    lower_slope: torch.Tensor
    rows_u: torch.Tensor
    chord: torch.Tensor
    intercept: torch.Tensor

    @classmethod
    def of(cls, state: _State) -> _ExactRelu:
        k, rows = state.k, state.lower
        centre, spread = rows[:, k], _spread(rows, k)
        unstable = _Unstable((centre.abs() < spread).flatten(1))
        rows_u = unstable.entries(rows.flatten(2))
        centre_u, spread_u = rows_u[k], rows_u[:k].abs().sum(dim=0)
        chord = (centre_u + spread_u) / (2 * spread_u)  # spread > |centre| >= 0 there
        return cls(rows, spread, unstable, (centre > 0).to(rows.dtype), rows_u, chord, chord * (spread_u - centre_u))

    def interval(self) -> tuple[torch.Tensor, torch.Tensor]:
        """[low, high] of the input."""
        centre = self.rows[:, self.rows.shape[1] - 1]
        return centre - self.spread, centre + self.spread


def _exact_relu(state: _State) -> tuple[_State, torch.Tensor, torch.Tensor, Lines]:
    """`_activation` for a ReLU of an exact input, with fewer passes (see `_ExactRelu`)."""
    k, rows = state.k, state.lower
    relu = _ExactRelu.of(state)
    s_up = relu.lower_slope.clone()
    s_up.view(-1)[relu.unstable.flat] = relu.chord
    b_up = torch.zeros_like(s_up)
    b_up.view(-1)[relu.unstable.flat] = relu.intercept
    new_lower = rows * relu.lower_slope.unsqueeze(1)
    new_upper = rows * s_up.unsqueeze(1)
    new_upper[:, k] += b_up
    return _State(new_lower, new_upper, k, relu.unstable), *relu.interval(), (relu.lower_slope, None, s_up, b_up)


def _exact_relu_linear(relu: _ExactRelu, k: int, linear: nn.Linear) -> tuple[_State, torch.Tensor, torch.Tensor]:
    """A ReLU of an exact input, then nn.Linear, without forming the ReLU's lines on every neuron.

    W (lower + upper)/2 + b is a dense product of the lines' midpoint (the exact linear piece where
    stable); W (upper - lower)/2 a sparse one over the unstable neurons only. Returns the state
    after the Linear, and for `_Kinks.minimum_after_linear` the midpoint's image [N, k + 1, out]
    and its entries at the unstable neurons [k + 1, nnz].
    """
    rows, unstable = relu.rows, relu.unstable
    n, lines = rows.shape[:2]
    lower_u = relu.rows_u * relu.lower_slope.reshape(-1)[unstable.flat]
    upper_u = relu.rows_u * relu.chord
    upper_u[k] += relu.intercept
    middle = rows * relu.lower_slope.unsqueeze(1)  # the midpoint line: the lower line, but at the unstable neurons
    middle_u = (lower_u + upper_u) * 0.5
    middle.view(-1).index_copy_(0, unstable.positions(lines, middle[0, 0].numel()), middle_u.reshape(-1))
    mid = F.linear(middle.flatten(2), linear.weight)  # [N, k + 1, out]
    if linear.bias is not None:
        mid[:, k] += linear.bias
    new_lower = torch.addmm(mid.flatten(0, 1), unstable.matrix((upper_u - lower_u) * 0.5), linear.weight.abs().T, alpha=-1).unflatten(0, (n, lines))
    new_upper = torch.lerp(new_lower, mid, 2.0)  # 2 mid - lower
    return _State(new_lower, new_upper, k), mid, middle_u


class _Kinks:
    """h = f(x(s)), s in [-1, 1], for a piecewise-linear f and an exact input x(s) = c + r s (k = 1), per box.

    A linear function a . h + constant of the layer's output is piecewise linear in s, with kinks
    where an unstable neuron's input crosses 0, so its minimum over [-1, 1] is its minimum over
    those kinks and the two ends: back-substitution can stop here with the exact minimum instead
    of relaxing f (CROWN) and continuing to the input. Stable neurons are linear, f(x) = slope x,
    and are summed as such. The unstable neurons are sorted by their kink; the function's value
    at s = -1, its slope on each segment (a running sum of the slope changes a_i (1 - alpha) |r_i|
    at the kinks) and its values at the kinks (a running sum of slope x length) take O(M) per
    row, in float64, and the minimum is lowered by a bound on that summation's rounding.
    """

    def __init__(self, module: nn.Module, rows: torch.Tensor, lower_slope: torch.Tensor, unstable: _Unstable) -> None:
        self.module, self.unstable, self.lower_slope = module, unstable, lower_slope
        self.rows = rows[:, :2].flatten(2)  # [N, 2, F]: r and c
        self.built = False

    def _build(self) -> None:
        """The kinks in order, per box (on first use: boxes that forward bounds prove never need them)."""
        if self.built:
            return
        self.built = True
        module, unstable = self.module, self.unstable
        negative_slope = float(module.negative_slope) if isinstance(module, nn.LeakyReLU) else 0.0
        wide = torch.float64
        slope, centre = unstable.entries(self.rows).to(wide)  # [nnz] each
        kink = (-centre / torch.where(slope != 0, slope, 1.0)).clamp(-1.0, 1.0)
        # Sort by (box, kink): keys box * 4 + kink keep the boxes in order.
        by_kink = (unstable.boxes.to(wide) * 4 + kink).argsort()
        boxes = unstable.boxes[by_kink]
        rank = torch.arange(len(by_kink), device=kink.device) - unstable.starts[boxes]
        shape = unstable.index.shape
        self.order = torch.zeros(shape, dtype=torch.long, device=kink.device)  # kink rank -> position in `index`
        self.order[boxes, rank] = unstable.slot[by_kink]
        edges = torch.ones(shape, dtype=wide, device=kink.device)
        edges[boxes, rank] = kink[by_kink]
        # Segment lengths: [-1, kink_1], [kink_1, kink_2], ..., [kink_M, 1] (padding: 0).
        self.lengths = torch.cat([edges[:, :1] + 1, edges.diff(dim=1), 1 - edges[:, -1:]], dim=1) if shape[1] else torch.full((shape[0], 1), 2.0, dtype=wide, device=kink.device)
        # At s = -1: f(c - r), and d/ds f(c + r s) = r f'(x), with x < 0 there where r > 0; the slope changes by (1 - alpha) |r| at the kink.
        value = _evaluate(module, centre - slope)
        left_slope = slope * torch.where(slope > 0, negative_slope, 1.0)
        jump = slope.abs() * (1.0 - negative_slope)
        size = value.abs() + 2 * jump + 2 * left_slope.abs()  # for the error bound
        self.table = torch.zeros(*shape, 4, dtype=wide, device=kink.device)  # kink order: value, left slope, jump, size
        self.table[boxes, rank] = torch.stack([value, left_slope, jump, size], dim=1)[by_kink]

    def minimum(self, a: torch.Tensor, constant: torch.Tensor, boxes: torch.Tensor | None) -> torch.Tensor:
        """min over s in [-1, 1] of a . f(x(s)) + constant, for a [G, r, F] on the boxes `boxes` [G] (None: all, in order)."""
        self._build()
        stable_slope = self.lower_slope.flatten(1).masked_fill(self.unstable.mask, 0.0)  # where stable, the lower line is f's linear piece
        a = a.flatten(2)
        stable = torch.bmm(a, (_pick(self.rows, boxes) * _pick(stable_slope, boxes).unsqueeze(1)).transpose(1, 2))
        index = _pick(self.unstable.index.gather(1, self.order), boxes)
        a_u = a.gather(2, index.unsqueeze(1).expand(-1, a.shape[1], -1))  # [G, r, M], in kink order
        return self._minimum(stable, a_u, constant, boxes)

    def minimum_after_linear(
        self, a: torch.Tensor, constant: torch.Tensor, boxes: torch.Tensor | None, linear: nn.Linear, midpoint: torch.Tensor, midpoint_unstable: torch.Tensor
    ) -> torch.Tensor:
        """`minimum` for a . (W h + b) + constant, a [G, r, out], without forming a W: the stable neurons'
        part is a . (W m + b) (`midpoint` [N, 2, out], m the lines' midpoint, f's linear piece where
        stable) less m's unstable entries (`midpoint_unstable` [N, M, 2]) times a W's unstable columns,
        which a sampled product gives."""
        self._build()
        groups, count = a.shape[:2]
        owners = torch.arange(groups, device=a.device) if boxes is None else boxes
        a_u = self.unstable.sampled(a.reshape(groups * count, -1), linear.weight, owners.repeat_interleave(count)).unflatten(0, (groups, count))
        stable = torch.bmm(a, _pick(midpoint, boxes).transpose(1, 2)) - torch.bmm(a_u, _pick(midpoint_unstable, boxes))
        a_u = a_u.gather(2, _pick(self.order, boxes).unsqueeze(1).expand(-1, count, -1))  # kink order
        return self._minimum(stable, a_u, constant, boxes)

    def _minimum(self, stable: torch.Tensor, a_u: torch.Tensor, constant: torch.Tensor, boxes: torch.Tensor | None) -> torch.Tensor:
        """The minimum from the stable part's (slope, centre) [G, r, 2] and the unstable neurons' coefficients [G, r, M] (kink order)."""
        wide = torch.float64
        slope, centre = stable.to(wide).unbind(2)
        centre = centre + constant.to(wide)
        a_u = a_u.to(wide)
        table = _pick(self.table, boxes)
        value, left_slope = torch.bmm(a_u, table[..., :2]).unbind(2)
        start = centre - slope + value  # at s = -1
        base = (slope + left_slope).unsqueeze(2)
        slopes = torch.cat([base, (a_u * table[..., 2].unsqueeze(1)).cumsum_(dim=2).add_(base)], dim=2)  # on each segment
        steps = slopes.mul_(_pick(self.lengths, boxes).unsqueeze(1))
        lowest = steps.cumsum(dim=2).amin(dim=2).clamp_(max=0.0).add_(start)  # at the kinks and s = 1, and at s = -1
        # Recursive summation of n terms errs by at most n eps sum |terms|: bound every sum used, generously.
        terms = torch.bmm(a_u.abs_(), table[..., 3:]).squeeze(2) + start.abs() + centre.abs() + 2 * slope.abs() + steps.abs_().sum(dim=2)
        bound = lowest - 4 * (a_u.shape[2] + 4) * torch.finfo(wide).eps * terms
        return mlp_kernels.round_down(bound, stable.dtype)


def _pick(values: torch.Tensor, boxes: torch.Tensor | None) -> torch.Tensor:
    """The rows of a per-box tensor for `boxes` (None: all, in order)."""
    return values if boxes is None else values[boxes]
