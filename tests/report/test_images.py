"""PNG grids of grayscale and colour images: reconstructions, traversals, counterexamples."""

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from auditai_ops.layers import ViewAs
from auditai_ops.report.images import grid_png, image_grid, save_grid_png
from auditai_ops.verify.counterexamples import counterexample_pngs
from auditai_ops.verify.engine import FALSIFIED, VERIFIED


def _decoded(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_grayscale_tiles_with_or_without_a_channel_axis_give_the_same_png(tmp_path: Path) -> None:
    """(R, K, H, W) and (R, K, 1, H, W) are the same grayscale figure, byte for byte, as before colour existed."""
    tiles = np.random.default_rng(0).random((2, 3, 8, 6)).astype(np.float32)
    assert grid_png(tiles) == grid_png(tiles[:, :, None])
    image = _decoded(grid_png(tiles, scale=1))
    assert image.mode == "L" and image.size == (3 * 8 + 2, 2 * 10 + 2)
    assert np.asarray(image)[2, 2] == int(tiles[0, 0, 0, 0] * 255 + 0.5)
    save_grid_png(tiles[:, :, None], tmp_path / "grid.png")
    assert (tmp_path / "grid.png").read_bytes() == grid_png(tiles)


def test_colour_tiles_make_an_rgb_png() -> None:
    tiles = np.zeros((1, 2, 3, 4, 4), np.float32)
    tiles[0, 0, 0] = 1.0  # a red tile
    tiles[0, 1, 2] = 0.5  # a half-blue tile
    canvas = image_grid(tiles, pad=1)
    assert canvas.shape == (6, 11, 3) and canvas.dtype == np.uint8
    assert canvas[0, 0].tolist() == [128, 128, 128]  # the grey padding
    assert canvas[1, 1].tolist() == [255, 0, 0] and canvas[1, 6].tolist() == [0, 0, 128]
    image = _decoded(grid_png(tiles, scale=2))
    assert image.mode == "RGB" and image.size == (2 * (2 * 6 + 2), 2 * (6 + 2))
    assert np.asarray(image)[4, 4].tolist() == [255, 0, 0]


@pytest.mark.parametrize("shape", [(2, 8, 8), (1, 2, 2, 8, 8), (1, 2, 4, 8, 8)])
def test_other_tile_shapes_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"expected tiles of shape \(R, K, H, W\) or \(R, K, C, H, W\) with C = 1 or 3"):
        image_grid(np.zeros(shape, np.float32))


def test_counterexample_images_are_in_colour() -> None:
    """A colour decoder's counterexamples: the original and the moved image side by side, in RGB, one PNG per falsified sample."""
    torch.manual_seed(0)
    decoder = nn.Sequential(nn.Linear(2, 3 * 8 * 8), ViewAs((3, 8, 8)), nn.Sigmoid()).eval()
    result = SimpleNamespace(
        outcomes=SimpleNamespace(verdicts=np.array([FALSIFIED, VERIFIED, FALSIFIED]), counterexample_t=np.array([[1.0], [0.0], [-2.0]])),
        samples=SimpleNamespace(latents=np.array([[0.0, 0.0], [1.0, 1.0], [0.5, -0.5]]), ids=np.array(["c:test:0", "c:test:1", "c:test:2"])),
        test=SimpleNamespace(matrix=np.array([[1.0, 0.0]], np.float32)),
    )
    pngs = counterexample_pngs(decoder, result)  # type: ignore[arg-type]
    assert list(pngs) == ["c:test:0", "c:test:2"]
    image = np.asarray(_decoded(pngs["c:test:2"]))
    assert image.shape == (4 * (8 + 4), 4 * (2 * 10 + 2), 3)
    with torch.no_grad():
        moved = decoder(torch.tensor([[-1.5, -0.5]]))[0].numpy()
    tile = image[8::4, 48::4][:8, :8]  # the second tile, every 4th pixel of the x4 upscale
    np.testing.assert_array_equal(tile, np.clip(moved.transpose(1, 2, 0) * 255 + 0.5, 0, 255).astype(np.uint8))
