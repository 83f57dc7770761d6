"""`read_latent_split` and `check_latents_fit`: a latents file is checked array by array, and against the audited model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from auditai_ops.errors import AuditInputError
from auditai_ops.latent.latents_file import check_latents_fit, read_latent_split


def _arrays(count: int = 6, dim: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"test_z": rng.normal(size=(count, dim)).astype(np.float32), "test_labels": np.arange(count) % 3, "test_ids": np.array([f"s{i}" for i in range(count)])}


def _write(tmp_path: Path, **changes: object) -> Path:
    arrays = {**_arrays(), **changes}
    path = tmp_path / "latents.npz"
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_a_good_split(tmp_path: Path) -> None:
    split = read_latent_split(_write(tmp_path, test_z=_arrays()["test_z"].astype(np.float16)))
    assert split.latents.dtype == np.float32 and split.latent_dim == 4
    assert split.labels.dtype == np.int64 and split.ids.tolist() == [f"s{i}" for i in range(6)]
    check_latents_fit(split, Path("x"), 4, 3, "the head")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"test_z": None}, "key 'test_z' is missing"),
        ({"test_z": np.zeros((6, 4), np.int32)}, "key 'test_z': expected floating-point latents, got dtype int32"),
        ({"test_z": np.zeros((6,), np.float32)}, "key 'test_z': expected latents of shape (N, D)"),
        ({"test_z": np.zeros((6, 5000), np.float32)}, "1 <= D <= 4096, got shape (6, 5000)"),
        ({"test_z": np.full((6, 4), np.inf, np.float32)}, "key 'test_z' contains NaN or infinite values"),
        ({"test_z": np.full((6, 4), 3e38, np.float32)}, "key 'test_z': expected latent values within +-1e+06, got 3e+38"),
        ({"test_z": np.zeros((6, 4), object)}, "key 'test_z' holds Python objects"),
        ({"test_labels": np.zeros(5, np.int64)}, "key 'test_labels': expected integer labels of shape (6,), got shape (5,) of int64"),
        ({"test_labels": np.zeros(6, bool)}, "key 'test_labels': expected integer labels of shape (6,), got shape (6,) of bool"),
        ({"test_labels": np.array([0, 1, 2, -4, 0, 1])}, "key 'test_labels': expected labels in [0, 100000), got values in [-4, 2]"),
        ({"test_ids": np.arange(6)}, "key 'test_ids': expected sample ids as strings of shape (6,)"),
        ({"test_ids": np.array(["a", "b", "a", "c", "d", "a"])}, "key 'test_ids': sample ids must be distinct, 'a' appears 3 times"),
    ],
)
def test_each_array_is_checked(tmp_path: Path, changes: dict, fragment: str) -> None:
    path = _write(tmp_path, **changes)
    with pytest.raises(AuditInputError) as caught:
        read_latent_split(path)
    assert str(caught.value).startswith(f"latents '{path}': ") and fragment in str(caught.value)


def test_the_model_must_fit_the_latents(tmp_path: Path) -> None:
    path = _write(tmp_path)
    split = read_latent_split(path)
    with pytest.raises(AuditInputError, match=r"key 'test_z' has latents of dimension 4, but the head 'h' takes latents of dimension 16"):
        check_latents_fit(split, path, 16, 3, "the head 'h'")
    with pytest.raises(AuditInputError, match=r"key 'test_labels' has label 2, but the head 'h' outputs 2 classes \(labels 0 to 1\)"):
        check_latents_fit(split, path, 4, 2, "the head 'h'")
