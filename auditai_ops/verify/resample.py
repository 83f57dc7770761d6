"""An empirical cross-check of certificates: dense sampling must never contradict a proof.

For every verified sample of every certificate in an audit folder, evaluate the classifier at
`points` evenly spaced t across the certified latent box (endpoints included; for k
directions a regular grid with about `points` nodes) and count the samples whose prediction
ever leaves the target class. A sound verifier gives zero. Points are evaluated in chunks whose
estimated activation memory stays under a byte budget (`auditai_ops.verify.memory`), so memory
does not grow with `points`: in pixel mode a chunk of 64 samples x 1,000 points took 13 GB.
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
from auditai_ops.verify.memory import MIB, point_cost

DEFAULT_CHUNK_BYTES = 256 * MIB
"""As `verify.chunk_memory_mb`'s default."""


@dataclass(frozen=True)
class ResampleResult:
    certificate: str
    verified_samples: int
    points: int
    contradicted_samples: int


@torch.no_grad()
def resample_certificates(
    out_dir: Path,
    model_settings: ModelConfig,
    generator: Generator,
    inputs: StepInputs,
    base_dir: Path | None = None,
    points: int = 1000,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> list[ResampleResult]:
    """Dense-sample every verified sample of every certificate under `out_dir/certificates` (decoded in pixel mode), `chunk_bytes` of activations at a time."""
    network = build_audited_model(model_settings, generator, inputs, base_dir).network
    directions = load_directions(inputs.directions)
    latents = TestLatents.load(inputs.latents)
    results = []
    for path in sorted((Path(out_dir) / CERTIFICATES_DIR).glob("*.json")):
        verified, used, contradicted = contradicted_samples(read_json(path, "certificate"), network, directions, latents, points, chunk_bytes)
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
    certificate: dict[str, Any], network: nn.Module, directions: dict[str, Direction], latents: TestLatents, points: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> tuple[int, int, int]:
    """(verified samples, points per sample, how many samples leave their target class at one of the points).

    The points are `points` evenly spaced t over the certified box, ends included; for k
    directions a regular grid of round(points^(1/k)) (at least 2) values per axis. The
    (sample, point) pairs are evaluated in order, as many at once as `chunk_bytes` of estimated
    activations allow.
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
    z = latents.latents[[latents.row_of[s["id"]] for s in verified]] if verified else latents.latents[:0]
    targets = torch.tensor([s["target"] for s in verified], dtype=torch.int64)
    example = torch.zeros(1, latents.latents.shape[1])
    chunk = point_cost(lambda: network(example), network).points(chunk_bytes)
    leaves = torch.zeros(len(verified), dtype=torch.bool)
    for start in range(0, len(verified) * len(offsets), chunk):
        pairs = torch.arange(start, min(start + chunk, len(verified) * len(offsets)))
        sample, offset = pairs // len(offsets), pairs % len(offsets)
        predictions = network(z[sample] + offsets[offset]).argmax(dim=-1)
        leaves[sample[predictions != targets[sample]]] = True
    return len(verified), len(offsets), int(leaves.sum())
