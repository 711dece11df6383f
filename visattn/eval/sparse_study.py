"""Sparse attention against dense attention: fidelity (PSNR, same seed) and time.

* images: :class:`~visattn.effects.NeighborhoodAttention` (Hassani et al., Neighborhood Attention
  Transformer) with a ``k x k`` window, ``k`` the largest odd number at most half the UNet's top latent side, on
  the self-attention layers whose grid is at least ``k`` a side (lower UNet levels are smaller than the window).
* video: neighborhood attention with a 3-D window (per axis about half the axis, at least 3) and
  :class:`~visattn.effects.RadialAttention` (Li et al., 2025; block size = one frame's tokens, so the bands
  shrink per frame of distance; its default dense first 24% of steps).

PSNR compares every sample's decoded output (uint8) with the dense output of the same seed, pooled over the
samples (one mean squared error); ``max_abs_diff`` is in 8-bit levels (0: identical, PSNR infinite, reported as
``null``). Time is the median wall time of one sample's generation after a warm-up run; ``speedup`` is dense
time over the method's. On a CPU the sparse paths run on a reference backend and are expected to be slower;
the speed claim of these methods is for GPU kernels (``visattn bench``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..effects import NeighborhoodAttention, RadialAttention
from .gallery import short_caption
from .generation import EvalContext
from .metrics import psnr
from .prompts import clip_prompts, single_object_scenes
from .tables import table

IMAGE = "sparse_image"
VIDEO = "sparse_video"


def odd_window(side: int) -> int:
    """The largest odd window of at most half of ``side`` (at least 1)."""
    half = max(1, side // 2)
    return half if half % 2 else half - 1


def video_window(axis: int) -> int:
    """A per-axis 3-D neighborhood window: about half the axis, odd, at least 3, never more than the axis."""
    return min(axis, max(3, odd_window(axis)))


def _fidelity(reference: list[np.ndarray], test: list[np.ndarray]) -> dict[str, Any]:
    a, b = np.stack(reference), np.stack(test)
    value = psnr(a, b)
    return {
        "psnr_db": None if math.isinf(value) else value,
        "max_abs_diff": int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()),
    }


def _sample_psnr(reference: np.ndarray, test: np.ndarray) -> str:
    value = psnr(reference, test)
    return "identical" if math.isinf(value) else f"{value:.1f} dB"


def _study(model: Any, prompts: list[str], seeds: list[int], methods: dict[str, tuple], description: str, ctx):
    repeats = ctx.config.timing_repeats
    rows, dense = [], None
    with ctx.bar(len(methods) * (len(prompts) + 1 + repeats), description) as bar:
        dense_seconds = None
        for name, effects in methods.items():
            outputs = model.generate(prompts, seeds, effects=effects, done=bar.update)
            seconds = model.seconds(prompts[0], seeds[0], effects, repeats)
            bar.update(1 + repeats)
            if dense is None:
                dense, dense_seconds = outputs, seconds
            ctx.show(
                f"{description.capitalize()}: the same noise, dense and sparse",
                name,
                outputs,
                rows=[short_caption(p) for p in prompts],
                notes=[
                    None if output is reference else f"PSNR {_sample_psnr(reference, output)}"
                    for reference, output in zip(dense, outputs)
                ],
            )
            rows.append(
                {
                    "method": name,
                    "settings": repr(effects[0]) if effects else "dense SDPA",
                    **_fidelity(dense, outputs),
                    "seconds": seconds,
                    "speedup": dense_seconds / seconds if seconds > 0 else None,
                    "n": len(outputs),
                }
            )
    return rows


def run_image(ctx: EvalContext) -> dict[str, Any]:
    image = ctx.need_image(IMAGE)
    kernel = odd_window(image.latent_side)
    layers = image.self_attention_layers(kernel)
    if kernel < 3 or not layers:
        raise ValueError(
            f"the image model's latent grid ({image.latent_side} a side) is too small for a neighborhood window"
        )
    scenes = single_object_scenes(ctx.config.samples, seed=ctx.config.data_seed, size=image.size)
    methods = {"dense": (), "neighborhood": (NeighborhoodAttention(kernel, layers=layers),)}
    prompts = [s.caption for s in scenes]
    rows = _study(image, prompts, ctx.seeds(len(prompts)), methods, "sparse attention (image)", ctx)
    return {"kernel_size": kernel, "layers": len(layers), "rows": rows}


def run_video(ctx: EvalContext) -> dict[str, Any]:
    video = ctx.need_video(VIDEO)
    kernel = tuple(video_window(axis) for axis in video.grid)
    frame_tokens = video.grid[1] * video.grid[2]
    methods = {
        "dense": (),
        "neighborhood": (NeighborhoodAttention(kernel),),
        "radial": (RadialAttention(block_size=frame_tokens),),
    }
    clips = clip_prompts(ctx.config.samples, seed=ctx.config.data_seed, size=video.size)
    prompts = [c.caption for c in clips]
    rows = _study(video, prompts, ctx.seeds(len(prompts)), methods, "sparse attention (video)", ctx)
    return {"kernel_size": list(kernel), "token_grid": list(video.grid), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    rows = [
        [
            r["method"],
            r["n"],
            "identical" if r["psnr_db"] is None else r["psnr_db"],
            r["max_abs_diff"],
            1000 * r["seconds"],
            r["speedup"],
        ]
        for r in result["rows"]
    ]
    kernel = result["kernel_size"]
    return f"Neighborhood window {kernel}.\n\n" + table(
        ["method", "n", "PSNR vs dense (dB)", "max |diff|", "ms / sample", "speedup"], rows
    )


def headline(result: dict[str, Any]) -> dict[str, float | None]:
    return {}
