import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditai_ops.data import attributes
from auditai_ops.data.attributes import (
    ATTRIBUTE_NAMES,
    ATTRIBUTE_UNITS,
    GENERIC_ATTRIBUTES,
    STROKE_ATTRIBUTES,
    UPSAMPLE,
    measure_attributes,
    measured_attribute_names,
)
from auditai_ops.data.cache import cached_measurements
from auditai_ops.errors import AuditInputError

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
    assert STROKE_ATTRIBUTES == ("slant", "thickness", "width", "height", "area")
    assert GENERIC_ATTRIBUTES == ("brightness", "contrast", "size", "centroid_x", "centroid_y", "orientation", "hue", "saturation")
    assert ATTRIBUTE_NAMES == STROKE_ATTRIBUTES + GENERIC_ATTRIBUTES == tuple(ATTRIBUTE_UNITS)
    assert ATTRIBUTE_UNITS["slant"] == "degrees" and ATTRIBUTE_UNITS["area"] == "pixels^2"
    result = measure_attributes(blob_digits(5, seed=0))
    assert tuple(result) == STROKE_ATTRIBUTES
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
        (np.zeros((1, 2, SIZE, SIZE), dtype=np.float32), "C = 1 or 3"),
        (np.zeros((1, 1, 1, SIZE, SIZE), dtype=np.float32), "shape"),
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
        for name in STROKE_ATTRIBUTES:
            np.testing.assert_array_equal(chunked[name], whole[name])
    # Another batch around the same image, with other bounding boxes.
    mixed = measure_attributes(np.concatenate([blob_digits(5, seed=2), images[3:4], solid_bar(2)[None]]))
    for name in STROKE_ATTRIBUTES:
        assert mixed[name][5] == whole[name][3]


def test_measurement_is_deterministic_and_leaves_input_alone() -> None:
    images = blob_digits(20, seed=3)
    copy = images.copy()
    first, second = measure_attributes(images), measure_attributes(images)
    for name in STROKE_ATTRIBUTES:
        np.testing.assert_array_equal(first[name], second[name])
    np.testing.assert_array_equal(images, copy)


def test_float64_and_float32_inputs_agree() -> None:
    images = blob_digits(10, seed=4)
    as32, as64 = measure_attributes(images), measure_attributes(images.astype(np.float64))
    for name in STROKE_ATTRIBUTES:
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
    for name in STROKE_ATTRIBUTES:
        assert after[name] == pytest.approx(before[name], abs=1e-4, nan_ok=True)


@settings(max_examples=40, deadline=None)
@given(placed_digit())
def test_mirroring_negates_slant(case: tuple[np.ndarray, int, int]) -> None:
    image, _, _ = case
    before, after = measure_one(image), measure_one(image[:, ::-1])
    assert after["slant"] == pytest.approx(-before["slant"], abs=1e-4, nan_ok=True)
    for name in ("width", "height", "area"):
        assert after[name] == pytest.approx(before[name], abs=1e-4, nan_ok=True)


# Generic attributes (auditai_ops.data.generic_attributes).

GREY_GENERIC = tuple(name for name in GENERIC_ATTRIBUTES if name not in ("hue", "saturation"))


def coloured_square(colour: tuple[float, float, float], background: tuple[float, float, float] = (0.0, 0.0, 0.0), top: int = 10, left: int = 10, side: int = 8) -> np.ndarray:
    """A (3, 28, 28) image: a side x side square of one colour on a uniform background."""
    image = np.empty((3, SIZE, SIZE), dtype=np.float32)
    image[:] = np.asarray(background, dtype=np.float32)[:, None, None]
    image[:, top : top + side, left : left + side] = np.asarray(colour, dtype=np.float32)[:, None, None]
    return image


def generic_one(image: np.ndarray, names: tuple[str, ...] = GREY_GENERIC) -> dict[str, float]:
    return {name: float(values[0]) for name, values in measure_attributes(image[None], names).items()}


def rotated_bar(angle: float, length: float = 18.6, width: float = 3.4) -> np.ndarray:
    """A (28, 28) bar through the centre whose long axis is `angle` degrees counter-clockwise from +x on screen (y down)."""
    ys, xs = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    dx, up = xs - 13.5, 13.5 - ys
    theta = math.radians(angle)
    along = dx * math.cos(theta) + up * math.sin(theta)
    across = -dx * math.sin(theta) + up * math.cos(theta)
    return ((np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)).astype(np.float32)


