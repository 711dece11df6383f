"""What ``visattn info`` reports: versions, devices, attention backends and what ``backend="auto"`` chose."""

from __future__ import annotations

import importlib
import platform
from typing import Any

from . import __version__


def _version_of(module: str) -> str | None:
    """The version of an importable module, or None when importing it fails (triton on macOS or Windows, ...)."""
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except Exception:  # a broken optional install must not break `visattn info`
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect_info() -> dict[str, Any]:
    """Versions, devices and attention backends, as a JSON-serializable dict (what ``visattn info --json`` prints)."""
    import torch

    from .kernels import available_backends

    devices = [{"type": "cpu", "name": _cpu_name(), "threads": torch.get_num_threads()}]
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(index)
        devices.append(
            {
                "type": "cuda",
                "index": index,
                "name": props.name,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "compute_capability": f"{props.major}.{props.minor}",
            }
        )
    return {
        "visattn": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version_of(name) for name in ("torch", "diffusers", "transformers", "triton")},
        "torch_cuda": torch.version.cuda,
        "devices": devices,
        "backends": {name: {"available": ok, "reason": reason} for name, (ok, reason) in available_backends().items()},
        "autotune": autotune_info(),
    }


def autotune_info() -> dict[str, Any]:
    """How ``backend="auto"`` chooses here, and the decisions it made or read from its cache file."""
    import os

    from .kernels import autotune

    return {
        "cache_file": autotune.cache_path(),
        "forced": os.environ.get("VISATTN_BACKEND") or None,
        "measuring": os.environ.get("VISATTN_AUTOTUNE", "1") not in ("0", "false", "False", "off"),
        "min_measured_work": autotune.MIN_MEASURED_WORK,
        "decisions": {key: decision.to_json() for key, decision in autotune.decisions().items()},
    }


def format_info(info: dict[str, Any]) -> str:
    """``info`` from :func:`collect_info` as aligned plain text."""
    lines = [f"{'visattn':<14}{info['visattn']}", f"{'python':<14}{info['python']} ({info['platform']})"]
    for name, version in info["packages"].items():
        lines.append(f"{name:<14}{version if version is not None else 'not importable'}")
    lines += ["", "devices"]
    for device in info["devices"]:
        if device["type"] == "cpu":
            lines.append(f"  {'cpu':<12}{device['name']}, {device['threads']} threads")
        else:
            label = f"cuda:{device['index']}"
            lines.append(
                f"  {label:<12}{device['name']}, {device['memory_gib']} GiB, "
                f"compute capability {device['compute_capability']}"
            )
    if not any(device["type"] == "cuda" for device in info["devices"]):
        build = f"CUDA {info['torch_cuda']} build" if info["torch_cuda"] else "CPU-only build"
        lines.append(f"  {'cuda':<12}none (torch is a {build})")
    lines += ["", *_format_autotune(info.get("autotune"))]
    lines += ["", "attention backends"]
    for name, backend in info["backends"].items():
        state = "available" if backend["available"] else "unavailable"
        lines.append(f"  {name:<12}{state:<13}{backend['reason']}")
    return "\n".join(lines)


def _format_autotune(auto: dict[str, Any] | None) -> list[str]:
    """The ``backend='auto'`` section: its policy, its cache, and one line per decision."""
    from .kernels.autotune import format_ms

    if auto is None:
        return []
    lines = ["backend='auto'"]
    if auto["forced"]:
        lines.append(f"  forced        VISATTN_BACKEND={auto['forced']} (where that backend can compute the call)")
    policy = (
        f"measured on the first call per shape (calls of at least {auto['min_measured_work']:.3g} "
        "batch*heads*Nq*Nk*dim)"
        if auto["measuring"]
        else "preference order only (VISATTN_AUTOTUNE=0)"
    )
    lines.append(f"  choice        {policy}")
    cache = auto["cache_file"] or "memory only (set VISATTN_AUTOTUNE_CACHE=path.json to keep decisions)"
    lines.append(f"  cache         {cache}")
    if not auto["decisions"]:
        lines.append("  decisions     none yet")
    for key, decision in auto["decisions"].items():
        timings = ", ".join(f"{name} {format_ms(t['per_call_s'])}" for name, t in decision["timings"].items())
        lines.append(f"  {decision['backend']} ({decision['reason']})  {key}" + (f"  [{timings}]" if timings else ""))
        for name, why in decision["rejected"].items():
            lines.append(f"      {name} rejected: {why}")
    return lines
