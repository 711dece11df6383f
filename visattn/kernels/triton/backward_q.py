"""Backward kernel for queries: ``dQ`` of block-sparse flash attention.

One program owns one query tile of one (batch, head) and visits the same key tiles as the forward (partial then
full), recomputing ``P = exp(S - lse)`` and accumulating ``dQ += dS K * scale`` with
``dS = P * (dO V^T - delta)`` (FlashAttention-2's backward, Dao 2023). Kept separate from the key/value kernel
so that neither needs atomics.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .masking import load_tokens, tile_keep
from .modifiers import BOX_DECAY, ULTRAVICO, score_bias, ultravico_slope
from .ops import dot


@triton.jit
def _visit_key_tiles(
    dq,
    q,
    do,
    lse,
    delta,
    q_tok,
    q_valid,
    K,
    V,
    TILE_INDEX,
    count,
    KV_ORDER,
    WINDOWS,
    stride_kn,
    stride_vn,
    kv_len,
    qk_scale,
    decay_bias,
    MASKED: tl.constexpr,
    PERMUTED: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_V: tl.constexpr,
    PRECISION: tl.constexpr,
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
    HAS_DECAY: tl.constexpr,
    DECAY: tl.constexpr,
):
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    for i in range(0, count):
        tile = tl.load(TILE_INDEX + i)
        kv_tok, kv_valid = load_tokens(KV_ORDER, tile * BLOCK_N, kv_len, BLOCK_N, PERMUTED)
        k = tl.load(
            K + kv_tok[:, None] * stride_kn + offs_d[None, :],
            mask=kv_valid[:, None] & (offs_d[None, :] < HEAD_DIM),
            other=0.0,
        )
        v = tl.load(
            V + kv_tok[:, None] * stride_vn + offs_dv[None, :],
            mask=kv_valid[:, None] & (offs_dv[None, :] < HEAD_DIM_V),
            other=0.0,
        )
        s = dot(q, tl.trans(k), PRECISION) * qk_scale
        if HAS_DECAY == BOX_DECAY:
            s += score_bias(q_tok, kv_tok, decay_bias, DECAY)
        if HAS_DECAY == ULTRAVICO:
            slope, cut = ultravico_slope(q_tok, kv_tok, DECAY)
            slope = tl.where(s > 0, slope, 1.0)  # only positive logits are scaled
            s = tl.where(cut, float("-inf"), s * slope)
        p = tl.math.exp2(s - lse[:, None])
        keep = q_valid[:, None] & kv_valid[None, :]
        if MASKED:
            keep = keep & tile_keep(
                q_tok,
                kv_tok,
                kv_valid,
                WINDOWS,
                HAS_NA,
                NA_GRID,
                NA_KERNEL,
                NA_DILATION,
                NA_STRIDE,
                NA_CAUSAL,
                NA_TEXT,
                HAS_RADIAL,
                RD_GRID,
                RD_SINK,
                RD_TEXT,
            )
        p = tl.where(keep, p, 0.0)
        dp = dot(do, tl.trans(v), PRECISION)
        ds = p * (dp - delta[:, None])
        if HAS_DECAY == ULTRAVICO:
            ds = ds * slope  # d(slope * s)/ds: the rule is linear on each side of zero
        dq += dot(ds.to(k.dtype), k, PRECISION)
    return dq


@triton.jit
def attention_backward_q_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    Q_ORDER,
    KV_ORDER,
    PARTIAL_INDEX,
    PARTIAL_COUNT,
    FULL_INDEX,
    FULL_COUNT,
    WINDOWS,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_dob,
    stride_doh,
    stride_don,
    partial_stride,
    full_stride,
    heads,
    q_len,
    kv_len,
    qk_scale,
    scale,
    decay_bias,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_V: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    Q_PERMUTED: tl.constexpr,
    KV_PERMUTED: tl.constexpr,
    PRECISION: tl.constexpr,
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
    HAS_DECAY: tl.constexpr,
    DECAY: tl.constexpr,
):
    """Grid ``(query tiles, batch * heads)``; ``DQ`` is a contiguous ``[B, H, Nq, D]``."""
    tile_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    K += b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    DO += b.to(tl.int64) * stride_dob + h.to(tl.int64) * stride_doh
    LSE += bh.to(tl.int64) * q_len
    DELTA += bh.to(tl.int64) * q_len
    DQ += bh.to(tl.int64) * q_len * HEAD_DIM

    q_tok, q_valid = load_tokens(Q_ORDER, tile_m * BLOCK_M, q_len, BLOCK_M, Q_PERMUTED)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q_mask = q_valid[:, None] & (offs_d[None, :] < HEAD_DIM)
    q = tl.load(Q + q_tok[:, None] * stride_qn + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(
        DO + q_tok[:, None] * stride_don + offs_dv[None, :],
        mask=q_valid[:, None] & (offs_dv[None, :] < HEAD_DIM_V),
        other=0.0,
    )
    lse = tl.load(LSE + q_tok, mask=q_valid, other=0.0) * 1.4426950408889634  # natural -> base 2
    lse = tl.where(lse == float("-inf"), 0.0, lse)
    delta = tl.load(DELTA + q_tok, mask=q_valid, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    dq = _visit_key_tiles(
        dq,
        q,
        do,
        lse,
        delta,
        q_tok,
        q_valid,
        K,
        V,
        PARTIAL_INDEX + tile_m * partial_stride,
        tl.load(PARTIAL_COUNT + tile_m),
        KV_ORDER,
        WINDOWS,
        stride_kn,
        stride_vn,
        kv_len,
        qk_scale,
        decay_bias,
        True,
        KV_PERMUTED,
        BLOCK_N,
        BLOCK_D,
        BLOCK_DV,
        HEAD_DIM,
        HEAD_DIM_V,
        PRECISION,
        HAS_NA,
        NA_GRID,
        NA_KERNEL,
        NA_DILATION,
        NA_STRIDE,
        NA_CAUSAL,
        NA_TEXT,
        HAS_RADIAL,
        RD_GRID,
        RD_SINK,
        RD_TEXT,
        HAS_DECAY,
        DECAY,
    )
    dq = _visit_key_tiles(
        dq,
        q,
        do,
        lse,
        delta,
        q_tok,
        q_valid,
        K,
        V,
        FULL_INDEX + tile_m * full_stride,
        tl.load(FULL_COUNT + tile_m),
        KV_ORDER,
        WINDOWS,
        stride_kn,
        stride_vn,
        kv_len,
        qk_scale,
        decay_bias,
        False,
        KV_PERMUTED,
        BLOCK_N,
        BLOCK_D,
        BLOCK_DV,
        HEAD_DIM,
        HEAD_DIM_V,
        PRECISION,
        HAS_NA,
        NA_GRID,
        NA_KERNEL,
        NA_DILATION,
        NA_STRIDE,
        NA_CAUSAL,
        NA_TEXT,
        HAS_RADIAL,
        RD_GRID,
        RD_SINK,
        RD_TEXT,
        HAS_DECAY,
        DECAY,
    )
    tl.store(DQ + q_tok[:, None] * HEAD_DIM + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=q_mask)
