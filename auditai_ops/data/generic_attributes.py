"""Generic image attributes that need no domain knowledge: intensity, colour and the foreground's geometry.

Conventions (as `auditai_ops.data.attributes`): images are float (N, C, H, W) with values in
[0, 1] and C in {1, 3} (RGB); ``x`` is the column index (growing to the right) and ``y`` the row
index (growing DOWNWARDS), both at pixel centres, in pixels.

* ``brightness`` (intensity, 0 = black, 1 = white): mean over the pixels of the intensity
  ``I = (R + G + B) / 3`` (the grey value for C = 1). Linear: scaling an image by ``a`` scales it by ``a``.
* ``contrast`` (intensity): the standard deviation of ``I`` over the pixels (RMS contrast); 0 for
  a uniform image.

The foreground. The background colour ``b`` is the per-channel median of the image's border
pixels (its outermost rows and columns); the difference map is ``D = max_c |x_c - b_c|`` in
[0, 1]. The foreground is the set of pixels with ``D >= max(otsu(D), MIN_DIFFERENCE)``, where
``otsu`` is Otsu's threshold of the image's 256-bin histogram of D (the split maximising the
between-class variance). An image whose pixels all differ from the background by less than
``MIN_DIFFERENCE`` has no foreground: its geometric and colour attributes are NaN, its size 0.

* ``size`` (pixels^2): number of foreground pixels.
* ``centroid_x``, ``centroid_y`` (pixels): the D-weighted mean column and row of the foreground;
  translating an object inside the image moves them by the shift.
* ``orientation`` (degrees): the angle of the major axis of the foreground, from its D-weighted
  second central moments ``mu20, mu02, mu11`` (in x, y): ``0.5 atan2(-2 mu11, mu20 - mu02)``,
  counter-clockwise from the +x axis as seen on screen, in (-90, 90]. A horizontal bar is 0, a
  vertical one 90, a bar rising to the right like "/" +45. The axis of a shape without one (a
  square, a disc: ``mu20 == mu02``, ``mu11 == 0``) is 0 by convention. Near vertical, the value
  wraps from 90 to -90.
* ``hue`` (degrees, colour images only): circular mean of the HSV hue of the foreground pixels,
  each weighted by its chroma ``max_c - min_c`` (grey pixels have no hue), in (-180, 180]: red
  0, yellow 60, green 120, blue -120 (= 240), magenta -60; it wraps at cyan (180). NaN without a
  chromatic foreground pixel.
* ``saturation`` (fraction 0 to 1, colour images only): mean HSV saturation
  ``(max_c - min_c) / max_c`` (0 for black) of the foreground pixels; 1 for pure colours.
"""

from __future__ import annotations

import numpy as np

GENERIC_UNITS: dict[str, str] = {
    "brightness": "intensity",
    "contrast": "intensity",
    "size": "pixels^2",
    "centroid_x": "pixels",
    "centroid_y": "pixels",
    "orientation": "degrees",
    "hue": "degrees",
    "saturation": "fraction",
}
COLOUR_ONLY: frozenset[str] = frozenset({"hue", "saturation"})

MIN_DIFFERENCE = 0.05
"""Least difference from the background colour (in intensity, max over channels) of a foreground pixel."""

_BINS = 256
_ISOTROPIC = 1e-9
"""Relative anisotropy of the second moments below which a shape has no axis (rounding noise of a square's moments)."""


