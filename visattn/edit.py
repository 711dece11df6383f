"""The editing job behind ``visattn edit``: a Prompt-to-Prompt edit of a generated or a real image, saved with
its parameters, plus one labelled sheet of per-word attention maps (source and edit).

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
    signature_default,
)
from .images import save_image, slugify

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

INVERSIONS = ("null-text", "negative-prompt", "ddim")
#: The inversion of ``visattn edit --image`` and of the demo's uploads: plain DDIM inversion, the only one that kept
#: the background in the first-hour tests (issue 29); the others remain a choice.
DEFAULT_INVERSION = "ddim"


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


def _as_edit_advice(message: str) -> str:
    """A processor's message with its advice in this function's terms: the processors name their Python
    constructors (``use PromptToPrompt.refine(source, target, ...)``), while an edit here chooses them with ``mode``
    (``visattn edit --mode refine``)."""
    return re.sub(r"use PromptToPrompt\.(replace|refine)\([^)]*\)", r"use --mode \1 (mode='\1')", message)


def _edit_effect(source: str, target: str | None, weights: Mapping[str, float], mode: str, **schedule: Any):
    from .effects import PromptToPrompt

    if target is None or target == source:
        if not weights:
            raise UsageError("an edit needs --target (a different prompt) or --reweight WORD=SCALE")
        return PromptToPrompt.reweight(source, weights, **schedule)
    if mode == "auto":  # a word swap when the word counts match, else a refinement
        # Words as Prompt-to-Prompt counts them (punctuation is a word of its own): "a red car, at night".
        from .words import split_words

        mode = "replace" if len(split_words(source)) == len(split_words(target)) else "refine"
    if mode not in ("replace", "refine"):
        raise ParameterError("mode", mode, "must be 'auto', 'replace' or 'refine'")
    constructor = PromptToPrompt.replace if mode == "replace" else PromptToPrompt.refine
    return constructor(source, target, weights=weights or None, **schedule)


def _check_threshold(name: str, value: Any) -> None:
    """ParameterError unless ``value`` is a LocalBlend threshold, a number in ``(0, 1)``."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1):
        raise ParameterError(name, value, "must be a number in (0, 1) (the authors' 0.3)")


def _blend_options(subtract_threshold: Any, radius: Any, start: Any, variant: Any) -> dict[str, Any]:
    """:class:`~visattn.effects.LocalBlend`'s options that :func:`edit` was given away from their defaults, checked
    by :func:`edit`'s names (ParameterError) before anything loads."""
    from .effects.local_blend import VARIANTS
    from .validation import MAX_BLEND_RADIUS

    options: dict[str, Any] = {}
    if variant not in VARIANTS:
        raise ParameterError("blend_variant", variant, f"must be one of {', '.join(VARIANTS)}")
    if variant != "authors":
        options["variant"] = variant
    if not (isinstance(radius, int) and not isinstance(radius, bool) and 0 <= radius <= MAX_BLEND_RADIUS):
        raise ParameterError("blend_radius", radius, f"must be a whole number from 0 to {MAX_BLEND_RADIUS}")
    if radius != 1:
        options["radius"] = radius
    if start is not None:
        if not (isinstance(start, (int, float)) and not isinstance(start, bool) and 0 <= start <= 1):
            raise ParameterError("blend_start", start, "must be a fraction of the schedule in [0, 1]")
        if variant == "prediction" and start != 0:
            raise ParameterError(
                "blend_start", start, "must be 0 with blend_variant='prediction' (it blends from the first step)"
            )
        options["start"] = float(start)
    _check_threshold("blend_subtract_threshold", subtract_threshold)
    if subtract_threshold != 0.3:
        options["subtract_threshold"] = float(subtract_threshold)
    return options


