"""Reading `latents.npz` (written by `map-latents`, or handed in through `inputs.latents`) with every array checked.

A split `<split>` is three arrays of one length N >= 1: `<split>_z` (N, D) floats, finite and within +-MAX_LATENT_VALUE,
`<split>_labels` (N,) integers in [0, MAX_CLASSES), `<split>_ids` (N,) distinct strings. Whatever
else the file holds, is missing or is damaged is reported as one `AuditInputError` naming the
file and the key; whether D and the labels fit the audited model is `audited_model`'s check.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auditai_ops.config import MAX_LATENT_DIM
from auditai_ops.data.datasets import MAX_CLASSES
from auditai_ops.data.npz import open_npz
from auditai_ops.errors import AuditInputError

MAX_LATENT_VALUE = 1e6
"""Largest latent coordinate accepted: a VAE's latents are of order 1; near float32's limit, logits and bounds overflow."""
MISSING_HINT = " (run `auditai map-latents` first)"


@dataclass(frozen=True)
class LatentSplit:
    """One split of `latents.npz`: ids (N,) str, latents (N, D) float32 or float64, labels (N,) int64."""

    ids: np.ndarray
    latents: np.ndarray
    labels: np.ndarray

    @property
    def latent_dim(self) -> int:
        return int(self.latents.shape[1])


def read_latent_split(path: Path, split: str = "test") -> LatentSplit:
    """The checked arrays of one split of the latents file at `path`."""
    where = f"latents '{path}'"
    with open_npz(Path(path), where, MISSING_HINT) as archive:
        latents = archive.read(f"{split}_z")
        labels = archive.read(f"{split}_labels")
        ids = archive.read(f"{split}_ids")
    if latents.ndim != 2 or latents.shape[0] == 0 or not 1 <= latents.shape[1] <= MAX_LATENT_DIM:
        raise AuditInputError(f"{where}: key '{split}_z': expected latents of shape (N, D) with N >= 1 and 1 <= D <= {MAX_LATENT_DIM}, got shape {latents.shape}")
    if not np.issubdtype(latents.dtype, np.floating):
        raise AuditInputError(f"{where}: key '{split}_z': expected floating-point latents, got dtype {latents.dtype}")
    if latents.dtype not in (np.float32, np.float64):
        latents = latents.astype(np.float32)
    if not np.isfinite(latents).all():
        raise AuditInputError(f"{where}: key '{split}_z' contains NaN or infinite values")
    largest = float(np.abs(latents).max())
    if largest > MAX_LATENT_VALUE:
        raise AuditInputError(f"{where}: key '{split}_z': expected latent values within +-{MAX_LATENT_VALUE:g}, got {largest:.3g} (the network's bounds would overflow float32)")
    count = latents.shape[0]
    if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
        raise AuditInputError(f"{where}: key '{split}_labels': expected integer labels of shape ({count},), got shape {labels.shape} of {labels.dtype}")
    if labels.min() < 0 or labels.max() >= MAX_CLASSES:
        raise AuditInputError(f"{where}: key '{split}_labels': expected labels in [0, {MAX_CLASSES}), got values in [{labels.min()}, {labels.max()}]")
    if ids.shape != (count,) or ids.dtype.kind != "U":
        raise AuditInputError(f"{where}: key '{split}_ids': expected sample ids as strings of shape ({count},), got shape {ids.shape} of {ids.dtype}")
    unique, counts = np.unique(ids, return_counts=True)
    if len(unique) != count:
        raise AuditInputError(f"{where}: key '{split}_ids': sample ids must be distinct, '{unique[np.argmax(counts)]}' appears {counts.max()} times")
    return LatentSplit(ids, latents, labels.astype(np.int64))


def check_latents_fit(split: LatentSplit, path: Path, latent_dim: int, num_classes: int, model: str, name: str = "test") -> None:
    """Refuse latents that the audited model `model` (taking `latent_dim` inputs, giving `num_classes` logits) cannot be run on."""
    if split.latent_dim != latent_dim:
        raise AuditInputError(f"latents '{path}': key '{name}_z' has latents of dimension {split.latent_dim}, but {model} takes latents of dimension {latent_dim}")
    if split.labels.max() >= num_classes:
        raise AuditInputError(f"latents '{path}': key '{name}_labels' has label {split.labels.max()}, but {model} outputs {num_classes} classes (labels 0 to {num_classes - 1})")
