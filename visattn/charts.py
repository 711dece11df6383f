"""Charts for the benchmark and evaluation reports: a grouped bar chart drawn with matplotlib
(:func:`grouped_bar_chart`), and labelled grids of images drawn with Pillow (:func:`image_grid`).

The bar chart is matplotlib's: tick labels, a log axis and legends are what it does well. The image grids stay
Pillow: they paste pixels at exact sizes (nearest-neighbour 32 px frames), which is not a plot.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Colour-blind-safe categorical palette (Okabe & Ito, 2008).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")

#: the spread (largest / smallest bar) beyond which :func:`grouped_bar_chart` uses a log axis by default: one
#: 70x bar on a linear axis would leave the 1.2x bars a few pixels long
LOG_SPREAD = 10.0


def wants_log_axis(values: Sequence[float]) -> bool:
    """Whether bars of ``values`` are better read on a log axis: all positive, spanning more than
    :data:`LOG_SPREAD` times (a log axis cannot show zero or negative bars)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return bool(finite) and min(finite) > 0 and max(finite) / min(finite) > LOG_SPREAD


def grouped_bar_chart(
    groups: Sequence[str],
    values: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    axis_label: str,
    reference: float | None = None,
    group_label: str | None = None,
    log_scale: bool | None = None,
    bar_height: int = 14,
    width: int = 1000,
) -> Image.Image:
    """Horizontal bars drawn with matplotlib, one group per label in ``groups`` and one bar per series in
    ``values``, each bar labelled with its value; returned as a PIL image (callers save it).

    Args:
        groups: the group labels (for example benchmark configurations), top to bottom.
        values: series name -> one value per group; ``None`` leaves the bar out (a method that did not run).
        title, axis_label: chart title and the value axis' label.
        reference: draw a dashed vertical line at this value (for example speedup 1.0 = dense).
        group_label: the group axis' label (default: none; the group names say it).
        log_scale: a log value axis; ``None`` (default) chooses it when the bars span more than
            :data:`LOG_SPREAD` times (:func:`wants_log_axis`).
        bar_height, width: a bar's height and the picture's width, in pixels.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display needed; a Figure without pyplot keeps no global state
    from matplotlib.figure import Figure

    series = list(values)
    finite = [v for vs in values.values() for v in vs if v is not None and math.isfinite(v)]
    log = wants_log_axis(finite) if log_scale is None else log_scale
    if log and not all(v > 0 for v in finite + ([reference] if reference is not None else [])):
        raise ValueError("log_scale=True needs positive values (a log axis cannot show zero or negative bars)")

    dpi = 100
    rows = max(len(groups) * max(len(series), 1), 1)
    height = (rows * (bar_height + 2) + len(groups) * 10 + 130) / dpi
    longest = max((len(g) for g in groups), default=10)
    figure = Figure(figsize=(width / dpi, max(height, 2.0)), dpi=dpi, layout="constrained")
    axes = figure.add_subplot()
    slot = 0.8 / max(len(series), 1)
    for si, name in enumerate(series):
        ys, xs = [], []
        for gi, value in enumerate(values[name]):
            if value is not None and math.isfinite(value):
                ys.append(gi - 0.4 + slot * (si + 0.5))
                xs.append(value)
        bars = axes.barh(ys, xs, height=slot * 0.9, color=PALETTE[si % len(PALETTE)], label=name)
        axes.bar_label(bars, labels=[f"{x:.2f}" for x in xs], padding=3, fontsize=7)
    axes.set_yticks(range(len(groups)), labels=list(groups), fontsize=8 if longest < 40 else 6)
    axes.invert_yaxis()  # the first group on top, as listed
    if log:
        from matplotlib.ticker import FuncFormatter

        axes.set_xscale("log")
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 0.5, 1, 10: not 10^0
    if finite:
        low = min(finite + ([reference] if reference is not None else []))
        high = max(finite + ([reference] if reference is not None else []))
        # room on the right for the value labels
        axes.set_xlim(low / 2 if log else min(0.0, low * 1.1), high * (3 if log else 1.15))
    if reference is not None:
        axes.axvline(reference, color="gray", linestyle="--", linewidth=1)
    axes.set_xlabel(axis_label + (" (log scale)" if log else ""))
    if group_label:
        axes.set_ylabel(group_label)
    axes.set_title(title, fontsize=10)
    axes.grid(axis="x", alpha=0.3, which="both" if log else "major")
    if len(series) > 1:  # one series needs no legend: the title and axis say what it is
        axes.legend(fontsize=8, loc="lower right", framealpha=0.9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    buffer.seek(0)
    with Image.open(buffer) as image:
        return image.convert("RGB")


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
