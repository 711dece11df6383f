"""What ``visattn info`` reports: versions, devices and attention backends."""

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
    lines += ["", "attention backends"]
    for name, backend in info["backends"].items():
        state = "available" if backend["available"] else "unavailable"
        lines.append(f"  {name:<12}{state:<13}{backend['reason']}")
    return "\n".join(lines)
