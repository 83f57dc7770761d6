import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditai_ops.data.attributes import ATTRIBUTE_NAMES, ATTRIBUTE_UNITS, UPSAMPLE, measure_attributes

SIZE = 28


def solid_bar(width: int, length: int = 20, top: int = 4, left: int = 12) -> np.ndarray:
    """A hard-edged vertical bar: rows top..top+length-1, columns left..left+width-1."""
    image = np.zeros((SIZE, SIZE), dtype=np.float32)
    image[top : top + length, left : left + width] = 1.0
    return image


def sheared_bar(width: int, shear: float, length: int = 20, top: int = 4) -> np.ndarray:
    """An anti-aliased bar whose row r covers x in [a(r), a(r) + width], a(r) = a0 + shear (yc - r).

    Each pixel holds the covered fraction of [j - 0.5, j + 0.5]. For an integer width the two
    partial pixels of a row have complementary lengths, so the row's intensity centroid is exactly
    a(r) + width / 2: mu11 / mu02 = -shear, and the slant is exactly arctan(shear).
    """
    yc = top + (length - 1) / 2
    columns = np.arange(SIZE)
    image = np.zeros((SIZE, SIZE), dtype=np.float32)
    for r in range(top, top + length):
        a = (SIZE - 1) / 2 - width / 2 + shear * (yc - r)
        image[r] = np.clip(np.minimum(a + width, columns + 0.5) - np.maximum(a, columns - 0.5), 0.0, 1.0)
    return image


