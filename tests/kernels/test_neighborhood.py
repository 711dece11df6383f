"""Neighborhood attention (NA / DiNA / strided GNA / causal) against a brute-force oracle, on both backends.

The oracle below is written independently of :mod:`visattn.kernels.neighborhood`: it lists each dilation group's
members explicitly and slices windows out of that list with Python loops, then runs a masked fp64 softmax.
"""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from visattn.kernels import NeighborhoodPattern, attention, na1d, na2d, na3d
from visattn.kernels.neighborhood import check_neighborhood_args, window_bounds

NA_FNS = {1: na1d, 2: na2d, 3: na3d}
BACKENDS = ("reference", "flex")
GRIDS = {1: [(7,), (9,), (6,)], 2: [(5, 6), (4, 4), (6, 3)], 3: [(3, 4, 5), (2, 3, 4)]}


# ----------------------------------------------------------------------------------------------------- oracle


def oracle_axis_keys(qc: int, length: int, k: int, d: int, s: int, causal: bool) -> set[int]:
    """Key coordinates one axis of query coordinate ``qc`` attends to, from the written semantics."""
    members = [c for c in range(length) if c % d == qc % d]  # the query's dilation group, in order
    p = members.index(qc)
    block = p // s * s
    if causal:
        leader = min(block + s - 1, len(members) - 1)  # last query of the stride block
        return set(members[max(0, leader - k + 1) : p + 1])
    leader = min(block + s // 2, len(members) - 1)  # centre query of the block (right-hand one for even s)
    start = leader - k // 2
    if start < 0:
        start = 0
    if start + k > len(members):
        start = len(members) - k
    window = members[start : start + k]
    assert len(window) == k
    return set(window)


def oracle_mask(grid, kernel, dilation, stride, causal, n_extra: int = 0) -> torch.Tensor:
    n = math.prod(grid)
    coords = list(itertools.product(*[range(size) for size in grid]))  # row-major, last axis fastest
    mask = torch.zeros(n, n + n_extra, dtype=torch.bool)
    for qi, qc in enumerate(coords):
        allowed = [
            oracle_axis_keys(qc[a], grid[a], kernel[a], dilation[a], stride[a], causal[a]) for a in range(len(grid))
        ]
        for ki, kc in enumerate(coords):
            mask[qi, ki] = all(kc[a] in allowed[a] for a in range(len(grid)))
        mask[qi, n:] = True  # additional keys: every query sees them
    return mask


def oracle_attention(q, k, v, mask, scale=None):
    """``[B, H, N, D]`` masked softmax attention in fp64."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = (q.double() @ k.double().transpose(-1, -2)) * scale
    logits = logits.masked_fill(~mask, float("-inf"))
    return torch.softmax(logits, dim=-1) @ v.double()


def to_bhnd(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1, x.shape[-2], x.shape[-1]).transpose(1, 2)


def random_config(rng: random.Random, na_dim: int) -> dict:
    grid = rng.choice(GRIDS[na_dim])
    kernel, dilation, stride, causal = [], [], [], []
    for size in grid:
        k = rng.randint(1, size)
        d = rng.randint(1, size // k)
        kernel.append(k)
        dilation.append(d)
        stride.append(rng.randint(1, k))
        causal.append(rng.random() < 0.3)
    return dict(
        grid=grid,
        kernel_size=tuple(kernel),
        dilation=tuple(dilation),
        stride=tuple(stride),
        is_causal=tuple(causal),
        n_extra=rng.choice([0, 0, 3]),
    )


CONFIGS = [random_config(random.Random(1000 * na_dim + i), na_dim) for na_dim in (1, 2, 3) for i in range(10)]


def make_inputs(grid, n_extra, heads=2, dim=8, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (2, *grid, heads, dim)
    q, k, v = (torch.randn(shape, generator=gen).to(dtype) for _ in range(3))
    ak = av = None
    if n_extra:
        ak, av = (torch.randn(2, n_extra, heads, dim, generator=gen).to(dtype) for _ in range(2))
    return q, k, v, ak, av


def run_na(cfg, q, k, v, ak, av, backend):
    fn = NA_FNS[len(cfg["grid"])]
    return fn(
        q,
        k,
        v,
        kernel_size=cfg["kernel_size"],
        dilation=cfg["dilation"],
        stride=cfg["stride"],
        is_causal=cfg["is_causal"],
        additional_keys=ak,
        additional_values=av,
        backend=backend,
    )


def expected(cfg, q, k, v, ak, av):
    mask = oracle_mask(
        cfg["grid"], cfg["kernel_size"], cfg["dilation"], cfg["stride"], cfg["is_causal"], cfg["n_extra"]
    )
    kk, vv = to_bhnd(k), to_bhnd(v)
    if ak is not None:
        kk, vv = torch.cat([kk, to_bhnd(ak)], 2), torch.cat([vv, to_bhnd(av)], 2)
    out = oracle_attention(to_bhnd(q), kk, vv, mask)
    return out.transpose(1, 2).reshape(q.shape[:-1] + (v.shape[-1],))


def materialized(pattern: NeighborhoodPattern, n_q: int, n_k: int) -> torch.Tensor:
    z = torch.zeros((), dtype=torch.long)
    return pattern.mask_mod(z, z, torch.arange(n_q).view(-1, 1), torch.arange(n_k).view(1, -1))


# ------------------------------------------------------------------------------------------ oracle agreement


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_matches_oracle(index, backend):
    cfg = CONFIGS[index]
    q, k, v, ak, av = make_inputs(cfg["grid"], cfg["n_extra"], seed=index)
    out = run_na(cfg, q, k, v, ak, av, backend)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out.double(), expected(cfg, q, k, v, ak, av), atol=2e-5, rtol=2e-5)


def test_config_coverage():
    """The seeded configurations exercise every feature (so a changed seed cannot silently drop one)."""
    assert any(k % 2 == 0 for c in CONFIGS for k in c["kernel_size"])
    assert any(k % 2 == 1 and k > 1 for c in CONFIGS for k in c["kernel_size"])
    assert any(d > 1 for c in CONFIGS for d in c["dilation"])
    assert any(s > 1 for c in CONFIGS for s in c["stride"])
    assert any(s > 1 and s % 2 == 0 for c in CONFIGS for s in c["stride"])
    assert any(any(c["is_causal"]) for c in CONFIGS)
    assert any(c["n_extra"] for c in CONFIGS)


@pytest.mark.parametrize(
    "grid, kernel, dilation, stride, causal",
    [
        ((7,), (4,), (1,), (2,), (False,)),  # even kernel, even stride
        ((9,), (3,), (2,), (3,), (False,)),  # dilation with unequal group lengths (5 and 4)
        ((8,), (4,), (2,), (2,), (True,)),  # causal + dilation + stride
        ((5, 6), (2, 3), (2, 1), (1, 3), (True, False)),
        ((3, 4, 5), (3, 2, 5), (1, 2, 1), (2, 1, 4), (False, True, False)),
    ],
)
def test_pattern_mask_matches_oracle(grid, kernel, dilation, stride, causal):
    pattern = NeighborhoodPattern(grid=grid, kernel_size=kernel, dilation=dilation, stride=stride, is_causal=causal)
    n = math.prod(grid)
    assert torch.equal(materialized(pattern, n, n), oracle_mask(grid, kernel, dilation, stride, causal))


# --------------------------------------------------------------------------------- hand-checked conventions


def keys_1d(length, k, d=1, s=1, causal=False):
    return [list(range(*window_bounds(i, length, k, d, s, causal)[:2], d)) for i in range(length)]


def test_window_conventions_by_hand():
    # Odd kernel: centred, shifted inward at the borders.
    assert keys_1d(7, 3) == [[0, 1, 2], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 6], [4, 5, 6]]
    # Even kernel: k//2 keys before the query, k//2 - 1 after (NATTEN's convention).
    assert keys_1d(7, 4)[3] == [1, 2, 3, 4]
    # Dilation 2: groups {0,2,4,6} and {1,3,5}; windows over group positions.
    assert keys_1d(7, 2, d=2) == [[0, 2], [1, 3], [0, 2], [1, 3], [2, 4], [3, 5], [4, 6]]
    # Stride 2: blocks {0,1}, {2,3}, ... use the window of the block's right-hand centre (1, 3, 5; 6 clamped).
    assert keys_1d(7, 3, s=2) == [[0, 1, 2], [0, 1, 2], [2, 3, 4], [2, 3, 4], [4, 5, 6], [4, 5, 6], [4, 5, 6]]
    # Stride 3: the centre is the middle query of each block of 3.
    assert keys_1d(9, 3, s=3) == [[0, 1, 2]] * 3 + [[3, 4, 5]] * 3 + [[6, 7, 8]] * 3
    # Causal: the k keys ending at the query, fewer near the start.
    assert keys_1d(5, 3, causal=True) == [[0], [0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4]]
    # Causal + stride: the window starts from the block's last query but never passes the query itself.
    assert keys_1d(6, 3, s=2, causal=True) == [[0], [0, 1], [1, 2], [1, 2, 3], [3, 4], [3, 4, 5]]


@pytest.mark.parametrize("index", range(len(CONFIGS)))
def test_every_query_sees_kernel_volume(index):
    cfg = CONFIGS[index]
    pattern = NeighborhoodPattern(
        grid=cfg["grid"], kernel_size=cfg["kernel_size"], dilation=cfg["dilation"], stride=cfg["stride"]
    )
    n = math.prod(cfg["grid"])
    counts = materialized(pattern, n, n).sum(-1)
    assert torch.all(counts == math.prod(cfg["kernel_size"]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grid", [(7,), (5, 6), (3, 4, 5)])
def test_whole_grid_kernel_is_dense(grid, backend):
    q, k, v, ak, av = make_inputs(grid, 2)
    fn = NA_FNS[len(grid)]
    out = fn(q, k, v, kernel_size=grid, additional_keys=ak, additional_values=av, backend=backend)
    kk, vv = torch.cat([to_bhnd(k), to_bhnd(ak)], 2), torch.cat([to_bhnd(v), to_bhnd(av)], 2)
    dense = torch.nn.functional.scaled_dot_product_attention(to_bhnd(q), kk, vv)
    torch.testing.assert_close(out, dense.transpose(1, 2).reshape(q.shape), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------ dtypes, layouts, scale, LSE


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype, backend):
    cfg = dict(grid=(5, 6), kernel_size=(3, 4), dilation=(1, 1), stride=(2, 1), is_causal=(False, True), n_extra=3)
    q, k, v, ak, av = make_inputs(cfg["grid"], 3, dtype=dtype)
    out = run_na(cfg, q, k, v, ak, av, backend)
    assert out.dtype == dtype and out.shape == q.shape
    tol = 2e-2 if dtype == torch.bfloat16 else 3e-3
    torch.testing.assert_close(out.double(), expected(cfg, q, k, v, ak, av), atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    cfg = dict(
        grid=(3, 4, 5), kernel_size=(3, 2, 3), dilation=(1, 2, 1), stride=(1, 1, 3), is_causal=(False,) * 3, n_extra=2
    )
    base_q, base_k, base_v, ak, av = make_inputs((5, 4, 3), 2)
    # Stored as [B, W, H, D, heads, dim] and permuted to [B, D, H, W, heads, dim]: strided views, no copy.
    q, k, v = (t.permute(0, 3, 2, 1, 4, 5) for t in (base_q, base_k, base_v))
    # Extra tokens stored token-major and viewed batch-major, also strided.
    ak, av = (t.transpose(0, 1).contiguous().transpose(0, 1) for t in (ak, av))
    assert not q.is_contiguous() and not ak.is_contiguous() and not av.is_contiguous()
    out = run_na(cfg, q, k, v, ak, av, backend)
    ref = run_na(cfg, q.contiguous(), k.contiguous(), v.contiguous(), ak.contiguous(), av.contiguous(), backend)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.double(), expected(cfg, q, k, v, ak, av), atol=2e-5, rtol=2e-5)


def test_scale_and_value_head_dim():
    grid = (7,)
    q, k, _, _, _ = make_inputs(grid, 0)
    v = torch.randn(2, 7, 2, 5)
    out = na1d(q, k, v, kernel_size=3, scale=0.3, backend="reference")
    mask = oracle_mask(grid, (3,), (1,), (1,), (False,))
    ref = oracle_attention(to_bhnd(q), to_bhnd(k), to_bhnd(v), mask, scale=0.3).transpose(1, 2)
    assert out.shape == (2, 7, 2, 5)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=2e-5)


# ---------------------------------------------------------------------------------- pattern as a Pattern


def test_pattern_normalizes_and_hashes():
    a = NeighborhoodPattern(grid=(5, 6), kernel_size=3)
    b = NeighborhoodPattern(grid=(5, 6), kernel_size=(3, 3), dilation=(1, 1), stride=1, is_causal=(False, False))
    assert a == b and hash(a) == hash(b) and a.cache_key() == b.cache_key()
    assert a.kernel_size == (3, 3) and a.is_causal == (False, False)
    assert a.cache_key() != NeighborhoodPattern(grid=(5, 6), kernel_size=3, stride=2).cache_key()


@pytest.mark.parametrize("backend", BACKENDS)
def test_joint_sequence_with_text(backend):
    """A grid inside a longer sequence: text before it (prefix) and after it (extra keys), text queries full."""
    grid, n_pre, n_post = (4, 5), 3, 2
    n = math.prod(grid)
    total = n_pre + n + n_post
    pattern = NeighborhoodPattern(grid=grid, kernel_size=(3, 2), offset=n_pre, extra_keys=n_post)
    mask = materialized(pattern, total, total)
    grid_mask = oracle_mask(grid, (3, 2), (1, 1), (1, 1), (False, False))
    assert torch.equal(mask[n_pre : n_pre + n, n_pre : n_pre + n], grid_mask)
    assert mask[n_pre : n_pre + n, :n_pre].all() and mask[n_pre : n_pre + n, n_pre + n :].all()
    assert mask[:n_pre].all() and mask[n_pre + n :].all()  # text queries attend to everything

    text_only = NeighborhoodPattern(grid=grid, kernel_size=(3, 2), offset=n_pre, prefix_keys=False, text_queries="text")
    mask2 = materialized(text_only, total, total)
    assert not mask2[n_pre : n_pre + n, :n_pre].any() and not mask2[n_pre : n_pre + n, n_pre + n :].any()
    assert not mask2[:n_pre, n_pre : n_pre + n].any() and mask2[:n_pre, :n_pre].all()

    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, total, 8, generator=gen) for _ in range(3))
    out = attention(q, k, v, pattern=pattern, backend=backend)
    torch.testing.assert_close(out.double(), oracle_attention(q, k, v, mask), atol=2e-5, rtol=2e-5)


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "grid, kwargs, message",
    [
        ((7,), dict(kernel_size=9), r"kernel_size 9 on axis 0 is larger than that grid axis \(7\); grid \(7,\)"),
        ((5, 6), dict(kernel_size=(3, 3), dilation=(2, 1)), r"3 \* 2 = 6 on axis 0 .*\(5\); grid \(5, 6\)"),
        ((5, 6), dict(kernel_size=0), r"kernel_size=\(0, 0\) must be positive; axis 0 has 0 \(grid \(5, 6\)\)"),
        ((5, 6), dict(kernel_size=3, dilation=(1, -1)), r"dilation=\(1, -1\) must be positive; axis 1 has -1"),
        ((5, 6), dict(kernel_size=3, stride=(0, 1)), r"stride=\(0, 1\) must be positive"),
        ((5, 6), dict(kernel_size=3, stride=(1, 4)), r"stride 4 on axis 1 is larger than kernel_size 3"),
        ((5, 6), dict(kernel_size=(3, 3, 3)), r"kernel_size=\(3, 3, 3\) has 3 values but the grid \(5, 6\) has 2"),
        ((5, 6), dict(kernel_size=3, is_causal=(True,)), r"is_causal=\(True,\) has 1 values .*grid \(5, 6\)"),
        ((5, 6), dict(kernel_size=3.0), r"kernel_size=3.0 must be a int"),
        ((5, 6), dict(kernel_size=3, is_causal=(1, 0)), r"is_causal=\(1, 0\) must hold bool values"),
        ((2, 2, 2, 2), dict(kernel_size=1), r"grid \(2, 2, 2, 2\) has 4 axes"),
        ((0, 4), dict(kernel_size=1), r"grid \(0, 4\) must hold positive"),
    ],
)
def test_bad_arguments(grid, kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_neighborhood_args(grid, **kwargs)
    with pytest.raises(ValueError, match=message):
        NeighborhoodPattern(grid=grid, **kwargs)


def test_bad_arguments_through_natten_api():
    q = torch.randn(1, 5, 6, 2, 8)
    with pytest.raises(ValueError, match=r"kernel_size 7 on axis 1 is larger than that grid axis \(6\)"):
        na2d(q, q, q, kernel_size=(3, 7))
    with pytest.raises(ValueError, match=r"na2d expects query shaped"):
        na2d(q[0], q[0], q[0], kernel_size=3)
    with pytest.raises(ValueError, match="dtypes differ"):
        na2d(q, q.half(), q, kernel_size=3)
    with pytest.raises(ValueError, match="both additional_keys and additional_values"):
        na2d(q, q, q, kernel_size=3, additional_keys=torch.randn(1, 2, 2, 8))
    with pytest.raises(ValueError, match=r"must be \(1, 2, 2, 8\)"):
        na2d(q, q, q, kernel_size=3, additional_keys=torch.randn(1, 2, 3, 8), additional_values=torch.randn(1, 2, 3, 8))
    with pytest.raises(ValueError, match=r"1 values but the grid \(5, 6\) has 2"):
        na2d(q, q, q, kernel_size=(3,))


# ------------------------------------------------------------------------------- NATTEN's positional order

# NATTEN's functional API, read from SHI-Labs/NATTEN ``src/natten/functional.py`` (``na1d``/``na2d``/``na3d``):
# ``(query, key, value, kernel_size, stride=1, dilation=1, is_causal=False, scale=None, additional_keys=None,
# additional_values=None, attention_kwargs=None, backend=None, ...)``, nothing keyword-only.
NATTEN_POSITIONAL = (
    "query",
    "key",
    "value",
    "kernel_size",
    "stride",
    "dilation",
    "is_causal",
    "scale",
    "additional_keys",
    "additional_values",
)


@pytest.mark.parametrize("na_dim", [1, 2, 3])
def test_signature_follows_natten_positional_order(na_dim):
    """The positional parameters are NATTEN's, in NATTEN's order; ``backend`` is keyword-only because NATTEN's
    eleventh positional parameter is ``attention_kwargs`` (SHI-Labs/NATTEN, src/natten/functional.py, na{1,2,3}d).
    """
    import inspect

    params = list(inspect.signature(NA_FNS[na_dim]).parameters.values())
    positional = [p.name for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert tuple(positional) == NATTEN_POSITIONAL
    assert {p.name: p.kind for p in params}["backend"] is inspect.Parameter.KEYWORD_ONLY


def test_positional_call_is_kernel_stride_dilation():
    """``na2d(q, k, v, 3, 2, 1)`` means kernel 3, stride 2, dilation 1, as in NATTEN (not dilation 2)."""
    cfg = dict(grid=(6, 7), kernel_size=(3, 3), dilation=(1, 1), stride=(2, 2), is_causal=(False, False), n_extra=0)
    q, k, v, _, _ = make_inputs(cfg["grid"], 0)
    out = na2d(q, k, v, 3, 2, 1, backend="reference")
    torch.testing.assert_close(out.double(), expected(cfg, q, k, v, None, None), atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(out, na2d(q, k, v, kernel_size=3, stride=2, dilation=1, backend="reference"))
    swapped = na2d(q, k, v, kernel_size=3, stride=1, dilation=2, backend="reference")
    assert (out - swapped).abs().max() > 1e-3
    causal = na1d(q[:, 0], k[:, 0], v[:, 0], 3, 1, 2, True, backend="reference")
    torch.testing.assert_close(
        causal, na1d(q[:, 0], k[:, 0], v[:, 0], kernel_size=3, dilation=2, is_causal=True, backend="reference")
    )
