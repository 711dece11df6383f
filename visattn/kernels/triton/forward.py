"""The fused forward kernel: block-sparse flash attention with the pattern computed on the fly.

One program computes one query tile (``BLOCK_M`` kernel positions) of one (batch, head). It gathers its query
rows through the plan's token order, then runs the online softmax (Milakov & Gimelshein 2018; FlashAttention,
Dao et al. 2022) over the key tiles the plan lists for it: first the *partial* tiles, where the pattern is
evaluated per pair from token indices (:mod:`visattn.kernels.triton.masking`), then the *full* tiles, where no
mask arithmetic runs at all. Empty tiles are never visited. Logits are kept in base 2 (``exp2`` is one
instruction; the scale carries ``log2(e)``) and accumulated in fp32; the log-sum-exp is written in natural log.

The optional identity blend (SoftPAG's ``(1 - s) * attention + s * v``) is fused into the epilogue with the
same two-sided formula as ``torch.lerp``, so ``s = 1`` returns ``v`` exactly.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .masking import load_tokens, tile_keep
from .modifiers import BOX_DECAY, ULTRAVICO, score_bias, ultravico_slope
from .ops import dot


@triton.jit
def _visit_tiles(
    acc,
    l_i,
    m_i,
    q,
    q_tok,
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
        if MASKED:
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
        else:
            # Full tiles lie inside the sequence; only the head dimension may be padded.
            k = tl.load(K + kv_tok[:, None] * stride_kn + offs_d[None, :], mask=offs_d[None, :] < HEAD_DIM, other=0.0)
            v = tl.load(
                V + kv_tok[:, None] * stride_vn + offs_dv[None, :], mask=offs_dv[None, :] < HEAD_DIM_V, other=0.0
            )
        s = dot(q, tl.trans(k), PRECISION) * qk_scale
        if HAS_DECAY == BOX_DECAY:
            s += score_bias(q_tok, kv_tok, decay_bias, DECAY)
        if HAS_DECAY == ULTRAVICO:
            slope, cut = ultravico_slope(q_tok, kv_tok, DECAY)
            slope = tl.where(s > 0, slope, 1.0)  # only positive logits are scaled
            s = tl.where(cut, float("-inf"), s * slope)
        if MASKED:
            keep = tile_keep(
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
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # Rows with nothing kept so far keep m = -inf; subtract 0 there so exp2 gives 0, not NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(s - m_safe[:, None])
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + dot(p.to(v.dtype), v, PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def attention_forward_kernel(
    Q,
    K,
    V,
    OUT,
    LSE,
    BLEND,
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
    stride_ob,
    stride_oh,
    stride_on,
    stride_blend_b,
    stride_blend_h,
    stride_blend_n,
    partial_stride,
    full_stride,
    heads,
    q_len,
    kv_len,
    qk_scale,
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
    RETURN_LSE: tl.constexpr,
    HAS_BLEND: tl.constexpr,
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
    """Grid ``(query tiles, batch * heads)``; tensors ``[B, H, N, D]`` with a unit stride on ``D``."""
    tile_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    # int64 offsets: B * H * N * D exceeds 2**31 for long videos.
    Q += b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh
    K += b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh
    V += b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh
    OUT += b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh

    q_tok, q_valid = load_tokens(Q_ORDER, tile_m * BLOCK_M, q_len, BLOCK_M, Q_PERMUTED)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    q = tl.load(
        Q + q_tok[:, None] * stride_qn + offs_d[None, :],
        mask=q_valid[:, None] & (offs_d[None, :] < HEAD_DIM),
        other=0.0,
    )

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    acc, l_i, m_i = _visit_tiles(
        acc,
        l_i,
        m_i,
        q,
        q_tok,
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
    acc, l_i, m_i = _visit_tiles(
        acc,
        l_i,
        m_i,
        q,
        q_tok,
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

    # A query with every key masked returns zeros and lse = -inf, as the reference backend does.
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    if HAS_BLEND:
        weight = tl.load(
            BLEND + b * stride_blend_b + h * stride_blend_h + q_tok * stride_blend_n, mask=q_valid, other=0.0
        )[:, None]
        v_self = tl.load(
            V + q_tok[:, None] * stride_vn + offs_dv[None, :],
            mask=q_valid[:, None] & (offs_dv[None, :] < HEAD_DIM_V),
            other=0.0,
        ).to(tl.float32)
        # torch.lerp's two-sided form: exact at both ends (weight 0 -> attention, weight 1 -> v).
        out = tl.where(weight < 0.5, out + weight * (v_self - out), v_self - (v_self - out) * (1.0 - weight))
    tl.store(
        OUT + q_tok[:, None] * stride_on + offs_dv[None, :],
        out.to(OUT.dtype.element_ty),
        mask=q_valid[:, None] & (offs_dv[None, :] < HEAD_DIM_V),
    )
    if RETURN_LSE:
        lse = (m_i + tl.math.log2(l_i)) * 0.6931471805599453  # base 2 -> natural log
        tl.store(LSE + bh.to(tl.int64) * q_len + q_tok, lse, mask=q_valid)
