"""Video pipelines and their frame counts: whether a pipeline makes videos (:func:`makes_video`), and the
``num_frames`` to pass it so that the clip it returns has the frames asked for.

``WanPipeline`` rounds ``num_frames`` to ``1 + k * t`` for its VAE's temporal factor ``t``: when
``num_frames % t != 1`` it uses ``num_frames // t * t + 1`` and logs a warning. With ``t = 4`` (every released
Wan) a valid count such as 81 passes through unchanged. With ``t = 1`` (no temporal compression, like
visattn's toy video model) ``num_frames % 1`` is 0, never 1, so every request gets one frame more than asked
and a warning that it "has to be divisible by 1". :func:`num_frames_argument` asks for one frame less in that
case, and :func:`frame_rounding_quieted` drops that one misleading warning while a call is made.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator
from typing import Any

# The start of the warning WanPipeline logs when it rounds num_frames (as of diffusers 0.42).
_ROUNDING_WARNING = "`num_frames - 1` has to be divisible by"


def makes_video(pipe: Any) -> bool:
    """Whether ``pipe`` generates videos: its ``__call__`` takes ``num_frames`` (Wan, CogVideoX, HunyuanVideo, ...)."""
    return "num_frames" in inspect.signature(pipe.__call__).parameters


def _rounds_up_always(pipe: Any) -> bool:
    """Whether ``pipe`` is a Wan-style pipeline whose rounding adds a frame to every request (temporal factor 1)."""
    return type(pipe).__name__.startswith("Wan") and getattr(pipe, "vae_scale_factor_temporal", None) == 1


def num_frames_argument(pipe: Any, frames: int) -> int:
    """The ``num_frames`` to pass ``pipe`` for a clip of ``frames`` frames.

    ``frames - 1`` for a Wan pipeline without temporal compression (its rounding adds one); ``frames`` for every
    other pipeline, where the value is passed through as given.
    """
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames={frames!r} must be an integer >= 1")
    if _rounds_up_always(pipe):
        if frames < 2:
            raise ValueError(f"frames={frames} is too short for {type(pipe).__name__}: it makes at least 2 frames")
        return frames - 1
    return frames


def latent_frames(pipe: Any, frames: int) -> int:
    """Temporal tokens of a ``frames``-frame clip for ``pipe``'s denoiser: ``frames`` through the VAE's temporal
    compression (``1 + (frames - 1) // t``: the first frame is kept, then one latent per ``t`` frames) and the
    transformer's temporal patch size. 81 frames of Wan 2.1 -> 21; 129 of HunyuanVideo -> 33.

    Raises:
        ValueError: ``pipe`` is not a video pipeline, or ``frames`` is not a positive integer.
    """
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise ValueError(f"frames={frames!r} must be an integer >= 1")
    if not makes_video(pipe):
        raise ValueError(f"{type(pipe).__name__} makes images; a length in video frames needs a video pipeline")
    temporal = int(getattr(pipe, "vae_scale_factor_temporal", None) or 1)
    denoiser = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    config = getattr(denoiser, "config", {}) or {}
    patch = config.get("patch_size_t")  # HunyuanVideo, CogVideoX 1.5: a separate temporal patch size
    if patch is None:
        sizes = config.get("patch_size")
        patch = sizes[0] if isinstance(sizes, (list, tuple)) and len(sizes) == 3 else 1  # Wan: (t, h, w)
    return max(1, (1 + (frames - 1) // temporal) // int(patch or 1))


class _DropRoundingWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_ROUNDING_WARNING)


@contextlib.contextmanager
def frame_rounding_quieted(pipe: Any) -> Iterator[None]:
    """Within the block, drop the frame-rounding warning of ``pipe``'s module when the caller has already asked
    for the frame count the pipeline will make (:func:`num_frames_argument`); every other message is kept."""
    if not _rounds_up_always(pipe):
        yield
        return
    logger = logging.getLogger(type(pipe).__module__)
    quiet = _DropRoundingWarning()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
