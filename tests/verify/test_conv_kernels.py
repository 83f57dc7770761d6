"""auditai_ops/verify/conv_kernels.py: the same products as torch's transposed convolution, by other formulations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from auditai_ops.verify import conv_kernels

CASES = [
    # (in channels, out channels, kernel, stride, padding, output_padding, groups, dilation, height, width)
    (64, 32, 4, 2, 1, 0, 1, 1, 7, 7),  # the MNIST decoder: channels_last
    (32, 1, 4, 2, 1, 0, 1, 1, 14, 14),  # the MNIST decoder's last layer: matrix product and fold
    (16, 4, 3, 2, 1, 1, 1, 1, 5, 6),  # fold, with output padding
    (6, 2, 3, 1, 0, 0, 1, 2, 4, 5),  # fold, with dilation
    (4, 2, 3, 3, 1, 2, 2, 2, 3, 3),  # groups: channels_last
    (3, 8, (2, 3), (1, 2), (0, 1), (0, 1), 1, 1, 4, 4),  # rectangular kernels and strides
    (4, 3, 4, 2, 1, 2, 1, 3, 3, 3),  # output padding >= stride (allowed below dilation): channels_last
]


@pytest.mark.parametrize("case", CASES)
def test_conv_transpose2d_equals_torch(case: tuple) -> None:
    cin, cout, kernel, stride, padding, output_padding, groups, dilation, height, width = case
    torch.manual_seed(0)
    module = torch.nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding, groups, bias=False, dilation=dilation)
    x = torch.randn(5, cin, height, width)
    expected = F.conv_transpose2d(x, module.weight, None, module.stride, module.padding, module.output_padding, groups, module.dilation)
    got = conv_kernels.conv_transpose2d(x, module.weight.detach(), module.stride, module.padding, module.output_padding, groups, module.dilation)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("cin", "cout", "kernel", "stride", "padding", "dilation", "groups", "size"),
    [(16, 32, 4, 2, 1, 1, 1, 14), (1, 16, 4, 2, 1, 1, 1, 28), (4, 6, 3, 2, 2, 2, 2, 9), (3, 5, 3, 3, 0, 1, 1, 10), (2, 3, (3, 2), (2, 1), (1, 0), 1, 1, 7)],
)
def test_conv2d_adjoint_is_the_transposed_map(cin: int, cout: int, kernel, stride, padding, dilation: int, groups: int, size: int) -> None:  # type: ignore[no-untyped-def]
    """<conv(x), g> = <x, adjoint(g)> for every x: the adjoint equals autograd's vector-Jacobian product."""
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias=False)
    x = torch.zeros(4, cin, size, size)
    out_shape = conv(x).shape
    g = torch.randn(out_shape)
    _, vjp = torch.func.vjp(lambda v: conv(v), x)
    (expected,) = vjp(g)
    got = conv_kernels.conv2d_adjoint(g, conv.weight.detach(), (cin, size, size), conv.stride, conv.padding, conv.dilation, groups)
    assert got is not None
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
