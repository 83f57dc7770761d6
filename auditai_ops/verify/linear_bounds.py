"""Sound bounds for LOW-DIMENSIONAL input perturbations by forward linear bound propagation.

The perturbation is t in a per-sample box [t_low, t_high] of k = 1..3 dimensions, and the
network input is affine in t: x(t) = c + sum_j t_j G_j (latent mode: c = z, G = the direction
rows, see `latent_line_input`; pixel mode: the same latent input, with the decoder's layers in
front of the classifier's). Every neuron is bounded by two linear functions of t,

    a_l . t + b_l  <=  x(t)  <=  a_u . t + b_u,        a_l, a_u of size k,

propagated layer by layer (forward-mode LiRPA). Because k is tiny, a layer costs a few calls of
the layer itself (k + 1 rows per sample for each function) instead of a back-substitution per
neuron, and no auto_LiRPA graph is built. Internally t is rescaled per (sub-)box to s in
[-1, 1]^k (t = centre + radius * s): a linear function's bias row is its value at the box
centre, and its range is bias -/+ sum_j |a_j|.

API (all take the layers, the input's linear bounds and boxes t_low, t_high of shape [B, k]):

* `margin_lower_bounds(layers, input_bounds, C, t_low, t_high)` -> [B, S], lower bounds of C f
  for a specification C [B, S, n_out]; `output_bounds` -> ([B, *S_out], [B, *S_out]);
  `affine_output_bounds` -> the outputs' linear bounds in t (`AffineBounds`).
* options: `pieces` (split every box into equal sub-boxes, bounded as one batch; the bound is
  the minimum over them), `interval` (propagate an interval alongside and intersect),
  `back_substitute` (margins only: add a CROWN-style back-substitution of C, of only the rows
  that decide with `minimum_only` / `refine_below`), `max_boxes` (bound at most this many
  sub-boxes at once, to cap memory), `compiled` (with back_substitute, on the CPU: networks
  Linear-ReLU-Linear-ReLU-Linear along one direction go through the compiled kernels of
  `auditai_ops.verify.mlp_kernels`, the same bounds several times faster; default on),
  `partial` and `full` (with refine_below: see "Partial first" below).

Layers (exact types, as `auditai_ops.layers.SUPPORTED_LAYERS`; convolutions more generally than
auto_LiRPA 0.3 takes them):

* affine: nn.Linear, nn.Conv2d (any padding, padding_mode, stride, dilation, groups),
  nn.ConvTranspose2d (any padding/output_padding/stride/dilation/groups), nn.BatchNorm1d/2d
  in eval mode with running statistics, PerChannelNormalize. For W x + b the new bounds are
  W+ lower + W- upper + b and W+ upper + W- lower + b, computed as (W/2)(upper + lower) -/+
  (|W|/2)(upper - lower): two calls of the layer, not four. Non-zero padding modes copy
  inputs: |W P| <= |W| P for the copying matrix P >= 0, so |W| after the padding stays sound.
  Transposed convolutions (ConvTranspose2d forward, Conv2d's adjoint in back-substitution) go
  through `conv_kernels`, which picks a faster formulation of the same product by shape.
* reshapes: nn.Flatten (start_dim >= 1), nn.Identity, any module with
  `auditai_reshape_only = True` (its forward is applied to every row, the rows folded into the
  batch dimension).
* activations, all monotone non-decreasing: nn.ReLU, nn.LeakyReLU (negative_slope >= 0),
  nn.Sigmoid, nn.Tanh. See "Relaxations" below.
* anything else: UnsupportedLayerError(path, module).

Containers: nn.Sequential, and modules declaring `auditai_container = True` whose forward is a
plain chain of their children. The latter is checked, not assumed: the container's forward is
run on an example input (the input at the centre of the first box) and compared with the chain
of its children. `LatentLine` (two inputs) and the VAE's `Encoder` are therefore rejected; pass
the head (or [decoder, classifier]) and the affine input (`latent_line_input`) instead.

Relaxations. At an activation y = f(x), the input's linear bounds L(t) <= x(t) <= U(t) are
concretised to ranges [L_min, L_max] and [U_min, U_max]; x's interval is [l, u] = [L_min, U_max],
met with the interval propagated alongside when `interval=True` (interval arithmetic through
affine layers, the activation's image of the intersected interval, met again with the range
of the new linear bounds: never looser than IBP). Every relaxation line h(v) = s v + b below
has s >= 0, so for a monotone f:

* upper: f(x(t)) <= f(U(t)) <= h_u(U(t)) for h_u >= f on the range of U(t), which is
  [max(U_min, l), U_max] (since U(t) >= x(t) >= l). This relaxes f over the range of U itself,
  not over [L_min, U_max]: with k = 1, relu(U(t)) is a hinge in t and its chord is the tightest
  linear upper bound there is. With the interval track, h_u >= f on [l, u] gives a second
  candidate, f(x(t)) <= h_u(x(t)) <= h_u(U(t)); per neuron the one with the smaller value at
  the box centre is kept (both are sound).
* lower: symmetrically, h_l <= f on [L_min, min(L_max, u)] applied to L(t) (or on [l, u]).

The lines, over an interval [lo, hi]:

* ReLU / LeakyReLU(a), 0 <= a <= 1 (convex): upper is the chord; lower is the line through 0
  with slope 1 if hi > -lo else a (CROWN's adaptive choice, least area); exact when the
  interval does not contain 0. For a > 1 (concave) the roles swap.
* Sigmoid / Tanh (convex below 0, concave above): upper, for hi <= 0 the chord; for lo >= 0
  the tangent at the midpoint; for lo < 0 < hi the tangent at the point d >= 0 whose tangent
  passes through (lo, f(lo)) if d <= hi (found by bisection, keeping the valid end: a tangent
  at d >= 0 that lies above f(lo) at lo lies above f on [lo, inf)), else the chord. Lower by
  the odd symmetry f(-x) = 2 f(0) - f(x). Intercepts are moved outward by 4 float eps to
  absorb the rounding of these few scalar evaluations.

Specification: `margin_lower_bounds` folds C [B, S, n_out] into the last nn.Linear, (C W) x +
C b, before splitting weights into positive and negative parts (much tighter than bounding
W x + b and then C); if the last layer is not linear, C is applied as one more affine layer.
Samples that share C (a margin specification has one C per target class) are grouped so that
each group's C W is one matrix product (found by hashing C, then checked exactly).

Back-substitution (`back_substitute=True`): forward bounds lose where the relaxation errors of
one layer meet weights of mixed signs in the next (they pay |A| |W| where CROWN pays |A W|).
CROWN's back-substitution of C through every layer (lower line where the running coefficient
is positive, upper where negative, lines valid on the forward pass's intervals of each
activation input) avoids that at the cost of one row per row of C through every layer; it is
run after the forward pass and the larger of the two bounds is kept. With two hidden layers on
an affine input, the forward intermediate bounds are exactly CROWN's. Three refinements:

* Exact first layer (k = 1). The first activation sees an exact input x(s) = c + r s. If it
  is piecewise linear (ReLU, LeakyReLU), a linear function a . f(x(s)) + constant of its
  output is piecewise linear in s, kinked where an unstable neuron's input crosses 0, so its
  minimum over [-1, 1] is the least of its values at those kinks and the two ends: the
  back-substitution stops there with that exact minimum (`_Kinks`: kinks sorted per box,
  values by running sums in float64, lowered by a bound on their rounding) instead of
  relaxing the layer. Never looser than CROWN, whose relaxation of that layer only loses;
  with one hidden layer the bound is the exact minimum.
* Sparse products (`_Unstable`). Right after such an activation the lower and upper lines
  differ only at the unstable neurons (elsewhere both are the linear piece, bit for bit), so
  a following nn.Linear forms W (lower + upper)/2 densely and |W| (upper - lower)/2 as a
  sparse product over the unstable neurons (a ReLU followed by nn.Linear is fused,
  `_exact_relu_linear`). Back-substitution through that nn.Linear needs a W only at the
  unstable columns (a sampled sparse product) and a . (W m + b) for the lines' midpoint m,
  kept from the forward pass (`_Kinks.minimum_after_linear`).
* Rows (`minimum_only`, `refine_below`): the verifier needs min over rows > min_margin, so
  only the rows that can decide that are back-substituted (`_refine`).
* Partial first (`refine_below`, deep networks: pixel mode). The deciding rows are first
  back-substituted only down to a checkpoint layer (`partial_back_substitution`: by cost, the
  decoder's output in pixel mode) and bounded there with that layer's forward linear bounds;
  only rows this leaves at or below refine_below are then back-substituted fully. Proves every
  box the full one proves, at about a third of its cost where forward mode is loose after the
  checkpoint and tight before it (`full=False` skips the full step, for callers that split).
The last activation is relaxed over its input interval in forward mode too (the lines
back-substitution needs, computed once), so forward bounds in this mode can be slightly
looser than `back_substitute=False` on a row that is not back-substituted.

Floating point: like auto_LiRPA, the bounds are computed in the input's dtype without
directed rounding; the matrix products' rounding (about 1e-6 relative in float32) is not
accounted for. Prove with a small positive margin, as the verifier does.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from auditai_ops.layers import PerChannelNormalize, UnsupportedLayerError
from auditai_ops.verify import conv_kernels, mlp_kernels, partial_back_substitution

__all__ = [
    "AffineBounds",
    "LayerList",
    "affine_input",
    "affine_output_bounds",
    "concretize",
    "flatten_layers",
    "latent_line_input",
    "margin_lower_bounds",
    "output_bounds",
    "split_box",
]

LayerList = nn.Module | Sequence[nn.Module] | Sequence[tuple[str, nn.Module]]
"""A model (nn.Sequential or a checked chain container), a list of modules, or `flatten_layers` output."""

_AFFINE = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm1d, nn.BatchNorm2d, PerChannelNormalize)
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh)
_PIECEWISE_LINEAR = (nn.ReLU, nn.LeakyReLU)
_RESHAPES = (nn.Flatten, nn.Identity)
_LEAVES = frozenset(_AFFINE + _ACTIVATIONS + _RESHAPES)
_BISECTION_STEPS = 16


# --------------------------------------------------------------------------------------------
# Representation


@dataclass(frozen=True)
class AffineBounds:
    """lower_coeff . t + lower_bias <= x(t) <= upper_coeff . t + upper_bias, for t in a box.

    Shapes: coefficients [B, k, *S], biases [B, *S], where B is the batch, k the number of
    perturbed dimensions and S the shape of one sample's tensor. The bounds hold for the box
    they were computed on (`t_low`, `t_high` of shape [B, k]).
    """

    lower_coeff: torch.Tensor
    lower_bias: torch.Tensor
    upper_coeff: torch.Tensor
    upper_bias: torch.Tensor

    def __post_init__(self) -> None:
        lc, lb, uc, ub = self.lower_coeff, self.lower_bias, self.upper_coeff, self.upper_bias
        if lc.dim() < 2 or lc.shape != uc.shape:
            raise ValueError(f"coefficients must have the same shape [B, k, *S], got {tuple(lc.shape)} and {tuple(uc.shape)}")
        expected = (lc.shape[0], *lc.shape[2:])
        if tuple(lb.shape) != expected or tuple(ub.shape) != expected:
            raise ValueError(f"biases must have shape {expected} (coefficients {tuple(lc.shape)}), got {tuple(lb.shape)} and {tuple(ub.shape)}")

    @classmethod
    def exact(cls, center: torch.Tensor, generators: torch.Tensor) -> AffineBounds:
        """x(t) = center + sum_j t_j generators[:, j]: lower and upper coincide."""
        return cls(generators, center, generators, center)

    @property
    def batch(self) -> int:
        return int(self.lower_coeff.shape[0])

    @property
    def k(self) -> int:
        return int(self.lower_coeff.shape[1])

    @property
    def shape(self) -> tuple[int, ...]:
        """S, the shape of one sample."""
        return tuple(self.lower_coeff.shape[2:])

    @property
    def is_exact(self) -> bool:
        """Lower and upper are the same function (an affine input, not yet relaxed)."""
        same_coeff = self.lower_coeff is self.upper_coeff or torch.equal(self.lower_coeff, self.upper_coeff)
        return same_coeff and (self.lower_bias is self.upper_bias or torch.equal(self.lower_bias, self.upper_bias))

    def evaluate(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two linear functions at points t [B, k] (one point per sample): ([B, *S], [B, *S])."""
        return _apply(self.lower_coeff, self.lower_bias, t), _apply(self.upper_coeff, self.upper_bias, t)

    def concretize(self, t_low: torch.Tensor, t_high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval [min of lower, max of upper] over the boxes t_low <= t <= t_high ([B, k] each)."""
        low, _ = concretize(self.lower_coeff, self.lower_bias, t_low, t_high)
        _, high = concretize(self.upper_coeff, self.upper_bias, t_low, t_high)
        return low, high


def _apply(coeff: torch.Tensor, bias: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.to(coeff.dtype).reshape(*t.shape, *([1] * (coeff.dim() - 2)))
    return bias + (coeff * t).sum(dim=1)


def concretize(coeff: torch.Tensor, bias: torch.Tensor, t_low: torch.Tensor, t_high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of coeff . t + bias over t_low <= t <= t_high; coeff [B, k, *S], boxes [B, k]."""
    _check_box(t_low, t_high, coeff.shape[0], coeff.shape[1])
    extra = [1] * (coeff.dim() - 2)
    center = ((t_low + t_high) / 2).to(coeff.dtype).reshape(*t_low.shape, *extra)
    radius = ((t_high - t_low) / 2).to(coeff.dtype).reshape(*t_low.shape, *extra)
    mid = bias + (coeff * center).sum(dim=1)
    spread = (coeff.abs() * radius).sum(dim=1)
    return mid - spread, mid + spread


def affine_input(center: torch.Tensor, generators: torch.Tensor) -> AffineBounds:
    """The exact affine input x(t) = center + sum_j t_j generators[:, j] (center [B, *S], generators [B, k, *S])."""
    if generators.dim() != center.dim() + 1 or generators.shape[0] != center.shape[0] or generators.shape[2:] != center.shape[1:]:
        raise ValueError(f"generators must have shape [B, k, *S] for center [B, *S] = {tuple(center.shape)}, got {tuple(generators.shape)}")
    return AffineBounds.exact(center, generators)


def latent_line_input(z: torch.Tensor, directions: torch.Tensor) -> AffineBounds:
    """z + t @ directions, the input of `LatentLine`'s head: z [B, D], directions [k, D] or [B, k, D]."""
    if z.dim() != 2:
        raise ValueError(f"z must have shape [B, D], got {tuple(z.shape)}")
    if directions.dim() == 2:
        directions = directions[None].expand(z.shape[0], -1, -1)
    if directions.dim() != 3 or directions.shape[0] != z.shape[0] or directions.shape[2] != z.shape[1]:
        raise ValueError(f"directions must have shape [k, D] or [B, k, D] with D = {z.shape[1]}, got {tuple(directions.shape)}")
    return AffineBounds.exact(z, directions.to(z.dtype))


def _check_box(t_low: torch.Tensor, t_high: torch.Tensor, batch: int, k: int) -> None:
    if tuple(t_low.shape) != (batch, k) or tuple(t_high.shape) != (batch, k):
        raise ValueError(f"t_low and t_high must have shape [B={batch}, k={k}], got {tuple(t_low.shape)} and {tuple(t_high.shape)}")
    if bool((t_low > t_high).any()) or not bool(torch.isfinite(t_low).all() and torch.isfinite(t_high).all()):
        raise ValueError("t_low must be <= t_high, both finite")


def split_box(t_low: torch.Tensor, t_high: torch.Tensor, pieces: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut every box [B, k] into equal sub-boxes: `pieces` per axis (an int for all axes, or one per axis).

    Returns (t_low, t_high) of shape [B * P, k], P = the product of the pieces, sample-major (the
    P sub-boxes of sample 0 first). Neighbouring sub-boxes share their faces exactly, and the
    outer faces are the box's own, so the sub-boxes cover the box.
    """
    k = t_low.shape[1]
    counts = [int(pieces)] * k if isinstance(pieces, int) else [int(p) for p in pieces]
    if len(counts) != k or min(counts) < 1:
        raise ValueError(f"pieces must be a positive int or k = {k} positive ints, got {pieces!r}")
    if all(c == 1 for c in counts):
        return t_low, t_high
    lows, highs = [], []
    for axis, count in enumerate(counts):
        fractions = torch.arange(count + 1, dtype=t_low.dtype, device=t_low.device) / count
        lo, hi = t_low[:, axis : axis + 1], t_high[:, axis : axis + 1]
        edges = lo + fractions * (hi - lo)  # [B, count + 1]
        edges[:, -1:] = hi  # exact outer face despite rounding
        lows.append(edges[:, :-1])
        highs.append(edges[:, 1:])
    grid_low = torch.stack(torch.meshgrid(*[torch.arange(c) for c in counts], indexing="ij"), dim=-1).reshape(-1, k)
    batch = t_low.shape[0]
    out_low = torch.stack([lows[a][:, grid_low[:, a]] for a in range(k)], dim=-1)  # [B, P, k]
    out_high = torch.stack([highs[a][:, grid_low[:, a]] for a in range(k)], dim=-1)
    return out_low.reshape(batch * len(grid_low), k), out_high.reshape(batch * len(grid_low), k)


# --------------------------------------------------------------------------------------------
# Layers


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
    raise UnsupportedLayerError(where, module)


def _check_leaf(where: str, module: nn.Module) -> None:
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


# --------------------------------------------------------------------------------------------
# Propagation state. Rows 0..k-1: the coefficients of s; row k: the bias (the value at the box
# centre); row k + 1 (when tracked): the interval, its lower end in `lower`, upper in `upper`.
# An interval row passes through affine layers as interval arithmetic (mid/rad rows), and
# through reshapes like any row.


class _Unstable:
    """The neurons of a piecewise-linear activation whose input interval contains 0, per box.

    mask [N, F] over the flattened layer; count [N]; boxes, columns [nnz]: the (box, position)
    pairs, box-major, positions increasing; slot [nnz]: the pair's rank within its box; index
    [N, M]: the positions per box (padded with 0). Elsewhere the activation is linear on its
    input's range, so its lower and upper lines coincide there.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask
        self.count = mask.sum(dim=1)
        width = int(self.count.max()) if mask.shape[0] else 0
        self.boxes, self.columns = mask.nonzero(as_tuple=True)
        self.flat = self.boxes * mask.shape[1] + self.columns  # positions in mask.reshape(-1)
        self._layouts: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self.starts = torch.cumsum(self.count, 0) - self.count
        self.slot = torch.arange(len(self.boxes), device=mask.device) - self.starts[self.boxes]
        self.index = torch.zeros(mask.shape[0], width, dtype=torch.long, device=mask.device)
        self.index[self.boxes, self.slot] = self.columns

    def positions(self, lines: int, features: int) -> torch.Tensor:
        """Where the unstable entries of every row lie in a contiguous [N, lines, features] tensor, flattened: [lines * nnz], row-major in (line, nnz)."""
        flat = self.boxes * (lines * features) + self.columns
        return torch.cat([flat + j * features for j in range(lines)])

    def entries(self, values: torch.Tensor) -> torch.Tensor:
        """values [N, R, F] at the unstable positions: [R, nnz]."""
        n, lines, features = values.shape
        return values.contiguous().view(-1).index_select(0, self.positions(lines, features)).view(lines, -1)

    def padded(self, entries: torch.Tensor) -> torch.Tensor:
        """entries [R, nnz] as [N, M, R] in `index` order, 0 at padding."""
        out = entries.new_zeros(*self.index.shape, entries.shape[0])
        out[self.boxes, self.slot] = entries.T
        return out

    def matrix(self, entries: torch.Tensor) -> torch.Tensor:
        """The sparse CSR matrix [N * R, F] whose row b R + j holds entries[j] ([R, nnz]) at box b's unstable positions."""
        lines = entries.shape[0]
        if lines not in self._layouts:
            count = self.count[self.boxes]
            position = (self.starts[self.boxes] * lines + self.slot).repeat(lines)  # entry (j, t) -> row b R + j, after its j earlier rows
            position += torch.arange(lines, device=count.device).repeat_interleave(len(self.boxes)) * count.repeat(lines)
            crow = torch.zeros(len(self.count) * lines + 1, dtype=torch.long, device=count.device)
            torch.cumsum(self.count.repeat_interleave(lines), 0, out=crow[1:])
            columns = torch.empty_like(position)
            columns[position] = self.columns.repeat(lines)
            self._layouts[lines] = (crow, columns, position)
        crow, columns, position = self._layouts[lines]
        values = entries.new_empty(position.shape)
        values[position] = entries.reshape(-1)
        return _csr(crow, columns, values, (len(self.count) * lines, self.mask.shape[1]))

    def sampled(self, a: torch.Tensor, weight: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(a @ weight) at the unstable positions of each row's box: a [R, out], weight [out, F], boxes [R] -> [R, M] in `index` order (0 at padding)."""
        count = self.count[boxes]
        crow = torch.zeros(len(boxes) + 1, dtype=torch.long, device=a.device)
        torch.cumsum(count, 0, out=crow[1:])
        total = int(crow[-1])
        row = torch.repeat_interleave(torch.arange(len(boxes), device=a.device), count, output_size=total)
        slot = torch.arange(total, device=a.device) - crow[row]
        mask = _csr(crow, self.columns[self.starts[boxes][row] + slot], a.new_zeros(total), (len(boxes), weight.shape[1]))
        values = torch.sparse.sampled_addmm(mask, a, weight, beta=0.0).values()
        out = a.new_zeros(len(boxes), self.index.shape[1])
        out[row, slot] = values
        return out


def _csr(crow: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A sparse CSR matrix (columns increasing within each row, by construction: invariants are not re-checked)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(crow, columns, values, size, check_invariants=False)


@dataclass
class _State:
    lower: torch.Tensor  # [N, R, *S], R = k + 1, or k + 2 with the interval row
    upper: torch.Tensor | None  # None: the same as lower (an exact affine function, no interval row)
    k: int
    unstable: _Unstable | None = None  # upper - lower vanishes outside these (flattened) positions; see `_sparse_gap_linear`

    @property
    def up(self) -> torch.Tensor:
        return self.lower if self.upper is None else self.upper

    @property
    def tracked(self) -> bool:
        return self.lower.shape[1] == self.k + 2


def _spread(rows: torch.Tensor, k: int) -> torch.Tensor:
    """max - centre over s in [-1, 1]^k of the linear functions in rows[:, :k + 1]: sum_j |a_j|."""
    return rows[:, 0].abs() if k == 1 else rows[:, :k].abs().sum(dim=1)


def _range(rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, max) over s in [-1, 1]^k of the linear functions in rows[:, :k + 1]."""
    centre, spread = rows[:, k], _spread(rows, k)
    return centre - spread, centre + spread


Apply = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _affine(state: _State, apply: Apply, weight: torch.Tensor, bias: torch.Tensor | None) -> _State:
    """x -> W x + b, where apply(x, w) is the linear map with weights w (rows of x in its batch dimension).

    lower' = W+ lower + W- upper = (W/2)(upper + lower) - (|W|/2)(upper - lower), upper' likewise.
    `apply(x, |w|)` may be any map dominating |W| elementwise (for copying pads: |W P| <= |W| P).
    """
    k = state.k
    n, rows = state.lower.shape[:2]
    if state.upper is None:
        out = apply(state.lower.flatten(0, 1), weight).unflatten(0, (n, rows))
        if bias is not None:
            out[:, k:] += bias
        return _State(out, None, k)
    m = apply((state.upper + state.lower).flatten(0, 1), weight * 0.5).unflatten(0, (n, rows))
    r = apply((state.upper - state.lower).flatten(0, 1), weight.abs() * 0.5).unflatten(0, (n, rows))
    if bias is not None:
        m[:, k:] += bias
    return _State(m - r, m.add_(r), k)


def _reshape(state: _State, module: nn.Module, where: str) -> _State:
    """A reshape-only module, applied to every row (rows folded into the batch dimension)."""

    def apply(t: torch.Tensor) -> torch.Tensor:
        flat = t.flatten(0, 1)
        y = module(flat)
        if y.dim() == 0 or y.shape[0] != flat.shape[0] or y.numel() != flat.numel():
            raise UnsupportedLayerError(where, module, "does not keep the batch dimension and the number of elements")
        return y.unflatten(0, t.shape[:2])

    unstable = state.unstable if isinstance(module, nn.Flatten) else None  # flattening keeps the flattened order
    return _State(apply(state.lower), None if state.upper is None else apply(state.upper), state.k, unstable)


def _channel_view(values: torch.Tensor, sample_dims: int) -> torch.Tensor:
    """A per-channel vector [C] shaped to broadcast over [N, C, *spatial] (sample_dims = 1 + len(spatial))."""
    return values.reshape(-1, *([1] * (sample_dims - 1)))


def _multiply(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x * w


_SPARSE_GAP_DENSITY = 0.25
"""`_sparse_gap_linear` is used when no box has more than this share of a layer's neurons unstable."""


def _sparse_gap_linear(state: _State, module: nn.Linear) -> tuple[_State, tuple[torch.Tensor, torch.Tensor]] | None:
    """nn.Linear after a piecewise-linear activation of an exact input, with (upper - lower) by a sparse product.

    The gap upper - lower of the line rows (0..k) vanishes except at the unstable neurons
    (`_Unstable`), so (|W|/2)(upper - lower) is a sparse-dense product over those columns only;
    W (upper + lower)/2 + b stays dense. Also returns, for `_Kinks.minimum_after_linear`, that
    midpoint image [N, k + 1, out] and the midpoint's entries at the unstable neurons [N, M, k + 1].
    None when too many neurons are unstable for that to pay.
    """
    unstable, upper = state.unstable, state.upper
    if unstable is None or upper is None or state.lower.dim() != 3:
        return None
    k = state.k
    n, rows, features = state.lower.shape
    if int(unstable.count.sum()) > _SPARSE_GAP_DENSITY * n * features:
        return None
    lines = k + 1
    weight = module.weight
    mid = F.linear(upper + state.lower, weight * 0.5)  # [N, R, out]
    if module.bias is not None:
        mid[:, k:] += module.bias
    upper_u, lower_u = unstable.entries(upper[:, :lines]), unstable.entries(state.lower[:, :lines])
    mid_lines = mid[:, :lines]
    radius = (unstable.matrix((upper_u - lower_u) * 0.5) @ weight.abs().T).unflatten(0, (n, lines))
    new_lower, new_upper = mid_lines - radius, mid_lines + radius
    if rows > lines:  # the interval row: interval arithmetic, dense
        interval_radius = F.linear(upper[:, lines:] - state.lower[:, lines:], weight.abs() * 0.5)
        new_lower = torch.cat([new_lower, mid[:, lines:] - interval_radius], dim=1)
        new_upper = torch.cat([new_upper, mid[:, lines:] + interval_radius], dim=1)
    return _State(new_lower, new_upper, k), (mid_lines, unstable.padded((upper_u + lower_u) * 0.5))


def _affine_layer(state: _State, module: nn.Module) -> _State:
    sample_dims = state.lower.dim() - 2
    if isinstance(module, nn.Linear):
        sparse = _sparse_gap_linear(state, module)
        return sparse[0] if sparse is not None else _affine(state, F.linear, module.weight, module.bias)
    if isinstance(module, nn.Conv2d):
        conv = module
        view_bias = None if conv.bias is None else _channel_view(conv.bias, sample_dims)
        if conv.padding_mode != "zeros":

            def padded(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
                x = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
                return F.conv2d(x, w, None, conv.stride, 0, conv.dilation, conv.groups)

            return _affine(state, padded, conv.weight, view_bias)

        def convolve(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)

        return _affine(state, convolve, conv.weight, view_bias)
    if isinstance(module, nn.ConvTranspose2d):
        deconv = module

        def transposed(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return conv_kernels.conv_transpose2d(x, w, deconv.stride, deconv.padding, deconv.output_padding, deconv.groups, deconv.dilation)

        return _affine(state, transposed, deconv.weight, None if deconv.bias is None else _channel_view(deconv.bias, sample_dims))
    if isinstance(module, nn.modules.batchnorm._BatchNorm | PerChannelNormalize):
        scale, shift = _diagonal_terms(module)
        return _affine(state, _multiply, _channel_view(scale, sample_dims), _channel_view(shift, sample_dims))
    raise AssertionError(type(module))


def _group_samples(C: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]] | None:
    """Samples sharing the same specification matrix: (an order of the samples putting them in runs, [(start, end)]).

    Matrices are grouped by a hash and the grouping is checked exactly; None on a collision
    (or if there are too many groups for per-group matrix products to pay off).
    """
    batch = C.shape[0]
    flat = C.reshape(batch, -1)
    generator = torch.Generator().manual_seed(0)
    weights = (1 + torch.rand(flat.shape[1], dtype=torch.float64, generator=generator)).to(C.device)
    keys = flat.to(torch.float64) @ weights
    _, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
    if len(counts) > max(1, batch // 16):
        return None
    order = torch.argsort(inverse, stable=True)
    ends = torch.cumsum(counts, 0).tolist()
    runs = list(zip([0, *ends[:-1]], ends, strict=True))
    sorted_c = flat[order]
    for start, end in runs:
        if not bool((sorted_c[start:end] == sorted_c[start]).all()):
            return None
    return order, runs


def _spec_layer(state: _State, C: torch.Tensor, final: nn.Linear | None, pieces: int, runs: list[tuple[int, int]] | None) -> torch.Tensor:
    """Lower-bound rows [N, R, S] of the margins C[b] (W x + b) (or C[b] x without a final nn.Linear), C folded into W.

    Bounding with (C W)+ and (C W)- is much tighter than bounding W x + b and then applying C:
    lower = (C W)+ lower + (C W)- upper (rows 0..k: linear functions of s; row k + 1 when
    tracked: interval arithmetic). With `runs` (samples sharing C are contiguous, see
    `_group_samples`) one folded matrix per run is applied as a plain matrix product;
    otherwise one per sample by batched products.
    """
    batch, outputs, n_out = C.shape
    k = state.k
    C = C.to(state.lower.dtype)
    lower = state.lower.flatten(2)
    upper = None if state.upper is None else state.upper.flatten(2)
    n, rows, features = lower.shape
    if runs is not None:
        first = torch.tensor([start for start, _ in runs], device=C.device)
        folded = C[first] if final is None else torch.matmul(C[first], final.weight)  # [runs, S, in]
        biases = None if final is None or final.bias is None else torch.matmul(C[first], final.bias)  # [runs, S]
        positive, negative = folded.clamp(min=0), folded.clamp(max=0)
        out = lower.new_empty(n, rows, outputs)
        for run, (start, end) in enumerate(runs):
            part = slice(start * pieces, end * pieces)
            if upper is None:
                value = F.linear(lower[part], folded[run])
            else:
                value = F.linear(lower[part], positive[run])
                value += F.linear(upper[part], negative[run])
            if biases is not None:
                value[:, k:] += biases[run]
            out[part] = value
        return out
    folded = C if final is None else torch.matmul(C, final.weight)  # [B, S, in]
    folded_bias = None if final is None or final.bias is None else torch.matmul(C, final.bias)  # [B, S]

    def per_sample(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # x [N, R, in]; the rows of sample b are contiguous
        return torch.bmm(x.reshape(batch, -1, features), w.transpose(1, 2)).reshape(n, rows, outputs)

    if upper is None:
        value = per_sample(lower, folded)
    else:
        value = per_sample(lower, folded.clamp(min=0)) + per_sample(upper, folded.clamp(max=0))
    if folded_bias is not None:
        value[:, k:] += folded_bias.repeat_interleave(pieces, dim=0).unsqueeze(1)
    return value


# --------------------------------------------------------------------------------------------
# Activation relaxations: lines s * v + b with s >= 0, valid for v in [lo, hi].


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


def _lines(module: nn.Module, lo: torch.Tensor, hi: torch.Tensor, upper: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(slope, intercept) of a line above (or below) the activation over [lo, hi]; slope >= 0; None: intercept 0."""
    if isinstance(module, nn.ReLU):
        return _relu_lines(lo, hi, upper)
    if isinstance(module, nn.LeakyReLU):
        return _leaky_lines(lo, hi, float(module.negative_slope), upper)
    return _s_shaped_lines("sigmoid" if isinstance(module, nn.Sigmoid) else "tanh", lo, hi, upper)


def _evaluate(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The activation, never in place."""
    if isinstance(module, nn.ReLU):
        return F.relu(x)
    if isinstance(module, nn.LeakyReLU):
        return F.leaky_relu(x, module.negative_slope)
    return torch.sigmoid(x) if isinstance(module, nn.Sigmoid) else torch.tanh(x)


Lines = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]
"""(lower slope, lower intercept, upper slope, upper intercept) per neuron; None: intercept 0."""


def _activation(state: _State, module: nn.Module, interval: bool, over_interval: bool = False) -> tuple[_State, torch.Tensor, torch.Tensor, Lines]:
    """The relaxed activation, the concrete interval [low, high] of its input, and the lines used.

    over_interval: relax over [low, high] for both lines (CROWN's lines, which back-substitution
    uses) instead of over the ranges of the lower and upper functions: sound (U(t) >= x(t) >=
    low, see the module docstring), a little looser in forward mode, and computed once.
    """
    if state.upper is None and type(module) is nn.ReLU and not interval:
        return _exact_relu(state)
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
        out_low = torch.maximum(_evaluate(module, low), _range(new_lower, k)[0])
        out_high = torch.minimum(_evaluate(module, high), _range(new_upper, k)[1])
        new_lower[:, k + 1] = out_low
        new_upper[:, k + 1] = torch.maximum(out_high, out_low)
    unstable = None
    if state.upper is None and isinstance(module, _PIECEWISE_LINEAR):
        # An exact input: where its range does not contain 0 both lines are the activation's linear piece, identical.
        unstable = _Unstable(((low < 0) & (high > 0)).flatten(1))
    return _State(new_lower, new_upper, k, unstable), low, high, (s_lo, b_lo, s_up, b_up)


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


def _grow(rows: torch.Tensor, count: int) -> torch.Tensor:
    """rows with extra (zero) rows up to `count`."""
    extra = rows.new_zeros(rows.shape[0], count - rows.shape[1], *rows.shape[2:])
    return torch.cat([rows, extra], dim=1)


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


# --------------------------------------------------------------------------------------------
# Driver


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
    if isinstance(layers, nn.Module) or any(not isinstance(item, tuple) for item in layers):
        flat = flatten_layers(layers, example)
    else:
        flat = list(layers)  # type: ignore[arg-type]
        for where, module in flat:
            if type(module) not in _LEAVES and getattr(module, "auditai_reshape_only", False) is not True:
                raise UnsupportedLayerError(where, module)
            _check_leaf(where, module)
    largest = example[0].numel() if input_bounds.batch else 1
    shapes = [tuple(example.shape[1:])]
    with torch.no_grad():
        x = example
        for _, module in flat:
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


Tape = list[_Step]


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
        elif not isinstance(module, nn.Identity):
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
    if int(unstable.count.sum()) > _SPARSE_GAP_DENSITY * unstable.mask.numel():
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
    affine layers are applied transposed, reshapes undone; the result, a linear function of the
    input, is bounded with the input's own linear bounds in s. At a `_Kinks` activation the
    linear function of its output is minimised exactly instead.
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
        if isinstance(module, _ACTIVATIONS):
            s_lo, s_gap, b_lo, b_gap = _step_lines(step)
            # a h >= a+ (s_lo x + b_lo) + a- (s_up x + b_up) = a (s_lo x + b_lo) + a- ((s_up - s_lo) x + b_up - b_lo)
            flat = a.flatten(2)
            negative = flat.clamp(max=0)
            if b_lo is not None:
                constant = constant + (flat * per_box(b_lo)).sum(dim=2)
            if b_gap is not None:
                constant = constant + (negative * per_box(b_gap)).sum(dim=2)
            a = torch.addcmul(flat * per_box(s_lo), negative, per_box(s_gap)).reshape(a.shape)
        elif isinstance(module, _AFFINE):
            a, constant = _transpose_affine(module, a, constant, step.shape)
        else:
            a = a.reshape(*a.shape[:2], *step.shape)
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


def _transpose_affine(module: nn.Module, a: torch.Tensor, constant: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """a (W x + b) = (a W) x + a b for a [G, r, *out]: returns (a W [G, r, *shape], constant + a b)."""
    lead = a.shape[:2]
    if isinstance(module, nn.Linear):
        rows = a.reshape(-1, a.shape[-1])
        if module.bias is not None:
            constant = constant + torch.mv(rows, module.bias).reshape(lead)
        return torch.mm(rows, module.weight).reshape(*lead, -1), constant
    if isinstance(module, nn.modules.batchnorm._BatchNorm | PerChannelNormalize):
        scale, shift = _diagonal_terms(module)
        view = [-1] + [1] * (len(shape) - 1)
        constant = constant + (a * shift.reshape(view)).flatten(2).sum(dim=2)
        return a * scale.reshape(view), constant
    assert isinstance(module, nn.Conv2d | nn.ConvTranspose2d)
    if module.bias is not None:
        constant = constant + (a.flatten(3).sum(dim=3) @ module.bias)
    rows = a.flatten(0, 1)
    batch_shape = (rows.shape[0], *shape)
    back = None
    if isinstance(module, nn.Conv2d) and module.padding_mode == "zeros" and not isinstance(module.padding, str):
        back = conv_kernels.conv2d_adjoint(rows, module.weight, shape, module.stride, module.padding, module.dilation, module.groups)
    elif isinstance(module, nn.ConvTranspose2d):
        # The adjoint of a transposed convolution is the convolution (output_padding only adds rows it never reads).
        back = F.conv2d(rows, module.weight, None, module.stride, module.padding, module.dilation, module.groups)
    if back is None or tuple(back.shape) != batch_shape:
        conv = module

        def linear(x: torch.Tensor) -> torch.Tensor:
            if isinstance(conv, nn.Conv2d):
                return conv._conv_forward(x, conv.weight, None)
            return F.conv_transpose2d(x, conv.weight, None, conv.stride, conv.padding, conv.output_padding, conv.groups, conv.dilation)

        # The transposed map by autograd: exact for any linear map (padding modes, odd output padding).
        _, vjp = torch.func.vjp(linear, rows.new_zeros(batch_shape))
        (back,) = vjp(rows)
    return back.reshape(*lead, *shape), constant


def _diagonal_terms(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) per channel of an eval-mode BatchNorm or a PerChannelNormalize."""
    if isinstance(module, PerChannelNormalize):
        scale = module.inverse_std.reshape(-1)
        return scale, -module.mean.reshape(-1) * scale
    assert isinstance(module, nn.modules.batchnorm._BatchNorm)
    assert module.running_mean is not None and module.running_var is not None
    scale = torch.rsqrt(module.running_var + module.eps)
    if module.weight is not None:
        scale = scale * module.weight
    shift = -module.running_mean * scale
    if module.bias is not None:
        shift = shift + module.bias
    return scale, shift


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
    grouping = _group_samples(C)
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
