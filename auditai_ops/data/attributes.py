"""Per-image semantic attributes, measured by code: a registry of stroke and generic attributes.

Two families, chosen per audit by `directions.attributes` and `directions.measure`
(`measured_attribute_names`):

* stroke attributes, for stroke-like data (digits, characters), after Morpho-MNIST (below):
  slant, thickness, width, height, area;
* generic attributes, for any image (`auditai_ops.data.generic_attributes`): brightness,
  contrast, size, centroid_x, centroid_y, orientation, and for colour images hue and saturation.

Stroke attributes. Castro et al. (2019), "Morpho-MNIST: Quantitative Assessment and Diagnostics
for Representation Learning", describe a digit by its slant, stroke thickness, width, height and
area. This module measures them for a whole batch at once, with numpy only.

Conventions. An image is a float array indexed ``[row, column]`` with values in [0, 1];
``y`` is the row index (growing DOWNWARDS) and ``x`` the column index (growing to the right),
both at pixel centres and in units of original pixels. A grayscale image is measured as it is;
a colour one through its difference map from the background colour (``D`` of
`generic_attributes.foreground_map`) over the map's maximum (`_stroke_plane`), so that a
coloured stroke on a coloured background measures as a white stroke on black. The foreground
is the set of pixels of
the ``UPSAMPLE``-times bilinearly upsampled image whose value is >= ``THRESHOLD`` (0.5);
upsampling lets thickness, width and height resolve half pixels (Morpho-MNIST upsamples x4).

* ``slant`` (degrees): from the intensity-weighted central moments of the original image,
  ``mu11 = sum I (x - xc)(y - yc) / sum I`` and ``mu02 = sum I (y - yc)^2 / sum I``. The shear
  ``s = -mu11 / mu02`` is the slope dx/d(-y) of the least-squares line x(y) through the digit,
  and ``slant = degrees(arctan(s))``. POSITIVE slant means the top leans to the RIGHT, like an
  italic "/"; a vertical stroke has slant 0, a stroke drawn with x = x0 + 0.25 (yc - y) has
  slant arctan(0.25) = 14.04 degrees. A digit with no vertical spread (``mu02 == 0``) has
  slant 0.
* ``thickness`` (pixels): twice the mean, over the pixels of the foreground's skeleton, of
  their distance to the background, as Morpho-MNIST's ``mean_thickness``. The skeleton is the
  Guo-Hall thinning (see `_thin`); the distance is the octagonal distance (alternating
  4- and 8-neighbour erosions, an octagon-shaped approximation of the Euclidean one), counted
  so that a boundary pixel is at distance 1. A straight horizontal or vertical stroke an even
  number ``2k`` of upsampled pixels wide has its skeleton at distance ``k``, so measures exactly
  its width; an odd width ``2k + 1`` measures ``2k + 2``, i.e. ``1 / UPSAMPLE`` too thick.
  (Area over skeleton length, the other usual estimate, is thrown off by the short skeleton
  branches that thinning leaves in the corners of a stroke's ends.)
* ``width`` and ``height`` (pixels): extent of the foreground after removing the slant by the
  horizontal shear ``x' = x + s (y - yc)`` about the centroid row ``yc``, which maps the
  line x(y) above onto a vertical line. Extents are ``max - min`` of foreground pixel centres
  plus one upsampled pixel, so a solid ``h x w`` block measures exactly ``h`` by ``w``.
* ``area`` (pixels^2): foreground pixel count of the upsampled image over ``UPSAMPLE**2``, i.e.
  the area where the bilinear image is >= 0.5.

An image with no foreground pixel (blank, or only specks too faint to survive the upsampling)
gets NaN for slant, thickness, width and height, and area 0.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from auditai_ops.data.generic_attributes import COLOUR_ONLY, GENERIC_UNITS, MIN_DIFFERENCE, foreground_map, measure_generic
from auditai_ops.errors import AuditInputError

STROKE_UNITS: dict[str, str] = {
    "slant": "degrees",
    "thickness": "pixels",
    "width": "pixels",
    "height": "pixels",
    "area": "pixels^2",
}
STROKE_ATTRIBUTES: tuple[str, ...] = tuple(STROKE_UNITS)
GENERIC_ATTRIBUTES: tuple[str, ...] = tuple(GENERIC_UNITS)
ATTRIBUTE_UNITS: dict[str, str] = {**STROKE_UNITS, **GENERIC_UNITS}
"""Every attribute measured by code, with its units."""
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(ATTRIBUTE_UNITS)

UPSAMPLE = 2
"""Bilinear upsampling factor applied before binarising."""

THRESHOLD = 0.5
"""Foreground threshold on the upsampled intensity."""

GENERIC_CHUNK = 512
"""Images measured at once for the generic attributes (their temporaries: about 100 MB at 64 x 64 RGB)."""

_RANGE_TOLERANCE = 1e-6


def measure_attributes(images: np.ndarray, names: Sequence[str] = STROKE_ATTRIBUTES, batch_size: int = 8192) -> dict[str, np.ndarray]:
    """Measure the named attributes (default: the stroke attributes) of every image.

    images: float array (N, H, W) or (N, C, H, W) with C in {1, 3} and values in [0, 1] (any H, W
    >= 8 for stroke attributes). Returns one float32 array of shape (N,) per name, in the order
    of `names`; the definitions are in the module docstrings. Only the families named are
    measured. Images are processed ``batch_size`` at a time, which bounds the memory used; the
    result for an image does not depend on the batch it is processed in.
    """
    images = _validated(images)
    names = tuple(names)
    unknown = [name for name in names if name not in ATTRIBUTE_UNITS]
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown}; known attributes are {list(ATTRIBUTE_NAMES)}")
    if images.shape[1] == 1 and COLOUR_ONLY & set(names):
        raise ValueError(f"attribute(s) {sorted(COLOUR_ONLY & set(names))} need colour images (C = 3), got 1 channel")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    stroke = any(name in STROKE_UNITS for name in names)
    generic = tuple(name for name in names if name in GENERIC_UNITS)
    n = images.shape[0]
    out = {name: np.empty(n, dtype=np.float32) for name in names}
    for start in range(0, n, batch_size):
        chunk = np.clip(images[start : start + batch_size], 0.0, 1.0)
        measured: dict[str, np.ndarray] = {}
        for part in range(0, len(chunk), GENERIC_CHUNK) if generic else ():  # its float64 temporaries are several times the images
            for name, values in measure_generic(chunk[part : part + GENERIC_CHUNK], generic).items():
                measured.setdefault(name, np.empty(len(chunk)))[part : part + GENERIC_CHUNK] = values
        if stroke:
            plane = chunk[:, 0] if chunk.shape[1] == 1 else _stroke_plane(chunk)
            measured.update(_measure_chunk(plane))
        for name in names:
            out[name][start : start + len(chunk)] = measured[name]
    return out


def _stroke_plane(images: np.ndarray) -> np.ndarray:
    """The grayscale image (N, H, W) that stands for colour images (N, 3, H, W) in the stroke measurements.

    The difference map D from the background colour, over its maximum: the most different pixel
    is 1, so that a dim stroke on a coloured background measures as thick as a bright one. An
    image whose pixels all differ by less than MIN_DIFFERENCE is blank.
    """
    difference = foreground_map(images)[0]
    peak = difference.max(axis=(1, 2), keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(peak >= MIN_DIFFERENCE, difference / peak, 0.0).astype(np.float32)


def measured_attribute_names(attributes: Sequence[str], measure: Sequence[str] | None, channels: int, columns: Collection[str]) -> tuple[str, ...]:
    """The code-measured attributes an audit needs, checked against the registry and the images.

    `attributes` are the directions to probe (`directions.attributes`): each is a dataset column
    (`attr_<name>`, in `columns`) or a registered attribute. `measure` (`directions.measure`)
    lists the attributes measured besides, for the disentanglement evidence; by default every
    attribute of the families of the registered ones named (the generic family when none is),
    less the colour-only ones on grayscale images. Dataset columns override measured attributes
    of the same name, so those are not measured. Raises AuditInputError naming an unknown
    attribute, or a colour attribute asked of grayscale images.
    """
    registered = [name for name in attributes if name not in columns]
    known = f"known: stroke {list(STROKE_ATTRIBUTES)}, generic {list(GENERIC_ATTRIBUTES)} (hue and saturation of colour images only)"
    unknown = [name for name in registered if name not in ATTRIBUTE_UNITS]
    if unknown:
        raise AuditInputError(f"directions.attributes: unknown attribute(s) {unknown}; {known}, and the dataset's attr_<name> columns {sorted(columns)}")
    unknown = [name for name in measure or () if name not in ATTRIBUTE_UNITS]
    if unknown:
        raise AuditInputError(f"directions.measure: unknown attribute(s) {unknown}; it lists attributes measured by code, {known}")
    for field, names in (("directions.attributes", registered), ("directions.measure", measure or ())):
        colour = sorted(COLOUR_ONLY & set(names))
        if colour and channels != 3:
            raise AuditInputError(f"{field}: {colour} are measured on colour images only (C = 3), but the dataset's images have {channels} channel(s)")
    if measure is None:
        families = [family for family in (STROKE_ATTRIBUTES, GENERIC_ATTRIBUTES) if set(family) & set(registered)] or [GENERIC_ATTRIBUTES]
        extra = [name for family in families for name in family if channels == 3 or name not in COLOUR_ONLY]
    else:
        extra = list(measure)
    return tuple(name for name in dict.fromkeys([*registered, *extra]) if name not in columns)


def _validated(images: np.ndarray) -> np.ndarray:
    """The input as (N, C, H, W), or a ValueError that says what was expected and what was got."""
    if not isinstance(images, np.ndarray):
        raise ValueError(f"images must be a numpy array of shape (N, H, W) or (N, C, H, W), got {type(images).__name__}")
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (N, H, W) or (N, C, H, W) with C = 1 or 3, got {images.ndim} dimension(s): {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must have a floating dtype with values in [0, 1], got dtype {images.dtype}")
    if images.size == 0:
        return images
    finite = np.isfinite(images)
    if not finite.all():
        raise ValueError(f"images must be finite, got {images.size - np.count_nonzero(finite)} NaN or inf value(s)")
    low, high = float(images.min()), float(images.max())
    if low < -_RANGE_TOLERANCE or high > 1.0 + _RANGE_TOLERANCE:
        raise ValueError(f"images must have values in [0, 1], got values in [{low:g}, {high:g}]")
    return images


def _measure_chunk(images: np.ndarray) -> dict[str, np.ndarray]:
    """The stroke attributes of one batch (N, H, W) of validated grayscale images."""
    shear, yc = _moments(images)
    rows, cols = _crop_box(images >= THRESHOLD)
    fg = _upsample(images[:, rows, cols], UPSAMPLE) >= THRESHOLD
    # Upsampled pixel centres in original-image coordinates, so that no result depends on the crop.
    ys = rows.start + (np.arange(fg.shape[1]) + 0.5) / UPSAMPLE - 0.5
    xs = cols.start + (np.arange(fg.shape[2]) + 0.5) / UPSAMPLE - 0.5

    area = np.count_nonzero(fg.reshape(len(fg), -1), axis=1) / UPSAMPLE**2
    thickness = _skeleton_thickness(fg) / UPSAMPLE
    height, width = _extents(fg, ys, xs, shear, yc)
    slant = np.degrees(np.arctan(shear))
    slant[area == 0] = np.nan
    return {"slant": slant, "thickness": thickness, "width": width, "height": height, "area": area}


def _moments(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slant shear ``s = -mu11 / mu02`` (0 where mu02 == 0) and centroid row ``yc`` of each image.

    Both from intensity-weighted moments; ``yc`` is NaN for an all-zero image.
    """
    y = np.arange(images.shape[1], dtype=np.float64)
    x = np.arange(images.shape[2], dtype=np.float64)
    row_mass = images.sum(axis=2, dtype=np.float64)  # sum over x of I, shape (N, H)
    row_xmass = (images * x).sum(axis=2, dtype=np.float64)  # sum over x of x I, shape (N, H)
    mass = row_mass.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        yc = (row_mass * y).sum(axis=1) / mass
        xc = row_xmass.sum(axis=1) / mass
        dy = y - yc[:, None]
        mu11 = (dy * (row_xmass - xc[:, None] * row_mass)).sum(axis=1)
        mu02 = (dy**2 * row_mass).sum(axis=1)
        return np.where(mu02 > 0, 0.0 - mu11 / mu02, 0.0), yc  # 0.0 - : no negative zero


