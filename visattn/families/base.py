"""What visattn must know about a denoiser class, as data: how to read its latent grid, timestep and text length
from a forward call, where text sits in its joint sequences, and the static role of each attention module.

Everything else comes from diffusers itself: the stock processors keep computing projections, norms, rotary
embeddings and output paths, and visattn only takes over the attention computation they hand to
``scaled_dot_product_attention`` (see :mod:`visattn.interception`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import torch

#: where the text tokens sit in a joint (MM-DiT) sequence
TEXT_POSITIONS = ("first", "last")


@dataclass
class DenoiserInputs:
    """What the denoiser's forward hook reads from one call."""

    batch_size: int
    grid: tuple[int, int, int] | None
    timestep: float | None
    text_length: int | None = None
    #: the latent input itself (not copied), for facts only the values tell (see ``visattn.state``)
    sample: torch.Tensor | None = None


@dataclass(frozen=True)
class Argument:
    """A forward argument, given by keyword (any of ``names``) or at ``position`` (``None``: keyword only)."""

    names: tuple[str, ...]
    position: int | None = None

    def read(self, args: tuple, kwargs: dict) -> Any:
        for name in self.names:
            if name in kwargs:
                return kwargs[name]
        if self.position is not None and len(args) > self.position:
            return args[self.position]
        return None


@dataclass(frozen=True)
class Family:
    """One denoiser family: the classes it covers and the facts the generic path cannot infer.

    Attributes:
        name: the family key, the one vocabulary of the package (``visattn.testing``, words, the app, batch).
        classes: diffusers class names of the denoisers (matched along the MRO, so subclasses are covered).
        sample: the latent input argument.
        layout: axes of the latent input: ``"BCHW"``, ``"BCFHW"``, ``"BFCHW"``, ``"BFHWC"``, ``"auto"`` (4-D is
            ``BCHW``, 5-D ``BCFHW``), or ``"packed"`` (tokens
            ``[B, N, C]`` whose grid ``grid_reader`` recovers from other arguments).
        patch: config attribute of the spatial patch size (an int, or a ``(t, h, w)`` tuple); ``None``: 1.
        patch_t: config attribute of the temporal patch size; ``None``: 1 (or the tuple's first entry).
        grid_reader: name of a reader in :mod:`visattn.families.readers` for packed latents.
        timestep: the timestep argument.
        timestep_divisor: the model is called with ``scheduler timestep / timestep_divisor``.
        timestep_reversed: the model is called with ``1 - scheduler timestep / 1000`` (1 means clean).
        text: the text hidden-states argument (its length is the text length); ``None``: no text.
        text_position: ``"first"`` or ``"last"``: where text sits in joint sequences; ``None``: no joint attention.
        roles: ``(regex, role)`` pairs searched in attention-module names, first match wins, for roles the
            module alone does not tell (a single-stream block fed the concatenated sequence is ``"joint"``).
        unet_levels: the grid halves (rounding up) at each UNet level.
        frames_in_batch: spatial attention sees each frame as its own batch row (video UNets).
        video: the latents have a frames axis.
        known: declared by visattn (``False`` for the generic fallback of a class never seen).
    """

    name: str
    classes: tuple[str, ...] = ()
    sample: Argument = Argument(("hidden_states", "sample", "x"), 0)
    layout: str = "BCHW"
    patch: str | None = "patch_size"
    patch_t: str | None = "patch_size_t"
    grid_reader: str | None = None
    timestep: Argument = Argument(("timestep", "timesteps", "t"))
    timestep_divisor: float = 1.0
    timestep_reversed: bool = False
    text: Argument | None = Argument(("encoder_hidden_states",))
    text_position: str | None = None
    roles: tuple[tuple[str, str], ...] = ()
    unet_levels: bool = False
    frames_in_batch: bool = False
    video: bool = False
    known: bool = True
    _compiled_roles: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.text_position not in (None, *TEXT_POSITIONS):
            raise ValueError(f"text_position must be one of {TEXT_POSITIONS} or None; got {self.text_position!r}")
        object.__setattr__(self, "_compiled_roles", tuple((re.compile(p), role) for p, role in self.roles))

    # --- attach time ---------------------------------------------------------------------------------------
    def static_role(self, name: str, module: torch.nn.Module) -> str:
        """The role of an attention module known before any call (``layers=["self" | "cross" | "joint"]``)."""
        for pattern, role in self._compiled_roles:
            if pattern.search(name):
                return role
        if getattr(module, "added_kv_proj_dim", None) is not None or getattr(module, "add_q_proj", None) is not None:
            return "joint"
        return "cross" if getattr(module, "is_cross_attention", False) else "self"

    # --- call time -----------------------------------------------------------------------------------------
    def read_inputs(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> DenoiserInputs:
        """Batch size, latent grid, timestep and text length of one forward call."""
        from .readers import read_grid

        sample = self.sample.read(args, kwargs)
        if not isinstance(sample, torch.Tensor):
            sample = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        timestep = _timestep_value(self.timestep.read(args, kwargs))
        text = self.text.read(args, kwargs) if self.text is not None else None
        text_length = text.shape[1] if isinstance(text, torch.Tensor) and text.ndim >= 3 else None
        grid = read_grid(self, model, sample, args, kwargs) if sample is not None else None
        batch_size = sample.shape[0] if sample is not None else 0
        return DenoiserInputs(batch_size, grid, timestep, text_length, sample=sample)

    def scheduler_timestep(self, timestep: float | None) -> float | None:
        """The scheduler's timestep for the timestep the model was called with."""
        if timestep is None:
            return None
        if self.timestep_reversed:
            return (1.0 - timestep) * 1000.0
        return timestep * self.timestep_divisor

    def level_grids(self, top: tuple[int, int, int] | None) -> tuple[tuple[int, int, int], ...]:
        """The grids attention layers may see: the top grid, and each UNet level's (halved, rounded up)."""
        if top is None:
            return ()
        frames, height, width = top
        grids = [top]
        while self.unet_levels and (height > 1 or width > 1) and len(grids) < 8:
            height, width = math.ceil(height / 2), math.ceil(width / 2)
            grids.append((frames, height, width))
        if self.frames_in_batch:
            # Video UNets fold frames into the batch: spatial layers see one frame per row, temporal layers one
            # pixel's frames (no grid of their own).
            return tuple((1, h, w) for _, h, w in grids)
        return tuple(grids)


def _timestep_value(timestep: Any) -> float | None:
    """The first timestep of a call as a float (pipelines pass a scalar, a batch, or a per-token map)."""
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() == 0:
            return None
        return float(timestep.reshape(-1)[0])
    if isinstance(timestep, (int, float)):
        return float(timestep)
    return None
