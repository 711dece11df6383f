"""The contract a model family fulfils: where q/k/v come from and how tokens are laid out.

A family adapter splits its stock diffusers processor in two: :meth:`Family.project` computes q, k, v (with
the model's own norms and rotary embeddings) and says where latent and text tokens sit; the returned
``finish`` callable turns the attention output back into exactly what the stock processor returns. Whatever
visattn does happens between the two, through the attention core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ..context import Span, TokenLayout


@dataclass
class Projection:
    """q/k/v of one attention call in ``[B, H, N, D]`` and everything needed to finish it."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    role: str
    queries: TokenLayout
    keys: TokenLayout
    finish: Callable[[torch.Tensor], Any]
    attn_mask: torch.Tensor | None = None
    # True when the stock processor calls diffusers' attention dispatcher (new-style processors).
    uses_dispatcher: bool = False


@dataclass
class DenoiserInputs:
    """What the denoiser's forward hook reads from one call (family-specific parsing of its arguments)."""

    batch_size: int
    grid: tuple[int, int, int] | None
    timestep: float | None
    text_length: int | None = None
    #: the latent input itself (not copied), for facts only the values tell (see ``visattn.state``)
    sample: torch.Tensor | None = None


class Family:
    """Base class of the family adapters; one subclass per file in :mod:`visattn.families`."""

    #: short key used in errors, contexts and ``visattn.testing``
    name: str = ""
    #: class names of the denoisers this family drives
    denoiser_classes: tuple[str, ...] = ()
    #: class names of the stock processors this adapter reproduces
    processor_classes: tuple[str, ...] = ()
    #: the model is called with ``timestep / timestep_divisor`` relative to the scheduler's timesteps
    timestep_divisor: float = 1.0

    def read_inputs(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> DenoiserInputs:
        raise NotImplementedError

    def project(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        kwargs: dict,
        text_length: int | None,
    ) -> Projection:
        raise NotImplementedError

    def static_role(self, name: str, module: torch.nn.Module) -> str:
        """The role of an attention module known before any call (used by ``layers=["self" | "cross" | "joint"]``)."""
        if getattr(module, "added_kv_proj_dim", None) is not None:
            return "joint"
        return "cross" if getattr(module, "is_cross_attention", False) else "self"

    def adapter_for(self, name: str, module: torch.nn.Module) -> Family:
        """The adapter for one attention module (a family with modules of another kind returns a sub-adapter)."""
        return self

    def layer_grid(self, top_grid: tuple[int, int, int] | None, num_tokens: int) -> tuple[int, int, int] | None:
        """The grid of a layer that sees ``num_tokens`` latent tokens. Transformers keep one grid throughout."""
        if top_grid is None:
            return None
        frames, height, width = top_grid
        return top_grid if frames * height * width == num_tokens else None


def first_argument(args: tuple, kwargs: dict, names: tuple[str, ...], position: int) -> Any:
    """A forward argument given by keyword (any of ``names``) or at ``position``."""
    for name in names:
        if name in kwargs:
            return kwargs[name]
    return args[position] if len(args) > position else None


def timestep_value(timestep: Any) -> float | None:
    """The first timestep of a call as a float (pipelines pass a scalar, a batch, or a per-token map)."""
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        return float(timestep.reshape(-1)[0])
    return float(timestep)


def joint_layout(length: int, text: Span | None) -> TokenLayout:
    """Layout of a sequence holding one text span and latent tokens everywhere else."""
    if text is None or text.length == 0:
        return TokenLayout(length, image=Span(0, length))
    if text.start == 0:
        return TokenLayout(length, image=Span(text.stop, length), text=text)
    return TokenLayout(length, image=Span(0, text.start), text=text)


def heads_first(x: torch.Tensor) -> torch.Tensor:
    """``[B, N, H, D] -> [B, H, N, D]`` (a view; the dispatcher path transposes back to the same tensor)."""
    return x.transpose(1, 2)
