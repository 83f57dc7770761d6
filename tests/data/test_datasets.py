import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auditai_ops.data import datasets
from auditai_ops.data.datasets import load_dataset, load_mnist, load_npz
from auditai_ops.errors import AuditInputError


def test_builtin_mnist_is_read_offline() -> None:
    mnist = load_mnist()
    assert (len(mnist.train), len(mnist.valid), len(mnist.test)) == (50_000, 10_000, 10_000)
    assert mnist.train.images.shape[1:] == (28, 28) and mnist.train.images.dtype == np.float32
    assert 0.0 <= mnist.test.images.min() and mnist.test.images.max() <= 1.0
    assert set(np.unique(mnist.test.labels)) == set(range(10))
    assert mnist.test.ids[3] == "mnist:test:3"


class _Payload:
    def __reduce__(self) -> tuple:
        return (print, ("pwned",))


def test_mnist_unpickler_refuses_anything_but_arrays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = tmp_path / "mnist.pkl.gz"
    with gzip.open(archive, "wb") as handle:
        pickle.dump(_Payload(), handle)
    monkeypatch.setattr(datasets, "mnist_archive_path", lambda: archive)
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        load_mnist()


def _images(count: int, size: int = 12) -> np.ndarray:
    return np.random.default_rng(0).random((count, size, size)).astype(np.float32)


def test_npz_single_array_is_split_deterministically(tmp_path: Path) -> None:
    path = tmp_path / "digits.npz"
    np.savez(path, images=_images(50), labels=np.arange(50) % 3, attr_ink=np.arange(50, dtype=np.float32))
    first, second = load_npz(path), load_npz(path)
    assert (len(first.train), len(first.valid), len(first.test)) == (40, 5, 5)
    assert first.num_classes == 3
    np.testing.assert_array_equal(first.test.ids, second.test.ids)
    ids = np.concatenate([first.train.ids, first.valid.ids, first.test.ids])
    assert len(set(ids.tolist())) == 50
    index = int(first.test.ids[0].split(":")[1])
    assert first.test.attributes["ink"][0] == index


def test_npz_uint8_and_channel_axis_are_normalised(tmp_path: Path) -> None:
    path = tmp_path / "u8.npz"
    np.savez(path, images=np.full((20, 1, 8, 8), 255, np.uint8), labels=np.zeros(20, np.int64))
    data = load_npz(path)
    assert data.train.images.shape[1:] == (8, 8) and data.train.images.max() == 1.0


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((4, 8)), "labels": np.zeros(4, int)}, "expected images of shape (N, H, W)"),
        ({"images": np.zeros((4, 8, 8), np.int32), "labels": np.zeros(4, int)}, "expected uint8 or float images"),
        ({"images": np.full((4, 8, 8), np.nan, np.float32), "labels": np.zeros(4, int)}, "NaN"),
        ({"images": np.full((4, 8, 8), 2.0, np.float32), "labels": np.zeros(4, int)}, "expected float images in [0, 1]"),
        ({"images": np.zeros((4, 8, 8), np.float32), "labels": np.zeros(3, int)}, "expected labels of shape (4,)"),
        ({"images": np.zeros((4, 8, 8), np.float32), "labels": np.zeros(4, np.float32)}, "expected integer labels"),
        ({"images": np.zeros((4, 10, 10), np.float32), "labels": np.zeros(4, int)}, "multiples of 4"),
        ({"pixels": np.zeros((4, 8, 8))}, "expected keys 'images' and 'labels'"),
    ],
)
def test_bad_npz_gets_a_clear_error(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(AuditInputError) as caught:
        load_npz(path)
    assert str(path) in str(caught.value) and message in str(caught.value)


def test_image_folder_with_class_subfolders(tmp_path: Path) -> None:
    for label in ("cat", "dog"):
        (tmp_path / "pets" / label).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "pets" / label / f"{i}.png")
    data = load_dataset("pets", base_dir=tmp_path)
    assert data.num_classes == 2
    assert len(data.train) + len(data.valid) + len(data.test) == 20
    assert data.train.images.shape[1:] == (8, 8)


def test_unknown_dataset_reference(tmp_path: Path) -> None:
    with pytest.raises(AuditInputError, match="expected 'mnist', a .npz file or an image folder"):
        load_dataset("nowhere", base_dir=tmp_path)
    with pytest.raises(AuditInputError, match="file not found"):
        load_dataset("missing.npz", base_dir=tmp_path)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((0, 8, 8), np.float32), "labels": np.zeros(0, int)}, "key 'images': expected at least one image, got shape (0, 8, 8)"),
        ({"images": np.zeros((2, 8, 8), np.float32), "labels": np.zeros(2, int)}, "expected at least 3 images (one each for train, valid and test), got 2"),
        ({"images": np.zeros((4, 8, 8), object), "labels": np.zeros(4, int)}, "key 'images' holds Python objects (dtype object)"),
        ({"images": np.zeros((4, 8, 8), np.float32), "labels": np.full(4, 10**12)}, "key 'labels': expected labels < 100000"),
        ({"images": np.zeros((4, 8, 8), np.float32), "labels": np.full(4, 2**63 + 5, np.uint64)}, "key 'labels': expected labels < 100000"),
        ({"images": np.zeros((4, 8, 8), np.float32), "labels": np.zeros(4, int), "attr_slant": np.zeros(2)}, "key 'attr_slant': expected an attribute column of shape (4,)"),
        ({"images": np.zeros((4, 8, 8), np.float32), "labels": np.zeros(4, int), "attr_slant": np.array(["a"] * 4)}, "key 'attr_slant': expected a numeric attribute column"),
        ({"images": np.zeros((2, 2048, 8), np.uint8), "labels": np.zeros(2, int)}, "expected image height and width <= 1024, got (2048, 8)"),
    ],
    ids=["zero", "two", "object", "huge-label", "uint64-label", "short-attribute", "string-attribute", "tall-images"],
)
def test_more_bad_npz_files(tmp_path: Path, arrays: dict, message: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(AuditInputError) as caught:
        load_npz(path)
    assert str(caught.value).startswith(f"dataset '{path}'") and message in str(caught.value)


def test_empty_split_in_a_per_split_archive(tmp_path: Path) -> None:
    path = tmp_path / "splits.npz"
    splits = {"train": 8, "valid": 2, "test": 0}
    np.savez(path, **{f"{s}_images": _images(n) for s, n in splits.items()}, **{f"{s}_labels": np.zeros(n, int) for s, n in splits.items()})
    with pytest.raises(AuditInputError, match=r"key 'test_images': expected at least one image"):
        load_npz(path)


def test_corrupt_image_in_a_folder(tmp_path: Path) -> None:
    for label in ("a", "b"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "imgs" / label / f"{i}.png")
    (tmp_path / "imgs" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(AuditInputError, match=r"cannot read image '.*broken.png'"):
        load_dataset("imgs", base_dir=tmp_path)