def blob_digits(count: int, seed: int) -> np.ndarray:
    """Digit-like images: unions of 2-4 random rectangles with random grey levels."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, SIZE, SIZE), dtype=np.float32)
    for image in images:
        for _ in range(rng.integers(2, 5)):
            top, left = rng.integers(0, SIZE - 3, size=2)
            height, width = rng.integers(2, 14, size=2)
            patch = image[top : top + height, left : left + width]
            np.maximum(patch, rng.uniform(0.3, 1.0), out=patch)
    return images


def measure_one(image: np.ndarray) -> dict[str, float]:
    return {name: float(values[0]) for name, values in measure_attributes(image[None]).items()}


def test_names_units_and_output_shapes() -> None:
    assert ATTRIBUTE_NAMES == ("slant", "thickness", "width", "height", "area")
    assert tuple(ATTRIBUTE_UNITS) == ATTRIBUTE_NAMES
    assert ATTRIBUTE_UNITS["slant"] == "degrees" and ATTRIBUTE_UNITS["area"] == "pixels^2"
    result = measure_attributes(blob_digits(5, seed=0))
    assert tuple(result) == ATTRIBUTE_NAMES
    for values in result.values():
        assert values.shape == (5,) and values.dtype == np.float32


@pytest.mark.parametrize("width", [2, 3, 4])
def test_solid_vertical_bar(width: int) -> None:
    # A w x 20 block upsampled x2 is a 2w x 40 block; its skeleton runs down the middle at
    # (octagonal) distance w from the background in upsampled pixels, i.e. thickness exactly
    # 2w / 2 = w. The tolerance allows the 1 / (2 UPSAMPLE) half-pixel of a distance map.
    measured = measure_one(solid_bar(width))
    assert measured["slant"] == pytest.approx(0.0, abs=1e-9)
    assert measured["thickness"] == pytest.approx(width, abs=0.5 / UPSAMPLE)
    assert measured["width"] == pytest.approx(width)
    assert measured["height"] == pytest.approx(20.0)
    assert measured["area"] == pytest.approx(20.0 * width)


@pytest.mark.parametrize("width", [2, 3, 4])
def test_sheared_bar_slant_sign_and_deslanted_box(width: int) -> None:
    expected = math.degrees(math.atan(0.25))  # 14.036 degrees
    right = measure_one(sheared_bar(width, 0.25))  # top leans right, like "/"
    left = measure_one(sheared_bar(width, -0.25))
    mirrored = measure_one(sheared_bar(width, 0.25)[:, ::-1])
    assert right["slant"] == pytest.approx(expected, abs=1e-3)
    assert left["slant"] == pytest.approx(-expected, abs=1e-3)
    assert mirrored["slant"] == pytest.approx(-expected, abs=1e-3)
    assert measure_one(sheared_bar(width, 0.0))["slant"] == pytest.approx(0.0, abs=1e-9)

    upright = measure_one(solid_bar(width))
    assert abs(right["width"] - upright["width"]) <= 1.0
    assert abs(right["height"] - upright["height"]) <= 1.0
    # The stroke is w wide horizontally, so w cos(slant) wide across; the staircase of an
    # anti-aliased sheared edge and the distance map's half pixel allow 0.5 px.
    assert right["thickness"] == pytest.approx(width * math.cos(math.radians(expected)), abs=0.5)


def test_thickness_orders_strokes() -> None:
    thickness = measure_attributes(np.stack([solid_bar(w) for w in (1, 2, 3, 4, 5, 6)]))["thickness"]
    assert np.all(np.diff(thickness) > 0)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((SIZE, SIZE), dtype=np.float32), "shape"),
        (np.zeros((1, 1, SIZE, SIZE), dtype=np.float32), "shape"),
        (np.zeros((2, SIZE, SIZE), dtype=np.uint8), "floating dtype"),
        (np.full((2, SIZE, SIZE), np.nan, dtype=np.float32), "finite"),
        (np.full((2, SIZE, SIZE), np.inf, dtype=np.float64), "finite"),
        (np.full((2, SIZE, SIZE), 255.0, dtype=np.float32), r"\[0, 1\], got values in \[255, 255\]"),
        (np.full((2, SIZE, SIZE), -0.5, dtype=np.float32), r"\[0, 1\]"),
        ([[[0.0] * 8] * 8], "numpy array"),
    ],
)
def test_bad_input_is_refused(images: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        measure_attributes(images)


def test_bad_batch_size_is_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        measure_attributes(blob_digits(2, seed=0), batch_size=0)


def test_values_a_rounding_error_outside_the_range_are_accepted() -> None:
    image = solid_bar(3) * np.float32(1 + 1e-7)
    assert measure_one(image)["area"] == pytest.approx(60.0)


def test_empty_images_give_nan_and_zero_area() -> None:
    images = np.stack([np.zeros((SIZE, SIZE)), np.full((SIZE, SIZE), 0.3), solid_bar(3)])
    result = measure_attributes(images)
    for name in ("slant", "thickness", "width", "height"):
        assert np.isnan(result[name][:2]).all() and np.isfinite(result[name][2])
    assert result["area"].tolist() == [0.0, 0.0, 60.0]


def test_no_images_give_empty_arrays() -> None:
    result = measure_attributes(np.zeros((0, SIZE, SIZE), dtype=np.float32))
    assert all(values.shape == (0,) for values in result.values())


def test_results_do_not_depend_on_the_batch() -> None:
    images = blob_digits(40, seed=1)
    whole = measure_attributes(images)
    for batch_size in (1, 7):
        chunked = measure_attributes(images, batch_size=batch_size)
        for name in ATTRIBUTE_NAMES:
            np.testing.assert_array_equal(chunked[name], whole[name])
    # Another batch around the same image, with other bounding boxes.
    mixed = measure_attributes(np.concatenate([blob_digits(5, seed=2), images[3:4], solid_bar(2)[None]]))
    for name in ATTRIBUTE_NAMES:
        assert mixed[name][5] == whole[name][3]


def test_measurement_is_deterministic_and_leaves_input_alone() -> None:
    images = blob_digits(20, seed=3)
    copy = images.copy()
    first, second = measure_attributes(images), measure_attributes(images)
    for name in ATTRIBUTE_NAMES:
        np.testing.assert_array_equal(first[name], second[name])
    np.testing.assert_array_equal(images, copy)


def test_float64_and_float32_inputs_agree() -> None:
    images = blob_digits(10, seed=4)
    as32, as64 = measure_attributes(images), measure_attributes(images.astype(np.float64))
    for name in ATTRIBUTE_NAMES:
        np.testing.assert_allclose(as64[name], as32[name], rtol=1e-5, atol=1e-5)


@st.composite
def placed_digit(draw: st.DrawFn) -> tuple[np.ndarray, int, int]:
    """A blob digit inside a 16 x 16 box and a shift that keeps it inside the 28 x 28 image."""
    seed = draw(st.integers(0, 2**32 - 1))
    box = blob_digits(1, seed)[0, :16, :16]
    dx = draw(st.integers(-6, 6))
    dy = draw(st.integers(-6, 6))
    image = np.zeros((SIZE, SIZE), dtype=np.float32)
    image[6:22, 6:22] = box
    return image, dx, dy


@settings(max_examples=40, deadline=None)
@given(placed_digit())
def test_translation_changes_no_attribute(case: tuple[np.ndarray, int, int]) -> None:
    image, dx, dy = case
    moved = np.roll(image, (dy, dx), axis=(0, 1))
    before, after = measure_one(image), measure_one(moved)
    for name in ATTRIBUTE_NAMES:
        assert after[name] == pytest.approx(before[name], abs=1e-4, nan_ok=True)


@settings(max_examples=40, deadline=None)
@given(placed_digit())
def test_mirroring_negates_slant(case: tuple[np.ndarray, int, int]) -> None:
    image, _, _ = case
    before, after = measure_one(image), measure_one(image[:, ::-1])
    assert after["slant"] == pytest.approx(-before["slant"], abs=1e-4, nan_ok=True)
    for name in ("width", "height", "area"):
        assert after[name] == pytest.approx(before[name], abs=1e-4, nan_ok=True)
