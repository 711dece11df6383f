"""One labelled sheet of per-word attention maps, as the Prompt-to-Prompt notebooks show them
(``show_cross_attention``): a row per image, the image first, then each word's map drawn over it, titled with the
word, and one colour bar. Drawn with matplotlib (its object API on an Agg canvas: no pyplot state, no display),
in the package's perceptual colormap (:func:`visattn.heatmaps.colormap_table`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from .heatmaps import colormap_table, to_pil

#: inches per panel, and the resolution the sheet is drawn at
PANEL_INCHES = 1.8
DPI = 110


def word_sheet(
    rows: Sequence[tuple[str, Any, Mapping[str, Any]]],
    title: str | None = None,
    alpha: float = 0.6,
) -> Image.Image:
    """A labelled sheet: for each ``(label, image, {word: map})`` row, the image then every word's map over it.

    Each map is scaled to its own range (the notebooks' per-word normalization), so the colour bar reads as the
    share of that word's strongest attention. Video maps (``[frames, h, w]``) show their mean over frames.

    Args:
        rows: per image, its label, the image (PIL or an ``[H, W, 3]`` array) and its words' maps (``[h, w]``
            or ``[frames, h, w]`` arrays or tensors).
        title: a line above the sheet (for example the prompts and the edit).
        alpha: opacity of the maps over the images, in ``[0, 1]``.

    Raises:
        ValueError: no rows, or ``alpha`` outside ``[0, 1]``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    if not rows:
        raise ValueError("word_sheet needs at least one (label, image, maps) row")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha!r} is not allowed; it must be in [0, 1]")
    columns = 1 + max(len(maps) for _, _, maps in rows)
    figure = Figure(figsize=(PANEL_INCHES * columns + 0.6, PANEL_INCHES * len(rows) + (0.5 if title else 0.2)))
    FigureCanvasAgg(figure)
    colormap = ListedColormap(colormap_table() / 255.0, name="visattn")
    axes = figure.subplots(len(rows), columns, squeeze=False)
    shown = None
    for row, (label, image, maps) in enumerate(rows):
        picture = np.asarray(to_pil(image))
        height, width = picture.shape[:2]
        axes[row, 0].imshow(picture)
        axes[row, 0].set_title(label, fontsize=9)
        for column, (word, values) in enumerate(maps.items(), start=1):
            values = _as_map(values)
            low, high = float(values.min()), float(values.max())
            scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
            axis = axes[row, column]
            axis.imshow(picture)
            shown = axis.imshow(
                scaled,
                cmap=colormap,
                vmin=0.0,
                vmax=1.0,
                alpha=alpha,
                extent=(0, width, height, 0),
                interpolation="bilinear",
            )
            axis.set_title(word, fontsize=10)
    for axis in axes.flat:
        axis.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=10)
    if shown is not None:
        bar = figure.colorbar(shown, ax=axes.ravel().tolist(), fraction=0.025, pad=0.02)
        bar.set_label("attention, share of the word's peak", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    buffer.seek(0)
    with Image.open(buffer) as drawn:
        return drawn.convert("RGB")


def _as_map(values: Any) -> np.ndarray:
    array = values.detach().float().cpu().numpy() if hasattr(values, "detach") else np.asarray(values, np.float32)
    if array.ndim == 3:
        array = array.mean(axis=0)
    if array.ndim != 2:
        raise ValueError(f"a word's map must be [h, w] or [frames, h, w]; got shape {array.shape}")
    return array.astype(np.float32)
