"""Certified training along semantic directions: the IBP / CROWN-IBP loss over a spec's latent box.

For a spec with direction matrix D (k, latent_dim) and latent box B = [t_low, t_high], the
network f must keep the target class y for every z + t D, t in B. With m_j = f_y - f_j the
margins and l_j(B) <= min_{t in B} m_j(t) their sound lower bounds (IBP or CROWN-IBP, from
auto_LiRPA through auditai_ops.verify.lirpa_compat), the robust loss is

    L_rob = CE([0, -l_1, ..., -l_{n-1}], 0) = log(1 + sum_j exp(-l_j)),

which is small only when every lower bound is large, i.e. when the spec is provably met
(Gowal et al. 2018, IBP training; Zhang et al. 2020, CROWN-IBP). The loss minimised is

    L = kappa * CE(f(z), label) + (1 - kappa) * mean over specs of L_rob(s * B'),

where B' is the spec's box widened by `range_margin` of its width on each side and s * B'
scales it toward t = 0. Each box is cut into `pieces` equal sub-boxes (a grid of about
pieces^(1/k) per axis) and l_j is the minimum of the sub-boxes' bounds: still a sound lower
bound over the box, and much tighter, as the audit's branch and bound is. The schedule, per optimiser step: a clean warm-up (kappa = 1), then
a linear ramp of s from 0 to 1 and of kappa from `kappa_start` to `kappa_end`, then s = 1.
Only the model's own parameters train (the head, or the user's classifier); a generator
inside the bounded graph (pixel mode) is frozen, and BatchNorm keeps its running statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from auditai_ops.config import FinetuneConfig
from auditai_ops.verify.engine import margin_specification
from auditai_ops.verify.line_model import LatentLine
from auditai_ops.verify.lirpa_compat import build_trainable_bounded_module, training_margin_lower_bounds


@dataclass(frozen=True)
class TrainingSpec:
    """One spec to train for: directions (k, latent_dim), its latent box (k,), and the target class of every training sample."""

    name: str
    matrix: np.ndarray
    t_low: np.ndarray
    t_high: np.ndarray
    targets: np.ndarray

    def widened(self, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """The box grown by `margin` times its width on each side: the range trained for."""
        width = self.t_high - self.t_low
        return self.t_low - margin * width, self.t_high + margin * width


@dataclass(frozen=True)
class StepSchedule:
    """Box scale s in [0, 1] and clean-loss weight kappa at one optimiser step."""

    scale: float
    kappa: float


def schedule_at(settings: FinetuneConfig, step: int, steps_per_epoch: int) -> StepSchedule:
    """Warm-up (s = 0, kappa = 1), then s and kappa move linearly over `ramp_epochs`, then stay at (1, kappa_end)."""
    warmup = settings.warmup_epochs * steps_per_epoch
    if step < warmup:
        return StepSchedule(0.0, 1.0)
    ramp = settings.ramp_epochs * steps_per_epoch
    progress = 1.0 if ramp == 0 else min(1.0, (step - warmup + 1) / ramp)
    return StepSchedule(progress, settings.kappa_start + progress * (settings.kappa_end - settings.kappa_start))


def box_pieces(low: np.ndarray, high: np.ndarray, pieces: int) -> tuple[np.ndarray, np.ndarray]:
    """A grid of about `pieces` equal sub-boxes covering [low, high] (k,): round(pieces^(1/k)) per axis; shapes (P, k)."""
    k = len(low)
    per_axis = max(1, round(pieces ** (1.0 / k)))
    edges = [np.linspace(lo, hi, per_axis + 1) for lo, hi in zip(low, high, strict=True)]
    cells = np.array(np.meshgrid(*[np.arange(per_axis)] * k, indexing="ij")).reshape(k, -1).T
    piece_low = np.stack([edges[axis][cells[:, axis]] for axis in range(k)], axis=1)
    piece_high = np.stack([edges[axis][cells[:, axis] + 1] for axis in range(k)], axis=1)
    return piece_low, piece_high


def robust_cross_entropy(margin_lower_bounds: torch.Tensor) -> torch.Tensor:
    """mean over samples of log(1 + sum_j exp(-l_j)) for lower bounds l (B, n-1) of the margins."""
    zeros = torch.zeros(margin_lower_bounds.shape[0], 1, dtype=margin_lower_bounds.dtype, device=margin_lower_bounds.device)
    logits = torch.cat([zeros, -margin_lower_bounds], dim=1)
    return nn.functional.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


class CertifiedTrainer:
    """Trains `trainable` (parameters of `network`) against the specs' boxes; one bound graph per spec, built once.

    `network` maps latent points (B, latent_dim) to logits and is trained in place.
    """

    def __init__(self, network: nn.Module, trainable: Sequence[nn.Parameter], specs: Sequence[TrainingSpec], settings: FinetuneConfig, device: torch.device) -> None:
        self.network, self.specs, self.settings, self.device = network, list(specs), settings, device
        self.trainable = list(trainable)
        training = {id(p) for p in self.trainable}
        for parameter in network.parameters():
            parameter.requires_grad_(id(parameter) in training)
        network.eval()  # BatchNorm on running statistics, as audited
        self.optimiser = torch.optim.AdamW(self.trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        latent_dim = int(specs[0].matrix.shape[1])
        with torch.no_grad():
            self.num_classes = int(network(torch.zeros(1, latent_dim, device=device)).shape[1])
        self.bounded = []
        for spec in self.specs:
            line = LatentLine(network, torch.from_numpy(spec.matrix.astype(np.float32))).to(device)
            k = spec.matrix.shape[0]
            example = (torch.zeros(2, k, device=device), torch.zeros(2, latent_dim, device=device))
            self.bounded.append(build_trainable_bounded_module(line, example, self.trainable, device))
        self.step = 0

    def robust_loss(self, spec_index: int, z: torch.Tensor, targets: torch.Tensor, scale: float) -> torch.Tensor:
        """L_rob over the spec's widened box scaled by `scale` toward t = 0, bounded piece by piece."""
        spec = self.specs[spec_index]
        wide_low, wide_high = spec.widened(self.settings.range_margin)
        piece_low, piece_high = box_pieces(scale * wide_low, scale * wide_high, self.settings.pieces)
        count, pieces = len(z), len(piece_low)
        low = torch.from_numpy(piece_low.astype(np.float32)).to(self.device).repeat(count, 1)
        high = torch.from_numpy(piece_high.astype(np.float32)).to(self.device).repeat(count, 1)
        spec_matrix = margin_specification(targets, self.num_classes).repeat_interleave(pieces, dim=0)
        inputs = ((low + high) / 2, z.repeat_interleave(pieces, dim=0))
        lower = training_margin_lower_bounds(self.bounded[spec_index], inputs, low, high, spec_matrix, self.settings.method)
        return robust_cross_entropy(lower.view(count, pieces, -1).min(dim=1).values)

    def train_epoch(self, latents: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> dict[str, float]:
        """One epoch over `samples_per_epoch` random training samples (all when None); returns mean losses and the schedule reached."""
        count = len(latents) if self.settings.samples_per_epoch is None else min(len(latents), self.settings.samples_per_epoch)
        order = rng.permutation(len(latents))[:count]
        batches = [order[i : i + self.settings.batch_size] for i in range(0, count, self.settings.batch_size)]
        clean_total = robust_total = 0.0
        at = StepSchedule(0.0, 1.0)
        for index in batches:
            at = schedule_at(self.settings, self.step, len(batches))
            z = torch.from_numpy(latents[index].astype(np.float32)).to(self.device)
            y = torch.from_numpy(labels[index].astype(np.int64)).to(self.device)
            clean = nn.functional.cross_entropy(self.network(z), y)
            loss = at.kappa * clean
            robust = torch.zeros((), device=self.device)
            if at.kappa < 1.0 and at.scale > 0.0:
                per_spec = [self.robust_loss(i, z, torch.from_numpy(s.targets[index].astype(np.int64)).to(self.device), at.scale) for i, s in enumerate(self.specs)]
                robust = torch.stack(per_spec).mean()
                loss = loss + (1.0 - at.kappa) * robust
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            self.optimiser.step()
            clean_total += float(clean.detach()) * len(index)
            robust_total += float(robust.detach()) * len(index)
            self.step += 1
        return {"clean_loss": clean_total / count, "robust_loss": robust_total / count, "scale": at.scale, "kappa": at.kappa, "samples": float(count)}
