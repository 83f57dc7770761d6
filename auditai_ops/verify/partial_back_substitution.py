"""Where to stop a cheap first back-substitution of the margins: a checkpoint layer chosen by cost.

`linear_bounds.margin_lower_bounds(..., back_substitute=True, refine_below=m)` back-substitutes
the margin rows that decide min_j > m through every layer (CROWN), ending exactly at the first
ReLU along one direction. In pixel mode that costs about one pass of the decoder per row, and
the rows that need it are many: forward-mode bounds of the classifier's margins are loose
(its relaxation gaps meet weights of mixed signs in every layer), so nearly every row of a box
that can be proved is back-substituted.

A partial back-substitution stops at the output of an activation partway through the network
(the checkpoint) and bounds the resulting linear function of that layer's output with the
layer's own forward-mode linear bounds in t, as the full one does with the input's: the same
relaxations (over the same forward intervals) after the checkpoint, forward mode before it.
It is sound for the same reason, and where the network's early part is tight in forward mode
(a decoder: its first ReLU is exact, and its later layers are few) it proves nearly every row
the full one proves: on the MNIST pixel example, with the checkpoint at the decoder's Sigmoid,
419 of the 432 half-boxes that the full back-substitution proves, at 30 % of its cost for all
nine margins. The verifier then back-substitutes fully only the rows that the partial one left
at or below the threshold (`linear_bounds._refine`), and keeps, per row, the larger bound.

`checkpoint` picks the earliest activation output whose partial back-substitution costs at most
`MAX_COST_SHARE` of the full one and still crosses an activation (else it would be forward mode
again), by counting each affine layer's multiply-adds per back-substituted row. Small networks
(the latent heads) have none: their back-substitution is already cheap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from auditai_ops.layers import PerChannelNormalize

MAX_COST_SHARE = 0.3
"""A checkpoint's back-substitution may cost at most this share of the full one (pixel example: 0.23 at the Sigmoid)."""

MIN_FULL_COST = 1_000_000
"""Networks whose full back-substitution costs fewer multiply-adds per row than this get no checkpoint (about
0.1 ms a row on one core: cheaper than a second pass would save)."""

_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.ELU, nn.Softplus, nn.GELU, nn.SiLU)
_ELEMENTWISE = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Upsample)
"""Layers whose transposed product touches each input and output element about once per window (counted as both sizes)."""


def _bound_leaves(module: nn.Module) -> list[tuple[nn.Module, Sequence[int], Sequence[int]]]:
    """A computation-graph step's leaves with their shapes (`linear_bounds.graph.GraphBlock.bound_leaves`); [] for a layer."""
    return list(getattr(module, "bound_leaves", []))


def _relaxes(module: nn.Module) -> bool:
    """An activation, or a graph step containing one (back-substitution through it relaxes something)."""
    return isinstance(module, _ACTIVATIONS) or any(isinstance(leaf, _ACTIVATIONS) for leaf, _, _ in _bound_leaves(module))


def transpose_cost(module: nn.Module, in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """Multiply-adds to back-substitute one row through `module` (input shape and output shape of one sample); a graph
    step costs the sum of its leaves."""
    leaves = _bound_leaves(module)
    if leaves:
        return sum(transpose_cost(leaf, leaf_in, leaf_out) for leaf, leaf_in, leaf_out in leaves)
    if isinstance(module, nn.Linear):
        return int(module.weight.numel())
    if isinstance(module, nn.Conv2d):
        return int(module.weight.numel()) * math.prod(out_shape[1:])
    if isinstance(module, nn.ConvTranspose2d):
        return int(module.weight.numel()) * math.prod(in_shape[1:])
    if isinstance(module, (*_ACTIVATIONS, nn.modules.batchnorm._BatchNorm, PerChannelNormalize)):
        return math.prod(in_shape)
    if isinstance(module, _ELEMENTWISE):
        return math.prod(in_shape) + math.prod(out_shape)
    return 0  # reshapes, identities


def checkpoint(modules: Sequence[nn.Module], shapes: Sequence[Sequence[int]]) -> int | None:
    """The index i of the layer after which to stop a partial back-substitution, or None.

    modules: the flat layers; shapes: len(modules) + 1 per-sample shapes (shapes[i] is the input of
    modules[i], shapes[-1] the output). The full back-substitution is counted from the output back
    to the first activation (where it ends exactly along one direction; the first affine layer of a
    low-dimensional input is cheap either way). A computation-graph step (`bound_leaves`) counts as
    an activation when it contains one, and costs the sum of its leaves.
    """
    if len(shapes) != len(modules) + 1:
        raise ValueError(f"need {len(modules) + 1} shapes for {len(modules)} layers, got {len(shapes)}")
    activations = [i for i, module in enumerate(modules) if _relaxes(module)]
    if len(activations) < 2:
        return None
    costs = [transpose_cost(module, shapes[i], shapes[i + 1]) for i, module in enumerate(modules)]
    full = sum(costs[activations[0] + 1 :])
    if full < MIN_FULL_COST:
        return None
    for position in activations[1:-1]:
        # The partial back-substitution from the output to the output of `position` must cross an activation.
        if sum(costs[position + 1 :]) <= MAX_COST_SHARE * full:
            return position
    return None
