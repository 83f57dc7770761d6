"""Max pooling, y = max_i x_i over each window, in forward mode and in back-substitution.

Forward mode, with L_i(s) <= x_i(s) <= U_i(s) the inputs' linear bounds (s in [-1, 1]^k):

* lower: y >= x_j >= L_j(s) for any j in the window; j is the input whose lower function is
  largest at the box centre.
* upper: y <= max_i U_i(s) =: g(s), a maximum of affine functions, convex in s. A linear
  h >= g at the 2^k vertices of the box lies above g on the whole box (g at a convex
  combination of vertices is at most that combination of g's values, h is linear). h is the
  least-squares fit of g's vertex values (coefficients mean_v g(v) v_j, intercept mean_v g(v),
  the vertices being an orthogonal design) raised by the largest residual. For k = 1 that is
  the chord of g over [-1, 1], exact when one input's U dominates the others (then g = U_j).
  It is never above the constant max_i max U_i at a vertex.
* the interval row (when tracked): [max_i l_i, max_i u_i], max being monotone.

Back-substitution (lines in x, valid on the forward intervals [l_i, u_i] of the inputs): lower
y >= x_j for j = argmax_i l_i; upper y = x_j when l_j >= u_i for every other i (j dominates:
exact), else the constant y <= max_i u_i. a . y >= a+ . (lower line) + a- . (upper line).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from auditai_ops.verify.linear_bounds.state import _spread, _State


def _pool(x: torch.Tensor, module: nn.MaxPool2d, indices: bool = False) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
    """F.max_pool2d with the module's settings on x [M, C, H, W] (padding counts as -inf)."""
    return F.max_pool2d(x, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode, indices)


def _vertices(k: int, like: torch.Tensor) -> torch.Tensor:
    """The 2^k vertices of [-1, 1]^k: [2^k, k]."""
    return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=k)), dtype=like.dtype, device=like.device)


def max_pool_forward(state: _State, module: nn.MaxPool2d) -> tuple[_State, torch.Tensor, torch.Tensor]:
    """The pooled state and the concrete interval [low, high] of the pool's input ([N, C, H, W] each)."""
    k = state.k
    lower, upper = state.lower, state.up
    n, rows = lower.shape[:2]
    low = lower[:, k] - _spread(lower, k)
    high = upper[:, k] + _spread(upper, k)
    if state.tracked:
        low, high = torch.maximum(low, lower[:, k + 1]), torch.minimum(high, upper[:, k + 1])
        high = torch.maximum(high, low)
    # Lower: the input whose lower function is largest at the box centre.
    _, index = _pool(lower[:, k], module, indices=True)  # [N, C, H', W'], positions in H * W
    out_shape = index.shape[1:]
    gather = index.flatten(2).unsqueeze(1).expand(n, rows, -1, -1)  # [N, R, C, H' W']
    new_lower = lower.flatten(3).gather(3, gather).reshape(n, rows, *out_shape)
    # Upper: a plane above max_i U_i at the box's vertices.
    vertices = _vertices(k, lower)  # [V, k]
    values = torch.stack([_pool(upper[:, k] + torch.einsum("j,nj...->n...", vertex, upper[:, :k]), module) for vertex in vertices])  # [V, N, C, H', W']
    coeff = torch.einsum("vj,vn...->nj...", vertices, values) / len(vertices)  # [N, k, C, H', W']
    centre = values.mean(dim=0)
    residual = (values - centre - torch.einsum("vj,nj...->vn...", vertices, coeff)).amax(dim=0)
    new_upper = torch.cat([coeff, (centre + residual).unsqueeze(1)], dim=1)
    if state.tracked:
        new_lower = torch.cat([new_lower[:, : k + 1], _pool(lower[:, k + 1], module).unsqueeze(1)], dim=1)
        new_upper = torch.cat([new_upper, _pool(upper[:, k + 1], module).unsqueeze(1)], dim=1)
    elif rows > k + 1:
        raise AssertionError("untracked state with extra rows")
    return _State(new_lower, new_upper, k), low, high


def max_pool_lines(module: nn.MaxPool2d, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Back-substitution lines over the input intervals [low, high] ([N, C, H, W]).

    Returns (index [N, C, H' W'], the input j of each output (argmax of low), dominated [N, C, H' W'] (1.0 where
    y = x_j exactly, else 0.0), top [N, C, H' W'] (max_i high_i, the constant upper line elsewhere)).
    """
    windows_low, positions = _windows(low, module), _windows(_input_positions(low), module)  # [N, C, K, L]
    windows_high = _windows(high, module)
    best, slot = windows_low.max(dim=2, keepdim=True)
    others = windows_high.scatter(2, slot, -torch.inf).amax(dim=2)  # the largest upper end among the others
    index = positions.gather(2, slot).squeeze(2).long()
    dominated = (best.squeeze(2) >= others).to(low.dtype)
    return index, dominated, windows_high.amax(dim=2)


def _input_positions(like: torch.Tensor) -> torch.Tensor:
    """Each input's flat position h W + w, as a tensor shaped like `like` [N, C, H, W]."""
    height, width = like.shape[2:]
    return torch.arange(height * width, dtype=like.dtype, device=like.device).reshape(1, 1, height, width).expand_as(like)


def _windows(x: torch.Tensor, module: nn.MaxPool2d) -> torch.Tensor:
    """The pooling windows of x [N, C, H, W]: [N, C, K, L] (K window positions, L outputs), padding as -inf."""
    kernel, stride, padding = (nn.modules.utils._pair(v) for v in (module.kernel_size, module.stride, module.padding))
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]), value=-torch.inf)
    n, channels = x.shape[:2]
    return F.unfold(padded, kernel, stride=stride).reshape(n, channels, kernel[0] * kernel[1], -1)


def max_pool_transpose(
    a: torch.Tensor, constant: torch.Tensor, lines: tuple[torch.Tensor, torch.Tensor, torch.Tensor], shape: tuple[int, ...], boxes: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """a . y >= a+ . x_j + a- . (dominated x_j + (1 - dominated) top): (coefficients on x [G, r, *shape], constant [G, r]).

    a [G, r, C, H', W']; `lines` from `max_pool_lines`, per box (rows `boxes`, None: all in order).
    """
    index, dominated, top = (value if boxes is None else value[boxes] for value in lines)
    groups, count = a.shape[:2]
    flat = a.flatten(3)  # [G, r, C, H' W']
    negative = flat.clamp(max=0)
    on_input = flat - negative * (1 - dominated.unsqueeze(1))
    constant = constant + (negative * ((1 - dominated) * top).unsqueeze(1)).sum(dim=(2, 3))
    channels, height, width = shape
    out = a.new_zeros(groups, count, channels, height * width)
    out.scatter_add_(3, index.unsqueeze(1).expand(-1, count, -1, -1), on_input)
    return out.reshape(groups, count, *shape), constant
