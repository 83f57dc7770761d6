"""PNG image grids: reconstruction grids, traversal strips, counterexamples."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from auditai_ops.fileio import atomic_path


def image_grid(tiles: np.ndarray, pad: int = 2) -> np.ndarray:
    """Arrange tiles (R, K, H, W) or (R, K, C, H, W), C = 1 or 3, in [0, 1] into one uint8 image with `pad` pixels of grey between them.

    The result is (height, width) for grayscale tiles and (height, width, 3) for colour ones.
    """
    if tiles.ndim == 5 and tiles.shape[2] == 1:
        tiles = tiles[:, :, 0]
    if tiles.ndim == 5 and tiles.shape[2] == 3:
        tiles = np.moveaxis(tiles, 2, -1)  # (R, K, H, W, 3)
    elif tiles.ndim != 4:
        raise ValueError(f"expected tiles of shape (R, K, H, W) or (R, K, C, H, W) with C = 1 or 3, got {tiles.shape}")
    rows, cols, height, width = tiles.shape[:4]
    canvas = np.full((rows * (height + pad) + pad, cols * (width + pad) + pad, *tiles.shape[4:]), 128, dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            top, left = pad + r * (height + pad), pad + c * (width + pad)
            canvas[top : top + height, left : left + width] = np.clip(tiles[r, c] * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return canvas


def _grid_image(tiles: np.ndarray, scale: int) -> Image.Image:
    canvas = image_grid(tiles)
    return Image.fromarray(canvas, mode="L" if canvas.ndim == 2 else "RGB").resize((canvas.shape[1] * scale, canvas.shape[0] * scale), Image.NEAREST)


def save_grid_png(tiles: np.ndarray, path: Path, scale: int = 3) -> None:
    """Save tiles (R, K, H, W) or (R, K, C, H, W) as one PNG (grayscale or RGB), upscaled by `scale` with nearest neighbours."""
    image = _grid_image(tiles, scale)
    with atomic_path(Path(path)) as tmp:
        image.save(tmp, format="PNG")


def grid_png(tiles: np.ndarray, scale: int = 3) -> bytes:
    """The bytes of the PNG `save_grid_png` writes."""
    buffer = io.BytesIO()
    _grid_image(tiles, scale).save(buffer, format="PNG")
    return buffer.getvalue()
