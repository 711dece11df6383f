"""In-kernel pattern arithmetic shared by the forward and backward kernels: which pairs of a tile are kept.

Everything is computed from token indices (``q_tok`` ``[BLOCK_M, 1]``, ``kv_tok`` ``[1, BLOCK_N]``) and
compile-time pattern parameters (:mod:`visattn.kernels.triton.kernel_spec`); the formulas are those of
:mod:`visattn.kernels.neighborhood` (NATTEN's conventions: border-clamped windows, dilation groups, stride
leaders, per-axis causality), evaluated once per query row for the window bounds and once per pair for the
comparison.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_tokens(ORDER, start, length, BLOCK: tl.constexpr, PERMUTED: tl.constexpr):
    """Token indices stored at kernel positions ``start + arange(BLOCK)`` and which of them exist."""
    pos = start + tl.arange(0, BLOCK)
    valid = pos < length
    if PERMUTED:
        tok = tl.load(ORDER + pos, mask=valid, other=0)
    else:
        tok = pos
    return tok, valid


@triton.jit
def axis_keep(qc, kc, L: tl.constexpr, K: tl.constexpr, DIL: tl.constexpr, S: tl.constexpr, CAUSAL: tl.constexpr):
    """NA on one axis: is key coordinate ``kc`` in the window of query coordinate ``qc`` (axis length ``L``)."""
    group = qc % DIL
    pos = qc // DIL
    n_group = (L - group + DIL - 1) // DIL
    block_start = pos // S * S
    if CAUSAL:
        leader = tl.minimum(block_start + S - 1, n_group - 1)
        start = tl.maximum(leader - K + 1, 0)
        stop = pos + 1
    else:
        leader = tl.minimum(block_start + S // 2, n_group - 1)
        # Shifted inward at the borders so that every query sees K positions (NATTEN).
        start = tl.maximum(tl.minimum(leader - K // 2, n_group - K), 0)
        stop = start + K
    first = start * DIL + group
    last = stop * DIL + group - (DIL - 1)
    keep = (kc >= first) & (kc < last)
    if DIL > 1:
        keep = keep & (kc % DIL == group)
    return keep


@triton.jit
def neighborhood_keep(
    q_tok,
    kv_tok,
    GRID: tl.constexpr,
    KERNEL: tl.constexpr,
    DILATION: tl.constexpr,
    STRIDE: tl.constexpr,
    CAUSAL: tl.constexpr,
    TEXT: tl.constexpr,
):
    """``NeighborhoodPattern.mask_mod`` on a ``[BLOCK_M, 1] x [1, BLOCK_N]`` tile of token indices.

    ``GRID``, ``KERNEL``, ``DILATION``, ``STRIDE``, ``CAUSAL`` hold three axes (slowest first; unused leading axes
    have size 1); ``TEXT`` is ``(offset, extra_keys, prefix_keys, text_queries == "full")``.
    """
    offset: tl.constexpr = TEXT[0]
    n: tl.constexpr = GRID[0] * GRID[1] * GRID[2]
    plane: tl.constexpr = GRID[1] * GRID[2]
    q_in = (q_tok >= offset) & (q_tok < offset + n)
    kv_in = (kv_tok >= offset) & (kv_tok < offset + n)
    # Clamped like mask_mod: text tokens get in-range coordinates whose result is overridden below.
    q_local = tl.minimum(tl.maximum(q_tok - offset, 0), n - 1)
    kv_local = tl.minimum(tl.maximum(kv_tok - offset, 0), n - 1)
    keep = kv_in
    # Axes of size 1 keep every pair; the constexpr tests compile them away.
    if GRID[2] > 1:
        keep = keep & axis_keep(
            q_local % GRID[2], kv_local % GRID[2], GRID[2], KERNEL[2], DILATION[2], STRIDE[2], CAUSAL[2]
        )
    if GRID[1] > 1:
        keep = keep & axis_keep(
            (q_local // GRID[2]) % GRID[1],
            (kv_local // GRID[2]) % GRID[1],
            GRID[1],
            KERNEL[1],
            DILATION[1],
            STRIDE[1],
            CAUSAL[1],
        )
    if GRID[0] > 1:
        keep = keep & axis_keep(
            q_local // plane, kv_local // plane, GRID[0], KERNEL[0], DILATION[0], STRIDE[0], CAUSAL[0]
        )
    return text_rule(q_tok, kv_tok, q_in, kv_in, keep, TEXT, n)


@triton.jit
def text_rule(q_tok, kv_tok, q_in, kv_in, grid_keep, TEXT: tl.constexpr, n: tl.constexpr):
    """Combine a grid rule with the text tokens around the grid, as the patterns' ``mask_mod`` does.

    Grid queries keep ``grid_keep`` plus the ``TEXT[1]`` keys after the grid and, with ``TEXT[2]``, every key
    before it; other queries keep every key (``TEXT[3]``, text_queries="full") or only non-grid keys.
    """
    offset: tl.constexpr = TEXT[0]
    extra = (kv_tok >= offset + n) & (kv_tok < offset + n + TEXT[1])
    if TEXT[2]:
        extra = extra | (kv_tok < offset)
    q_out = q_in == 0
    grid_rows = q_in & (grid_keep | extra)
    if TEXT[3]:
        result = grid_rows | q_out
    else:
        result = grid_rows | (q_out & (kv_in == 0))
    return result


@triton.jit
def radial_keep(q_tok, kv_tok, WINDOWS, GRID: tl.constexpr, SINK: tl.constexpr, TEXT: tl.constexpr):
    """``RadialPattern.mask_mod`` on a tile: ``GRID = (frames, tokens_per_frame)``, ``SINK = (frames, queries)``.

    ``WINDOWS[d]`` (int32, one per frame distance ``d``) is the largest kept offset on the per-frame token index
    for frames ``d`` apart: ``tokens_per_frame - 1`` for dense pairs, ``-1`` for dropped ones (Radial Attention's
    bands, split distances and dense centre, tabulated on the host from the pattern's bands).
    """
    offset: tl.constexpr = TEXT[0]
    per_frame: tl.constexpr = GRID[1]
    n: tl.constexpr = GRID[0] * GRID[1]
    q_in = (q_tok >= offset) & (q_tok < offset + n)
    kv_in = (kv_tok >= offset) & (kv_tok < offset + n)
    q_local = tl.minimum(tl.maximum(q_tok - offset, 0), n - 1)
    kv_local = tl.minimum(tl.maximum(kv_tok - offset, 0), n - 1)
    q_frame = q_local // per_frame
    kv_frame = kv_local // per_frame
    distance = tl.abs(q_frame - kv_frame)
    # A tiny table (one entry per frame distance) stays in L1; one gather per pair replaces the band loop.
    window = tl.load(WINDOWS + distance)
    keep = tl.abs(q_local % per_frame - kv_local % per_frame) <= window
    if SINK[0] > 0:
        keep = keep | (kv_frame < SINK[0])
        if SINK[1]:
            keep = keep | (q_frame < SINK[0])
    return text_rule(q_tok, kv_tok, q_in, kv_in, kv_in & keep, TEXT, n)


@triton.jit
def tile_keep(
    q_tok,
    kv_tok,
    kv_valid,
    WINDOWS,
    HAS_NA: tl.constexpr,
    NA_GRID: tl.constexpr,
    NA_KERNEL: tl.constexpr,
    NA_DILATION: tl.constexpr,
    NA_STRIDE: tl.constexpr,
    NA_CAUSAL: tl.constexpr,
    NA_TEXT: tl.constexpr,
    HAS_RADIAL: tl.constexpr,
    RD_GRID: tl.constexpr,
    RD_SINK: tl.constexpr,
    RD_TEXT: tl.constexpr,
):
    """``[BLOCK_M, BLOCK_N]`` kept pairs of a tile: existing keys, intersected with every pattern present."""
    keep = kv_valid[None, :] & (q_tok[:, None] >= 0)
    if HAS_NA:
        keep = keep & neighborhood_keep(
            q_tok[:, None], kv_tok[None, :], NA_GRID, NA_KERNEL, NA_DILATION, NA_STRIDE, NA_CAUSAL, NA_TEXT
        )
    if HAS_RADIAL:
        keep = keep & radial_keep(q_tok[:, None], kv_tok[None, :], WINDOWS, RD_GRID, RD_SINK, RD_TEXT)
    return keep
