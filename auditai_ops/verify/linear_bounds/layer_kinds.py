"""The kinds of leaf layers the engine bounds, as type tuples (see `tracing` for the list and its conditions)."""

from __future__ import annotations

from torch import nn

from auditai_ops.layers import PerChannelNormalize

_NONNEGATIVE_LINEAR = (nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Upsample)
"""Linear maps without bias whose weights are all >= 0 (averages, copies, convex combinations): see `affine`."""

_AFFINE = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm1d, nn.BatchNorm2d, PerChannelNormalize, *_NONNEGATIVE_LINEAR)


_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.ELU, nn.Softplus, nn.GELU, nn.SiLU)


_PIECEWISE_LINEAR = (nn.ReLU, nn.LeakyReLU)


_IDENTITIES = (nn.Identity, nn.Dropout)
"""Layers that are the identity (Dropout in eval mode, which `_check_leaf` requires)."""

_POOLING = (nn.MaxPool2d,)

_RESHAPES = (nn.Flatten, *_IDENTITIES)


_LEAVES = frozenset(_AFFINE + _ACTIVATIONS + _RESHAPES + _POOLING)