def _crop_box(fg: np.ndarray) -> tuple[slice, slice]:
    """Rows and columns of the batch's foreground bounding box, widened by one pixel.

    Outside that box every pixel is below the threshold, and linear interpolation between such
    pixels (or zeros) stays below it, so upsampling the crop, with zeros beyond it, gives the same
    foreground as upsampling the whole image.
    """
    r = np.flatnonzero(fg.any(axis=(0, 2)))
    c = np.flatnonzero(fg.any(axis=(0, 1)))
    if len(r) == 0:
        return slice(0, 1), slice(0, 1)
    return (
        slice(max(r[0] - 1, 0), min(r[-1] + 2, fg.shape[1])),
        slice(max(c[0] - 1, 0), min(c[-1] + 2, fg.shape[2])),
    )


def _upsample(images: np.ndarray, factor: int) -> np.ndarray:
    """Bilinear upsampling of (N, H, W) by an integer factor, as float32."""
    out = images.astype(np.float32)
    for axis in (1, 2):
        out = _upsample_axis(out, factor, axis)
    return out


def _upsample_axis(x: np.ndarray, factor: int, axis: int) -> np.ndarray:
    """Linear upsampling along one axis with half-pixel centres, zero outside the input.

    Output pixel ``factor * i + k`` sits at input coordinate ``i + d``, ``d = (2k + 1 - factor)
    / (2 factor)``, and takes ``(1 - |d|) x[i] + |d| x[i + sign(d)]`` (torch's bilinear
    interpolation with ``align_corners=False``, except that it clamps at the edges). Taking the
    outside as background makes a digit that touches the border measure as it would one pixel in.
    """
    n = x.shape[axis]

    def along(start: int, stop: int) -> tuple[slice, ...]:
        return (slice(None),) * axis + (slice(start, stop),)

    zero = np.zeros_like(x[along(0, 1)])
    padded = np.concatenate([zero, x, zero], axis=axis)
    out = np.empty(x.shape[: axis + 1] + (factor,) + x.shape[axis + 1 :], dtype=np.float32)
    for k in range(factor):
        d = (2 * k + 1 - factor) / (2 * factor)
        neighbour = padded[along(0, n)] if d < 0 else padded[along(2, n + 2)]
        part = out[(slice(None),) * (axis + 1) + (k,)]
        np.multiply(x, np.float32(1 - abs(d)), out=part)
        part += np.float32(abs(d)) * neighbour
    return out.reshape(x.shape[:axis] + (n * factor,) + x.shape[axis + 1 :])


