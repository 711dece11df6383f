"""What a batch's model makes (images or videos), known before it is loaded, so that a job of the other kind is an
invalid line at parse time (and in ``--dry-run``) rather than a failure after the model has loaded.

The kind comes from the pipeline class: a class whose ``__call__`` takes ``num_frames`` makes videos
(:func:`visattn.frames.makes_video`). The class is known without loading any weights for the pipelines shipped
with visattn, for a local folder (``model_index.json``) and for a hub id whose ``model_index.json`` is in the
local cache; otherwise the kind is unknown and the job is checked when it runs, as before.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..defaults import DEFAULT_MODEL, TOY_VIDEO_MODEL
from ..defaults import EMBEDDED_MODELS as _EMBEDDED
from ..effect_specs import ALIASES
from ..frames import makes_video
from .jobs import Job, JobError

#: effect classes that act on video models only (RadialAttention refuses a grid without frames)
VIDEO_EFFECTS: frozenset[str] = frozenset({"RadialAttention"})

#: pipeline classes of the models shipped with visattn (no file to read for them)
_EMBEDDED_CLASSES: dict[str, str] = {name: "StableDiffusionPipeline" for name in _EMBEDDED} | {
    TOY_VIDEO_MODEL: "WanPipeline"
}


@dataclass(frozen=True)
class ModelKind:
    """What a model makes, and the pipeline class it was read from (for messages)."""

    video: bool
    pipeline: str

    @property
    def noun(self) -> str:
        return "videos" if self.video else "images"


def _class_makes_video(class_name: str) -> bool | None:
    import diffusers

    cls = getattr(diffusers, class_name, None) if class_name.isidentifier() else None
    if not isinstance(cls, type):
        return None  # a custom pipeline class: only loading it tells
    return "num_frames" in inspect.signature(cls.__call__).parameters


def _index_of(model: str) -> dict[str, Any] | None:
    """The ``model_index.json`` of a local folder or of a cached hub repository, without any download."""
    path = Path(model).expanduser()
    if path.is_dir():
        index = path / "model_index.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "model_index.json")
        except Exception:  # noqa: BLE001 - not a valid id, no cache: the kind is just unknown
            return None
        if not isinstance(cached, str):
            return None
        index = Path(cached)
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def model_kind(model: str | None, pipeline: Any = None) -> ModelKind | None:
    """What ``pipeline`` (when given) or ``model`` makes; ``None`` when it cannot be told without loading."""
    if pipeline is not None:
        return ModelKind(makes_video(pipeline), type(pipeline).__name__)
    name = model or DEFAULT_MODEL
    class_name = _EMBEDDED_CLASSES.get(name)
    if class_name is None:
        index = _index_of(name)
        class_name = index.get("_class_name") if index is not None else None
    if not isinstance(class_name, str):
        return None
    video = _class_makes_video(class_name)
    return None if video is None else ModelKind(video, class_name)


def video_reason(job: Job) -> str | None:
    """Why ``job`` needs a video model (its ``frames``, or a video-only effect), or ``None`` when it does not."""
    if job.frames is not None:
        return f"frames={job.frames} asks for a video"
    for index, spec in enumerate(job.effects):
        kind = spec.get("type") if isinstance(spec, dict) else None
        class_name = ALIASES.get(kind.lower(), kind) if isinstance(kind, str) else None
        if class_name in VIDEO_EFFECTS:
            return f"effects[{index}] ({kind}) acts on videos only"
        if isinstance(spec, dict) and "train_video_frames" in spec:
            return f"effects[{index}].train_video_frames counts video frames"
    return None


def check_kinds(jobs: list[Job], kind: ModelKind | None, model: str) -> tuple[list[Job], list[JobError]]:
    """``jobs`` split into those the model can make and an error per video job for an image model.

    A job without frames runs on a video model too (the pipeline's default length), so only video jobs are checked.
    """
    if kind is None or kind.video:
        return jobs, []
    kept, errors = [], []
    for job in jobs:
        reason = video_reason(job)
        if reason is None:
            kept.append(job)
            continue
        message = (
            f"{reason}, but the model {model} ({kind.pipeline}) makes {kind.noun}; use a video model (e.g. --model "
            f"{TOY_VIDEO_MODEL}) for it, or run it in another batch"
        )
        errors.append(JobError(job.line, message, job.id))
    return kept, errors
