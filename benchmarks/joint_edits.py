"""Prompt-to-Prompt's joint-attention edit on this machine's accelerator: the attention core's fast form
(:class:`visattn.kernels.TextBlockEdit`, attention calls over block values and their sums) against the same edit
materialized on the reference backend and the stock SDPA call, at SD3's and Flux's 1024 px shapes.

Run by ``benchmarks/gpu_session.sh`` (step ``edits``): per shape, the median time of each side (CUDA events after a
warm-up), its peak memory beyond the inputs (``torch.cuda.max_memory_allocated``), and how far the fast form and the
materialized edit are from an fp32 materialized oracle; printed and written to ``OUT/edits.json``.

    python benchmarks/joint_edits.py --out DIR [--quick]

``--quick`` uses CPU-sized shapes (CI runs it so the script cannot rot).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


def shapes(quick: bool) -> list[tuple[str, dict]]:
    """``(name, shape)`` of the joint calls: image tokens after text tokens, heads, head size."""
    if quick:
        return [("tiny joint call", {"image": 64, "text": 16, "heads": 2, "dim": 16})]
    return [
        ("SD3 at 1024 px", {"image": 4096, "text": 333, "heads": 24, "dim": 64}),
        ("Flux at 1024 px", {"image": 4096, "text": 512, "heads": 24, "dim": 128}),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for edits.json")
    parser.add_argument("--quick", action="store_true", help="CPU-sized shapes")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per side (default 10)")
    args = parser.parse_args(argv)

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    results = {}
    for name, shape in shapes(args.quick):
        row = results[name] = _measure(shape, device, dtype, args.repeats)
        print(
            f"{name}: stock {row['stock ms']:.2f} ms; text-block form {row['text-block form ms']:.2f} ms "
            f"({row['text-block form x stock']:.2f}x, +{row['text-block form peak MiB']:.0f} MiB); materialized "
            f"{row['materialized ms']:.2f} ms ({row['materialized x stock']:.2f}x, +{row['materialized peak MiB']:.0f}"
            f" MiB); off the fp32 oracle by {row['text-block form max diff vs fp32 oracle']:.1e} / "
            f"{row['materialized max diff vs fp32 oracle']:.1e}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "shapes": results}
    (out / "edits.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _measure(shape: dict, device, dtype, repeats: int) -> dict:
    """One joint call of ``shape`` (batch ``[source, target]``, a re-weighting of six words after the self-attention
    steps): each side's median time and peak memory, and the edited sides' distance from the fp32 oracle."""
    import torch
    import torch.nn.functional as F

    from visattn.bench.layers import joint_reweight_call
    from visattn.kernels import attention

    q, k, v, edit = joint_reweight_call(shape["image"], shape["text"], shape["heads"], shape["dim"], device, dtype)
    sides = {
        "stock": lambda: F.scaled_dot_product_attention(q, k, v),
        "text-block form": lambda: attention(q, k, v, editors=[edit]),
        "materialized": lambda: attention(q, k, v, editors=[edit], backend="reference"),
    }
    row: dict = {"shape": shape, "dtype": str(dtype).removeprefix("torch.")}
    with torch.no_grad():
        oracle = attention(q.float(), k.float(), v.float(), editors=[edit], backend="reference")
        for side, call in sides.items():
            if side != "stock":
                row[f"{side} max diff vs fp32 oracle"] = float((call().float() - oracle).abs().max())
            row[f"{side} ms"], row[f"{side} peak MiB"] = _timed(call, repeats, device)
    for side in ("text-block form", "materialized"):
        row[f"{side} x stock"] = row[f"{side} ms"] / row["stock ms"]
    return row


def _timed(call, repeats: int, device) -> tuple[float, float]:
    """The median milliseconds of ``repeats`` calls after one untimed, and the peak memory one call allocates
    beyond what was allocated before it (MiB; 0 off CUDA)."""
    import torch

    call()
    peak = 0.0
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        call()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    times = []
    for _ in range(max(1, repeats)):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            began = time.perf_counter()
            call()
            times.append((time.perf_counter() - began) * 1e3)
    return statistics.median(times), peak


if __name__ == "__main__":
    sys.exit(main())
