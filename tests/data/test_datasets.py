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
    assert mnist.train.images.shape[1:] == (1, 28, 28) and mnist.train.images.dtype == np.float32
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
    assert data.train.images.shape[1:] == (1, 8, 8) and data.train.images.max() == 1.0


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((4, 8)), "labels": np.zeros(4, int)}, "expected images of shape (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3, got shape (4, 8)"),
        ({"images": np.zeros((4, 8, 8, 2)), "labels": np.zeros(4, int)}, "got shape (4, 8, 8, 2): neither axis 1 nor axis 3 has size 1 or 3"),
        ({"images": np.zeros((4, 3, 8, 3)), "labels": np.zeros(4, int)}, "got shape (4, 3, 8, 3): both axis 1 and axis 3 have size 1 or 3"),
        ({"images": np.zeros((4, 1, 3, 8, 8)), "labels": np.zeros(4, int)}, "got shape (4, 1, 3, 8, 8)"),
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
    assert data.train.images.shape[1:] == (1, 8, 8)


def test_image_folder_keeps_colour_when_any_image_is_colour(tmp_path: Path) -> None:
    """One RGB image makes the whole folder RGB (grayscale ones get three equal channels); all-grayscale folders stay one channel."""
    rng = np.random.default_rng(3)
    for label in ("red", "grey"):
        (tmp_path / "shapes" / label).mkdir(parents=True)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (12, 8), dtype=np.uint8)).save(tmp_path / "shapes" / "grey" / f"{i}.png")
    red = np.zeros((12, 8, 3), np.uint8)
    red[..., 0] = 200
    Image.fromarray(red).save(tmp_path / "shapes" / "red" / "0.png")
    Image.fromarray(red).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "shapes" / "red" / "1.png")  # a palette image is colour
    data = load_dataset("shapes", base_dir=tmp_path)
    images = np.concatenate([data.train.images, data.valid.images, data.test.images])
    ids = np.concatenate([data.train.ids, data.valid.ids, data.test.ids])
    assert images.shape == (6, 3, 12, 8) and images.dtype == np.float32
    reds = images[[i for i, name in enumerate(ids) if name.startswith("red")]]
    np.testing.assert_allclose(reds[:, 0], 200 / 255, atol=1e-6)
    np.testing.assert_array_equal(reds[:, 1:], 0.0)
    greys = images[[i for i, name in enumerate(ids) if name.startswith("grey")]]
    np.testing.assert_array_equal(greys[:, 0], greys[:, 1])
    np.testing.assert_array_equal(greys[:, 0], greys[:, 2])
    for file in (tmp_path / "shapes" / "red").iterdir():
        file.unlink()
        Image.fromarray(rng.integers(0, 256, (12, 8), dtype=np.uint8)).convert("LA").save(file.with_suffix(".png"))
    assert load_dataset("shapes", base_dir=tmp_path).train.images.shape[1:] == (1, 12, 8)


@pytest.mark.parametrize(
    ("layout", "shape"),
    [("NHW", (12, 16, 20)), ("NHWC", (12, 16, 20, 3)), ("NCHW", (12, 3, 16, 20)), ("NHWC-gray", (12, 16, 20, 1)), ("NCHW-gray", (12, 1, 16, 20))],
)
def test_npz_layouts_become_channels_first(tmp_path: Path, layout: str, shape: tuple[int, ...]) -> None:
    """(N, H, W), (N, H, W, C) and (N, C, H, W) give the same (N, C, H, W) pixels: the channel axis is the one of size 1 or 3."""
    rng = np.random.default_rng(0)
    channels = 3 if 3 in shape else 1
    reference = rng.integers(0, 256, (12, channels, 16, 20), dtype=np.uint8)
    stored = {"NHW": reference[:, 0], "NHWC": reference.transpose(0, 2, 3, 1), "NCHW": reference}[layout.split("-")[0]]
    assert stored.shape == shape
    path = tmp_path / "colour.npz"
    np.savez(path, images=stored, labels=np.arange(12) % 2)
    data = load_npz(path)
    index = np.array([int(i.split(":")[1]) for i in data.test.ids])
    assert data.test.images.shape == (len(index), channels, 16, 20) and data.test.images.flags.c_contiguous
    np.testing.assert_array_equal(data.test.images, reference[index].astype(np.float32) / 255.0)


def test_colour_images_of_28_to_64_pixels(tmp_path: Path) -> None:
    for side in (28, 32, 48, 56, 64):
        path = tmp_path / f"side{side}.npz"
        np.savez(path, images=np.zeros((5, side, side, 3), np.uint8), labels=np.arange(5) % 2)
        assert load_npz(path).train.images.shape[1:] == (3, side, side)


def test_unknown_dataset_reference(tmp_path: Path) -> None:
    with pytest.raises(AuditInputError, match="expected 'mnist', a .npz file or an image folder, or 'fashion-mnist'"):
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


def test_s3_datasets_go_through_the_same_loaders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An s3:// reference is fetched into the cache (here: a stand-in fetch that records the URI) and read like a local file, colour included."""
    from auditai_ops import s3

    local = tmp_path / "cache" / "colour.npz"
    local.parent.mkdir()
    np.savez(local, images=np.zeros((10, 16, 16, 3), np.uint8), labels=np.arange(10) % 2)
    fetched: list[str] = []
    monkeypatch.setattr(s3, "fetch_s3", lambda uri: fetched.append(uri) or local)
    data = load_dataset("s3://bucket/data/colour.npz")
    assert fetched == ["s3://bucket/data/colour.npz"] and data.train.images.shape[1:] == (3, 16, 16)
