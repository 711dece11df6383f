"""Small, dependency-free charts drawn with Pillow (benchmarks and evaluations are read as pictures).

matplotlib is not a dependency of visattn; a grouped horizontal bar chart with a reference line covers what the
benchmark and evaluation reports need.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
