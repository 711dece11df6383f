"""Render attention maps as images: a perceptual colormap, heatmaps and overlays (Pillow and numpy only).

The colormap is built in Oklab (Ottosson, 2020, "A perceptual color space for image processing"), where
Euclidean distance tracks perceived difference: lightness rises linearly from dark to bright, so equal steps in
attention read as equal steps in brightness (also in grayscale print and for colour-blind readers), while the
hue turns from violet through blue and green to yellow, like viridis, to add contrast. Chroma is as large as the
sRGB gamut allows up to a cap, found per entry by bisection, so no colour is clipped and the lightness ramp
stays exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image

#: Oklab lightness at the low and high ends of the colormap.
LIGHTNESS_RANGE: tuple[float, float] = (0.27, 0.96)
#: Oklab hue angle (degrees) at the low and high ends: violet to yellow, through blue and green.
HUE_RANGE: tuple[float, float] = (300.0, 105.0)
#: Upper bound on Oklab chroma; the gamut lowers it where needed.
MAX_CHROMA = 0.16
_ENTRIES = 256


def _oklab_to_linear_srgb(lab: np.ndarray) -> np.ndarray:
    lightness, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    l_ = (lightness + 0.3963377774 * a + 0.2158037573 * b) ** 3
    m_ = (lightness - 0.1055613458 * a - 0.0638541728 * b) ** 3
    s_ = (lightness - 0.0894841775 * a - 1.2914855480 * b) ** 3
    red = 4.0767416621 * l_ - 3.3077115913 * m_ + 0.2309699292 * s_
    green = -1.2684380046 * l_ + 2.6097574011 * m_ - 0.3413193965 * s_
    blue = -0.0041960863 * l_ - 0.7034186147 * m_ + 1.7076147010 * s_
    return np.stack([red, green, blue], axis=-1)


def _encode_srgb(linear: np.ndarray) -> np.ndarray:
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)


def _in_gamut(lightness: float, chroma: float, hue: float) -> bool:
    lab = np.array([lightness, chroma * math.cos(hue), chroma * math.sin(hue)])
    rgb = _oklab_to_linear_srgb(lab)
    return bool(np.all(rgb >= -1e-9) and np.all(rgb <= 1 + 1e-9))


@lru_cache(maxsize=1)
def colormap_table() -> np.ndarray:
    """The colormap as a ``[256, 3]`` uint8 table, dark violet (0) to bright yellow (255)."""
    t = np.linspace(0.0, 1.0, _ENTRIES)
    lightness = LIGHTNESS_RANGE[0] + (LIGHTNESS_RANGE[1] - LIGHTNESS_RANGE[0]) * t
    hue = np.radians(HUE_RANGE[0] + (HUE_RANGE[1] - HUE_RANGE[0]) * t)
    chroma = np.empty_like(t)
    for i in range(_ENTRIES):
        low, high = 0.0, MAX_CHROMA
        if _in_gamut(lightness[i], high, hue[i]):
            chroma[i] = high
            continue
        for _ in range(30):  # bisection on the gamut boundary, precise to ~1e-10
            mid = (low + high) / 2
            low, high = (mid, high) if _in_gamut(lightness[i], mid, hue[i]) else (low, mid)
        chroma[i] = low
    lab = np.stack([lightness, chroma * np.cos(hue), chroma * np.sin(hue)], axis=-1)
    rgb = _encode_srgb(_oklab_to_linear_srgb(lab))
    return np.round(rgb * 255).astype(np.uint8)


def colorize(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Map values to colours: ``[..., 3]`` uint8. Values are scaled from ``[vmin, vmax]`` (default: 0 and the
    maximum, so zero attention is always the darkest colour) and clipped; NaN maps to the darkest colour."""
    values = np.asarray(values, dtype=np.float64)
    vmin = 0.0 if vmin is None else float(vmin)
    finite = values[np.isfinite(values)]
    vmax = (float(finite.max()) if finite.size else 1.0) if vmax is None else float(vmax)
    span = vmax - vmin
    scaled = (values - vmin) / span if span > 0 else np.zeros_like(values)
    scaled = np.nan_to_num(np.clip(scaled, 0.0, 1.0), nan=0.0)
    return colormap_table()[np.round(scaled * (_ENTRIES - 1)).astype(np.intp)]


def _size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """``(width, height)`` from an int (square), a ``(width, height)`` pair, or ``None``."""
    if size is None:
        return None
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size, size
    if (
        isinstance(size, Sequence)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)
    ):
        return int(size[0]), int(size[1])
    raise ValueError(f"size must be a positive int or a (width, height) pair of positive ints; got {size!r}")


def heatmap(
    values: np.ndarray,
    size: int | Sequence[int] | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
) -> Image.Image:
    """One 2-D map ``[H, W]`` as a colour image, resized to ``size`` (``(width, height)``) with bicubic filtering
    on the values (before colouring, so the interpolation stays on the colormap)."""
    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"heatmap takes a 2-D map [H, W]; got shape {values.shape}")
    target = _size(size)
    if target is not None and target != (values.shape[1], values.shape[0]):
        values = np.asarray(Image.fromarray(np.ascontiguousarray(values)).resize(target, Image.Resampling.BICUBIC))
    return Image.fromarray(colorize(values, vmin, vmax))


def to_pil(image) -> Image.Image:
    """A PIL RGB image from a PIL image, or an ``[H, W, 3]`` / ``[H, W]`` array (float in [0, 1] or uint8)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.moveaxis(array, 0, -1)  # [C, H, W] tensors
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ValueError(f"image must be a PIL image or an [H, W, 3] / [H, W] array; got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.round(np.clip(array.astype(np.float64), 0.0, 1.0) * 255).astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def overlay(
    image, values: np.ndarray, alpha: float = 0.5, vmax: float | None = None, vmin: float | None = None
) -> Image.Image:
    """``values`` as a heatmap drawn over ``image`` (resized to the image): ``(1 - alpha) * image + alpha * heat``.

    Args:
        image: a PIL image or an ``[H, W, 3]`` array (float in [0, 1] or uint8).
        values: a 2-D map ``[h, w]``.
        alpha: opacity of the heatmap in ``[0, 1]``.
        vmax: value shown as the brightest colour (default: the map's maximum).
        vmin: value shown as the darkest colour (default: as :func:`colorize`).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    base = to_pil(image)
    heat = heatmap(values, size=base.size, vmin=vmin, vmax=vmax)
    return Image.blend(base, heat, alpha)
