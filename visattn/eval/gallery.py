"""Example images of an evaluation run, so a reader sees what each table's numbers were measured on.

Every study adds, per condition it compares (a column: the source and its edit, each guidance scale, dense and
sparse attention, ...), the images of its first few held-out samples (the rows), with a short note under each
(the sample's metric). ``visattn eval`` writes the gallery next to the report as ``<name>-gallery.png``; the
numbers stay in the JSON and markdown, the gallery only shows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..charts import image_grid, stack_vertically


def filmstrip(clip: np.ndarray, frames: int = 4) -> np.ndarray:
    """``frames`` evenly spaced frames of a ``[F, H, W, 3]`` clip side by side (first and last included), with a
    one-pixel white gap; an image ``[H, W, 3]`` is returned as it is."""
    clip = np.asarray(clip)
    if clip.ndim == 3 and clip.shape[-1] == 3:
        return clip
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"clip must be [F, H, W, 3] (or an [H, W, 3] image); got shape {clip.shape}")
    picks = np.unique(np.linspace(0, len(clip) - 1, min(frames, len(clip))).round().astype(int))
    gap = np.full((clip.shape[1], 1, 3), 255, dtype=clip.dtype)
    parts = [part for index in picks for part in (clip[index], gap)][:-1]
    return np.concatenate(parts, axis=1)


def short_caption(caption: str) -> str:
    """A toy caption without its articles ("a small red circle at the top left on a blue background" ->
    "small red circle, top left, on blue"), so a row label fits above a few small images."""
    text = caption.replace(" background", "").replace(" at the ", ", ").replace(" in the ", ", ")
    text = text.replace(" moving ", ", moving ").replace(" on a ", ", on ").replace(" and a ", " + ")
    return text[2:] if text.startswith("a ") else text


@dataclass
class _Section:
    rows: list[str]
    columns: list[tuple[str, list[np.ndarray], list[str | None]]] = field(default_factory=list)


class Gallery:
    """Collects example images per study section; :meth:`render` draws them as one labelled picture.

    Args:
        samples: how many samples (rows) a section keeps; 0 keeps nothing.
        cell: the height each image is drawn at, in pixels (nearest neighbour).
    """

    def __init__(self, samples: int = 4, cell: int = 128) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
            raise ValueError(f"samples={samples!r} must be an integer >= 0")
        self.samples = samples
        self.cell = cell
        self._sections: dict[str, _Section] = {}

    @property
    def sections(self) -> list[str]:
        """The section titles, in the order they were first added."""
        return list(self._sections)

    def add(
        self,
        section: str,
        column: str,
        images: Sequence[np.ndarray],
        *,
        rows: Sequence[str],
        notes: Sequence[str | None] | None = None,
    ) -> None:
        """Add one condition's images (a column) to ``section``: ``images[i]`` is sample ``i`` (an image, or a
        clip drawn as a :func:`filmstrip`), ``rows[i]`` its label and ``notes[i]`` its note. Only the first
        ``samples`` are kept; a section's rows are fixed by its first column."""
        if not self.samples:
            return
        count = min(self.samples, len(images))
        if len(rows) < count or (notes is not None and len(notes) < count):
            raise ValueError(f"gallery section {section!r}, column {column!r}: fewer labels or notes than images")
        entry = self._sections.setdefault(section, _Section(rows=[str(label) for label in rows[:count]]))
        count = min(count, len(entry.rows))
        kept = [filmstrip(image) for image in images[:count]]
        entry.columns.append((column, kept, list(notes[:count]) if notes is not None else [None] * count))

    def render(self, title: str | None = None) -> Image.Image | None:
        """The whole gallery, one grid per section under its title; ``None`` when nothing was added."""
        parts = [
            image_grid(
                [
                    [images[r] if r < len(images) else None for _, images, _ in entry.columns]
                    for r in range(len(entry.rows))
                ],
                column_titles=[name for name, _, _ in entry.columns],
                row_labels=entry.rows,
                notes=[
                    [notes[r] if r < len(notes) else None for _, _, notes in entry.columns]
                    for r in range(len(entry.rows))
                ],
                title=section,
                cell=self.cell,
            )
            for section, entry in self._sections.items()
            if entry.columns
        ]
        if not parts:
            return None
        if title:
            parts.insert(0, image_grid([], title=title, cell=self.cell))
        return stack_vertically(parts, pad=8)
