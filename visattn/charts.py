"""Small, dependency-free charts drawn with Pillow (benchmarks and evaluations are read as pictures).

matplotlib is not a dependency of visattn; a grouped horizontal bar chart with a reference line and a labelled
grid of images (:func:`image_grid`) cover what the benchmark and evaluation reports need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Colour-blind-safe categorical palette (Okabe & Ito, 2008).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")


def grouped_bar_chart(
    groups: Sequence[str],
    values: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    axis_label: str,
    reference: float | None = None,
    bar_height: int = 14,
    width: int = 1000,
) -> Image.Image:
    """Horizontal bars, one group per label in ``groups`` and one bar per series in ``values``.

    Args:
        groups: the group labels (for example benchmark configurations), top to bottom.
        values: series name -> one value per group; ``None`` leaves the bar out (a method that did not run).
        title, axis_label: chart title and the value axis' label.
        reference: draw a dashed vertical line at this value (for example speedup 1.0 = dense).
    """
    font = ImageFont.load_default()
    series = list(values)
    finite = [v for vs in values.values() for v in vs if v is not None]
    top = max(finite + [reference or 0.0, 1e-9])
    label_width = max([len(g) for g in groups] + [10]) * 7 + 16
    plot_left, plot_right = label_width, width - 80
    group_height = bar_height * len(series) + 10
    header, legend = 40, 24
    height = header + group_height * len(groups) + legend + 30
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 10), title, fill="black", font=font)

    def x_of(value: float) -> float:
        return plot_left + (plot_right - plot_left) * value / (top * 1.05)

    for gi, group in enumerate(groups):
        y0 = header + gi * group_height
        draw.text((8, y0 + group_height / 2 - 6), group, fill="black", font=font)
        for si, name in enumerate(series):
            value = values[name][gi]
            if value is None:
                continue
            y = y0 + si * bar_height
            draw.rectangle([plot_left, y, x_of(value), y + bar_height - 2], fill=PALETTE[si % len(PALETTE)])
            draw.text((x_of(value) + 4, y), f"{value:.2f}", fill="black", font=font)
    bottom = header + group_height * len(groups)
    draw.line([plot_left, header - 4, plot_left, bottom], fill="black")
    if reference is not None:
        x = x_of(reference)
        for y in range(header - 4, bottom, 8):
            draw.line([x, y, x, min(y + 4, bottom)], fill="gray")
    draw.text((plot_left, bottom + 4), axis_label, fill="black", font=font)
    x = plot_left
    for si, name in enumerate(series):
        draw.rectangle([x, bottom + 22, x + 12, bottom + 32], fill=PALETTE[si % len(PALETTE)])
        draw.text((x + 16, bottom + 21), name, fill="black", font=font)
        x += 16 + 7 * len(name) + 20
    return image


#: pixels per character and per text line of Pillow's default bitmap font (what the charts are drawn in)
_CHAR_WIDTH, _LINE_HEIGHT = 6, 12


def _fit(text: str, width: int) -> str:
    """``text`` cut (with an ellipsis) to what fits in ``width`` pixels of the default font."""
    room = max(width // _CHAR_WIDTH, 1)
    return text if len(text) <= room else text[: max(room - 1, 0)] + "…"


def _wrap(text: str, width: int, lines: int = 2) -> list[str]:
    """``text`` broken at spaces into at most ``lines`` lines of ``width`` pixels; the last one cut if needed."""
    room = max(width // _CHAR_WIDTH, 1)
    out: list[str] = []
    rest = text.strip()
    while rest and len(out) < lines - 1 and len(rest) > room:
        cut = rest.rfind(" ", 0, room + 1)
        cut = room if cut <= 0 else cut
        out.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        out.append(_fit(rest, width))
    return out


def _as_pil(image: np.ndarray | Image.Image, height: int) -> Image.Image:
    """An RGB image scaled to ``height`` pixels with nearest neighbour, so small images keep visible pixels."""
    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise ValueError(f"image_grid cells must be uint8 arrays or PIL images; got dtype {array.dtype}")
        image = Image.fromarray(array)
    image = image.convert("RGB")
    width = max(round(image.width * height / image.height), 1)
    return image.resize((width, height), Image.NEAREST)


def image_grid(
    cells: Sequence[Sequence[np.ndarray | Image.Image | None]],
    *,
    column_titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    notes: Sequence[Sequence[str | None]] | None = None,
    title: str | None = None,
    cell: int = 96,
    pad: int = 6,
) -> Image.Image:
    """Images in rows and columns, with a title, column titles, a label above each row and a note under each cell.

    Args:
        cells: ``cells[row][column]``: uint8 ``[H, W, 3]`` arrays or PIL images; ``None`` leaves the cell empty.
            Every image is scaled to ``cell`` pixels high (nearest neighbour); a column is as wide as its widest
            image, so a filmstrip (frames side by side) gets a wide column.
        column_titles: one per column, drawn once above the grid.
        row_labels: one per row, drawn above the row's images.
        notes: ``notes[row][column]``: a short text under the cell (for example a metric), or ``None``.
        title: drawn at the top.
        cell, pad: image height and the gap between cells, in pixels.

    Column titles and notes wrap onto two lines; longer text is cut with an ellipsis rather than overlapping its
    neighbour. The picture is as wide as the grid, or as its title and row labels (up to 1200 pixels).
    """
    if cell < 8 or pad < 0:
        raise ValueError(f"cell={cell!r} must be >= 8 and pad={pad!r} >= 0")
    rows = [[None if image is None else _as_pil(image, cell) for image in row] for row in cells]
    columns = max((len(row) for row in rows), default=0)
    for name, texts in (("column_titles", column_titles), ("row_labels", row_labels), ("notes", notes)):
        expected = columns if name == "column_titles" else len(rows)
        if texts is not None and len(texts) != expected:
            raise ValueError(f"{name} has {len(texts)} entries; the grid has {expected} {name.split('_')[0]}s")
    widths = [
        max([row[c].width for row in rows if c < len(row) and row[c] is not None] + [cell]) for c in range(columns)
    ]
    lefts = [pad + sum(widths[:c]) + c * pad for c in range(columns)]
    # wide enough for the grid and for the title and row labels on one line each (up to a readable limit)
    texts = [title or ""] + list(row_labels or [])
    width = max(pad + sum(widths) + columns * pad, min(max(len(t) for t in texts) * _CHAR_WIDTH + 2 * pad, 1200))
    # column titles and notes wrap onto two lines rather than being cut at the cell's width
    headers = [_wrap(text, widths[c]) for c, text in enumerate(column_titles or [])]
    wrapped = [[_wrap(note, widths[c]) if note else [] for c, note in enumerate(row)] for row in notes or []]
    header_height = max([len(lines) for lines in headers] + [0]) * _LINE_HEIGHT + (2 if headers else 0)
    note_height = max([len(lines) for row in wrapped for lines in row] + [0]) * _LINE_HEIGHT
    top = pad + (_LINE_HEIGHT + pad if title else 0) + header_height
    label_height = _LINE_HEIGHT + 2 if row_labels else 0
    row_height = label_height + cell + note_height + 2 + pad
    canvas = Image.new("RGB", (width, top + row_height * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    grey = (60, 60, 60)
    if title:
        draw.text((pad, pad), _fit(title, width - 2 * pad), fill="black", font=font)
    for c, lines in enumerate(headers):
        for i, line in enumerate(lines):
            draw.text((lefts[c], top - header_height + i * _LINE_HEIGHT), line, fill=grey, font=font)
    for r, row in enumerate(rows):
        y = top + r * row_height
        if row_labels:
            draw.text((pad, y), _fit(row_labels[r], width - 2 * pad), fill="black", font=font)
        for c, image in enumerate(row):
            if image is not None:
                canvas.paste(image, (lefts[c], y + label_height))
            for i, line in enumerate(wrapped[r][c] if wrapped and c < len(wrapped[r]) else []):
                draw.text((lefts[c], y + label_height + cell + 1 + i * _LINE_HEIGHT), line, fill=grey, font=font)
    return canvas


def stack_vertically(images: Sequence[Image.Image], pad: int = 0) -> Image.Image:
    """The images one under the other, left-aligned on white (sections of one report picture)."""
    if not images:
        raise ValueError("stack_vertically needs at least one image")
    width = max(image.width for image in images)
    canvas = Image.new("RGB", (width, sum(image.height for image in images) + pad * (len(images) - 1)), "white")
    y = 0
    for image in images:
        canvas.paste(image, (0, y))
        y += image.height + pad
    return canvas
