"""The evaluation's metrics: plain functions of uint8 RGB images (and of number sequences), tested on hand-made
inputs, so every figure in the report can be recomputed from the saved definition.

Images are ``[H, W, 3]`` ``uint8`` arrays (what a PNG of the generation holds); videos are ``[F, H, W, 3]``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from ..toy.analyze import background_of, find_objects, parse_caption
from ..toy.data import COLORS

#: RGB distance from the analyzer's background estimate beyond which a pixel is foreground (the analyzer's own
#: threshold for object pixels, so "foreground" means what the analyzer would read as part of an object).
FOREGROUND_DISTANCE = 70.0
#: RGB distance from a colour at which a pixel stops counting towards that colour's mass (the analyzer's
#: nearest-colour cut-off).
COLOR_DISTANCE = 90.0


def _image(image: np.ndarray, name: str = "image") -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"{name} must be an RGB array [H, W, 3]; got shape {array.shape}")
    return array.astype(np.float64)


def _same_shape(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{names} must have the same shape; got {a.shape} and {b.shape}")


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Pipeline output in ``[0, 1]`` (``output_type="np"``) as ``uint8``, rounded like a saved PNG."""
    return (np.clip(np.asarray(images, dtype=np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def foreground_mask(image: np.ndarray) -> np.ndarray:
    """Boolean ``[H, W]``: pixels farther than :data:`FOREGROUND_DISTANCE` from the analyzer's background estimate
    (:func:`visattn.toy.analyze.background_of`, the median border colour)."""
    pixels = _image(image)
    _, rgb = background_of(pixels)
    return np.linalg.norm(pixels - rgb, axis=2) > FOREGROUND_DISTANCE


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks; two empty masks are identical structures (1.0)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    _same_shape(a, b, "the two masks")
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def foreground_iou(source: np.ndarray, edit: np.ndarray) -> float:
    """Structure preservation of an edit: :func:`iou` of the two images' :func:`foreground_mask`."""
    return iou(foreground_mask(source), foreground_mask(edit))


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` (boolean ``[H, W]``) dilated by ``pixels`` in every direction (a square neighbourhood)."""
    mask = np.asarray(mask, dtype=bool)
    if pixels < 0:
        raise ValueError(f"pixels={pixels!r} must be >= 0")
    if pixels == 0 or not mask.any():
        return mask.copy()
    height, width = mask.shape
    padded = np.pad(mask, pixels)
    grown = np.zeros_like(mask)
    for dy in range(2 * pixels + 1):
        for dx in range(2 * pixels + 1):
            grown |= padded[dy : dy + height, dx : dx + width]
    return grown


def background_change(source: np.ndarray, edit: np.ndarray, margin: int = 2) -> float | None:
    """Mean absolute pixel difference (``[0, 1]`` units) between source and edit on the background they share:
    outside both images' :func:`foreground_mask`, grown by ``margin`` pixels so that the objects' soft edges do not
    count. An edit of one object should leave this near 0; ``None`` when no background pixel is left."""
    objects = grow(foreground_mask(source) | foreground_mask(edit), margin)
    return outside_change(source, edit, objects)


def color_mass(image: np.ndarray, color: str) -> float:
    """How much of the image shows ``color``: the mean over pixels of ``max(0, 1 - d / COLOR_DISTANCE)``, where
    ``d`` is the pixel's RGB distance to the toy colour.

    A pixel of exactly that colour counts 1, a washed-out or darkened one less, one farther than
    :data:`COLOR_DISTANCE` nothing; so the mass rises with the object's area and with its saturation.
    """
    if color not in COLORS:
        raise ValueError(f"color={color!r} is not one of {', '.join(COLORS)}")
    pixels = _image(image)
    distance = np.linalg.norm(pixels - np.array(COLORS[color], dtype=np.float64), axis=2)
    return float(np.clip(1.0 - distance / COLOR_DISTANCE, 0.0, 1.0).mean())


def monotonicity(values: Sequence[float]) -> float:
    """Fraction of consecutive pairs in which ``values`` strictly rises (1.0: strictly increasing).

    A flat response (the weight did nothing) scores 0, not 1: re-weighting must move the measure.
    """
    values = [float(v) for v in values]
    if len(values) < 2:
        raise ValueError(f"values must hold at least two numbers; got {values!r}")
    return sum(b > a for a, b in zip(values, values[1:])) / (len(values) - 1)


def has_duplicate(image: np.ndarray, caption: str) -> bool:
    """Whether the analyzer finds more objects of some described colour than the caption describes."""
    _, described = parse_caption(caption)
    wanted = Counter(obj["color"] for obj in described)
    _, found = find_objects(np.asarray(image))
    seen = Counter(obj.color for obj in found)
    return any(seen[color] > count for color, count in wanted.items())


def psnr(reference: np.ndarray, test: np.ndarray, peak: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB of ``test`` against ``reference`` (``inf`` when they are equal)."""
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(test, dtype=np.float64)
    _same_shape(a, b, "reference and test")
    if not peak > 0:
        raise ValueError(f"peak={peak!r} must be > 0")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(peak * peak / mse)


def sharpness(image: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the luminance (in ``[0, 1]`` units) over interior pixels.

    The usual no-reference focus measure: blur and noise-free flat regions lower it, crisp edges raise it.
    """
    pixels = _image(image) / 255.0
    if min(pixels.shape[:2]) < 3:
        raise ValueError(f"image must be at least 3 x 3 pixels; got {pixels.shape[:2]}")
    luma = pixels @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights
    laplacian = luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4.0 * luma[1:-1, 1:-1]
    return float(laplacian.var())


def upsample_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``[h, w]`` (latent-grid) boolean mask resized to ``size = (H, W)`` pixels by nearest neighbour."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [h, w]; got shape {mask.shape}")
    height, width = size
    rows = np.arange(height) * mask.shape[0] // height
    cols = np.arange(width) * mask.shape[1] // width
    return mask[rows[:, None], cols[None, :]]


def cells_touched(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """A ``[H, W]`` pixel mask reduced to a ``grid = (h, w)`` lattice: a cell is set when any of its pixels is."""
    mask = np.asarray(mask, dtype=bool)
    height, width = grid
    if mask.ndim != 2 or mask.shape[0] % height or mask.shape[1] % width:
        raise ValueError(f"mask of shape {mask.shape} does not split into a {height} x {width} grid of cells")
    cells = mask.reshape(height, mask.shape[0] // height, width, mask.shape[1] // width)
    return cells.any(axis=(1, 3))


def map_share(values: np.ndarray, region: np.ndarray) -> float | None:
    """Share of a non-negative map's mass inside ``region`` (same shape); ``None`` for an all-zero map."""
    values, region = np.asarray(values, dtype=np.float64), np.asarray(region, dtype=bool)
    _same_shape(values, region, "the map and the region")
    total = values.sum()
    return None if total <= 0 else float(values[region].sum() / total)


def outside_change(source: np.ndarray, edit: np.ndarray, region: np.ndarray) -> float | None:
    """Mean absolute pixel difference (``[0, 1]`` units) between source and edit outside ``region`` (a pixel
    mask of the area the edit may change); ``None`` when the region covers the whole image."""
    a, b = _image(source, "source"), _image(edit, "edit")
    _same_shape(a, b, "source and edit")
    outside = ~np.asarray(region, dtype=bool)
    if outside.shape != a.shape[:2]:
        raise ValueError(f"region must be [H, W] = {a.shape[:2]}; got {outside.shape}")
    if not outside.any():
        return None
    return float(np.abs(a - b)[outside].mean() / 255.0)


def mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not ``None`` (``None`` if there are none)."""
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None