def test_centred_square_size_centroid_orientation_brightness_contrast() -> None:
    image = np.zeros((1, SIZE, SIZE), dtype=np.float32)
    image[0, 10:18, 10:18] = 1.0  # pixel centres 10..17: centroid 13.5
    measured = generic_one(image)
    fraction = 64 / SIZE**2
    assert measured["size"] == 64.0
    assert measured["centroid_x"] == pytest.approx(13.5) and measured["centroid_y"] == pytest.approx(13.5)
    assert measured["orientation"] == 0.0
    assert measured["brightness"] == pytest.approx(fraction)
    assert measured["contrast"] == pytest.approx(math.sqrt(fraction * (1 - fraction)))


def test_off_centre_rectangle_centroid_and_axis() -> None:
    image = np.zeros((SIZE, SIZE), dtype=np.float32)
    image[2:6, 3:15] = 0.8  # rows 2..5, columns 3..14: a horizontal 12 x 4 block
    measured = generic_one(image)
    assert measured["size"] == 48.0
    assert measured["centroid_x"] == pytest.approx(8.5) and measured["centroid_y"] == pytest.approx(3.5)
    assert measured["orientation"] == pytest.approx(0.0, abs=1e-9)
    assert generic_one(image.T.copy())["orientation"] == pytest.approx(90.0)


@pytest.mark.parametrize("angle", [0.0, 20.0, 45.0, 70.0, 90.0, -30.0, -60.0])
def test_rotated_bar_orientation(angle: float) -> None:
    # Rasterising the bar moves its moments a little; 3 degrees covers it for an 18.6 x 3.4 bar
    # (sides off the half-integer pixel centres, so that no centre lies on an edge).
    assert generic_one(rotated_bar(angle))["orientation"] == pytest.approx(angle, abs=3.0)


def test_pixel_diagonals_are_exactly_plus_and_minus_45_degrees() -> None:
    rising = np.zeros((SIZE, SIZE), dtype=np.float32)
    for i in range(4, 24):
        rising[27 - i, i] = 1.0  # up and to the right on screen, like "/"
    assert generic_one(rising)["orientation"] == pytest.approx(45.0)
    assert generic_one(rising[:, ::-1].copy())["orientation"] == pytest.approx(-45.0)


@pytest.mark.parametrize("value", [0.0, 0.25, 0.6, 1.0])
def test_uniform_images(value: float) -> None:
    grey = generic_one(np.full((SIZE, SIZE), value, dtype=np.float32))
    assert grey["brightness"] == pytest.approx(value) and grey["contrast"] == pytest.approx(0.0, abs=1e-7)
    assert grey["size"] == 0.0
    for name in ("centroid_x", "centroid_y", "orientation"):
        assert math.isnan(grey[name])
    colour = generic_one(np.full((3, SIZE, SIZE), value, dtype=np.float32), GENERIC_ATTRIBUTES)
    assert colour["brightness"] == pytest.approx(value) and math.isnan(colour["hue"]) and math.isnan(colour["saturation"])


def test_brightness_of_a_colour_image_is_the_mean_over_channels() -> None:
    measured = generic_one(np.stack([np.full((SIZE, SIZE), v, dtype=np.float32) for v in (0.2, 0.5, 0.8)]))
    assert measured["brightness"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("colour", "hue"),
    [((1.0, 0.0, 0.0), 0.0), ((1.0, 1.0, 0.0), 60.0), ((0.0, 1.0, 0.0), 120.0), ((0.0, 0.0, 1.0), -120.0), ((1.0, 0.0, 1.0), -60.0), ((0.0, 0.5, 0.5), 180.0)],
)
def test_hue_of_pure_colours(colour: tuple[float, float, float], hue: float) -> None:
    measured = generic_one(coloured_square(colour), GENERIC_ATTRIBUTES)
    assert measured["hue"] == pytest.approx(hue, abs=1e-4)
    assert measured["saturation"] == pytest.approx(1.0)
    assert measured["size"] == 64.0