def edit(
    source: str,
    target: str | None = None,
    *,
    reweight: Mapping[str, float] | None = None,
    mode: str = "auto",
    image: str | Path | Any | None = None,
    inversion: str = DEFAULT_INVERSION,
    local_blend: Sequence[str] | None = None,
    blend_threshold: float = 0.3,
    blend_subtract: Sequence[str] | None = None,
    blend_subtract_threshold: float = 0.3,
    blend_radius: int = 1,
    blend_start: float | None = None,
    blend_variant: str = "authors",
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
        inversion: ``"ddim"`` (the default), ``"null-text"`` or ``"negative-prompt"``.
        local_blend: words whose attention region may change; everything outside stays as in the source.
        blend_threshold: LocalBlend's threshold in ``(0, 1)`` on the words' normalized maps (the authors' 0.3).
        blend_subtract: words whose region is taken out of ``local_blend``'s (LocalBlend's ``subtract``, the
            authors' ``substruct_words``); needs ``local_blend``.
        blend_subtract_threshold: the threshold in ``(0, 1)`` on ``blend_subtract``'s maps (the authors' 0.3).
        blend_radius: the max-pooling radius of the words' maps (the authors' 1: a 3 x 3 window of their 16 x 16
            maps' cells; latent cells with ``"prediction"``).
        blend_start: the fraction of the schedule after which the blend acts (``None``: the variant's default,
            the authors' 0.2; ``"prediction"`` blends from the first step).
        blend_variant: ``"authors"`` (the latents blended after each scheduler step, as the authors' notebooks)
            or ``"prediction"`` (visattn's: the prediction blended, so nothing outside the region changes at all).
        cross_steps, self_steps: fractions of the schedule with cross- / self-attention injection.
        pipeline, model, device, dtype: as in :func:`visattn.generate.generate`.
        seed, steps, guidance, height, width: generation parameters (pipeline defaults when ``None``).
        out_dir: folder for the ``source``, ``edit``, ``reconstruction`` and ``maps`` PNGs (each with its
            parameters, in the PNG and a JSON sidecar).
        heatmaps: also write the sheet of per-word maps of source and edit (``maps``).

    Returns:
        ``{"source": path, "edit": path, "reconstruction": path (image edits), "maps": path (with heatmaps)}``.
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
    from .effects import AttentionMaps, LocalBlend

    schedule = {"cross_steps": cross_steps, "self_steps": self_steps}
    _check_threshold("blend_threshold", blend_threshold)
    if blend_subtract and not local_blend:
        raise ParameterError(
            "blend_subtract", list(blend_subtract), "needs local_blend words: it takes its words' region out of theirs"
        )
    blend_options = _blend_options(blend_subtract_threshold, blend_radius, blend_start, blend_variant)
    if blend_options and not local_blend:
        name, value = next(iter(blend_options.items()))
        raise ParameterError(f"blend_{name}", value, "needs local_blend words: it shapes their blend")
    if "subtract_threshold" in blend_options and not blend_subtract:
        raise ParameterError(
            "blend_subtract_threshold", blend_subtract_threshold, "needs blend_subtract words: it thresholds their maps"
        )
    try:
        if local_blend:
            subtract = list(blend_subtract or []) or None
            schedule["local_blend"] = LocalBlend(list(local_blend), blend_threshold, subtract=subtract, **blend_options)
        p2p = _edit_effect(source, target, dict(reweight or {}), mode, **schedule)
    except ValueError as exc:
        raise UsageError(_as_edit_advice(str(exc))) from None

    if pipeline is None:
        pipeline = load_pipeline(model, resolve_device(device), torch_dtype)
        model_name = model or DEFAULT_MODEL
    else:
        model_name = str(model or getattr(pipeline.config, "_name_or_path", None) or type(pipeline).__name__)
    maps = AttentionMaps(prompt=p2p.prompts) if heatmaps else None
    effects = [p2p] + ([maps] if maps is not None else [])
    from .attachment import attach

    started = time.perf_counter()
    written: dict[str, Any] = {}
    base = {
        "source": source,
        "target": p2p.target,
        "reweight": dict(reweight or {}),
        "mode": "reweight" if p2p.target == source else p2p.mode,
        "local_blend": list(local_blend or []),
        "blend_threshold": blend_threshold,
        "blend_subtract": list(blend_subtract or []),
        "blend_subtract_threshold": blend_subtract_threshold,
        "blend_radius": blend_radius,
        "blend_start": blend_start,
        "blend_variant": blend_variant,
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
                pipeline, image, source, p2p, effects, inversion, steps, guidance, seed, progress
            )
            base |= {"image": str(image) if isinstance(image, (str, Path)) else "<in memory>", "inversion": inversion}
            base |= {"steps": inverted.num_inference_steps, "guidance": inverted.guidance_scale}
            written["reconstruction"] = save_image(
                reconstruction, out_dir, f"{stem}-reconstruction", base | {"role": "reconstruction"}
            )
    seconds = time.perf_counter() - started
    # The values the pipeline used, also where its defaults applied.
    base.setdefault("steps", steps if steps is not None else signature_default(pipeline, "num_inference_steps"))
    base.setdefault("guidance", guidance if guidance is not None else signature_default(pipeline, "guidance_scale"))
    base |= {"width": images[0].width, "height": images[0].height, "effects": [repr(p2p)]}
    timing = {"timing": {"edit_seconds": seconds}}
    source_meta = base | {"role": "source", "prompt": source}
    edit_meta = base | {"role": "edit", "prompt": p2p.target}
    written["source"] = save_image(images[0], out_dir, f"{stem}-source", source_meta, extra=timing)
    written["edit"] = save_image(images[1], out_dir, f"{stem}-edit", edit_meta, extra=timing)
    if maps is not None and maps.contributions:
        labels = [f"source: {source}", f"edit: {p2p.target}"]
        sheet = maps.sheet(images, labels=labels, title=f"{base['mode']} edit, per-word attention maps")
        written["maps"] = save_image(sheet, out_dir, f"{stem}-maps", base | {"role": "per-word maps", "prompt": source})
    return written


def _image_edit(pipeline, image, source, p2p, effects, method, steps, guidance, seed, progress=True):
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
        elif method == "null-text":
            inverted = invert(pipeline, image, source, progress=progress, **kwargs)  # its own optimization bar
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
        with attach(pipeline, *effects, *extra) as attachment:
            images = pipeline(prompt=p2p.prompts, output_type="pil", **call).images
    finally:
        pipeline.scheduler = original
    mask = attachment.run_of(p2p).mask  # this edit's local-blend region (None without a blend)
    if mask is not None:
        images = [images[0], keep_upload_outside(images[1], image, mask[0])]
    return images, reconstruction, inverted


def keep_upload_outside(edited: Any, upload: Any, mask: torch.Tensor) -> Any:
    """The edit inside LocalBlend's region, the uploaded image everywhere else.

    The authors blend the edit's latents with the source row's (LocalBlend's default), which reproduces the image
    only as well as the inversion reconstructs it (negative-prompt and null-text inversion change a toy image's
    background by 55-79 of 255 on average); an edit of an upload must keep the upload outside the region, so the
    region (the blend's mask on the latent grid, first frame, nearest-upsampled) takes the edit and the rest the
    upload's own pixels.
    """
    import numpy as np
    import torch.nn.functional as F
    from PIL import Image

    region = mask.reshape(-1, *mask.shape[-2:])[0].float()[None, None]
    region = F.interpolate(region, size=(edited.height, edited.width), mode="nearest")[0, 0].bool().numpy()
    kept = np.asarray(upload.convert("RGB").resize(edited.size))
    return Image.fromarray(np.where(region[..., None], np.asarray(edited.convert("RGB")), kept))
