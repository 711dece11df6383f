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


#: the seed of every entry's inputs
INPUT_SEED = 1234


def input_generator() -> torch.Generator:
    """A fresh generator for one entry's inputs, so that every call of ``inputs`` gives the same tensors."""
    return torch.Generator().manual_seed(INPUT_SEED)


def randn(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float32)


def constant_timesteps(batch_size: int, value: float = 500.0) -> torch.Tensor:
    return torch.full((batch_size,), value, dtype=torch.float32)


def built(class_name: str, **config: Any) -> Callable[[], torch.nn.Module]:
    """A ``build`` that makes the diffusers class ``class_name`` from ``config`` with seeded weights, in eval mode."""

    def build() -> torch.nn.Module:
        import diffusers

        torch.manual_seed(0)
        return getattr(diffusers, class_name)(**config).eval()

    build.__qualname__ = f"build_{class_name}"
    return build
