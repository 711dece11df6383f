"""Markdown table helpers shared by the studies' report sections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def fmt(value: Any, digits: int = 2) -> str:
    """A cell: numbers with ``digits`` decimals, ``None`` as an en dash (not measured)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _numeric(column: Sequence[Any]) -> bool:
    return all(cell is None or (isinstance(cell, (int, float)) and not isinstance(cell, bool)) for cell in column)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """A GitHub markdown table: columns of numbers right-aligned, text left-aligned; cells through :func:`fmt`."""
    columns = list(zip(*rows)) if rows else [()] * len(headers)
    align = [" ---: " if i and _numeric(column) else " --- " for i, column in enumerate(columns)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(fmt(cell, digits) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
