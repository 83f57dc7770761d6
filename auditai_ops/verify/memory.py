"""How many points a chunk may hold: an activation-memory estimate of the network, per point.

Memory in pixel mode is dominated by the decoder and the classifier's feature maps, times the
number of points (counterexample search, dense sampling) or boxes evaluated at once. One
forward pass of one example point, with a hook on every leaf layer, measures per layer the
floats of its input and output and of the work buffer a convolution unfolds into (im2col for
Conv2d, col2im for ConvTranspose2d: a ConvTranspose2d(64, 32, 4) on 7x7 maps holds 25,088
floats per point there, four times its output). Chunks are then sized so that their estimate
stays under a byte budget, whatever the batch size or the number of points asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

MIB = 1 << 20


@dataclass(frozen=True)
class PointCost:
    """Bytes per point: `peak` without gradients (the largest layer: input, output and work buffer); `saved`, kept for a backward pass (every layer's input and output)."""

    peak: int
    saved: int

    def points(self, budget_bytes: int, gradients: bool = False) -> int:
        """How many points fit in `budget_bytes` (at least 1)."""
        per_point = self.peak + (self.saved if gradients else 0)
        return max(1, budget_bytes // max(1, per_point))


def _numel(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, tuple | list):
        return sum(_numel(item) for item in value)
    return 0


def _work_buffer(module: nn.Module, inputs: tuple[object, ...], output: object) -> int:
    """Floats of the unfolded input a convolution works on, for one call (0 for other layers)."""
    if not isinstance(module, nn.Conv2d | nn.ConvTranspose2d) or not inputs or not isinstance(inputs[0], torch.Tensor) or not isinstance(output, torch.Tensor):
        return 0
    kernel = module.kernel_size[0] * module.kernel_size[1]
    images = output.numel() // max(1, output.shape[-3] * output.shape[-2] * output.shape[-1])
    if isinstance(module, nn.Conv2d):
        return images * module.in_channels * kernel * output.shape[-2] * output.shape[-1]
    return images * module.out_channels * kernel * inputs[0].shape[-2] * inputs[0].shape[-1]


@torch.no_grad()
def point_cost(run: Callable[[], torch.Tensor], network: nn.Module, points: int = 1) -> PointCost:
    """The cost per point of `network`, measured while `run()` evaluates it on `points` points."""
    peak, saved, itemsize = [0], [0], [4]

    def hook(module: nn.Module, inputs: tuple[object, ...], output: object) -> None:
        size = _numel(inputs) + _numel(output)
        peak[0] = max(peak[0], size + _work_buffer(module, inputs, output))
        saved[0] += size
        if isinstance(output, torch.Tensor):
            itemsize[0] = max(itemsize[0], output.element_size())

    leaves = [module for module in network.modules() if not list(module.children())] or [network]
    handles = [module.register_forward_hook(hook) for module in leaves]
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    scale = itemsize[0] / max(1, points)
    return PointCost(peak=max(1, round(peak[0] * scale)), saved=max(1, round(saved[0] * scale)))
