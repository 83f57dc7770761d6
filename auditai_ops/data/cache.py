"""Cached attribute measurements.

Measuring attributes is a pure function of the image bytes, so results are cached under
``$AUDITAI_CACHE_DIR`` (default ``~/.cache/auditai-ops``) keyed by the sha256 of the images.
An unreadable or ill-shaped cache entry counts as a miss.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from auditai_ops.data.attributes import ATTRIBUTE_NAMES, measure_attributes
from auditai_ops.data.datasets import Split
from auditai_ops.data.npz import open_npz
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import sha256_array, write_npz


def cache_dir() -> Path:
    return Path(os.environ.get("AUDITAI_CACHE_DIR") or Path.home() / ".cache" / "auditai-ops")


def cached_measurements(images: np.ndarray) -> dict[str, np.ndarray]:
    """`measure_attributes(images)`, read from the cache when these exact images were measured before."""
    path = cache_dir() / "attributes" / f"{sha256_array(images)}.npz"
    if path.is_file():
        try:
            with open_npz(path, f"attribute cache '{path}'") as stored:
                if stored.files == set(ATTRIBUTE_NAMES):
                    cached = {name: stored.read(name) for name in ATTRIBUTE_NAMES}
                    if all(values.shape == (len(images),) for values in cached.values()):
                        return cached
        except AuditInputError:  # a damaged cache entry is measured again and replaced
            pass
    measured = measure_attributes(images)
    write_npz(path, measured)
    return measured


def split_attributes(split: Split) -> dict[str, np.ndarray]:
    """Measured attributes of a split, extended or overridden by the dataset's own attribute columns."""
    return {**cached_measurements(split.images), **(split.attributes or {})}
