"""Fashion-MNIST from Debian's dataset-fashion-mnist: the real IDX files when installed, and small IDX files written here."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from auditai_ops.data import datasets
from auditai_ops.data.datasets import FASHION_MNIST_DIR, load_dataset, load_fashion_mnist, read_idx
from auditai_ops.errors import AuditInputError


def _idx(array: np.ndarray, magic: bytes | None = None, trailer: bytes = b"", sizes: tuple[int, ...] | None = None) -> bytes:
    """An IDX file of unsigned bytes as LeCun's format defines it (magic 0 0 8 ndim, big-endian sizes, data), uncompressed."""
    header = magic if magic is not None else bytes([0, 0, 8, array.ndim])
    return header + struct.pack(f">{array.ndim}I", *(sizes or array.shape)) + array.astype(np.uint8).tobytes() + trailer


def _write(path: Path, data: bytes) -> Path:
    with gzip.open(path, "wb") as handle:
        handle.write(data)
    return path


def _fixture(root: Path, train: int = 12, test: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    train_images, test_images = rng.integers(0, 256, (train, 28, 28), dtype=np.uint8), rng.integers(0, 256, (test, 28, 28), dtype=np.uint8)
    _write(root / "train-images-idx3-ubyte.gz", _idx(train_images))
    _write(root / "train-labels-idx1-ubyte.gz", _idx(np.arange(train) % 10))
    _write(root / "t10k-images-idx3-ubyte.gz", _idx(test_images))
    _write(root / "t10k-labels-idx1-ubyte.gz", _idx(np.arange(test) % 10))
    return train_images, test_images


def test_a_small_idx_fixture_loads_with_a_deterministic_split(tmp_path: Path) -> None:
    train_images, test_images = _fixture(tmp_path)
    data = load_fashion_mnist(tmp_path)
    assert (len(data.train), len(data.valid), len(data.test)) == (10, 2, 5)  # the last sixth of train is valid, as in MNIST's 50k/10k
    assert data.name == "fashion-mnist" and data.num_classes == 10
    assert data.test.images.shape == (5, 1, 28, 28) and data.test.images.dtype == np.float32
    np.testing.assert_array_equal(data.train.images[:, 0], train_images[:10] / np.float32(255.0))
    np.testing.assert_array_equal(data.valid.images[:, 0], train_images[10:] / np.float32(255.0))
    np.testing.assert_array_equal(data.test.images[:, 0], test_images / np.float32(255.0))
    np.testing.assert_array_equal(data.valid.labels, [0, 1])
    assert list(data.valid.ids) == ["fashion-mnist:valid:0", "fashion-mnist:valid:1"] and data.test.ids[3] == "fashion-mnist:test:3"


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="Debian's dataset-fashion-mnist is not installed")
def test_the_debian_package_loads_by_name() -> None:
    data = load_dataset("fashion-mnist")
    assert (len(data.train), len(data.valid), len(data.test)) == (50_000, 10_000, 10_000)
    assert data.train.images.shape[1:] == (1, 28, 28) and data.num_classes == 10
    assert data.test.ids[17] == "fashion-mnist:test:17"
    assert set(np.unique(data.test.labels)) == set(range(10)) and np.bincount(data.test.labels).tolist() == [1000] * 10
    assert 0.0 <= data.test.images.min() and data.test.images.max() == 1.0


def test_a_missing_package_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(AuditInputError, match=r"install Debian's dataset-fashion-mnist \(apt-get install dataset-fashion-mnist\)"):
        load_dataset("fashion-mnist")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_idx(np.zeros((2, 8, 8)), magic=bytes([0, 0, 0x0D, 3])), "expected an IDX file of unsigned bytes with 3 dimension(s) (magic 00 00 08 03), got magic 00 00 0d 03"),
        (_idx(np.zeros((2, 8))), "got magic 00 00 08 02"),
        (_idx(np.zeros((2, 8, 8)))[:-5], "truncated IDX file (expected 128 more bytes, got 123)"),
        (_idx(np.zeros((2, 8, 8)), trailer=b"x"), "data continues past the 128 bytes its IDX sizes (2, 8, 8) announce"),
        (_idx(np.zeros((2, 8, 8)), sizes=(65536, 65536, 65536)), "IDX sizes (65536, 65536, 65536) announce 281,474,976,710,656 bytes, expected between 1 and"),
        (_idx(np.zeros((0, 8, 8))), "IDX sizes (0, 8, 8) announce 0 bytes"),
        (b"\0\0", "truncated IDX file (expected 4 more bytes, got 2)"),
    ],
    ids=["float-type", "two-dims", "truncated", "trailing", "huge", "empty", "short-magic"],
)
def test_bad_idx_files_are_refused_naming_the_file(tmp_path: Path, data: bytes, message: str) -> None:
    path = _write(tmp_path / "x-idx3-ubyte.gz", data)
    with pytest.raises(AuditInputError) as caught:
        read_idx(path, 3)
    assert str(caught.value).startswith(f"dataset file '{path}': ") and message in str(caught.value)


def test_an_idx_file_that_is_not_gzip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.gz"
    path.write_bytes(_idx(np.zeros((2, 8, 8))))
    with pytest.raises(AuditInputError, match=r"plain.gz': cannot be read as a gzip-compressed IDX file"):
        read_idx(path, 3)


def test_labels_that_do_not_match_the_images_are_refused(tmp_path: Path) -> None:
    _fixture(tmp_path)
    _write(tmp_path / "t10k-labels-idx1-ubyte.gz", _idx(np.arange(4)))
    with pytest.raises(AuditInputError, match=r"t10k-labels-idx1-ubyte.gz': expected labels of shape \(5,\), got shape \(4,\)"):
        load_fashion_mnist(tmp_path)
