"""The editing job behind ``visattn edit``: a Prompt-to-Prompt edit of a generated or a real image, saved with
its parameters, plus per-word attention heatmaps.

Prompt edits generate source and target in one batch from the same noise (Hertz et al. 2022); image edits first
invert the image (null-text, negative-prompt or plain DDIM inversion; Mokady et al. 2023, Miyake et al. 2023) and
edit from the inverted noise, also writing the reconstruction. Usable from Python::

    from visattn.edit import edit
    paths = edit("a red circle", "a blue circle", steps=20, out_dir="edits")
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import __version__
from .defaults import DEFAULT_MODEL
from .generate import (
    ParameterError,
    UsageError,
    _progress_to_stderr,
    call_arguments,
    check_dtype,
    check_guidance,
    check_positive_int,
    check_seed,
    check_size,
    load_pipeline,
    resolve_device,
)
from .images import save_image, slugify

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

INVERSIONS = ("null-text", "negative-prompt", "ddim")


def parse_weights(items: Sequence[str]) -> dict[str, float]:
    """``["fluffy=2.0", "red car=0.5"]`` -> ``{"fluffy": 2.0, "red car": 0.5}``, with errors naming the item."""
    weights = {}
    for item in items:
        word, sep, value = item.rpartition("=")
        try:
            scale = float(value)
        except ValueError:
            scale = None
        if not sep or not word.strip() or scale is None or scale < 0:
            raise ParameterError("reweight", item, "must be WORD=SCALE with a scale >= 0, e.g. fluffy=2.0")
        weights[word.strip()] = scale
    return weights


def _edit_effect(source: str, target: str | None, weights: Mapping[str, float], mode: str, **schedule: Any):
    from .processors import PromptToPrompt

    if target is None or target == source:
        if not weights:
            raise UsageError("an edit needs --target (a different prompt) or --reweight WORD=SCALE")
        return PromptToPrompt.reweight(source, weights, **schedule)
    if mode == "auto":  # a word swap when the word counts match, else a refinement
        mode = "replace" if len(source.split()) == len(target.split()) else "refine"
    if mode not in ("replace", "refine"):
        raise ParameterError("mode", mode, "must be 'auto', 'replace' or 'refine'")
    constructor = PromptToPrompt.replace if mode == "replace" else PromptToPrompt.refine
    return constructor(source, target, weights=weights or None, **schedule)


def edit(
    source: str,
    target: str | None = None,
    *,
    reweight: Mapping[str, float] | None = None,
    mode: str = "auto",
    image: str | Path | Any | None = None,
    inversion: str = "null-text",
    local_blend: Sequence[str] | None = None,
    cross_steps: float = 0.8,
    self_steps: float = 0.4,
    pipeline: DiffusionPipeline | None = None,
    model: str | None = None,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    out_dir: str | Path = "edits",
    heatmaps: bool = True,
    device: str = "auto",
    dtype: str = "fp32",
    progress: bool = True,
) -> dict[str, Any]:
    """Edit ``source`` into ``target`` (or re-weight words of ``source``) and save everything.

    Args:
        source, target: the prompts; ``target=None`` with ``reweight`` re-weights ``source``'s words.
        reweight: ``{word: scale}`` applied to the target's cross-attention.
        mode: ``"auto"`` (word swap when the word counts match, else refinement), ``"replace"`` or ``"refine"``.
        image: a real image to edit (path or PIL image); it is inverted with ``inversion`` first (SD-family).
        inversion: ``"null-text"``, ``"negative-prompt"`` or ``"ddim"``.
        local_blend: words whose attention region may change; everything outside stays as in the source.
        cross_steps, self_steps: fractions of the schedule with cross- / self-attention injection.
        pipeline, model, device, dtype: as in :func:`visattn.generate.generate`.
        seed, steps, guidance, height, width: generation parameters (pipeline defaults when ``None``).
        out_dir: folder for ``source``, ``edit``, ``reconstruction`` and ``heatmap-*`` PNGs.
        heatmaps: also write per-word heatmaps of source and edit.

    Returns:
        ``{"source": path, "edit": path, "reconstruction": path (image edits), "heatmaps": {name: path}}``.
    """
    check_seed(seed)
    if steps is not None:
        check_positive_int("steps", steps)
    guidance = check_guidance(guidance)
    check_size("height", height)
    check_size("width", width)
    if inversion not in INVERSIONS:
        raise ParameterError("inversion", inversion, f"must be one of {', '.join(INVERSIONS)}")
    torch_dtype = check_dtype(dtype)
    from .processors import AttentionMaps, LocalBlend

    schedule = {"cross_steps": cross_steps, "self_steps": self_steps}
    if local_blend:
        schedule["local_blend"] = LocalBlend(list(local_blend))
    try:
        p2p = _edit_effect(source, target, dict(reweight or {}), mode, **schedule)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    if pipeline is None:
        pipeline = load_pipeline(model, resolve_device(device), torch_dtype)
        model_name = model or DEFAULT_MODEL
    else:
        model_name = model or getattr(pipeline.config, "_name_or_path", None) or type(pipeline).__name__
    maps = AttentionMaps(prompt=p2p.prompts) if heatmaps else None
    effects = [p2p] + ([maps] if maps is not None else [])
    from .attachment import attach

    started = time.perf_counter()
    written: dict[str, Any] = {"heatmaps": {}}
    base = {
        "source": source,
        "target": p2p.target,
        "reweight": dict(reweight or {}),
        "mode": "reweight" if p2p.target == source else p2p.mode,
        "local_blend": list(local_blend or []),
        "cross_steps": cross_steps,
        "self_steps": self_steps,
        "seed": seed,
        "model": model_name,
        "pipeline": type(pipeline).__name__,
        "visattn_version": __version__,
        "torch_version": torch.__version__,
    }
    stem = slugify(p2p.target if p2p.target != source else source)
    out_dir = Path(out_dir)
    with _progress_to_stderr(pipeline, progress):
        if image is None:
            call = call_arguments(
                pipeline,
                {"num_inference_steps": steps, "guidance_scale": guidance, "height": height, "width": width},
            )
            with attach(pipeline, *effects):
                images = pipeline(prompt=p2p.prompts, generator=p2p.generator(seed), output_type="pil", **call).images
        else:
            images, reconstruction, inverted = _image_edit(
                pipeline, image, source, p2p, effects, inversion, steps, guidance, seed
            )
            base |= {"image": str(image) if isinstance(image, (str, Path)) else "<in memory>", "inversion": inversion}
            base |= {"steps": inverted.num_inference_steps, "guidance": inverted.guidance_scale}
            written["reconstruction"] = save_image(
                reconstruction, out_dir, f"{stem}-reconstruction", base | {"role": "reconstruction"}
            )
    seconds = time.perf_counter() - started
    base.setdefault("steps", steps)
    base.setdefault("guidance", guidance)
    timing = {"timing": {"edit_seconds": seconds}}
    written["source"] = save_image(images[0], out_dir, f"{stem}-source", base | {"role": "source"}, extra=timing)
    written["edit"] = save_image(images[1], out_dir, f"{stem}-edit", base | {"role": "edit"}, extra=timing)
    if maps is not None and maps.contributions:
        for index, (role, picture) in enumerate((("source", images[0]), ("edit", images[1]))):
            for word, heat in maps.overlay(picture, prompt=index).items():
                name = f"{role}-{re.sub(r'[^a-z0-9]+', '_', word.lower()).strip('_') or 'word'}"
                meta = base | {"role": f"heatmap of {word!r} in the {role}", "word": word}
                written["heatmaps"][name] = save_image(heat, out_dir, f"{stem}-heatmap-{name}", meta)
    return written


def _image_edit(pipeline, image, source, p2p, effects, method, steps, guidance, seed):
    """Invert ``image`` under ``source`` and run the edit from the inverted noise; returns images, reconstruction."""
    from PIL import Image

    from . import inversion as inv
    from .attachment import attach

    if isinstance(image, (str, Path)):
        try:
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        except (OSError, Image.DecompressionBombError) as exc:
            raise UsageError(f"image={str(image)!r} cannot be read as an image: {exc}") from None
    kwargs = {"num_inference_steps": steps or 50}
    if guidance is not None:
        kwargs["guidance_scale"] = guidance
    invert = {
        "ddim": inv.ddim_inversion,
        "null-text": inv.null_text_inversion,
        "negative-prompt": inv.negative_prompt_inversion,
    }[method]
    try:
        if method == "ddim":
            inverted = invert(pipeline, image, source, generator=torch.Generator("cpu").manual_seed(seed), **kwargs)
        else:
            inverted = invert(pipeline, image, source, **kwargs)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    reconstruction = inv.reconstruct(pipeline, inverted)
    call = inverted.pipeline_kwargs()
    call["latents"] = call["latents"].repeat(2, 1, 1, 1)  # source and target start from the same inverted noise
    extra = [] if inverted.uncond_embeds is None else [inverted.effect()]
    original = pipeline.scheduler
    pipeline.scheduler = inverted.scheduler()
    try:
        with attach(pipeline, *effects, *extra):
            images = pipeline(prompt=p2p.prompts, output_type="pil", **call).images
    finally:
        pipeline.scheduler = original
    return images, reconstruction, inverted
