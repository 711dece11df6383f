"""Run the studies: load (or take) the pipelines, run each requested study, collect one JSON-able result."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from . import (
    accuracy_study,
    extrapolation_study,
    guidance_study,
    guidance_sweep_study,
    prompt_to_prompt_study,
    sparse_study,
)
from .config import STUDIES, VIDEO_STUDIES, EvalConfig
from .gallery import Gallery
from .generation import EvalContext, ImageModel, VideoModel

#: study name -> (run, markdown section, headline numbers for the chart)
_STUDIES: dict[str, tuple[Callable, Callable, Callable]] = {
    accuracy_study.NAME: (accuracy_study.run, accuracy_study.markdown, accuracy_study.headline),
    prompt_to_prompt_study.NAME: (
        prompt_to_prompt_study.run,
        prompt_to_prompt_study.markdown,
        prompt_to_prompt_study.headline,
    ),
    guidance_study.NAME: (guidance_study.run, guidance_study.markdown, guidance_study.headline),
    guidance_sweep_study.NAME: (
        guidance_sweep_study.run,
        guidance_sweep_study.markdown,
        guidance_sweep_study.headline,
    ),
    sparse_study.IMAGE: (sparse_study.run_image, sparse_study.markdown, sparse_study.headline),
    sparse_study.VIDEO: (sparse_study.run_video, sparse_study.markdown, sparse_study.headline),
    extrapolation_study.IMAGE: (
        extrapolation_study.run_image,
        extrapolation_study.markdown_image,
        extrapolation_study.headline_image,
    ),
    extrapolation_study.VIDEO: (
        extrapolation_study.run_video,
        extrapolation_study.markdown_video,
        extrapolation_study.headline_video,
    ),
}
assert tuple(_STUDIES) == STUDIES

TITLES: dict[str, str] = {
    "prompt_accuracy": "Prompt accuracy",
    "prompt_to_prompt": "Prompt-to-Prompt",
    "perturbation_guidance": "PAG / SoftPAG",
    "guidance_sweep": "Guidance sweep: the toy model's PAG / SoftPAG / SEG and re-weighting defaults",
    "sparse_image": "Sparse attention (image)",
    "sparse_video": "Sparse attention (video)",
    "extrapolation_image": "Extrapolation: 2x resolution (image)",
    "extrapolation_video": "Extrapolation: longer videos",
}


def check_studies(studies: Iterable[str] | None) -> tuple[str, ...]:
    """The requested studies in report order (``None``: all); ValueError naming unknown ones."""
    if studies is None:
        return STUDIES
    if isinstance(studies, str):
        studies = [studies]
    studies = list(studies)
    unknown = [s for s in studies if s not in STUDIES]
    if unknown or not studies:
        raise ValueError(f"studies={studies!r}: each must be one of {', '.join(STUDIES)} (and at least one)")
    return tuple(s for s in STUDIES if s in studies)


def _load(kind: str, device: str | torch.device, dtype: torch.dtype) -> Any:
    from ..toy.models import load_toy_pipeline

    return load_toy_pipeline(kind, device=device, dtype=dtype)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def evaluate(
    image_pipe: Any = None,
    video_pipe: Any = None,
    *,
    quick: bool = False,
    config: EvalConfig | None = None,
    studies: Iterable[str] | None = None,
    device: str | torch.device | None = "auto",
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    gallery: Gallery | None = None,
) -> dict[str, Any]:
    """Measure every visattn effect on the toy world and return the results (see :mod:`visattn.eval`).

    Args:
        image_pipe: a UNet text-to-image pipeline (StableDiffusionPipeline's layout); ``None`` loads the shipped
            toy image model (:func:`visattn.toy.models.load_toy_pipeline`) if an image study is requested.
        video_pipe: a text-to-video DiT pipeline (WanPipeline's layout); ``None`` loads the shipped toy video
            model if a video study is requested.
        quick: use :meth:`EvalConfig.quick` (the CI subset) instead of the full :class:`EvalConfig`; ignored when
            ``config`` is given.
        config: the settings (overrides ``quick``).
        studies: names from :data:`~visattn.eval.config.STUDIES` to run (default: all).
        device, dtype: where the default pipelines are loaded (``"auto"``: CUDA when available). Pipelines passed
            in are used where they are.
        progress: show progress bars (stderr).
        gallery: where the studies put example images of their first samples (see
            :mod:`~visattn.eval.gallery`); ``None`` keeps none.

    Returns:
        ``{"config", "models", "studies": {name: result}, "seconds": {name: wall time}}``; every number is a
        plain float/int or ``None`` (JSON-ready).

    Raises:
        ValueError: a bad setting, an unknown study, or a pipeline of the wrong kind.
        FileNotFoundError: a default pipeline is needed but the toy weights are not installed.
    """
    quick = bool(quick) and config is None
    if config is None:
        config = EvalConfig.quick() if quick else EvalConfig()
    elif not isinstance(config, EvalConfig):
        raise ValueError(f"config must be an EvalConfig or None; got {type(config).__name__}")
    selected = check_studies(studies)
    needs_video = any(s in VIDEO_STUDIES for s in selected)
    needs_image = any(s not in VIDEO_STUDIES for s in selected)
    target = _resolve_device(device)
    if needs_image and image_pipe is None:
        image_pipe = _load("image", target, dtype)
    if needs_video and video_pipe is None:
        video_pipe = _load("video", target, dtype)

    image = video = None
    if needs_image:
        image = ImageModel(
            image_pipe,
            steps=config.image_steps,
            guidance=config.image_guidance,
            batch_size=config.batch_size,
            size=config.image_size,
        )
    if needs_video:
        from ..toy.models import VIDEO_FRAMES, VIDEO_SIZE

        video = VideoModel(
            video_pipe,
            steps=config.video_steps,
            frames=config.video_frames or VIDEO_FRAMES,
            size=config.video_size or VIDEO_SIZE,
            guidance=config.video_guidance,
            text_tokens=config.video_text_tokens,
            batch_size=config.batch_size,
        )
    ctx = EvalContext(config, image, video, progress, gallery)
    pipes = [p for p in (image_pipe if needs_image else None, video_pipe if needs_video else None) if p is not None]
    # The studies show their own bars; the pipelines' per-step bars would drown them. Restore the caller's setting.
    saved = [dict(getattr(p, "_progress_bar_config", None) or {}) for p in pipes]
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    try:
        for pipe in pipes:
            pipe.set_progress_bar_config(disable=True)
        for name in selected:
            start = time.perf_counter()
            results[name] = _STUDIES[name][0](ctx)
            seconds[name] = time.perf_counter() - start
    finally:
        for pipe, previous in zip(pipes, saved):
            pipe._progress_bar_config = previous
    return {
        "quick": quick,
        "config": config.as_dict(),
        "models": {
            "image": image.describe() if image is not None else None,
            "video": video.describe() if video is not None else None,
        },
        "studies": results,
        "seconds": seconds,
    }


def markdown_section(name: str, result: dict[str, Any]) -> str:
    """The report section of one study."""
    return _STUDIES[name][1](result)


def headline(name: str, result: dict[str, Any]) -> dict[str, float | None]:
    """The study's headline numbers (0-1 scales) for the summary chart."""
    return _STUDIES[name][2](result)
