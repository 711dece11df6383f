"""Radial Attention on the self and joint attention of video diffusion transformers, as an effect.

Radial Attention (Li et al., 2025, "Radial Attention: O(n log n) Sparse Attention with Energy Decay for Long
Video Generation") replaces dense attention over a video's latent tokens by a static mask whose compute density
halves with every doubling of the temporal distance between frames (see :mod:`visattn.kernels.radial` for the
rule). As in the paper and its public code, the first denoising steps and the first attention layers can stay
dense: early steps lay out the global structure, and the first layer is the least local.

Text tokens in joint attention (CogVideoX, HunyuanVideo) stay global: every latent query attends to all text
keys and, with ``text="full"``, text queries attend to everything. Wan's cross-attention to text is untouched.

Defaults are the authors' (mit-han-lab/radial-attention at 72788d4, ``radial_attn/attn_mask.py``): frame
distances 0 and 1 dense, split threshold 128 whatever the block size, ``decay_factor=1``, and the attention sink
(frame 0 as keys) on every model but HunyuanVideo, whose sink the authors removed (``model_type="hunyuan"``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

from .. import validation
from ..context import CallContext
from ..families import FAMILY_KEYS, VIDEO_FAMILIES, family_named
from ..kernels.radial import AUTHORS_SPLIT_THRESHOLD, RadialPattern
from ..layers import normalize_layers, select_layers
from ..validation import check_bool, check_choice, check_fraction, check_layer_roles, check_number
from .base import AttentionCall, Effect

#: Denoiser classes the authors' code runs without an attention sink: their HunyuanVideo model subclasses
#: diffusers' ``HunyuanVideoTransformer3DModel`` and builds its mask with ``model_type="hunyuan"``, which skips
#: the ``j == 0`` sink of ``gen_log_mask_shrinked`` (commit 2f61c30, "remove attention sink for hunyuanvideo").
#: Their Wan models (``model_type="wan"``) keep it.
AUTHORS_NO_SINK_CLASSES = ("HunyuanVideoTransformer3DModel",)


def authors_sink_frames(family: str) -> int:
    """The authors' attention sink for a family's denoiser: 0 frames for HunyuanVideo, 1 otherwise (Wan)."""
    if family in FAMILY_KEYS and set(family_named(family).classes) & set(AUTHORS_NO_SINK_CLASSES):
        return 0
    return 1


# One pattern object per layout and configuration, so backends' block-mask caches hit across layers and steps.
_pattern = functools.lru_cache(maxsize=256)(RadialPattern)


def _dense_steps(value: object) -> float:
    if value is None:
        return 0.0
    try:
        return check_fraction(value, "dense_steps")
    except ValueError as error:
        raise type(error)(f"{error} (a fraction of the schedule, or None for no dense steps)") from None


def _dense_layers(value) -> int | tuple[str, ...]:
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"dense_layers={value!r} is not allowed; a layer count must be >= 0")
        return value
    if isinstance(value, str) or isinstance(value, Iterable):
        return normalize_layers(value, "dense_layers")
    raise ValueError(
        f"dense_layers={value!r} is not allowed; dense_layers must be a count of leading layers (int >= 0) or "
        f"layer identifiers (str or list of str, as in layers=...)"
    )


class RadialAttention(Effect):
    """Radial Attention's static sparse mask on video self and joint attention.

    Args:
        decay_factor: scales each band's spatial window (the authors' ``decay_factor``; 1 by default).
        block_size: tile size the rule is aligned to (the smallest diagonal window). 128 as in the authors' code
            and FlexAttention's default block (their Wan 2.2 code also runs 64).
        dense_distance: frame distances below this are dense. Default 2, the authors' Wan and HunyuanVideo masks
            (a frame with itself and its neighbours); 1 is visattn's variant (distance-1 pairs get a diagonal).
        sink_frames: leading frames every latent query attends to in full (the attention sink; 0 disables).
            ``None`` (default): the authors' setting for the model, 1 (Wan and the others) or 0 for HunyuanVideo,
            whose sink the authors' current code drops (see :data:`AUTHORS_NO_SINK_CLASSES`).
        sink_queries: whether the sink frames' queries also attend densely (not in the authors' code).
        dense_steps: fraction of the schedule at its start that stays dense (``None`` or 0: none). The default
            0.24 is the authors' setting for default-length videos, 12 of 50 steps. Needs the pipeline's
            schedule (attach the pipeline, not a bare denoiser) unless it is 0.
        dense_layers: attention layers kept dense. An ``int`` ``N`` keeps the first ``N`` self/joint attention
            layers (model order, among the attached layers) dense, like the authors' ``dense_layers`` block
            count (they use 1 for Wan at default length, 0 for HunyuanVideo); without :func:`visattn.attach`
            (no layer list) it compares ``N`` with the call's ``layer_index``. Strings are layer identifiers as
            for ``layers`` (regex on module names).
        text: ``"full"``: text queries of joint attention attend to every token; ``"text"``: only to text.
        split_threshold: nominal band width below which only every ``m``-th frame distance is kept. Default 128,
            the authors' hardcoded threshold whatever the block size; ``split_threshold=block_size`` is visattn's
            block-aligned variant (sparser-than-authors masks stay meaningful on toy grids).
        layers, steps: where and when it acts (see :class:`visattn.effects.Effect`).

    Acts on the ``wan``, ``cogvideox`` and ``hunyuan_video`` families; attached to an image family it raises
    ValueError at the first call. On a one-frame video (Wan used for a still image) the radial rule keeps every
    pair, so the call is left dense, bit for bit.
    """

    roles = ("self", "joint")
    frozen_parameters = True

    def needs(self) -> tuple[str, ...]:
        return ("grid",)

    def __init__(
        self,
        decay_factor: float = 1.0,
        block_size: int = 128,
        dense_distance: int = 2,
        sink_frames: int | None = None,
        sink_queries: bool = False,
        dense_steps: float | None = 0.24,
        dense_layers: int | str | Iterable[str] | None = 0,
        text: str = "full",
        layers: str | Iterable[str] | None = None,
        steps=None,
        split_threshold: int = AUTHORS_SPLIT_THRESHOLD,
    ) -> None:
        super().__init__(layers=layers, steps=steps)
        check_layer_roles(self.layers, self.roles, type(self).__name__)
        check_choice(text, "text", ("full", "text"))
        check_bool(sink_queries, "sink_queries")
        # Bounded like a scale: band windows are decay_factor times token counts, which must stay finite integers.
        decay_factor = check_number(decay_factor, "decay_factor", above=0.0, maximum=validation.MAX_SCALE)
        # block_size, dense_distance and split_threshold: checked by RadialPattern below, naming each.
        if sink_frames is not None and (
            isinstance(sink_frames, bool) or not isinstance(sink_frames, int) or sink_frames < 0
        ):
            raise ValueError(
                f"sink_frames={sink_frames!r} is not allowed; sink_frames must be an integer >= 0 (or None for the "
                f"authors' setting per model)"
            )
        # Check the band settings once, up front, on a grid every setting is valid for.
        check_sink = 1 if sink_frames is None else sink_frames
        RadialPattern(
            (max(1, check_sink), 1, 1),
            decay_factor,
            block_size,
            dense_distance,
            check_sink,
            sink_queries,
            split_threshold=split_threshold,
        )
        self.decay_factor = float(decay_factor)
        self.block_size = block_size
        self.dense_distance = dense_distance
        self.sink_frames = sink_frames
        self.sink_queries = sink_queries
        self.split_threshold = split_threshold
        self.dense_steps = _dense_steps(dense_steps)
        self.dense_layers = _dense_layers(dense_layers)
        self.text = text
        self.user_steps = self.steps
        self._sparse_steps_empty = False
        if self.dense_steps > 0:
            # Dense early steps are the effect not acting then: fold them into the step range, so that attach
            # checks for a schedule exactly as for ``steps``.
            start, stop = self.steps if self.steps is not None else (0.0, 1.0)
            start = max(start, self.dense_steps)
            if start < stop:
                self.steps = (start, stop)
            else:
                self._sparse_steps_empty = True

    # --- attach time -------------------------------------------------------------------------------------
    def bind(self, roles: dict[str, str]) -> frozenset[str]:
        # The dense layers stay dense: the effect does not act on them at all.
        if isinstance(self.dense_layers, int):
            attention = [name for name, role in roles.items() if role in ("self", "joint")]
            dense = frozenset(attention[: self.dense_layers])
        else:
            dense = frozenset(select_layers(roles, self.dense_layers, "RadialAttention(dense_layers=...)"))
        return super().bind(roles) - dense

    # --- call time -----------------------------------------------------------------------------------------
    def acts_on(self, ctx: CallContext) -> bool:
        return not self._sparse_steps_empty and super().acts_on(ctx)

    def pattern_for(self, ctx: CallContext) -> RadialPattern | None:
        """The radial pattern of one call, or ``None`` when the call stays dense (no latent grid, one frame)."""
        if ctx.family not in VIDEO_FAMILIES and not (ctx.grid is not None and ctx.grid[0] > 1):
            raise ValueError(
                f"RadialAttention works on video families ({', '.join(VIDEO_FAMILIES)}); layer {ctx.layer_name!r} "
                f"belongs to the {ctx.family!r} family, whose latents are images (no frames axis to decay over). "
                f"For images use NeighborhoodAttention"
            )
        image = ctx.queries.image
        if ctx.grid is None or image is None or ctx.keys.image != image:
            return None
        if math.prod(ctx.grid) != image.length:
            raise ValueError(
                f"layer {ctx.layer_name!r}: the latent grid {ctx.grid} holds {math.prod(ctx.grid)} tokens but the "
                f"call has {image.length} latent tokens; RadialAttention needs them to agree"
            )
        sink = authors_sink_frames(ctx.family) if self.sink_frames is None else self.sink_frames
        # Every key outside the grid (text, and other tokens such as history latents) stays visible to grid queries.
        extra, prefix = ctx.keys.grid_context()
        pattern = _pattern(
            tuple(ctx.grid),
            self.decay_factor,
            self.block_size,
            self.dense_distance,
            min(sink, ctx.grid[0]),
            self.sink_queries,
            image.start,
            extra,
            prefix,
            self.text,
            self.split_threshold,
        )
        # A rule that keeps every pair adds nothing (grid queries see every key outside the grid): leaving the call
        # alone keeps it bit-identical.
        if self.text == "full" and _grid_is_dense(pattern):
            return None
        return pattern

    def apply(self, call: AttentionCall) -> None:
        pattern = self.pattern_for(call.ctx)
        if pattern is not None:
            call.patterns.append(pattern)

    def __repr__(self) -> str:
        return (
            f"RadialAttention(decay_factor={self.decay_factor}, block_size={self.block_size}, "
            f"dense_distance={self.dense_distance}, sink_frames={self.sink_frames}, "
            f"sink_queries={self.sink_queries}, dense_steps={self.dense_steps}, dense_layers={self.dense_layers}, "
            f"text={self.text!r}, split_threshold={self.split_threshold}, layers={self.layers}, "
            f"steps={self.user_steps})"
        )


@functools.lru_cache(maxsize=256)
def _grid_is_dense(pattern: RadialPattern) -> bool:
    return pattern.grid_is_dense
