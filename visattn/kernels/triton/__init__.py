"""Fused Triton attention kernels (forward and backward) that compute visattn's patterns on the fly.

Block-sparse flash attention (online softmax, fp32 accumulation; FlashAttention, Dao et al. 2022 / 2023) in
which no mask exists in memory: each (query tile, key tile) pair recomputes which of its pairs are kept from
token indices and the pattern's integers (:mod:`.patterns`, :mod:`.masking`), and each query tile loops only over
the key tiles a small cached ``int32`` list names (:mod:`.plan`; block metadata, not a mask), split into partial
tiles (mask arithmetic) and full tiles (none). Grid tokens are visited in Generalized Neighborhood Attention's
tile-aligned order (Hassani et al. 2025), gathered and scattered through an index inside the kernels, so a 2-D
or 3-D neighborhood covers whole tiles and nothing is permuted in memory.

Files: :mod:`.forward` (forward kernel), :mod:`.backward_kv` (dK, dV), :mod:`.backward_q` (dQ);
:mod:`.masking`, :mod:`.modifiers` and :mod:`.ops` (shared ``@triton.jit`` helpers); :mod:`.patterns` (public
objects -> kernel integers), :mod:`.plan` (token order and tile lists), :mod:`.launch` (tile sizes, autotune
configs, launches), :mod:`.autograd` (:func:`fused_attention` and its ``autograd.Function``). The backend is
:mod:`visattn.kernels.backends.triton` (``backend="triton"``).

Supported:

* dtypes float16, bfloat16, float32 (fp32 with IEEE products); head_dim up to 256 (any size; padded to a power
  of two >= 16 inside), value dim may differ; ``[B, H, N, D]`` with any batch/head/token strides.
* patterns: dense; :class:`~visattn.kernels.neighborhood.NeighborhoodPattern` (1-3-D, any kernel, dilation,
  stride, per-axis causal, prefix or suffix text keys, text queries "full" or "text");
  :class:`~visattn.kernels.radial.RadialPattern` (bands, split distances, sink frames, text); an ``AllOf`` of at
  most one of each.
* modifiers: :class:`~visattn.kernels.extrapolation_scores.EntropyScale` (folded into the scale) and one
  :class:`~visattn.kernels.extrapolation_scores.DecayModifier` (in-kernel windowed bias), in any ``Chain`` order.
* identity blend (SoftPAG) fused into the forward epilogue; log-sum-exp (natural log, ``[B, H, Nq]``),
  differentiable; gradients for ``q``, ``k``, ``v``.

Not supported (``supports()`` is False; FlexAttention or the reference backend run them): the model's own
``attn_mask`` tensors, custom Python patterns or modifiers (no closed form the kernel can compile), patterns or
modifiers that differ per batch item or head, grouped-query attention (``k``/``v`` with fewer heads).

Running: on CUDA the kernels are compiled and autotuned (:mod:`.launch` lists tile sizes and configs). On CPU
they run only under Triton's interpreter, which Triton selects when the kernels are *decorated*: set
``TRITON_INTERPRET=1`` before this package is first imported. The interpreter is slow and meant for tests at
tiny sizes. No GPU performance figure is claimed here: none was measured.
"""

from __future__ import annotations

from .autograd import FusedAttention, fused_attention
from .kernel_spec import KernelSpec, Unsupported, describe
from .launch import INTERPRETED, tile_config

__all__ = ["FusedAttention", "INTERPRETED", "KernelSpec", "Unsupported", "describe", "fused_attention", "tile_config"]
