"""The evaluation's files: ``<name>.json`` (everything), ``<name>.md`` (the paper table), ``<name>.png`` (the
headline numbers as bars), ``<name>-gallery.png`` (the studies' first samples, see :mod:`.gallery`) and, when the
guidance sweep ran, ``<name>-guidance-sweep.png`` (its change-vs-scale lines, :func:`.guidance_sweep_study.chart`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..bench.report import environment
from ..charts import grouped_bar_chart
from .gallery import Gallery
from .quality import quality_checks, reported_beside_the_bar
from .suite import TITLES, headline, markdown_section
from .tables import table


def _json_ready(value: Any) -> Any:
    # JSON has no inf/nan; a metric that is undefined is None already, so a non-finite float is a bug upstream
    # that should still not produce an unreadable file.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def _device(env: dict[str, Any]) -> str:
    devices = env.get("devices") or [{"type": "cpu", "name": "cpu"}]
    return next((d["name"] for d in devices if d.get("type") == "cuda"), devices[0].get("name", "cpu"))


def markdown(results: dict[str, Any], env: dict[str, Any], command: str = "") -> str:
    """The whole report as markdown: provenance, models, then one section per study."""
    lines = [
        "# visattn evaluation on the toy world",
        "",
        f"Measured {env['date']} on {_device(env)}; visattn {env['visattn']}, torch {env['packages'].get('torch')}, "
        f"diffusers {env['packages'].get('diffusers')}." + (" Quick subset." if results.get("quick") else ""),
    ]
    if command:
        lines += ["", f"`{command}`"]
    config = results["config"]
    lines += [
        "",
        f"Samples per prompt set: {config['samples']}; noise seeds {config['seed']}..; data seed "
        f"{config['data_seed']} (held out).",
    ]
    for kind, model in results["models"].items():
        if model is not None:
            shown = ", ".join(f"{k} {v}" for k, v in model.items() if k != "model" and v != model["model"])
            lines.append(f"- {kind} model `{model['model']}`: {shown}")
    checks = results.get("quality_bar") or quality_checks(results)
    if checks:
        rows = [[c["claim"], c["measured"], "pass" if c["passed"] else "FAIL"] for c in checks]
        lines += ["", "## Quality bar", ""]
        if results.get("quick"):
            lines += [
                "Quick subset: fewer samples and steps than the bar is set for, so a FAIL may be noise; it still "
                "fails `visattn eval` (exit status 1). Run without --quick to judge the bar.",
                "",
            ]
        lines.append(table(["claim", "measured", "result"], rows).rstrip())
        beside = reported_beside_the_bar(results)
        if beside:
            lines += [""] + beside
    for name, result in results["studies"].items():
        seconds = results.get("seconds", {}).get(name)
        timing = f" ({seconds:.0f} s)" if seconds is not None else ""
        lines += ["", f"## {TITLES[name]}{timing}", "", markdown_section(name, result).rstrip()]
    return "\n".join(lines) + "\n"


def write_report(
    results: dict[str, Any],
    out_dir: str | Path,
    *,
    name: str = "eval",
    command: str = "",
    chart: bool = True,
    gallery: Gallery | None = None,
) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>.md``, (with ``chart``) ``<name>.png`` and (with a ``gallery`` that the
    evaluation filled) ``<name>-gallery.png`` to ``out_dir``; return the paths. Results of a run that measured the
    quality bar alone (:attr:`~visattn.eval.config.EvalConfig.bar_only`) lack what the table, chart and gallery
    show: only ``<name>.json`` is written for them (their measurements and the bar's claims)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    env = environment()
    payload = _json_ready({"environment": env, "command": command, **results, "quality_bar": quality_checks(results)})
    paths = {"json": out / f"{name}.json"}
    paths["json"].write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    if results.get("config", {}).get("bar_only"):
        return paths
    paths["markdown"] = out / f"{name}.md"
    paths["markdown"].write_text(markdown(payload, env, command), encoding="utf-8")
    if chart:
        numbers: dict[str, float | None] = {}
        for study, result in payload["studies"].items():
            numbers.update(headline(study, result))
        numbers = {k: v for k, v in numbers.items() if v is not None}
        if numbers:
            image = grouped_bar_chart(
                list(numbers),
                {"value": list(numbers.values())},
                title=f"visattn on the toy world ({_device(env)})",
                axis_label="share (0-1)",
                reference=1.0,
            )
            paths["chart"] = out / f"{name}.png"
            image.save(paths["chart"])
    if chart and "guidance_sweep" in payload["studies"]:
        from .guidance_sweep_study import chart as sweep_chart

        paths["guidance_sweep_chart"] = out / f"{name}-guidance-sweep.png"
        sweep_chart(payload["studies"]["guidance_sweep"]).save(paths["guidance_sweep_chart"])
    picture = (
        gallery.render(f"visattn on the toy world: first samples of each study ({_device(env)})") if gallery else None
    )
    if picture is not None:
        paths["gallery"] = out / f"{name}-gallery.png"
        picture.save(paths["gallery"])
    return paths
