"""The margin specification C folded into the last layer.

`margin_lower_bounds` folds C [B, S, n_out] into the last nn.Linear, (C W) x + C b, before
splitting weights into positive and negative parts (much tighter than bounding W x + b and then
C); if the last layer is not linear, C is applied as one more affine layer. Samples that share
C (a margin specification has one C per target class) are grouped so that each group's C W is
one matrix product (found by hashing C, then checked exactly).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from auditai_ops.verify.linear_bounds.state import _State


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