def test_hue_and_saturation_of_the_foreground_not_the_background() -> None:
    red_on_green = generic_one(coloured_square((1.0, 0.0, 0.0), background=(0.0, 0.6, 0.0)), GENERIC_ATTRIBUTES)
    assert red_on_green["hue"] == pytest.approx(0.0, abs=1e-4) and red_on_green["size"] == 64.0
    pale = generic_one(coloured_square((1.0, 0.5, 0.5)), GENERIC_ATTRIBUTES)  # HSV: hue 0, saturation (1 - 0.5) / 1
    assert pale["hue"] == pytest.approx(0.0, abs=1e-4) and pale["saturation"] == pytest.approx(0.5)


def test_hue_is_a_circular_mean_weighted_by_chroma() -> None:
    image = coloured_square((1.0, 0.0, 0.0))
    image[:, 10:14, 10:18] = np.array([0.0, 1.0, 0.0], dtype=np.float32)[:, None, None]  # half red (0), half green (120)
    assert generic_one(image, GENERIC_ATTRIBUTES)["hue"] == pytest.approx(60.0, abs=1e-4)
    image = coloured_square((1.0, 0.0, 0.2))  # hue -12: across the wrap at 0 ...
    image[:, 10:14, 10:18] = np.array([1.0, 0.2, 0.0], dtype=np.float32)[:, None, None]  # ... and +12
    assert generic_one(image, GENERIC_ATTRIBUTES)["hue"] == pytest.approx(0.0, abs=1e-3)


def test_colour_attributes_of_grayscale_images_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\['hue'\] need colour images"):
        measure_attributes(np.zeros((2, 1, SIZE, SIZE), dtype=np.float32), ("size", "hue"))
    with pytest.raises(ValueError, match="unknown attribute"):
        measure_attributes(np.zeros((2, SIZE, SIZE), dtype=np.float32), ("size", "colourfulness"))


@pytest.mark.parametrize("width", [2, 3])
def test_stroke_attributes_of_a_colour_stroke_on_a_colour_background(width: int) -> None:
    """A dim stroke blended over a coloured background: its difference map over its maximum is the white-on-black stroke."""
    bar = sheared_bar(width, 0.25)
    stroke, background = np.array([0.6, 0.1, 0.2], dtype=np.float32), np.array([0.1, 0.4, 0.3], dtype=np.float32)
    colour = bar[None] * stroke[:, None, None] + (1 - bar[None]) * background[:, None, None]  # D = 0.5 bar
    grey = measure_attributes(bar[None])
    both = measure_attributes(colour[None])
    for name in STROKE_ATTRIBUTES:
        assert both[name][0] == pytest.approx(grey[name][0], abs=1e-4)
    assert np.isnan(measure_attributes(np.full((1, 3, SIZE, SIZE), 0.4, dtype=np.float32))["slant"][0]), "a uniform colour image is blank"


def test_only_the_named_attributes_in_their_order_and_channel_layouts_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attributes, "GENERIC_CHUNK", 4)  # chunks of 4 inside every batch
    images = blob_digits(6, seed=5)
    names = ("size", "slant", "brightness")
    result = measure_attributes(images, names)
    assert tuple(result) == names and all(v.dtype == np.float32 and v.shape == (6,) for v in result.values())
    channels_first = measure_attributes(images[:, None], names)
    for name in names:
        np.testing.assert_array_equal(channels_first[name], result[name])
    for batch_size in (1, 4):
        chunked = measure_attributes(images, GREY_GENERIC, batch_size=batch_size)
        for name in GREY_GENERIC:
            np.testing.assert_array_equal(chunked[name], [generic_one(image)[name] for image in images])


@settings(max_examples=40, deadline=None)
@given(placed_digit())
def test_translation_moves_the_centroid_by_the_shift(case: tuple[np.ndarray, int, int]) -> None:
    image, dx, dy = case
    before, after = generic_one(image), generic_one(np.roll(image, (dy, dx), axis=(0, 1)))
    assert after["centroid_x"] == pytest.approx(before["centroid_x"] + dx, abs=1e-4, nan_ok=True)
    assert after["centroid_y"] == pytest.approx(before["centroid_y"] + dy, abs=1e-4, nan_ok=True)
    for name in ("size", "orientation", "brightness", "contrast"):
        assert after[name] == pytest.approx(before[name], abs=1e-6, nan_ok=True)


