"""Relaxing an activation y = f(x) in forward mode.

The input's linear bounds L(t) <= x(t) <= U(t) are concretised to ranges [L_min, L_max] and
[U_min, U_max]; x's interval is [l, u] = [L_min, U_max], met with the interval propagated
alongside when `interval=True` (interval arithmetic through affine layers, the activation's
image of the intersected interval, met again with the range of the new linear bounds: never
looser than IBP). For a monotone f every relaxation line h(v) = s v + b has s >= 0, so:

* upper: f(x(t)) <= f(U(t)) <= h_u(U(t)) for h_u >= f on the range of U(t), which is
  [max(U_min, l), U_max] (since U(t) >= x(t) >= l). This relaxes f over the range of U itself,
  not over [L_min, U_max]: with k = 1, relu(U(t)) is a hinge in t and its chord is the tightest
  linear upper bound there is. With the interval track, h_u >= f on [l, u] gives a second
  candidate, f(x(t)) <= h_u(x(t)) <= h_u(U(t)); per neuron the one with the smaller value at
  the box centre is kept (both are sound).
* lower: symmetrically, h_l <= f on [L_min, min(L_max, u)] applied to L(t) (or on [l, u]).

For a non-monotone f (GELU, SiLU) the lines are valid on the whole interval [l, u] (they bound
f(v) for every v there, not only for v = x(t)), and a line h(v) = s v + b is applied to the
linear bound of the input that keeps its side: for the upper line, h_u(x(t)) <= s U(t) + b if
s >= 0 and <= s L(t) + b if s < 0; the lower line likewise with the roles swapped.
"""

from __future__ import annotations

import torch
from torch import nn

from auditai_ops.verify.linear_bounds.kinks import _exact_relu
from auditai_ops.verify.linear_bounds.layer_kinds import _PIECEWISE_LINEAR
from auditai_ops.verify.linear_bounds.relaxations import _NON_MONOTONE, Lines, _better, _image, _lines
from auditai_ops.verify.linear_bounds.state import _grow, _range, _spread, _State, _Unstable


def _activation(state: _State, module: nn.Module, interval: bool, over_interval: bool = False) -> tuple[_State, torch.Tensor, torch.Tensor, Lines]:
    """The relaxed activation, the concrete interval [low, high] of its input, and the lines used.

    over_interval: relax over [low, high] for both lines (CROWN's lines, which back-substitution
    uses) instead of over the ranges of the lower and upper functions: sound (U(t) >= x(t) >=
    low, see the module docstring), a little looser in forward mode, and computed once.
    """
    if state.upper is None and type(module) is nn.ReLU and not interval:
        return _exact_relu(state)
    if isinstance(module, _NON_MONOTONE):
        return _non_monotone(state, module, interval)
    k = state.k
    lower, upper = state.lower, state.up
    if over_interval and not state.tracked:
        low, high = lower[:, k] - _spread(lower, k), upper[:, k] + _spread(upper, k)
        s_up, b_up = _lines(module, low, high, upper=True)
        s_lo, b_lo = _lines(module, low, high, upper=False)
    elif state.tracked:
        l_min, l_max = _range(lower, k)
        u_min, u_max = _range(upper, k)
        low, high = torch.maximum(l_min, lower[:, k + 1]), torch.minimum(u_max, upper[:, k + 1])
        high = torch.maximum(high, low)  # rounding only: the true interval is never empty
        # Upper: a line over the range of U (given U >= x >= low); lower: over the range of L.
        s_up, b_up = _lines(module, torch.minimum(torch.maximum(u_min, low), u_max), u_max, upper=True)
        s_lo, b_lo = _lines(module, l_min, torch.maximum(torch.minimum(l_max, high), l_min), upper=False)
        # The same lines over [low, high]; per neuron keep the better one at the box centre.
        s_up, b_up = _better(s_up, b_up, *_lines(module, low, high, upper=True), upper[:, k], upper=True)
        s_lo, b_lo = _better(s_lo, b_lo, *_lines(module, low, high, upper=False), lower[:, k], upper=False)
    else:
        l_min, l_max = _range(lower, k)
        u_min, u_max = _range(upper, k) if state.upper is not None else (l_min, l_max)
        low, high = l_min, u_max
        s_up, b_up = _lines(module, u_min, u_max, upper=True)
        s_lo, b_lo = _lines(module, l_min, l_max, upper=False)
    rows = k + 2 if interval else k + 1
    new_upper = upper[:, :rows] * s_up.unsqueeze(1) if upper.shape[1] >= rows else _grow(upper, rows) * s_up.unsqueeze(1)
    new_lower = lower[:, :rows] * s_lo.unsqueeze(1) if lower.shape[1] >= rows else _grow(lower, rows) * s_lo.unsqueeze(1)
    if b_up is not None:
        new_upper[:, k] += b_up
    if b_lo is not None:
        new_lower[:, k] += b_lo
    if interval:
        # The activation's image of [low, high], met with the new lines' range.
        image_low, image_high = _image(module, low, high)
        out_low = torch.maximum(image_low, _range(new_lower, k)[0])
        out_high = torch.minimum(image_high, _range(new_upper, k)[1])
        new_lower[:, k + 1] = out_low
        new_upper[:, k + 1] = torch.maximum(out_high, out_low)
    unstable = None
    if state.upper is None and isinstance(module, _PIECEWISE_LINEAR):
        # An exact input: where its range does not contain 0 both lines are the activation's linear piece, identical.
        unstable = _Unstable(((low < 0) & (high > 0)).flatten(1))
    return _State(new_lower, new_upper, k, unstable), low, high, (s_lo, b_lo, s_up, b_up)


def _non_monotone(state: _State, module: nn.Module, interval: bool) -> tuple[_State, torch.Tensor, torch.Tensor, Lines]:
    """`_activation` for GELU and SiLU: lines valid on the whole input interval [low, high], each applied to
    the input bound that keeps its side for the sign of its slope (s U + b above when s >= 0, s L + b when s < 0)."""
    k = state.k
    lower, upper = state.lower, state.up
    low, high = _range(lower, k)[0], _range(upper, k)[1]
    if state.tracked:
        low, high = torch.maximum(low, lower[:, k + 1]), torch.minimum(high, upper[:, k + 1])
        high = torch.maximum(high, low)  # rounding only: the true interval is never empty
    s_up, b_up = _lines(module, low, high, upper=True)
    s_lo, b_lo = _lines(module, low, high, upper=False)
    assert b_up is not None and b_lo is not None
    rows = k + 2 if interval else k + 1
    lower_rows = lower[:, :rows] if lower.shape[1] >= rows else _grow(lower, rows)
    upper_rows = upper[:, :rows] if upper.shape[1] >= rows else _grow(upper, rows)

    def compose(slope: torch.Tensor, intercept: torch.Tensor, keep: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """slope+ keep + slope- other + intercept, rows [N, R, *S]."""
        out = keep * slope.clamp(min=0).unsqueeze(1) + other * slope.clamp(max=0).unsqueeze(1)
        out[:, k] += intercept
        return out

    new_upper = compose(s_up, b_up, upper_rows, lower_rows)
    new_lower = compose(s_lo, b_lo, lower_rows, upper_rows)
    if interval:
        image_low, image_high = _image(module, low, high)
        new_lower[:, k + 1] = torch.maximum(image_low, _range(new_lower, k)[0])
        new_upper[:, k + 1] = torch.maximum(torch.minimum(image_high, _range(new_upper, k)[1]), new_lower[:, k + 1])
    return _State(new_lower, new_upper, k), low, high, (s_lo, b_lo, s_up, b_up)
