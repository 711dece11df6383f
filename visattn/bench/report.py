"""Benchmark output: JSON with the environment, a markdown table for docs/benchmarks.md, and a PNG chart."""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..charts import grouped_bar_chart
from ..info import autotune_info, collect_info
from .configs import BenchConfig
from .timing import BenchResult


def environment() -> dict[str, Any]:
    """Device, date and versions: every benchmark number is tied to where and when it was measured."""
    info = collect_info()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "visattn": info["visattn"],
        "python": info["python"],
        "packages": info["packages"],
        "torch_cuda": info["torch_cuda"],
        "devices": info["devices"],
    }


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(results: Sequence[BenchResult]) -> str:
    """One row per (configuration, method, pass) that ran; skipped methods are listed below with their reasons.
    Forward rows come first, then backward rows (when the benchmark timed them)."""
    lines = [
        "| configuration | method | pass | density | tiles | ms | TFLOP/s | x dense | density eff. | x flex |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    skipped = []
    for r in sorted(results, key=lambda r: r.direction != "forward"):  # stable: keeps the run order inside a pass
        if r.ms is None:
            skipped.append(f"- {r.config} / {r.method}: {r.note}")
            continue
        method = f"{r.method} ({r.note})" if r.note else r.method
        lines.append(
            f"| {r.config} | {method} | {r.direction} | {_fmt(r.density, 3)} | {_fmt(r.tile_fraction, 3)} | "
            f"{_fmt(r.ms, 3)} | {_fmt(r.tflops, 1)} | {_fmt(r.speedup_vs_dense)} | {_fmt(r.density_efficiency)} | "
            f"{_fmt(r.speedup_vs_flex)} |"
        )
    if skipped:
        lines += ["", "Not run:", *sorted(set(skipped))]
    return "\n".join(lines) + "\n"


def write_report(
    results: Sequence[BenchResult],
    configs: Sequence[BenchConfig],
    out_dir: str | Path,
    *,
    command: str = "",
    name: str = "bench",
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>.md`` and ``<name>.png`` (speedup over dense per method) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "environment": environment(),
        "command": command,
        "configurations": [c.as_dict() for c in configs],
        "results": [r.as_dict() for r in results],
        # What backend="auto" chose for each configuration, with every candidate's time (the ``auto`` method).
        "autotune": autotune_info(),
        **(extra or {}),
    }
    paths = {"json": out / f"{name}.json", "markdown": out / f"{name}.md", "chart": out / f"{name}.png"}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    env = payload["environment"]
    device = next((d["name"] for d in env["devices"] if d["type"] == "cuda"), env["devices"][0]["name"])
    header = f"Measured {env['date']} on {device}; torch {env['packages']['torch']}, triton {env['packages']['triton']}"
    paths["markdown"].write_text(f"{header}\n\n`{command}`\n\n{markdown_table(results)}", encoding="utf-8")

    directions = list(dict.fromkeys(r.direction for r in results))
    keys = [(c.name, d) for d in directions for c in configs]
    groups = [name if d == "forward" else f"{name} ({d})" for name, d in keys]
    methods = list(dict.fromkeys(r.method for r in results))
    by_key = {(r.config, r.direction, r.method): r for r in results}
    values = {m: [getattr(by_key.get((*key, m)), "speedup_vs_dense", None) for key in keys] for m in methods}
    values = {m: vs for m, vs in values.items() if any(v is not None for v in vs)}
    if values:
        chart = grouped_bar_chart(
            groups, values, title=f"Speedup over dense SDPA ({device})", axis_label="x dense", reference=1.0
        )
        chart.save(paths["chart"])
    else:
        paths.pop("chart")
    return paths