@settings(max_examples=40, deadline=None)
@given(placed_digit(), st.floats(0.0, 1.0))
def test_brightness_and_contrast_scale_linearly(case: tuple[np.ndarray, int, int], scale: float) -> None:
    image, _, _ = case
    before, after = generic_one(image), generic_one(image * np.float32(scale))
    assert after["brightness"] == pytest.approx(scale * before["brightness"], rel=1e-5, abs=1e-7)
    assert after["contrast"] == pytest.approx(scale * before["contrast"], rel=1e-5, abs=1e-7)


@settings(max_examples=40, deadline=None)
@given(placed_digit())
def test_a_quarter_turn_turns_the_orientation_by_90_degrees(case: tuple[np.ndarray, int, int]) -> None:
    image, _, _ = case
    before, after = generic_one(image), generic_one(np.rot90(image).copy())  # counter-clockwise on screen
    assert after["size"] == before["size"]
    if before["size"] == 0 or before["orientation"] == 0.0:  # no foreground, or no axis (isotropic)
        return
    turned = (before["orientation"] + 90.0 + 90.0) % 180.0 - 90.0  # wrapped into [-90, 90)
    difference = (after["orientation"] - turned + 90.0) % 180.0 - 90.0  # 90 and -90 are one axis
    assert difference == pytest.approx(0.0, abs=1e-4)  # float32 results


# The attribute set of an audit (directions.attributes, directions.measure).


def test_the_mnist_default_measures_the_stroke_family() -> None:
    assert measured_attribute_names(("slant", "thickness", "width", "height"), None, 1, set()) == STROKE_ATTRIBUTES


def test_generic_names_measure_the_generic_family_of_the_channel_count() -> None:
    assert measured_attribute_names(("size",), None, 1, set()) == ("size", *[n for n in GREY_GENERIC if n != "size"])
    assert set(measured_attribute_names(("hue",), None, 3, set())) == set(GENERIC_ATTRIBUTES)
    both = measured_attribute_names(("slant", "hue"), None, 3, set())
    assert both == ("slant", "hue", *[n for n in STROKE_ATTRIBUTES if n != "slant"], *[n for n in GENERIC_ATTRIBUTES if n != "hue"])


def test_user_columns_are_not_measured_and_measure_is_explicit() -> None:
    assert measured_attribute_names(("smiling",), None, 3, {"smiling"}) == GENERIC_ATTRIBUTES
    assert measured_attribute_names(("smiling", "size"), ("brightness",), 1, {"smiling"}) == ("size", "brightness")
    assert measured_attribute_names(("area",), ("slant",), 1, {"area"}) == ("slant",)  # the column overrides the measurement


def test_unknown_and_grayscale_colour_attributes_are_refused() -> None:
    with pytest.raises(AuditInputError, match=r"directions.attributes: unknown attribute\(s\) \['smile'\]; known: stroke \['slant'.*'saturation'\].*columns \['smiling'\]"):
        measured_attribute_names(("slant", "smile"), None, 1, {"smiling"})
    with pytest.raises(AuditInputError, match=r"directions.attributes: \['hue'\] are measured on colour images only \(C = 3\), but the dataset's images have 1 channel"):
        measured_attribute_names(("hue",), None, 1, set())
    with pytest.raises(AuditInputError, match=r"directions.measure: \['saturation'\]"):
        measured_attribute_names(("size",), ("saturation",), 1, set())
    with pytest.raises(AuditInputError, match=r"directions.measure: unknown attribute\(s\) \['smiling'\]; it lists attributes measured by code"):
        measured_attribute_names(("smiling",), ("size", "smiling"), 3, {"smiling"})


def test_the_cache_keys_on_the_attribute_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDITAI_CACHE_DIR", str(tmp_path))
    images = blob_digits(4, seed=6)
    first = cached_measurements(images, ("size", "slant"))
    assert tuple(first) == ("size", "slant")
    again = cached_measurements(images, ("slant", "size"))  # the same set: the same entry
    assert len(list((tmp_path / "attributes").glob("*.npz"))) == 1
    np.testing.assert_array_equal(again["size"], first["size"])
    other = cached_measurements(images, ("brightness",))
    assert set(other) == {"brightness"} and len(list((tmp_path / "attributes").glob("*.npz"))) == 2
    assert cached_measurements(images, ()) == {}
