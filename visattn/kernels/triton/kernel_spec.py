"""Patterns and score modifiers as the integers the fused Triton kernels are specialized on.

A kernel never reads a mask. It receives the pattern as compile-time integers (``tl.constexpr``: grid sizes,
kernel sizes, dilation, stride, causality, text-token layout) and recomputes, for every (query tile, key tile),
which pairs are kept from the token indices alone (:mod:`visattn.kernels.triton.masking`). Specializing on them
lets the compiler turn the per-axis divisions into multiplications and drop every branch a pattern does not use;
one model uses a handful of layer shapes, so the number of compiled variants stays small.

:func:`describe` translates the public objects (:class:`~visattn.kernels.neighborhood.NeighborhoodPattern`,
:class:`~visattn.kernels.radial.RadialPattern`, :class:`~visattn.kernels.extrapolation_scores.DecayModifier`,
:class:`~visattn.kernels.extrapolation_scores.UltraViCoModifier`,
:class:`~visattn.kernels.extrapolation_scores.EntropyScale`,
their ``AllOf`` / ``Chain`` combinations) into a :class:`KernelSpec`, or raises :class:`Unsupported` with the
reason; everything else (model masks, arbitrary Python patterns, per-head patterns) is left to the FlexAttention
and reference backends.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

from ..extrapolation_scores import DecayModifier, EntropyScale, UltraViCoModifier
from ..neighborhood import NeighborhoodPattern
from ..patterns import AllOf, Chain, DensePattern, Pattern, ScoreModifier
from ..radial import RadialPattern
from .modifiers import BOX_DECAY, MAX_BANDS, NO_DECAY, ULTRAVICO

__all__ = ["KernelSpec", "Unsupported", "describe", "grid_layout"]

# The kernels describe at most three grid axes; lower-dimensional grids are padded in front with size-1 axes
# (kernel 1, dilation 1, stride 1), which keep every pair and are compiled away.
MAX_AXES = 3


class Unsupported(Exception):
    """A request the fused kernels cannot compute; the message says why (shown by ``supports`` callers)."""


@dataclass(frozen=True)
class KernelSpec:
    """Everything the kernels are specialized on besides dtypes and tile sizes.

    Attributes:
        constexprs: keyword arguments passed as ``tl.constexpr`` to every kernel (pattern and modifier
            parameters; see :mod:`visattn.kernels.triton.masking` and :mod:`visattn.kernels.triton.modifiers`).
        logit_multiplier: constant factor on every logit (product of ``EntropyScale`` scales), folded into the
            softmax scale.
        decay_bias: ``log2(factor)`` of a ``DecayModifier`` times the multipliers applied after it (``0`` without
            one); a runtime argument, so changing the factor does not recompile.
        radial_windows: Radial Attention's kept offset per frame distance (``-1``: dropped), or ``None``.
        pattern: the public pattern (``None`` for dense); its ``mask_mod`` builds the block metadata.
        order_grid, order_offset: the grid the tile-aligned token order is taken over and where it starts
            (``None``: no reordering beyond moving nothing).
        order_tiled: whether the order tiles the grid (neighborhoods) or keeps it row-major (radial bands, which
            run along the flattened per-frame index).
        neighborhood: the neighborhood pattern, if any (its windows choose the tile shape of the order).
        key: hashable identity for caches.
    """

    constexprs: dict = field(hash=False, compare=False)
    logit_multiplier: float
    decay_bias: float
    radial_windows: tuple[int, ...] | None
    pattern: Pattern | None
    order_grid: tuple[int, ...] | None
    order_offset: int
    order_tiled: bool
    neighborhood: NeighborhoodPattern | None
    key: Hashable


def _neighborhood_constexprs(pattern: NeighborhoodPattern | None) -> dict:
    if pattern is None:
        # Never read (HAS_NA is False), but every kernel argument needs a value.
        ones = (1,) * MAX_AXES
        return {
            "HAS_NA": False,
            "NA_GRID": ones,
            "NA_KERNEL": ones,
            "NA_DILATION": ones,
            "NA_STRIDE": ones,
            "NA_CAUSAL": (False,) * MAX_AXES,
            "NA_TEXT": (0, 0, False, True),
        }
    pad = (1,) * (MAX_AXES - len(pattern.grid))
    return {
        "HAS_NA": True,
        "NA_GRID": pad + tuple(pattern.grid),
        "NA_KERNEL": pad + tuple(pattern.kernel_size),
        "NA_DILATION": pad + tuple(pattern.dilation),
        "NA_STRIDE": pad + tuple(pattern.stride),
        "NA_CAUSAL": (False,) * len(pad) + tuple(bool(c) for c in pattern.is_causal),
        "NA_TEXT": (pattern.offset, pattern.extra_keys, bool(pattern.prefix_keys), pattern.text_queries == "full"),
    }


def _pattern_parts(pattern: Pattern | None) -> list[Pattern]:
    # Exact types only: a subclass may override mask_mod / score_mod, which the kernels could not see.
    if pattern is None or type(pattern) is DensePattern:
        return []
    if type(pattern) is AllOf:
        parts: list[Pattern] = []
        for part in pattern.parts:
            parts.extend(_pattern_parts(part))
        return parts
    return [pattern]


def _modifier_parts(modifier: ScoreModifier | None) -> list[ScoreModifier]:
    if modifier is None:
        return []
    if type(modifier) is Chain:
        parts: list[ScoreModifier] = []
        for part in modifier.parts:
            parts.extend(_modifier_parts(part))
        return parts
    return [modifier]


def _radial_constexprs(pattern: RadialPattern | None) -> tuple[dict, tuple[int, ...] | None]:
    if pattern is None:
        return {"HAS_RADIAL": False, "RD_GRID": (1, 1), "RD_SINK": (0, False), "RD_TEXT": (0, 0, False, True)}, None
    frames, per_frame = pattern.grid[0], pattern.tokens_per_frame
    full = per_frame - 1
    windows = []
    for distance in range(frames):
        # A frame with itself is always whole; every other distance is what the bands say (the whole-frame band
        # below dense_distance keeps only every m-th distance once the split rule applies).
        window = full if distance == 0 else -1
        for band in pattern.bands:
            if band.keeps_distance(distance):
                window = full if band.window is None else band.window
        windows.append(window)
    constexprs = {
        "HAS_RADIAL": True,
        "RD_GRID": (frames, per_frame),
        "RD_SINK": (pattern.sink_frames, bool(pattern.sink_queries)),
        "RD_TEXT": (pattern.offset, pattern.extra_keys, bool(pattern.prefix_keys), pattern.text_queries == "full"),
    }
    return constexprs, tuple(windows)


def _decay_constexprs(decay: DecayModifier | UltraViCoModifier | None) -> dict:
    if decay is None:
        return {"HAS_DECAY": NO_DECAY.value, "DECAY": ((1, 1, 1), (1, 1, 1), 0)}
    if isinstance(decay, UltraViCoModifier):
        frame = decay.frame_tokens
        bands = tuple((lo * frame, hi * frame) for lo, hi in decay.bands)
        bands += ((-1, -1),) * (MAX_BANDS - len(bands))  # unused bands: compiled away
        parameters = (
            decay.offset,
            decay.num_tokens,
            frame,
            decay.train_frames * frame,
            decay.alpha,
            decay.band_factor,
            bands,
            decay.first_frame_mask,
        )
        return {"HAS_DECAY": ULTRAVICO.value, "DECAY": parameters}
    pad = (1,) * (MAX_AXES - len(decay.grid))
    return {"HAS_DECAY": BOX_DECAY.value, "DECAY": (pad + decay.grid, pad + decay.window, decay.offset)}


def _ultravico_is_identity(rule: UltraViCoModifier) -> bool:
    return rule.alpha == 1.0 and not rule.first_frame_mask and (not rule.bands or rule.band_factor == 1.0)


def describe(pattern: Pattern | None, score_mod: ScoreModifier | None) -> KernelSpec:
    """The kernel specialization for ``pattern`` and ``score_mod``; raises :class:`Unsupported` with the reason.

    Patterns: none / :class:`DensePattern`; at most one :class:`NeighborhoodPattern` (1-3-D grid, kernel,
    dilation, stride, per-axis causality, prefix or suffix text keys, both text-query modes) and at most one
    ``RadialPattern``, intersected with ``AllOf``. Modifiers: ``EntropyScale`` (any number) and at most one
    ``DecayModifier`` or one ``UltraViCoModifier``, in any ``Chain`` order (UltraViCo with at most
    ``MAX_BANDS`` bands; not with a ``DecayModifier``, whose bias does not commute with it). Anything else
    (custom Python patterns, per-head rules) has no in-kernel form.
    """
    neighborhood: NeighborhoodPattern | None = None
    radial: RadialPattern | None = None
    for part in _pattern_parts(pattern):
        if type(part) is NeighborhoodPattern:
            if neighborhood is not None:
                raise Unsupported("more than one NeighborhoodPattern in one AllOf")
            neighborhood = part
        elif type(part) is RadialPattern:
            if radial is not None:
                raise Unsupported("more than one RadialPattern in one AllOf")
            radial = part
        else:
            raise Unsupported(f"pattern {type(part).__name__} has no in-kernel form (dense, neighborhood, radial)")
    multiplier = 1.0
    decay: DecayModifier | UltraViCoModifier | None = None
    decay_bias = 0.0
    for part in _modifier_parts(score_mod):
        if type(part) is EntropyScale:
            multiplier *= part.scale
            decay_bias *= part.scale  # a multiplier after the decay scales its bias too
        elif type(part) in (DecayModifier, UltraViCoModifier):
            if decay is not None:
                raise Unsupported("more than one DecayModifier / UltraViCoModifier in one Chain")
            decay = part
            if type(part) is DecayModifier:
                decay_bias = math.log2(part.factor) if part.factor > 0 else float("-inf")
            elif len(part.bands) > MAX_BANDS:
                raise Unsupported(f"UltraViCoModifier with {len(part.bands)} bands (the kernels take {MAX_BANDS})")
        else:
            raise Unsupported(
                f"score modifier {type(part).__name__} has no in-kernel form (decay, UltraViCo, entropy scale)"
            )
    if isinstance(decay, DecayModifier) and decay.is_identity:
        decay, decay_bias = None, 0.0  # changes no pair: no kernel code at all
    if isinstance(decay, UltraViCoModifier) and _ultravico_is_identity(decay):
        decay = None
    radial_constexprs, windows = _radial_constexprs(radial)
    constexprs = {**_neighborhood_constexprs(neighborhood), **radial_constexprs, **_decay_constexprs(decay)}
    # Neighborhoods want 2-D/3-D tiles; radial bands run along the row-major per-frame index, so keep that.
    owner = neighborhood or radial
    parts = _pattern_parts(pattern)
    return KernelSpec(
        constexprs=constexprs,
        logit_multiplier=multiplier,
        decay_bias=decay_bias,
        radial_windows=windows,
        pattern=pattern if parts else None,
        order_grid=tuple(owner.grid) if owner is not None else None,
        order_offset=int(owner.offset) if owner is not None else 0,
        order_tiled=neighborhood is not None,
        neighborhood=neighborhood,
        key=(pattern.cache_key() if parts else None, score_mod.cache_key() if score_mod is not None else None),
    )


def grid_layout(spec: KernelSpec, length: int) -> tuple[tuple[int, ...], int] | None:
    """``(grid, offset)`` when the spec's grid fits in a sequence of ``length`` tokens, else ``None``."""
    if spec.order_grid is None:
        return None
    if spec.order_offset + math.prod(spec.order_grid) > length:
        return None
    return spec.order_grid, spec.order_offset
