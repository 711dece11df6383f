"""Real-image edits keep the upload (issue 28): a part of the Prompt-to-Prompt study.

A held-out one-object scene is rendered as an "upload", inverted under its caption with each inversion
:func:`visattn.edit.edit` offers (DDIM, null-text, negative-prompt) and edited by a colour word swap with a local
blend on the two colour words, as ``visattn edit --image upload.png --local-blend ...`` does (at most
:data:`MAX_STEPS` steps, :data:`UPLOADS` uploads: null-text inversion is slow). Reported per
inversion: the mean absolute pixel difference, in 0-255 units, between the edit and the upload on the background
(outside both images' objects, :func:`~visattn.eval.metrics.background_change`); the bar is 3/255.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..edit import INVERSIONS, edit
from ..toy.data import render_scene
from .gallery import short_caption
from .generation import EvalContext
from .metrics import background_change, mean
from .prompts import word_swaps
from .tables import table

#: uploads edited per inversion, and the most steps an edit takes (null-text inversion optimizes the
#: unconditional embedding at every step, the costliest part of the study)
UPLOADS = 2
MAX_STEPS = 10
#: the bar: mean background change of an edited upload, in 0-255 units
BAR = 3.0


def count(config: Any) -> int:
    """Edits this part runs (for the study's progress bar)."""
    return len(INVERSIONS) * min(UPLOADS, config.samples)


def run(ctx: EvalContext, study: str, done: Any) -> dict[str, Any]:
    image, config = ctx.need_image(study), ctx.config
    uploads = min(UPLOADS, config.samples)
    swaps = word_swaps("color", uploads, seed=config.data_seed)
    result: dict[str, Any] = {"bar": BAR}
    shown: dict[str, list[np.ndarray]] = {}
    originals = []
    with tempfile.TemporaryDirectory(prefix="visattn-eval-upload-") as folder:
        for swap in swaps:
            upload = render_scene(swap.source_scene).convert("RGB").resize((image.size, image.size))
            originals.append(np.asarray(upload))
        for inversion in INVERSIONS:
            samples = []
            for index, (swap, original) in enumerate(zip(swaps, originals)):
                path = Path(folder) / f"upload-{index}.png"
                Image.fromarray(original).save(path)
                written = edit(
                    swap.source,
                    swap.target,
                    image=path,
                    inversion=inversion,
                    local_blend=[swap.before, swap.after],
                    pipeline=image.pipe,
                    steps=min(image.steps, MAX_STEPS),
                    guidance=image.guidance,
                    seed=config.seed + index,
                    out_dir=Path(folder) / inversion / str(index),
                    heatmaps=False,
                    progress=False,
                )
                edited = np.asarray(Image.open(written["edit"]).convert("RGB"))
                done(1)
                change = background_change(original, edited)
                shown.setdefault(inversion, []).append(edited)
                samples.append(
                    {
                        "source": swap.source,
                        "target": swap.target,
                        "background_change_255": None if change is None else 255.0 * change,
                    }
                )
            values = [s["background_change_255"] for s in samples if s["background_change_255"] is not None]
            result[inversion] = {
                "background_change_255": mean(values),
                "worst_255": max(values) if values else None,
                "n": len(samples),
                "samples": samples,
            }
    rows = [f"{short_caption(swap.source)}: {swap.before} -> {swap.after}" for swap in swaps]
    ctx.show("Prompt-to-Prompt: edits of an upload with local blend", "upload", originals, rows=rows)
    for inversion in INVERSIONS:
        notes = [
            None if s["background_change_255"] is None else f"background {s['background_change_255']:.2f}/255"
            for s in result[inversion]["samples"]
        ]
        ctx.show(
            "Prompt-to-Prompt: edits of an upload with local blend",
            f"{inversion} inversion",
            shown[inversion],
            rows=rows,
            notes=notes,
        )
    return result


def markdown(result: dict[str, Any]) -> str:
    rows = [
        [inversion, result[inversion]["n"], result[inversion]["background_change_255"], result[inversion]["worst_255"]]
        for inversion in INVERSIONS
        if inversion in result
    ]
    return (
        "\nEdits of an upload (a rendered held-out scene, inverted, colour word swapped, local blend on the colour "
        f"words): mean |edit - upload| on the background, in 0-255 units (the bar: {result['bar']:g}).\n\n"
        + table(["inversion", "n", "background change (0-255)", "worst sample"], rows, digits=2)
    )


def headline(result: dict[str, Any]) -> dict[str, float | None]:
    values = [result[i]["background_change_255"] for i in INVERSIONS if result.get(i, {}).get("n")]
    values = [v for v in values if v is not None]
    return {"upload background change (worst inversion, /255)": max(values) if values else None}
