"""Affine layers and reshapes, in forward mode and transposed (for back-substitution).

For W x + b the new bounds are W+ lower + W- upper + b and W+ upper + W- lower + b, computed as
(W/2)(upper + lower) -/+ (|W|/2)(upper - lower): two calls of the layer, not four. Non-zero
padding modes copy inputs: |W P| <= |W| P for the copying matrix P >= 0, so |W| after the
padding stays sound. Transposed convolutions (ConvTranspose2d forward, Conv2d's adjoint in
back-substitution) go through `conv_kernels`, which picks a faster formulation of the same
product by shape.

Pooling and resampling layers with non-negative weights are affine too: AvgPool2d and
AdaptiveAvgPool2d average fixed windows of the input (weights 1/n; count_include_pad=False
divides the border windows by their own count: still a linear map with weights >= 0), Upsample (nearest: copies; bilinear: convex combinations) is a
linear map with weights >= 0. For a map M with M >= 0, |M| = M, so the layer itself applied to
the half gap gives the radius term: M (upper - lower)/2. Dropout in eval mode is the identity.
Back-substitution transposes them by autograd (`torch.func.vjp`, exact for any linear map).

Sparse products (`_sparse_gap_linear`): right after a piecewise-linear activation of an exact
input the lower and upper lines differ only at the unstable neurons (`state._Unstable`), so a
following nn.Linear forms W (lower + upper)/2 densely and |W| (upper - lower)/2 as a sparse
product over the unstable neurons.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from auditai_ops.layers import PerChannelNormalize, UnsupportedLayerError
from auditai_ops.verify import conv_kernels
from auditai_ops.verify.linear_bounds.layer_kinds import _NONNEGATIVE_LINEAR
from auditai_ops.verify.linear_bounds.state import _State

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
    if isinstance(module, _NONNEGATIVE_LINEAR):
        # M >= 0 elementwise: |M| = M, so apply(x, w) = w M(x) with the scalar weight 1 gives both terms.
        pool = module

        def nonnegative(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return pool(x) * w

        return _affine(state, nonnegative, torch.ones((), dtype=state.lower.dtype, device=state.lower.device), None)
    raise AssertionError(type(module))


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
    if isinstance(module, _NONNEGATIVE_LINEAR):
        return _vjp(module, a.flatten(0, 1), shape).reshape(*lead, *shape), constant
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

        back = _vjp(linear, rows, shape)  # padding modes, odd output padding
    return back.reshape(*lead, *shape), constant


def _vjp(linear: Callable[[torch.Tensor], torch.Tensor], rows: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The transposed linear map applied to rows [R, *out]: [R, *shape], by autograd (exact for any linear map)."""
    with torch.enable_grad():
        _, vjp = torch.func.vjp(linear, rows.new_zeros(rows.shape[0], *shape))
        (back,) = vjp(rows)
    return back


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
