"""One tiny denoiser of a diffusers class, with forward inputs, for the per-class coverage tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TinyDenoiser:
    """A diffusers denoiser class built tiny from a config, and how to call it.

    Attributes:
        class_name: the diffusers class name (``type(model).__name__``).
        build: returns the model in eval mode, with weights seeded inside (``torch.manual_seed``) so that two
            builds are equal.
        inputs: forward keyword arguments for a batch of ``batch_size`` (deterministic: seeded generator).
        grid: ``(frames, height, width)`` of the latent tokens self-attention sees (after patchify).
        text_tokens: length of the text sequence in the inputs (``None``: the model takes no text).
        text_position: where text sits in the model's joint sequences: ``"first"``, ``"last"``, or ``None``
            when the model has no joint attention (cross-attention to text, or no text).
        pipeline: the diffusers pipeline class name that drives this denoiser (``None`` if there is none).
        notes: what is special about this class (attention kinds visattn cannot intercept, per-row loops...).
    """

    class_name: str
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[int], dict[str, Any]]
    grid: tuple[int, int, int] | None
    text_tokens: int | None
    text_position: str | None
    pipeline: str | None = None
    notes: str = ""
