"""Fused Triton kernels (forward and backward) against the reference backend.

Without a GPU the kernels run under Triton's interpreter, which Triton selects when a kernel is decorated: the
environment variable is set here before ``visattn.kernels.triton`` is imported (and the package re-imported if
an earlier test imported it compiled). Sizes are tiny (grids like 4x4 and 2x4x4, head_dim 16-32, 16-token tiles)
because the interpreter executes every tile program in NumPy. Tests that need a real GPU are marked ``gpu``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
    # An earlier test may have imported the kernels compiled (no interpreter): import them again, interpreted.
    for name in [name for name in sys.modules if name.startswith("visattn.kernels.triton")]:
        del sys.modules[name]

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from helpers import BandPattern  # noqa: E402

import visattn  # noqa: E402
from visattn.effects import NeighborhoodAttention  # noqa: E402
from visattn.kernels import (  # noqa: E402
    DecayModifier,
    DensePattern,
    EntropyScale,
    NeighborhoodPattern,
    RadialPattern,
    all_of,
    attention,
    available_backends,
    chain,
    choose_backend,
    density,
)
from visattn.kernels.extrapolation_scores import UltraViCoModifier  # noqa: E402
from visattn.kernels.request import AttentionRequest  # noqa: E402
from visattn.kernels.triton import fused_attention  # noqa: E402
from visattn.kernels.triton.kernel_spec import describe  # noqa: E402
from visattn.kernels.triton.plan import get_plan, tile_shape_for  # noqa: E402
from visattn.tiny import call_kwargs, tiny_pipeline  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
}


def qkv(batch=1, heads=2, n_q=32, n_k=None, dim=16, dim_v=None, dtype=torch.float32, seed=0, grad=False):
    generator = torch.Generator().manual_seed(seed)
    n_k = n_q if n_k is None else n_k
    dim_v = dim if dim_v is None else dim_v
    shapes = ((batch, heads, n_q, dim), (batch, heads, n_k, dim), (batch, heads, n_k, dim_v))
    tensors = [torch.randn(shape, generator=generator).to(device=DEVICE, dtype=dtype) for shape in shapes]
    if grad:
        for tensor in tensors:
            tensor.requires_grad_(True)
    return tensors


def reference(q, k, v, **kwargs):
    """The oracle in fp32 (inputs upcast), returning ``(out, lse)``."""
    return attention(q.float(), k.float(), v.float(), backend="reference", return_lse=True, **kwargs)


def check_forward(pattern=None, score_mod=None, dtype=torch.float32, n_q=None, n_k=None, dim=16, seed=0, **kw):
    n = n_q or (pattern.offset + pattern.num_tokens + getattr(pattern, "extra_keys", 0) if pattern else 32)
    q, k, v = qkv(n_q=n, n_k=n_k, dim=dim, dtype=dtype, seed=seed, **kw)
    out, lse = fused_attention(q, k, v, pattern=pattern, score_mod=score_mod, return_lse=True)
    expected, expected_lse = reference(q, k, v, pattern=pattern, score_mod=score_mod)
    assert out.dtype == dtype and out.shape == expected.shape
    torch.testing.assert_close(out.float(), expected, **TOLERANCE[dtype])
    torch.testing.assert_close(lse, expected_lse, **TOLERANCE[dtype])


# ------------------------------------------------------------------------------------------------ forward

NEIGHBORHOODS = [
    dict(grid=(32,), kernel_size=5),
    dict(grid=(30,), kernel_size=4, dilation=2),
    dict(grid=(24,), kernel_size=6, stride=3, is_causal=True),
    dict(grid=(4, 4), kernel_size=3),
    dict(grid=(6, 5), kernel_size=(2, 4), stride=(2, 1)),
    dict(grid=(4, 6), kernel_size=(3, 2), dilation=(1, 2), is_causal=(True, False)),
    dict(grid=(2, 4, 4), kernel_size=(1, 3, 3)),
    dict(grid=(2, 4, 4), kernel_size=(2, 3, 2), stride=(1, 2, 2), is_causal=(True, False, False)),
    dict(grid=(3, 4, 4), kernel_size=(3, 2, 2), dilation=(1, 2, 1)),
]


@pytest.mark.parametrize("params", NEIGHBORHOODS, ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
def test_neighborhood_forward_matches_reference(params):
    check_forward(NeighborhoodPattern(**params), seed=len(str(params)))


@pytest.mark.parametrize(
    "text",
    [
        dict(offset=5, prefix_keys=True),  # text first (Flux), all text keys visible to image queries
        dict(offset=0, extra_keys=7),  # text after the grid (SD3, NATTEN's additional keys)
        dict(offset=3, extra_keys=4, prefix_keys=False, text_queries="text"),
    ],
)
def test_neighborhood_with_text_tokens_matches_reference(text):
    pattern = NeighborhoodPattern(grid=(4, 4), kernel_size=3, **text)
    n = pattern.offset + pattern.num_tokens + pattern.extra_keys
    check_forward(pattern, n_q=n, n_k=n)


def test_grid_queries_with_extra_keys_only():
    # Cross-shaped lengths: only grid queries, keys = grid + additional keys (NATTEN's additional_keys).
    pattern = NeighborhoodPattern(grid=(4, 4), kernel_size=3, extra_keys=5)
    check_forward(pattern, n_q=16, n_k=21)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_forward(dtype):
    check_forward(NeighborhoodPattern(grid=(2, 4, 4), kernel_size=(2, 3, 3)), dtype=dtype, dim=32)
    check_forward(None, dtype=dtype, n_q=37, n_k=29, dim=32)


def test_dense_with_odd_lengths_head_dims_and_value_dim():
    check_forward(None, n_q=19, n_k=45, dim=24, dim_v=8)
    check_forward(DensePattern(), n_q=17, n_k=17, dim=32)


def test_radial_forward_matches_reference():
    check_forward(RadialPattern((8, 2, 4), block_size=2, decay_factor=0.5))
    text = RadialPattern((4, 2, 4), block_size=1, sink_frames=1, sink_queries=True, offset=4, extra_keys=3)
    check_forward(text, n_q=39, n_k=39)


def test_radial_intersected_with_a_neighborhood():
    pattern = all_of(
        [RadialPattern((4, 2, 4), block_size=1), NeighborhoodPattern(grid=(4, 2, 4), kernel_size=(3, 2, 3))]
    )
    check_forward(pattern, n_q=32)


def test_score_modifiers_in_any_chain_order():
    grid = (4, 4)
    decay = DecayModifier(grid=grid, window=(2, 3), factor=0.25, offset=2)
    entropy = EntropyScale(1.7)
    pattern = NeighborhoodPattern(grid=grid, kernel_size=3, offset=2)
    for modifier in (decay, entropy, chain([decay, entropy]), chain([entropy, decay, EntropyScale(0.5)])):
        check_forward(pattern, score_mod=modifier, n_q=20, n_k=20)
    # factor 0 masks out-of-window pairs completely.
    check_forward(None, score_mod=DecayModifier(grid=(4, 8), window=(3, 3), factor=0.0), n_q=32)


def test_ultravico_rule_matches_reference():
    """UltraViCo's authors' rule in-kernel: positive far logits times alpha, the first-frame mask (Wan), bands
    (HunyuanVideo) with text around the grid, composed with a neighborhood and an entropy scale."""
    check_forward(None, score_mod=UltraViCoModifier((6, 2, 2), 2), n_q=24)
    bands = UltraViCoModifier((12, 1, 2), 2, bands=((4, 5), (8, 9)), first_frame_mask=False, offset=3)
    check_forward(None, score_mod=bands, n_q=29)
    grid = (6, 2, 2)
    pattern = NeighborhoodPattern(grid=grid, kernel_size=(3, 2, 2))
    check_forward(pattern, score_mod=chain([EntropyScale(1.3), UltraViCoModifier(grid, 2, alpha=0.5)]), n_q=24)
    with pytest.raises(visattn.kernels.triton.Unsupported, match="more than one DecayModifier / UltraViCoModifier"):
        describe(None, chain([UltraViCoModifier(grid, 2), DecayModifier(grid=grid, window=(2, 2, 2), factor=0.5)]))


def test_ultravico_gradients_match_reference_autograd():
    modifier = chain([UltraViCoModifier((8, 2, 2), 2, alpha=0.7), EntropyScale(1.2)])
    check_gradients(None, score_mod=modifier, n=32, lse_weight=1.0)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # the interpreter's log2(0) = -inf, on purpose
def test_fully_masked_queries_give_zeros_and_minus_infinite_lse():
    # Text queries in "text" mode with no text keys: those rows keep nothing.
    pattern = NeighborhoodPattern(grid=(4, 4), kernel_size=3, offset=0, text_queries="text")
    q, k, v = qkv(n_q=20, n_k=16)
    out, lse = fused_attention(q, k, v, pattern=pattern, return_lse=True)
    expected, expected_lse = reference(q, k, v, pattern=pattern)
    assert torch.isneginf(lse[..., 16:]).all() and (out[..., 16:, :] == 0).all()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(lse, expected_lse)


def test_fused_identity_blend_matches_the_core_blend_and_is_exact_at_one():
    pattern = NeighborhoodPattern(grid=(4, 4), kernel_size=3)
    q, k, v = qkv(heads=3, n_q=16)
    blend = torch.tensor([0.0, 0.3, 1.0], device=DEVICE).view(1, 3, 1, 1)
    out, _ = fused_attention(q, k, v, pattern=pattern, identity_blend=blend)
    expected = attention(q, k, v, pattern=pattern, identity_blend=blend, backend="reference")
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
    assert torch.equal(out[:, 2], v[:, 2])  # SoftPAG at weight 1 is PAG's identity, bit for bit


def test_strided_inputs_in_diffusers_layout():
    # [B, N, H, D] transposed to [B, H, N, D], as diffusers' processors produce them: no copy needed.
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 16, 2, 16, generator=generator).to(DEVICE).transpose(1, 2) for _ in range(3))
    pattern = NeighborhoodPattern(grid=(4, 4), kernel_size=(3, 2))
    out, _ = fused_attention(q, k, v, pattern=pattern)
    torch.testing.assert_close(out, reference(q, k, v, pattern=pattern)[0], atol=2e-5, rtol=2e-5)


# ----------------------------------------------------------------------------------------------- backward


def check_gradients(pattern=None, score_mod=None, n=32, dim=16, dtype=torch.float32, lse_weight=0.0, seed=1):
    q, k, v = qkv(n_q=n, dim=dim, dtype=dtype, seed=seed, grad=True)
    generator = torch.Generator().manual_seed(seed + 1)
    grad_out = torch.randn(q.shape, generator=generator).to(DEVICE, dtype)
    grad_lse = torch.randn(q.shape[:3], generator=generator).to(DEVICE) * lse_weight
    out, lse = fused_attention(q, k, v, pattern=pattern, score_mod=score_mod, return_lse=True)
    grads = torch.autograd.grad((out.float() * grad_out.float()).sum() + (lse * grad_lse).sum(), (q, k, v))
    q_ref, k_ref, v_ref = (t.detach().float().requires_grad_(True) for t in (q, k, v))
    out_ref, lse_ref = reference(q_ref, k_ref, v_ref, pattern=pattern, score_mod=score_mod)
    expected = torch.autograd.grad(
        (out_ref * grad_out.float()).sum() + (lse_ref * grad_lse).sum(), (q_ref, k_ref, v_ref)
    )
    tolerance = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    for name, got, want in zip("qkv", grads, expected):
        assert got.dtype == dtype, name
        torch.testing.assert_close(got.float(), want, **tolerance, msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize(
    "pattern",
    [
        None,
        NeighborhoodPattern(grid=(4, 8), kernel_size=(3, 5), dilation=(1, 1), stride=(1, 2)),
        NeighborhoodPattern(grid=(2, 4, 4), kernel_size=(2, 3, 3), is_causal=(True, False, False), offset=3),
        RadialPattern((4, 2, 4), block_size=1, decay_factor=0.5),
    ],
    ids=["dense", "na2d-strided", "na3d-causal-text", "radial"],
)
def test_gradients_match_reference_autograd(pattern):
    n = 35 if pattern is not None and pattern.offset else 32
    check_gradients(pattern, n=n)


def test_gradients_with_modifiers_lse_gradient_and_half_precision():
    grid = (4, 8)
    modifier = chain([DecayModifier(grid=grid, window=(2, 4), factor=0.3), EntropyScale(1.3)])
    check_gradients(NeighborhoodPattern(grid=grid, kernel_size=3), score_mod=modifier, lse_weight=1.0)
    check_gradients(NeighborhoodPattern(grid=grid, kernel_size=3), dtype=torch.bfloat16, dim=32)


def test_blend_gradient_flows_to_values_and_weight():
    pattern = NeighborhoodPattern(grid=(4, 4), kernel_size=3)
    q, k, v = qkv(n_q=16, grad=True)
    blend = torch.tensor([0.25, 0.75], device=DEVICE).view(1, 2, 1, 1).requires_grad_(True)
    out, _ = fused_attention(q, k, v, pattern=pattern, identity_blend=blend)
    grads = torch.autograd.grad(out.square().sum(), (v, blend))
    v_ref, blend_ref = v.detach().clone().requires_grad_(True), blend.detach().clone().requires_grad_(True)
    expected_out = attention(q.detach(), k.detach(), v_ref, pattern=pattern, identity_blend=blend_ref)
    expected = torch.autograd.grad(expected_out.square().sum(), (v_ref, blend_ref))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------------- plan and tile skipping


def test_tile_shapes_divide_the_grid_and_follow_the_windows():
    assert tile_shape_for((4, 4), 16) == (4, 4)
    assert tile_shape_for((2, 4, 4), 16) == (2, 2, 4)
    assert tile_shape_for((5, 6), 16) == (1, 2)  # only divisors: no partial tiles
    # With a neighborhood the shape with the fewest tile pairs wins: whole rows for a 3x3 window on 16 columns.
    assert tile_shape_for((16, 16), 16, NeighborhoodPattern(grid=(16, 16), kernel_size=3)) == (1, 16)
    assert tile_shape_for((16, 16), 16, NeighborhoodPattern(grid=(16, 16), kernel_size=7)) == (4, 4)


@pytest.mark.parametrize(
    ("pattern", "visited", "any_full"),
    [
        # 4x4-token tiles, 7x7 windows: per axis the 4 query tiles touch 2, 3, 3, 2 key tiles (windows are
        # shifted inward at the borders), so (2 + 3 + 3 + 2) ** 2 tile pairs.
        (NeighborhoodPattern(grid=(16, 16), kernel_size=7), 10**2, True),
        # whole-row tiles, 3x3 windows: three rows each (border rows' windows are shifted inward, not cut).
        # No tile pair is full there: every one runs the mask arithmetic.
        (NeighborhoodPattern(grid=(16, 16), kernel_size=3), 16 * 3, False),
    ],
)
def test_plan_lists_exactly_the_tiles_with_kept_pairs(pattern, visited, any_full):
    plan = get_plan(describe(pattern, None), 256, 256, 16, 16, torch.device("cpu"))
    order = plan.q_order.long() if plan.q_order is not None else None
    # The same count as density() over the same order: the lists are exact, neither missing nor extra tiles.
    assert plan.visited_tiles == density(pattern, 256, (16, 16), order=order).visited_tiles == visited
    assert plan.visited_tiles <= density(pattern, 256, (16, 16)).visited_tiles  # never worse than row-major
    # Every listed tile is visited once, as partial or full, from the query side and from the key side.
    for lists in (plan.by_query, plan.by_key):
        assert int(lists.partial_count.sum() + lists.full_count.sum()) == plan.visited_tiles
    # Full tiles (interior ones with wide windows) skip the mask arithmetic.
    assert (int(plan.by_query.full_count.sum()) > 0) == any_full


def test_text_first_sequences_put_the_grid_on_tile_boundaries():
    pattern = NeighborhoodPattern(grid=(8, 8), kernel_size=3, offset=5)
    plan = get_plan(describe(pattern, None), 69, 69, 16, 16, torch.device("cpu"))
    assert sorted(plan.q_order.tolist()) == list(range(69))
    assert plan.q_order[:64].min() == 5 and plan.q_order[:64].max() == 68  # grid first, text last


# ----------------------------------------------------------------------------------------- the backend


def test_backend_runs_through_the_attention_core_and_auto_never_picks_it_on_cpu():
    assert available_backends()["triton"][0]
    pattern = NeighborhoodPattern(grid=(4, 4), kernel_size=3)
    q, k, v = qkv(n_q=16)
    blend = torch.full((1, 2, 1, 1), 0.5, device=DEVICE)
    out, lse = attention(q, k, v, pattern=pattern, identity_blend=blend, backend="triton", return_lse=True)
    expected, expected_lse = attention(
        q, k, v, pattern=pattern, identity_blend=blend, backend="reference", return_lse=True
    )
    torch.testing.assert_close(out, expected, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(lse, expected_lse, atol=2e-5, rtol=2e-5)
    if DEVICE == "cpu":
        assert choose_backend(AttentionRequest(q, k, v, pattern=pattern)) != "triton"


def test_backend_declines_what_it_cannot_compute():
    q, k, v = qkv(n_q=16)

    mask = torch.zeros(1, 1, 16, 16, device=DEVICE)
    with pytest.raises(ValueError, match="backend='triton' cannot compute"):
        attention(q, k, v, attn_mask=mask, pattern=NeighborhoodPattern(grid=(4, 4), kernel_size=3), backend="triton")
    with pytest.raises(ValueError, match="backend='triton' cannot compute"):
        attention(q, k, v, pattern=BandPattern(2), backend="triton")
    with pytest.raises(ValueError, match="backend='triton' cannot compute"):
        attention(q.double(), k.double(), v.double(), backend="triton")


def test_a_neighborhood_processor_runs_on_the_triton_backend_end_to_end():
    # Flux: joint attention with the text first; every attention call of the tiny model goes through the kernels.
    pipe = tiny_pipeline("flux")
    outputs = []
    for backend in ("reference", "triton"):
        with visattn.attach(pipe, NeighborhoodAttention(3), backend=backend):
            outputs.append(np.asarray(pipe(**call_kwargs("flux"))[0], dtype=np.float64))
    assert np.abs(outputs[0] - outputs[1]).max() <= 1e-5


def test_bad_inputs_name_the_argument():
    q, k, v = qkv(n_q=16)
    with pytest.raises(ValueError, match="q has dtype torch.int64"):
        fused_attention(q.long(), k.long(), v.long())
    with pytest.raises(ValueError, match="head_dim differ"):
        fused_attention(q, k[..., :8], v)
    with pytest.raises(ValueError, match="identity_blend shape"):
        fused_attention(q, k, v, identity_blend=torch.ones(3, 1, 1, 1, device=DEVICE))


# ---------------------------------------------------------------------------------- GPU readiness


@pytest.mark.slow
def test_kernels_compile_for_hopper_without_a_gpu():
    """Triton's compiler (not the interpreter) accepts the kernels: bf16, head_dim 128, sm_90, every pattern on.

    The dQ kernel is left out to keep this affordable on CPU (about 10 s per kernel): it uses no construct that
    the forward and dK/dV kernels do not (same helpers, same transposed products).
    """
    script = textwrap.dedent(
        """
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from visattn.kernels import NeighborhoodPattern, RadialPattern, DecayModifier, all_of
        from visattn.kernels.triton import describe
        from visattn.kernels.triton.forward import attention_forward_kernel
        from visattn.kernels.triton.backward_kv import attention_backward_kv_kernel

        pattern = all_of([
            NeighborhoodPattern(grid=(4, 8, 8), kernel_size=(3, 5, 3), dilation=(1, 1, 2), stride=(1, 2, 1),
                                is_causal=(True, False, False), offset=7, extra_keys=3),
            RadialPattern((4, 8, 8), block_size=16, offset=7, extra_keys=3),
        ])
        spec = describe(pattern, DecayModifier(grid=(4, 8, 8), window=(2, 4, 4), factor=0.5, offset=7))
        pointers = {name: "*bf16" for name in ("Q", "K", "V", "OUT", "DO", "DK", "DV", "DQ")}
        pointers.update({name: "*fp32" for name in ("LSE", "BLEND", "DELTA")})
        constexprs = dict(HEAD_DIM=128, HEAD_DIM_V=128, BLOCK_D=128, BLOCK_DV=128, Q_PERMUTED=True,
                          KV_PERMUTED=True, PRECISION="tf32", BLOCK_M=64, BLOCK_N=64, **spec.constexprs)
        for kernel, extra in ((attention_forward_kernel, dict(RETURN_LSE=True, HAS_BLEND=True)),
                              (attention_backward_kv_kernel, {})):
            values = dict(constexprs, **extra)
            signature = {}
            for name in kernel.arg_names:
                if name in values:
                    signature[name] = "constexpr"
                elif name in pointers:
                    signature[name] = pointers[name]
                elif name.isupper():  # order, tile-list and window tables
                    signature[name] = "*i32"
                elif name in ("qk_scale", "scale", "decay_bias"):
                    signature[name] = "fp32"
                else:
                    signature[name] = "i32"
            compiled = triton.compile(ASTSource(kernel, signature, values), target=GPUTarget("cuda", 90, 32))
            assert "cubin" in compiled.asm, kernel
        print("compiled")
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-4000:]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dim", [64, 128])
def test_gpu_video_sized_neighborhood_forward_and_backward(dtype, dim):
    pattern = NeighborhoodPattern(grid=(4, 24, 24), kernel_size=(3, 9, 9), offset=77, prefix_keys=True)
    n = 77 + pattern.num_tokens
    check_forward(pattern, dtype=dtype, n_q=n, dim=dim)
    check_gradients(pattern, n=n, dim=dim, dtype=dtype)


@pytest.mark.gpu
def test_gpu_matches_flex_on_radial_with_modifiers():
    grid = (8, 16, 16)
    pattern = RadialPattern(grid, block_size=64)
    modifier = chain([DecayModifier(grid=grid, window=(4, 16, 16), factor=0.5), EntropyScale(1.2)])
    q, k, v = qkv(batch=2, heads=4, n_q=2048, dim=128, dtype=torch.bfloat16)
    out = attention(q, k, v, pattern=pattern, score_mod=modifier, backend="triton")
    expected = attention(q, k, v, pattern=pattern, score_mod=modifier, backend="flex")
    torch.testing.assert_close(out, expected, atol=2e-2, rtol=2e-2)
