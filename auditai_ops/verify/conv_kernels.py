"""Transposed convolutions for bound propagation, by the formulation that is fast for the shape.

Bounding a decoder and a CNN applies transposed convolutions to thousands of rows at a time:
the decoder's ConvTranspose2d layers in forward mode, and every Conv2d's adjoint in
back-substitution. On the CPU, torch's F.conv_transpose2d on contiguous (NCHW) tensors is
several times slower than the same product in other layouts (oneDNN, torch 2.13, one thread;
MNIST pixel example, medians of 7):

| product | rows | NCHW | channels_last | matrix product + fold |
|---|---|---|---|---|
| ConvTranspose2d 64 -> 32, 7x7 -> 14x14 | 424 | 50 ms | 19 ms | 97 ms |
| ConvTranspose2d 32 -> 1, 14x14 -> 28x28 | 424 | 32 ms | 21 ms | 7.5 ms |
| adjoint of Conv2d 16 -> 32, 14x14 -> 7x7 | 2000 | 115 ms | 35 ms | 170 ms |
| adjoint of Conv2d 1 -> 16, 28x28 -> 14x14 | 2000 | 72 ms | 62 ms | 43 ms |

So `conv_transpose2d` takes, by a fixed rule on the shape (never by timing, so that every
process computes the same bits): a matrix product of the weights with the rows followed by
F.fold (col2im) when the product has at most `FOLD_MAX_CHANNELS` output channels and one group,
else the channels_last layout. Both compute the same sums as F.conv_transpose2d in another
order (float rounding differs in the last bits, as between any two BLAS calls; the bounds
account for no matrix product's rounding either way: see `linear_bounds`, "Floating point").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

FOLD_MAX_CHANNELS = 4
"""Transposed convolutions with at most this many output channels (and one group) go through a matrix product and F.fold."""


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def conv_transpose2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    output_padding: int | Sequence[int] = 0,
    groups: int = 1,
    dilation: int | Sequence[int] = 1,
) -> torch.Tensor:
    """F.conv_transpose2d(x, weight, None, ...) for x [R, C_in, H, W], contiguous (NCHW) in and out."""
    stride, padding, output_padding, dilation = _pair(stride), _pair(padding), _pair(output_padding), _pair(dilation)
    if x.device.type != "cpu" or x.dim() != 4:
        return F.conv_transpose2d(x, weight, None, stride, padding, output_padding, groups, dilation)
    rows, channels, height, width = x.shape
    kernel = weight.shape[2:]
    if groups == 1 and weight.shape[1] <= FOLD_MAX_CHANNELS and all(o < s for o, s in zip(output_padding, stride, strict=True)):
        out_size = tuple(
            (size - 1) * s - 2 * p + d * (k - 1) + o + 1 for size, s, p, d, k, o in zip((height, width), stride, padding, dilation, kernel, output_padding, strict=True)
        )
        columns = torch.matmul(weight.reshape(channels, -1).T, x.reshape(rows, channels, height * width))  # [R, C_out * kh * kw, H * W]
        return F.fold(columns, out_size, tuple(kernel), dilation=dilation, padding=padding, stride=stride)
    y = F.conv_transpose2d(x.contiguous(memory_format=torch.channels_last), weight, None, stride, padding, output_padding, groups, dilation)
    return y.contiguous()


def conv2d_adjoint(
    rows: torch.Tensor, weight: torch.Tensor, input_shape: Sequence[int], stride: int | Sequence[int], padding: int | Sequence[int], dilation: int | Sequence[int], groups: int
) -> torch.Tensor | None:
    """The adjoint of a zero-padded F.conv2d (no bias) applied to rows [R, C_out, H', W']: [R, *input_shape] (C_in, H, W).

    None when the output padding it needs is not one F.conv_transpose2d takes (the caller falls back).
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    kernel = weight.shape[2:]
    extra = []
    for size, out, s, p, d, k in zip(input_shape[1:], rows.shape[2:], stride, padding, dilation, kernel, strict=True):
        extra.append(int(size) - ((int(out) - 1) * s - 2 * p + d * (k - 1) + 1))
    if any(e < 0 or (e >= s and e >= d) for e, s, d in zip(extra, stride, dilation, strict=True)):
        return None
    return conv_transpose2d(rows, weight, stride, padding, tuple(extra), groups, dilation)
