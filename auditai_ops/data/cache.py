"""Cached attribute measurements.

Measuring attributes is a pure function of the image bytes and of the attributes asked for, so
results are cached under ``$AUDITAI_CACHE_DIR`` (default ``~/.cache/auditai-ops``) keyed by the
sha256 of the images and of the sorted attribute names. An unreadable or ill-shaped cache entry
counts as a miss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from auditai_ops.data.attributes import STROKE_ATTRIBUTES, measure_attributes
from auditai_ops.data.datasets import Split
from auditai_ops.data.npz import open_npz
from auditai_ops.errors import AuditInputError
from auditai_ops.fileio import cache_dir, sha256_array, sha256_bytes, write_npz


def cached_measurements(images: np.ndarray, names: Sequence[str] = STROKE_ATTRIBUTES) -> dict[str, np.ndarray]:
    """`measure_attributes(images, names)`, read from the cache when these exact images were measured for these attributes before."""
    names = tuple(dict.fromkeys(names))
    if not names:
        return {}
    attribute_key = sha256_bytes(",".join(sorted(names)).encode())[:16]
    path = cache_dir() / "attributes" / f"{sha256_array(images)}-{attribute_key}.npz"
    if path.is_file():
        try:
            with open_npz(path, f"attribute cache '{path}'") as stored:
                if stored.files == set(names):
                    cached = {name: stored.read(name) for name in names}
                    if all(values.shape == (len(images),) for values in cached.values()):
                        return cached
        except AuditInputError:  # a damaged cache entry is measured again and replaced
            pass
    measured = measure_attributes(images, names)
    write_npz(path, measured)
    return measured


def split_attributes(split: Split, names: Sequence[str] = STROKE_ATTRIBUTES) -> dict[str, np.ndarray]:
    """The named attributes of a split, measured (cached), extended or overridden by the dataset's own attribute columns."""
    columns = split.attributes or {}
    return {**cached_measurements(split.images, [name for name in names if name not in columns]), **columns}
