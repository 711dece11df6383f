"""What ``backend="auto"`` measures and picks on this machine, for the sparse layouts the benchmark uses.

Run by ``benchmarks/gpu_session.sh`` (step ``auto``): every call is measured (``VISATTN_AUTOTUNE_MIN_WORK=0``), the
decisions are printed, written to ``OUT/auto.json`` and kept in the autotune cache (``VISATTN_AUTOTUNE_CACHE``),
and ``visattn info --json`` is saved beside them, so a GPU session leaves the choice and its reasons on disk.

    python benchmarks/auto_choice.py --out DIR [--quick]

``--quick`` uses CPU-sized layouts (CI runs it so the script cannot rot).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def layouts(quick: bool) -> list[tuple[str, dict]]:
    """``(name, pattern arguments)`` of the calls to decide: a 2-D window, a per-frame 3-D window, radial."""
    if quick:
        return [
            ("neighborhood 2-D 16x16, 5x5", {"kind": "neighborhood", "grid": (16, 16), "kernel": (5, 5)}),
            ("neighborhood 3-D 4x8x8, 1x3x3", {"kind": "neighborhood", "grid": (4, 8, 8), "kernel": (1, 3, 3)}),
            ("radial 8x8x8", {"kind": "radial", "grid": (8, 8, 8)}),
        ]
    return [
        ("neighborhood 2-D 64x64, 7x7", {"kind": "neighborhood", "grid": (64, 64), "kernel": (7, 7)}),
        ("neighborhood 2-D 128x128, 13x13", {"kind": "neighborhood", "grid": (128, 128), "kernel": (13, 13)}),
        ("neighborhood 3-D 21x30x52, 3x7x7", {"kind": "neighborhood", "grid": (21, 30, 52), "kernel": (3, 7, 7)}),
        ("neighborhood 3-D 21x30x52, 1x7x7", {"kind": "neighborhood", "grid": (21, 30, 52), "kernel": (1, 7, 7)}),
        ("radial 21x30x52", {"kind": "radial", "grid": (21, 30, 52)}),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for auto.json and info.json")
    parser.add_argument("--quick", action="store_true", help="CPU-sized layouts")
    args = parser.parse_args(argv)
    os.environ.setdefault("VISATTN_AUTOTUNE_MIN_WORK", "0")  # measure every call, small ones included

    import torch

    from visattn.info import autotune_info, collect_info
    from visattn.kernels import NeighborhoodPattern, RadialPattern, attention
    from visattn.kernels.core import auto_decision
    from visattn.kernels.request import AttentionRequest

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    heads, dim = (8, 64) if not args.quick else (2, 16)
    results = {}
    for name, spec in layouts(args.quick):
        grid = spec["grid"]
        tokens = 1
        for size in grid:
            tokens *= size
        if spec["kind"] == "neighborhood":
            pattern = NeighborhoodPattern(grid, spec["kernel"])
        else:
            pattern = RadialPattern(grid, block_size=64 if args.quick else 128)
        q, k, v = (torch.randn(1, heads, tokens, dim, device=device, dtype=dtype) for _ in range(3))
        attention(q, k, v, pattern=pattern)  # the first call measures and caches the decision
        decision = auto_decision(AttentionRequest(q, k, v, pattern=pattern))
        results[name] = None if decision is None else decision.to_json()
        chosen = "not measured" if decision is None else f"{decision.backend} ({decision.reason})"
        print(f"{name}: {chosen}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "auto.json").write_text(json.dumps({"device": str(device), "decisions": results}, indent=2) + "\n")
    info = collect_info()
    info["autotune"] = autotune_info()
    (out / "info.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
