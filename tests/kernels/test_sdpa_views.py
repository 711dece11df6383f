"""SDPA over an expanded (zero-stride) batch view of one row's queries and keys.

Prompt-to-Prompt's joint calls on a ``[source, target]`` batch (Flux's guidance-distilled pair) attend every row with
the source row's queries and keys; ``interception._SharedCall`` reads them through such a view instead of gathering
copies, on the CPU. On CUDA it gathers until the GPU test here shows that the fused kernels take the view (rather
than SDPA falling back to its math path, which would cost far more than the copies save): the GPU session runs it
(``benchmarks/gpu_session.sh``, its ``tests`` step).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def _qkv(batch: int, tokens: int, heads: int, dim: int, dtype: torch.dtype, device: str):
    torch.manual_seed(0)
    # [B, N, H, D] in memory, handed over as [B, H, N, D]: how diffusers' processors call SDPA.
    return tuple(torch.randn(batch, tokens, heads, dim, dtype=dtype, device=device).transpose(1, 2) for _ in range(3))


def _viewed_and_gathered(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    gathered = F.scaled_dot_product_attention(q.index_select(0, rows), k.index_select(0, rows), v)
    viewed = F.scaled_dot_product_attention(q[:1].expand(q.shape), k[:1].expand(k.shape), v)
    return viewed, gathered


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("tokens", "heads", "dim"), [(80, 2, 16), (333, 3, 24), (1024, 4, 64)])
def test_cpu_sdpa_reads_a_zero_stride_batch_view_bit_for_bit(dtype, tokens, heads, dim):
    viewed, gathered = _viewed_and_gathered(*_qkv(2, tokens, heads, dim, dtype, "cpu"))
    torch.testing.assert_close(viewed, gathered, rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dim", [64, 128])
def test_gpu_fused_sdpa_takes_a_zero_stride_batch_view(dtype, dim):
    """Flux-sized joint call (4,096 image and 512 text tokens): the fused kernels alone (flash, memory-efficient,
    cuDNN; no math fallback) answer the viewed call, bit for bit the gathered one. Passing, the one-source form of
    ``interception._shared_call`` may leave the CPU."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = _qkv(2, 4096 + 512, 24, dim, dtype, "cuda")
    fused = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    with sdpa_kernel(fused):
        viewed, gathered = _viewed_and_gathered(q, k, v)
    torch.testing.assert_close(viewed, gathered, rtol=0, atol=0)
