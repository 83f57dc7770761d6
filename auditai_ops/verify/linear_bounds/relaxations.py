"""Activation relaxations: lines s v + b valid over an input interval [lo, hi].

For the monotone non-decreasing activations every line has s >= 0 (see `activations` for why
that matters). Over [lo, hi]:

* ReLU / LeakyReLU(a), 0 <= a <= 1 (convex): upper is the chord; lower is the line through 0
  with slope 1 if hi > -lo else a (CROWN's adaptive choice, least area); exact when the
  interval does not contain 0. For a > 1 (concave) the roles swap.
* Sigmoid / Tanh (convex below 0, concave above): upper, for hi <= 0 the chord; for lo >= 0
  the tangent at the midpoint; for lo < 0 < hi the tangent at the point d >= 0 whose tangent
  passes through (lo, f(lo)) if d <= hi (found by bisection, keeping the valid end: a tangent
  at d >= 0 that lies above f(lo) at lo lies above f on [lo, inf)), else the chord. Lower by
  the odd symmetry f(-x) = 2 f(0) - f(x). Intercepts are moved outward by 4 float eps to
  absorb the rounding of these few scalar evaluations.
* ELU(alpha), alpha in [0, 1] (convex, increasing: f' = alpha e^x <= 1 below 0, 1 above) and
  Softplus (convex, increasing): upper is the chord, lower the tangent at the midpoint (a
  tangent of a convex function lies below it everywhere). Both slopes lie in [f'(lo), f'(hi)],
  so they are >= 0. ELU with alpha > 1 is neither convex nor concave and is refused.
* GELU and SiLU, f(x) = x Phi(x) and x sigmoid(x), are not monotone (a minimum near x = -0.75
  and -1.28) and change convexity. Their lines are found without any shape argument: take a
  candidate line h(v) = s v + b (the chord, or for the lower line the tangent at the
  midpoint), and move its intercept by the exact extreme of f - h over [lo, hi], which lies at
  lo, hi, or a critical point where f'(v) = s. f' is unimodal on each side of its inflection
  structure; the critical points are found by bisection on monotone pieces of f' (split at
  the minimum and maximum of f', -sqrt(2) / sqrt(2) for GELU and -2.3994 / 2.3994 for SiLU,
  where f'' = 0), bracketed by interval ends, so every stationary point of f - h inside
  [lo, hi] is among the candidates evaluated. The offset is then enlarged by a bound on the
  bisection's residual width times max |f' - s| plus float eps, so h stays on its side of f
  on all of [lo, hi] (sampled in the tests). The slope may be negative: `activations` then
  composes the line with the other linear bound of the input (see there).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

_BISECTION_STEPS = 16


def _relu_lines(lo: torch.Tensor, hi: torch.Tensor, upper: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ReLU over [lo, hi]: upper the chord (exact where 0 is not inside), lower slope (hi + lo > 0) through 0.

    Written with clamps rather than branches: hi+ / (hi+ - lo-) is 0 for hi <= 0, exactly 1 for
    lo >= 0 < hi (subnormal numbers included) and the chord's slope across 0; its intercept
    -s lo- is 0 in both stable cases, so where 0 is not inside both lines are the same.
    """
    if upper:
        hi_pos, lo_neg = hi.clamp(min=0), lo.clamp(max=0)
        width = hi_pos - lo_neg
        s = hi_pos / torch.where(width > 0, width, 1.0)
        return s, -s * lo_neg
    return (hi + lo > 0).to(lo.dtype), None


