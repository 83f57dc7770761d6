"""An empirical cross-check of certificates: dense sampling must never contradict a proof.

For every verified sample of every certificate in an audit folder, evaluate the classifier at
`points` evenly spaced t across the certified latent box (endpoints included; for k
directions a regular grid with about `points` nodes) and count the samples whose prediction
ever leaves the target class. A sound verifier gives zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from auditai_ops.config import ModelConfig
from auditai_ops.directions.discover import Direction, load_directions
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import read_json
from auditai_ops.latent.generator import Generator
from auditai_ops.layout import CERTIFICATES_DIR, StepInputs
from auditai_ops.verify.audited_model import build_audited_model
from auditai_ops.verify.engine import VERIFIED


@dataclass(frozen=True)
class ResampleResult:
    certificate: str
    verified_samples: int
    points: int
    contradicted_samples: int


@torch.no_grad()
def resample_certificates(
    out_dir: Path, model_settings: ModelConfig, generator: Generator, inputs: StepInputs, base_dir: Path | None = None, points: int = 1000, chunk: int = 64
) -> list[ResampleResult]:
    """Dense-sample every verified sample of every certificate under `out_dir/certificates` (decoded in pixel mode)."""
    network = build_audited_model(model_settings, generator, inputs, base_dir).network
    directions = load_directions(inputs.directions)
    latents = TestLatents.load(inputs.latents)
    results = []
    for path in sorted((Path(out_dir) / CERTIFICATES_DIR).glob("*.json")):
        verified, used, contradicted = contradicted_samples(read_json(path, "certificate"), network, directions, latents, points, chunk)
        results.append(ResampleResult(path.name, verified, used, contradicted))
    return results


@dataclass(frozen=True)
class TestLatents:
    """The test split's latents [N, D] and each sample id's row."""

    path: Path
    latents: torch.Tensor
    row_of: dict[str, int]

    @classmethod
    def load(cls, path: Path) -> TestLatents:
        with np.load(path, allow_pickle=False) as stored:
            row_of = {sample_id: i for i, sample_id in enumerate(stored["test_ids"].tolist())}
            return cls(Path(path), torch.from_numpy(stored["test_z"].astype(np.float32)), row_of)


@torch.no_grad()
def contradicted_samples(
    certificate: dict[str, Any], network: nn.Module, directions: dict[str, Direction], latents: TestLatents, points: int, chunk: int = 64
) -> tuple[int, int, int]:
    """(verified samples, points per sample, how many samples leave their target class at one of the points).

    The points are `points` evenly spaced t over the certified box, ends included; for k
    directions a regular grid of round(points^(1/k)) (at least 2) values per axis.
    """
    matrix = torch.from_numpy(np.stack([directions[d["name"]].vector for d in certificate["directions"]]))
    box = certificate["latent_box"]
    per_axis = max(2, round(points ** (1.0 / len(matrix)))) if len(matrix) > 1 else points
    axes = [torch.linspace(low, high, per_axis) for low, high in zip(box["low"], box["high"], strict=True)]
    offsets = torch.cartesian_prod(*axes).reshape(-1, len(matrix)) @ matrix
    verified = [s for s in certificate["samples"] if s["verdict"] == VERIFIED]
    missing = [s["id"] for s in verified if s["id"] not in latents.row_of]
    if missing:
        raise AuditInputError(f"{latents.path}: {len(missing)} verified samples of the certificate are not among its test latents (first: {missing[0]})")
    contradicted = 0
    for start in range(0, len(verified), chunk):
        batch = verified[start : start + chunk]
        z = latents.latents[[latents.row_of[s["id"]] for s in batch]]
        points_z = (z[:, None, :] + offsets[None, :, :]).reshape(-1, z.shape[1])
        predictions = network(points_z).argmax(dim=-1).view(len(batch), -1)
        targets = torch.tensor([s["target"] for s in batch])
        contradicted += int((predictions != targets[:, None]).any(dim=1).sum())
    return len(verified), len(offsets), contradicted
