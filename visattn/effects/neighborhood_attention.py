"""Neighborhood attention over the model's latent grid (2-D for images, 3-D for video), as an effect.

Each latent query attends to the ``kernel_size`` nearest latent keys per axis (window shifted inward at the
borders, NATTEN's semantics; Hassani et al., Neighborhood Attention Transformer, 2023), optionally dilated
(DiNA) or strided (GNA). In joint attention the text tokens stay global: every latent query attends to all text
keys and, with ``text="full"``, text queries attend to everything.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from ..kernels.neighborhood import NeighborhoodPattern
from ..validation import ParameterTypeError, check_bool, check_choice, check_layer_roles
from .base import AttentionCall, Effect


def _per_axis(value: object, name: str, minimum: int) -> tuple[int, ...] | int:
    """An int ``>= minimum`` or a 1- to 3-tuple of them (bounded above by the grid, checked per call)."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not 1 <= len(values) <= 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in values):
        error = (
            ValueError if all(isinstance(v, int) and not isinstance(v, bool) for v in values) else ParameterTypeError
        )
        raise error(f"{name} must be an integer >= {minimum} or a tuple of 2 or 3 of them; got {value!r}")
    return values if isinstance(value, (tuple, list)) else values[0]


def _causal(value: object) -> tuple[bool, ...] | bool:
    """``is_causal``: a bool or a 1- to 3-tuple of bools (``"yes"`` or ``None`` would silently mean True/False)."""
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    if not 1 <= len(values) <= 3:
        raise ValueError(f"is_causal must be a bool or a tuple of 2 or 3 bools; got {value!r}")
    checked = tuple(check_bool(v, "is_causal") for v in values)
    return checked if isinstance(value, (tuple, list)) else checked[0]


@functools.lru_cache(maxsize=256)
def _pattern(axes, kernel, dilation, stride, causal, offset, extra, prefix, text_queries) -> NeighborhoodPattern:
    # One pattern object per layout and configuration, so backends' block-mask caches hit.
    return NeighborhoodPattern(axes, kernel, dilation, stride, causal, offset, extra, prefix, text_queries)


class NeighborhoodAttention(Effect):
    """Sparse neighborhood attention on self and joint attention layers.

    Args:
        kernel_size: window per axis; an int applies to every axis of the grid (height, width, and frames for
            video); a 2-tuple on video keeps attention within each frame (temporal window 1).
        dilation, stride: per axis, as in NATTEN (``stride <= kernel_size``).
        is_causal: per-axis causal masking (for example along frames).
        text: ``"full"``: text queries in joint attention attend to every token; ``"text"``: only to text.
        layers, steps: where and when it acts (see :class:`visattn.effects.Effect`).
    """

    roles = ("self", "joint")
    frozen_parameters = True

    def needs(self) -> tuple[str, ...]:
        return ("grid",)

    def __init__(
        self,
        kernel_size: int | tuple[int, ...],
        dilation: int | tuple[int, ...] = 1,
        stride: int | tuple[int, ...] = 1,
        is_causal: bool | tuple[bool, ...] = False,
        text: str = "full",
        layers: str | Iterable[str] | None = None,
        steps=None,
    ) -> None:
        super().__init__(layers=layers, steps=steps)
        self.kernel_size = _per_axis(kernel_size, "kernel_size", 1)
        self.dilation = _per_axis(dilation, "dilation", 1)
        self.stride = _per_axis(stride, "stride", 1)
        check_layer_roles(self.layers, self.roles, type(self).__name__)
        self.text = check_choice(text, "text", ("full", "text"))
        self.is_causal = _causal(is_causal)

    def _axes(self, grid: tuple[int, int, int]) -> tuple:
        """Grid axes and per-axis settings for this call: (height, width) for images, 3-D for video."""
        frames, height, width = grid
        settings = (self.kernel_size, self.dilation, self.stride, self.is_causal)
        if frames == 1:
            # A 3-tuple written for video applies its spatial part to images.
            return ((height, width), *(v[-2:] if isinstance(v, tuple) and len(v) == 3 else v for v in settings))
        # A 2-tuple on video is spatial only: each frame attends within itself (temporal window 1, not causal).
        fills = (1, 1, 1, False)
        return (grid, *((fill, *v) if isinstance(v, tuple) and len(v) == 2 else v for v, fill in zip(settings, fills)))

    def apply(self, call: AttentionCall) -> None:
        ctx = call.ctx
        image = ctx.queries.image
        if ctx.grid is None or image is None or ctx.keys.image != image:
            return
        axes, kernel, dilation, stride, causal = self._axes(ctx.grid)
        # Every key outside the grid (text, and other tokens such as HiDream's padding) stays visible to grid queries.
        extra, prefix = ctx.keys.grid_context()
        call.patterns.append(_pattern(axes, kernel, dilation, stride, causal, image.start, extra, prefix, self.text))

    def __repr__(self) -> str:
        return (
            f"NeighborhoodAttention(kernel_size={self.kernel_size}, dilation={self.dilation}, stride={self.stride}, "
            f"is_causal={self.is_causal}, text={self.text!r}, layers={self.layers})"
        )