def _leaky_lines(lo: torch.Tensor, hi: torch.Tensor, slope: float, upper: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """LeakyReLU(a) = a v + (1 - a) relu(v) for a <= 1 (convex); = a v - (a - 1) relu(v) for a > 1 (concave).

    A non-negative multiple of a ReLU line keeps its side; a negative one swaps it.
    """
    if slope <= 1.0:
        s, b = _relu_lines(lo, hi, upper)
        return slope + (1 - slope) * s, None if b is None else (1 - slope) * b
    s, b = _relu_lines(lo, hi, not upper)
    return slope - (slope - 1) * s, None if b is None else -(slope - 1) * b


Function = Callable[[torch.Tensor], torch.Tensor]


def _sigmoid_upper(function: Function, derivative: Function, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An upper line of an S-shaped f (convex below 0, concave above, increasing) over [lo, hi]."""
    f_lo, f_hi = function(lo), function(hi)
    width = hi - lo
    positive = width > 0
    chord_s = torch.where(positive, (f_hi - f_lo) / torch.where(positive, width, torch.ones_like(width)), torch.zeros_like(width))
    chord_b = torch.where(positive, f_lo - chord_s * lo, f_hi)
    # Concave side (lo >= 0): the tangent at the midpoint.
    mid = (lo + hi) / 2
    tan_s = derivative(mid)
    tan_b = function(mid) - tan_s * mid
    # Mixed (lo < 0 < hi): the tangent at d in [0, hi] through (lo, f(lo)) if there is one, else the chord.
    # Searched for on the mixed neurons only (in pixel mode a few percent of them): 16 bisection steps of
    # two function evaluations each dominated the relaxation's cost when run on every neuron.
    mixed = (lo < 0) & (hi > 0)
    mixed_s, mixed_b = chord_s, chord_b
    if bool(mixed.any()):
        lo_m, hi_m, f_lo_m = lo[mixed], hi[mixed], f_lo[mixed]

        def valid(d: torch.Tensor) -> torch.Tensor:  # the tangent at d lies above f(lo) at lo
            return function(d) + derivative(d) * (lo_m - d) >= f_lo_m

        chord_ok = ~valid(hi_m)
        left, right = torch.zeros_like(hi_m), hi_m.clone()
        for _ in range(_BISECTION_STEPS):
            middle = (left + right) / 2
            ok = valid(middle)
            right = torch.where(ok, middle, right)
            left = torch.where(ok, left, middle)
        d_s = derivative(right)
        d_b = function(right) - d_s * right
        mixed_s, mixed_b = chord_s.clone(), chord_b.clone()
        mixed_s[mixed] = torch.where(chord_ok, chord_s[mixed], d_s)
        mixed_b[mixed] = torch.where(chord_ok, chord_b[mixed], d_b)
    s = torch.where(hi <= 0, chord_s, torch.where(lo >= 0, tan_s, mixed_s))
    b = torch.where(hi <= 0, chord_b, torch.where(lo >= 0, tan_b, mixed_b))
    # A negative slope (rounding only) would break the composition with U(t): use f(hi) instead.
    flat = s < 0
    s, b = torch.where(flat, torch.zeros_like(s), s), torch.where(flat, f_hi, b)
    return s, b + 4 * torch.finfo(lo.dtype).eps * (1 + b.abs())


def _s_shaped_lines(kind: str, lo: torch.Tensor, hi: torch.Tensor, upper: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if kind == "sigmoid":
        function, centre = torch.sigmoid, 0.5

        def derivative(v: torch.Tensor) -> torch.Tensor:
            y = torch.sigmoid(v)
            return y * (1 - y)
    else:
        function, centre = torch.tanh, 0.0

        def derivative(v: torch.Tensor) -> torch.Tensor:
            y = torch.tanh(v)
            return 1 - y * y

    if upper:
        return _sigmoid_upper(function, derivative, lo, hi)
    # f(x) = 2c - f(-x): a lower line of f over [lo, hi] from an upper line g of f over [-hi, -lo].
    s, b = _sigmoid_upper(function, derivative, -hi, -lo)
    return s, 2 * centre - b


def _derivative(module: nn.Module, v: torch.Tensor) -> torch.Tensor:
    """f'(v) for the smooth activations ELU, Softplus, GELU, SiLU."""
    if isinstance(module, nn.ELU):
        return torch.where(v > 0, torch.ones_like(v), module.alpha * torch.exp(v.clamp(max=0)))
    if isinstance(module, nn.Softplus):
        return torch.sigmoid(module.beta * v)
    if isinstance(module, nn.SiLU):
        sig = torch.sigmoid(v)
        return sig * (1 + v * (1 - sig))
    assert isinstance(module, nn.GELU)
    if module.approximate == "tanh":
        inner = math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)
        th = torch.tanh(inner)
        return 0.5 * (1 + th) + 0.5 * v * (1 - th * th) * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * v * v)
    return 0.5 * (1 + torch.erf(v / math.sqrt(2))) + v * torch.exp(-0.5 * v * v) / math.sqrt(2 * math.pi)