def measure_generic(images: np.ndarray, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named generic attributes of a batch of validated images (N, C, H, W), as float64 arrays (N,)."""
    out: dict[str, np.ndarray] = {}
    intensity = images.mean(axis=1, dtype=np.float64)  # (N, H, W)
    flat = intensity.reshape(len(images), -1)
    if "brightness" in names:
        out["brightness"] = flat.mean(axis=1)
    if "contrast" in names:
        out["contrast"] = flat.std(axis=1)
    if not set(names) - {"brightness", "contrast"}:
        return out
    difference, foreground = foreground_map(images)
    weight = np.where(foreground, difference, 0.0)
    mass = weight.sum(axis=(1, 2))
    out["size"] = np.count_nonzero(foreground, axis=(1, 2)).astype(np.float64)
    ys, xs = np.arange(images.shape[2], dtype=np.float64), np.arange(images.shape[3], dtype=np.float64)
    row_mass, col_mass = weight.sum(axis=2), weight.sum(axis=1)  # (N, H), (N, W)
    with np.errstate(invalid="ignore", divide="ignore"):
        xc, yc = col_mass @ xs / mass, row_mass @ ys / mass
        dx, dy = xs - xc[:, None], ys - yc[:, None]  # (N, W), (N, H)
        mu20 = (col_mass * dx**2).sum(axis=1) / mass
        mu02 = (row_mass * dy**2).sum(axis=1) / mass
        mu11 = np.einsum("nhw,nh,nw->n", weight, dy, dx) / mass
    out["centroid_x"], out["centroid_y"] = xc, yc
    # y grows downwards, so the on-screen counter-clockwise angle uses -mu11; 0.0 - avoids -0.
    orientation = 0.5 * np.degrees(np.arctan2(0.0 - 2.0 * mu11, mu20 - mu02))
    with np.errstate(invalid="ignore"):
        isotropic = np.hypot(mu20 - mu02, 2.0 * mu11) <= _ISOTROPIC * (mu20 + mu02)
    orientation = np.where(isotropic, 0.0, orientation)
    out["orientation"] = np.where(orientation <= -90.0, orientation + 180.0, orientation)
    if images.shape[1] == 3 and COLOUR_ONLY & set(names):
        out["hue"], out["saturation"] = _hue_saturation(images, foreground)
    return {name: out[name] for name in names}


def foreground_map(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The difference map D (N, H, W) from the border's median colour, and the foreground mask D >= threshold."""
    h, w = images.shape[2:]
    border = np.concatenate([images[:, :, 0, :], images[:, :, h - 1, :], images[:, :, 1 : h - 1, 0], images[:, :, 1 : h - 1, w - 1]], axis=2)  # (N, C, perimeter)
    background = np.median(border, axis=2)
    difference = np.abs(images - background[:, :, None, None]).max(axis=1).astype(np.float64)
    threshold = np.maximum(_otsu(difference), MIN_DIFFERENCE)
    return difference, difference >= threshold[:, None, None]


def _otsu(values: np.ndarray) -> np.ndarray:
    """Otsu's threshold of each image of values (N, H, W) in [0, 1], from a 256-bin histogram.

    With ``w0(k)`` the fraction of pixels in bins <= k and ``m(k)`` their summed bin centres over
    the pixel count, the between-class variance is ``(mT w0 - m)^2 / (w0 (1 - w0))``; the threshold
    is the upper edge ``(k + 1) / 256`` of the first bin k maximising it (1.0 for a constant image,
    so that it has no foreground).
    """
    n = len(values)
    bins = np.minimum((values.reshape(n, -1) * _BINS).astype(np.int64), _BINS - 1)
    counts = np.bincount((bins + _BINS * np.arange(n)[:, None]).ravel(), minlength=n * _BINS).reshape(n, _BINS)
    probability = counts / counts.sum(axis=1, keepdims=True)
    centres = (np.arange(_BINS) + 0.5) / _BINS
    w0 = np.cumsum(probability, axis=1)
    m = np.cumsum(probability * centres, axis=1)
    total = m[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        between = (total * w0 - m) ** 2 / (w0 * (1.0 - w0))
    between = np.where(np.isfinite(between), between, -1.0)
    best = np.argmax(between, axis=1)
    return np.where(between.max(axis=1) > 0, (best + 1) / _BINS, 1.0)


def _hue_saturation(images: np.ndarray, foreground: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Chroma-weighted circular mean hue (degrees, (-180, 180]) and mean HSV saturation of the foreground pixels."""
    n = len(images)
    image_of, rows, cols = np.nonzero(foreground)
    r, g, b = images[image_of, :, rows, cols].astype(np.float64).T  # the foreground pixels' channels
    high, low = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    chroma = high - low
    with np.errstate(invalid="ignore", divide="ignore"):
        # HSV hue in sextants: which channel is the largest decides the base angle.
        sextant = np.where(high == r, ((g - b) / chroma) % 6.0, np.where(high == g, (b - r) / chroma + 2.0, (r - g) / chroma + 4.0))
        angle = np.radians(60.0 * np.where(chroma > 0, sextant, 0.0))
        saturation = np.where(high > 0, chroma / high, 0.0)
    cos_sum = np.bincount(image_of, weights=chroma * np.cos(angle), minlength=n)
    sin_sum = np.bincount(image_of, weights=chroma * np.sin(angle), minlength=n)
    hue = np.where(np.bincount(image_of, weights=chroma, minlength=n) > 0, np.degrees(np.arctan2(sin_sum, cos_sum)), np.nan)
    hue = np.where(hue <= -180.0, hue + 360.0, hue)
    count = np.bincount(image_of, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_saturation = np.where(count > 0, np.bincount(image_of, weights=saturation, minlength=n) / count, np.nan)
    return hue, mean_saturation