def _extents(
    fg: np.ndarray, ys: np.ndarray, xs: np.ndarray, shear: np.ndarray, yc: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Height and de-slanted width of the foreground (NaN where it is empty).

    ``ys``/``xs`` are the pixel-centre coordinates of ``fg``'s rows/columns. Only each row's
    leftmost and rightmost foreground pixel can attain the extremes of ``x' = x + s (y - yc)``.
    """
    step = 1.0 / UPSAMPLE
    row_has = fg.any(axis=2)  # (N, rows)
    left = xs[np.argmax(fg, axis=2)]
    right = xs[fg.shape[2] - 1 - np.argmax(fg[:, :, ::-1], axis=2)]
    offset = shear[:, None] * (ys[None, :] - yc[:, None])
    with np.errstate(invalid="ignore"):
        x_min = np.where(row_has, left + offset, np.inf).min(axis=1)
        x_max = np.where(row_has, right + offset, -np.inf).max(axis=1)
        y_min = np.where(row_has, ys, np.inf).min(axis=1)
        y_max = np.where(row_has, ys, -np.inf).max(axis=1)
    empty = ~row_has.any(axis=1)
    width = np.where(empty, np.nan, x_max - x_min + step)
    height = np.where(empty, np.nan, y_max - y_min + step)
    return height, width


def _skeleton_thickness(fg: np.ndarray) -> np.ndarray:
    """Twice the mean distance to the background over the skeleton of each binary image (N, H, W).

    The images are packed as the bits of a byte array of shape (H, W, ceil(N / 8)), 8 images
    per byte, so that thinning and erosion are a handful of bitwise operations on whole arrays.
    The distance of a pixel is the number of successive erosions (4-neighbour, 8-neighbour,
    4-neighbour, ...) of the foreground that it belongs to, the original foreground counting as
    the first; summed over the skeleton in a bit-sliced per-pixel counter. NaN where empty.
    """
    n = fg.shape[0]
    packed = np.packbits(np.moveaxis(fg, 0, -1), axis=-1)
    eroded = np.zeros((packed.shape[0] + 2, packed.shape[1] + 2, packed.shape[2]), dtype=np.uint8)
    eroded[1:-1, 1:-1] = packed
    skeleton_grid = eroded.copy()
    _thin(skeleton_grid)
    skeleton = skeleton_grid[1:-1, 1:-1]

    counter: list[np.ndarray] = []  # bit planes, least significant first, of each pixel's distance
    eight = False
    while True:
        carry = skeleton & eroded[1:-1, 1:-1]
        if not carry.any():
            break
        for i, plane in enumerate(counter):
            counter[i], carry = plane ^ carry, plane & carry
        if carry.any():
            counter.append(carry)
        _erode(eroded, eight)
        eight = not eight

    def count(plane: np.ndarray) -> np.ndarray:
        bits = np.unpackbits(plane.reshape(-1, plane.shape[-1]), axis=-1, count=n)
        return bits.sum(axis=0, dtype=np.int64)

    distance_sum = sum(2**i * count(plane) for i, plane in enumerate(counter))
    with np.errstate(invalid="ignore", divide="ignore"):
        return 2.0 * distance_sum / count(skeleton)


def _neighbourhood(grid: np.ndarray) -> tuple[np.ndarray, ...]:
    """Views of the interior of a zero-bordered grid and of its 8 neighbours.

    In the order (centre, E, NE, N, NW, W, SW, S, SE): counter-clockwise from east, which is
    the order x1..x8 of Lam, Lee & Suen (1992).
    """
    return (
        grid[1:-1, 1:-1],
        grid[1:-1, 2:],
        grid[:-2, 2:],
        grid[:-2, 1:-1],
        grid[:-2, :-2],
        grid[1:-1, :-2],
        grid[2:, :-2],
        grid[2:, 1:-1],
        grid[2:, 2:],
    )


def _erode(grid: np.ndarray, eight: bool) -> None:
    """Erode the interior of a zero-bordered bit grid in place by the 4- or 8-neighbourhood."""
    c, e, ne, nn, nw, w, sw, s, se = _neighbourhood(grid)
    kept = c & e & nn & w & s
    if eight:
        kept &= ne & nw & sw & se
    c[...] = kept


def _at_least_two(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Bitwise: at least two of the four bits are set."""
    return (a & b) | (c & d) | ((a | b) & (c | d))


def _thin(grid: np.ndarray) -> None:
    """Guo-Hall thinning, in place, of a zero-bordered bit grid (the thinning of skimage's ``thin``).

    After Lam, Lee & Suen (1992), "Thinning methodologies - a comprehensive survey", algorithm
    A1. A foreground pixel p with neighbours x1..x8 (E, NE, N, NW, W, SW, S, SE) is deleted in
    the first sub-iteration when G1, G2 and G3 hold, in the second when G1, G2 and G3' hold:

    * G1: exactly one of ``b_i = ~x_{2i-1} & (x_{2i} | x_{2i+1})``, i = 1..4, holds (deleting p
      keeps its neighbours 8-connected);
    * G2: ``2 <= min(n1, n2) <= 3`` with ``n1 = sum_k x_{2k-1} | x_{2k}`` and
      ``n2 = sum_k x_{2k} | x_{2k+1}`` (p is neither an end point nor an interior point);
    * G3: ``(x2 | x3 | ~x8) & x1 == 0``; G3': ``(x6 | x7 | ~x4) & x5 == 0``.

    Both sub-iterations repeat until neither deletes a pixel. The result is a one-pixel-wide,
    8-connected skeleton with the same connectivity as the foreground.
    """
    changed = True
    while changed:
        changed = False
        for first in (True, False):
            c, x1, x2, x3, x4, x5, x6, x7, x8 = _neighbourhood(grid)
            b = (~x1 & (x2 | x3), ~x3 & (x4 | x5), ~x5 & (x6 | x7), ~x7 & (x8 | x1))
            g1 = (b[0] | b[1] | b[2] | b[3]) & ~_at_least_two(*b)
            n1 = (x1 | x2, x3 | x4, x5 | x6, x7 | x8)
            n2 = (x2 | x3, x4 | x5, x6 | x7, x8 | x1)
            all_eight = n1[0] & n1[1] & n1[2] & n1[3] & n2[0] & n2[1] & n2[2] & n2[3]
            g2 = _at_least_two(*n1) & _at_least_two(*n2) & ~all_eight
            g3 = ~(x1 & (x2 | x3 | ~x8)) if first else ~(x5 & (x6 | x7 | ~x4))
            delete = c & g1 & g2 & g3
            if delete.any():
                c &= ~delete
                changed = True