def _rounding_slack(s: torch.Tensor, b: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """A bound on the float error of a line fitted to a few evaluations of f over [lo, hi] (|f(v)| <= |v| + 1 there)."""
    reach = torch.maximum(lo.abs(), hi.abs())
    return 8 * torch.finfo(lo.dtype).eps * (1 + b.abs() + (s.abs() + 1) * reach)


def _softplus_jump(module: nn.Softplus) -> float:
    """nn.Softplus returns v itself where beta v > threshold, dropping by log1p(exp(-threshold)) / beta there: torch's f
    lies in [g - jump, g] for the smooth, convex, increasing g(v) = max(v, 0) + log1p(exp(-beta |v|)) / beta."""
    return math.log1p(math.exp(-module.threshold)) / module.beta


def _convex_function(module: nn.Module, v: torch.Tensor) -> torch.Tensor:
    """The convex function the lines are fitted to: f itself for ELU, the smooth g (`_softplus_jump`) for Softplus."""
    if isinstance(module, nn.Softplus):
        return v.clamp(min=0) + torch.log1p(torch.exp(-module.beta * v.abs())) / module.beta
    return _evaluate(module, v)


def _convex_lines(module: nn.Module, lo: torch.Tensor, hi: torch.Tensor, upper: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A convex non-decreasing g (ELU with alpha <= 1; Softplus's smooth g): the chord above, the tangent at the midpoint
    below (lowered by Softplus's jump, `_softplus_jump`).

    Both slopes lie in [g'(lo), g'(hi)] >= 0; a degenerate interval gives the constant g(lo).
    Intercepts move outward by `_rounding_slack`.
    """
    jump = _softplus_jump(module) if isinstance(module, nn.Softplus) else 0.0
    if upper:
        g_lo, g_hi = _convex_function(module, lo), _convex_function(module, hi)
        width = hi - lo
        positive = width > 0
        s = torch.where(positive, (g_hi - g_lo) / torch.where(positive, width, torch.ones_like(width)), torch.zeros_like(width)).clamp(min=0)
        b = torch.maximum(g_lo - s * lo, g_hi - s * hi)
        return s, b + _rounding_slack(s, b, lo, hi)
    mid = (lo + hi) / 2
    s = _derivative(module, mid).clamp(min=0)
    b = _convex_function(module, mid) - s * mid - jump
    return s, b - _rounding_slack(s, b, lo, hi)


_CURVATURE = {"gelu": 0.8, "gelu-tanh": 0.8, "silu": 0.501}
"""Bounds on sup |f''| over the real line: GELU f'' = phi(v) (2 - v^2), at most 2 phi(0) = 0.7979 (for |v| >= 2,
phi(v) (v^2 - 2) <= 2 phi(2) = 0.11); its tanh approximation 0.7979 too; SiLU 0.5, at v = 0 (checked on a dense grid in
tests/verify/test_pooling_and_activations.py)."""

_GRID_INTERVALS = 16
"""Sub-intervals of the grid on which f - line is evaluated for the non-monotone activations."""


def _curvature(module: nn.Module) -> float:
    if isinstance(module, nn.SiLU):
        return _CURVATURE["silu"]
    return _CURVATURE["gelu-tanh" if getattr(module, "approximate", "none") == "tanh" else "gelu"]


def _smooth_lines(module: nn.Module, lo: torch.Tensor, hi: torch.Tensor, upper: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Lines above (below) a smooth non-monotone f (GELU, SiLU) valid on all of [lo, hi]; the slope may be negative.

    The slope is the chord's (upper) or the tangent's at the midpoint (lower). The intercept is the
    extreme of g = f - s v over [lo, hi], found on a grid of n + 1 points v_i with spacing
    delta = (hi - lo) / n: between two grid points g lies within M delta^2 / 8 of the chord through
    them (M >= sup |g''| = sup |f''|, `_CURVATURE`), and that chord lies between the two values,
    so max g <= max_i g(v_i) + M delta^2 / 8 and min g >= min_i g(v_i) - M delta^2 / 8. No convexity
    or monotonicity of f is used. Intercepts then move outward by `_rounding_slack`.
    """
    width = hi - lo
    if upper:
        f_lo, f_hi = _evaluate(module, lo), _evaluate(module, hi)
        positive = width > 0
        s = torch.where(positive, (f_hi - f_lo) / torch.where(positive, width, torch.ones_like(width)), torch.zeros_like(width))
    else:
        s = _derivative(module, (lo + hi) / 2)
    extreme = None
    for i in range(_GRID_INTERVALS + 1):
        v = hi if i == _GRID_INTERVALS else lo + width * (i / _GRID_INTERVALS)
        g = _evaluate(module, v) - s * v
        extreme = g if extreme is None else (torch.maximum(extreme, g) if upper else torch.minimum(extreme, g))
    assert extreme is not None
    curvature = _curvature(module) * (width / _GRID_INTERVALS) ** 2 / 8
    slack = _rounding_slack(s, extreme, lo, hi)
    return s, extreme + curvature + slack if upper else extreme - curvature - slack


_MONOTONE_SMOOTH = (nn.ELU, nn.Softplus)
_NON_MONOTONE = (nn.GELU, nn.SiLU)


def _lines(module: nn.Module, lo: torch.Tensor, hi: torch.Tensor, upper: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(slope, intercept) of a line above (or below) the activation over [lo, hi]; None: intercept 0.

    The slope is >= 0 except for the non-monotone GELU and SiLU (`_NON_MONOTONE`).
    """
    if isinstance(module, nn.ReLU):
        return _relu_lines(lo, hi, upper)
    if isinstance(module, nn.LeakyReLU):
        return _leaky_lines(lo, hi, float(module.negative_slope), upper)
    if isinstance(module, _MONOTONE_SMOOTH):
        return _convex_lines(module, lo, hi, upper)
    if isinstance(module, _NON_MONOTONE):
        return _smooth_lines(module, lo, hi, upper)
    return _s_shaped_lines("sigmoid" if isinstance(module, nn.Sigmoid) else "tanh", lo, hi, upper)


def _evaluate(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The activation, never in place."""
    if isinstance(module, nn.ReLU):
        return F.relu(x)
    if isinstance(module, nn.LeakyReLU):
        return F.leaky_relu(x, module.negative_slope)
    if isinstance(module, nn.ELU):
        return F.elu(x, module.alpha)
    if isinstance(module, nn.Softplus):
        return F.softplus(x, module.beta, module.threshold)
    if isinstance(module, nn.GELU):
        return F.gelu(x, approximate=module.approximate)
    if isinstance(module, nn.SiLU):
        return F.silu(x)
    return torch.sigmoid(x) if isinstance(module, nn.Sigmoid) else torch.tanh(x)


_MINIMISERS = {"gelu": -0.7517916, "gelu-tanh": -0.7522, "silu": -1.2784645}
"""Where GELU and SiLU take their one minimum (decreasing before, increasing after); only used to pick a point,
the value is evaluated, and the image's lower end is also capped by f at the interval's ends."""


def _image(module: nn.Module, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[min, max] of f over [low, high]: f(low), f(high) for a monotone f; GELU and SiLU are unimodal
    (one minimum at v*), so the max is at an end and the min is f(clamp(v*, low, high)) lowered by the
    minimiser's uncertainty (under 1e-3: at most 0.4 (1e-3)^2 in value, lowered by 1e-5). The smooth
    activations' ends move outward by 4 eps (1 + |f| + |v|): vectorised and scalar exp / erf differ in the last bits.
    """
    f_low, f_high = _evaluate(module, low), _evaluate(module, high)
    if not isinstance(module, _MONOTONE_SMOOTH + _NON_MONOTONE):
        return f_low, f_high
    if isinstance(module, nn.Softplus):
        f_low, f_high = _convex_function(module, low) - _softplus_jump(module), _convex_function(module, high)
    eps = 4 * torch.finfo(low.dtype).eps
    if isinstance(module, _NON_MONOTONE):
        key = "silu" if isinstance(module, nn.SiLU) else ("gelu-tanh" if module.approximate == "tanh" else "gelu")
        star = torch.minimum(torch.maximum(torch.full_like(low, _MINIMISERS[key]), low), high)
        f_low, f_high = torch.minimum(torch.minimum(f_low, f_high), _evaluate(module, star) - 1e-5), torch.maximum(f_low, f_high)
    reach = torch.maximum(low.abs(), high.abs())  # GELU's 1 + erf cancels: errors scale with |v|, not |f(v)|
    return f_low - eps * (1 + f_low.abs() + reach), f_high + eps * (1 + f_high.abs() + reach)


Lines = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]
"""(lower slope, lower intercept, upper slope, upper intercept) per neuron; None: intercept 0."""


def _better(
    s1: torch.Tensor, b1: torch.Tensor | None, s2: torch.Tensor, b2: torch.Tensor | None, centre: torch.Tensor, upper: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per neuron, the line with the lower (upper=True) or higher value at `centre`."""
    v1 = s1 * centre if b1 is None else s1 * centre + b1
    v2 = s2 * centre if b2 is None else s2 * centre + b2
    take = v2 < v1 if upper else v2 > v1
    if b1 is None and b2 is None:
        return torch.where(take, s2, s1), None
    zero = torch.zeros_like(s1)
    return torch.where(take, s2, s1), torch.where(take, zero if b2 is None else b2, zero if b1 is None else b1)
