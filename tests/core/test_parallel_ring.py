"""Ring attention (diffusers' ``ContextParallelConfig(ring_degree=2)``) with visattn attached: 2 gloo processes on CPU.

One spawn runs every case on both ranks (``harness.parallel``, whose harness lets diffusers' native backend
return the log-sum-exp its ring template needs on CPU). Stock ring reproduces one process; attaching visattn with no
effect changes nothing; the effects whose contribution is a pattern or score modifier at global token indices, or a
per-row identity blend, equal one process on Wan (self-attention split, text replicated) and Flux (joint attention
whose text and image are split per rank, so each rank's shard interleaves them); effects that need whole rows are
refused before any step with a ValueError naming the Ulysses config; detach restores stock ring. The ring steps
themselves (placement at global indices, skipped empty shards, log-sum-exp merging) are also checked in one process
against whole attention.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from harness.parallel import Case, CaseRuns

from visattn.kernels import DecayModifier, NeighborhoodPattern, attention
from visattn.parallel import PlacedPattern, _any_pair, _Placement, attend_key_shards, ring_refusal

#: the bar of the issue for effects under ring (fp32, max abs diff against one process)
TOLERANCE = 1e-5


def _ring(model: str, effects: tuple[str, ...] = (), order: str = "after") -> Case:
    return Case(model, effects, order=order, ulysses=1, ring=2)


STOCK = tuple(_ring(model, order="none") for model in ("wan", "flux"))
NO_EFFECT = tuple(_ring("wan", order=order) for order in ("after", "before"))
#: exact under ring: patterns and score modifiers at global token indices, per-row identity blends
EXACT = (
    *(_ring("wan", (effect,)) for effect in ("neighborhood", "radial", "decay", "entropy", "pag", "pag_head", "stg")),
    *(_ring("flux", (effect,)) for effect in ("neighborhood", "decay", "pag")),
    _ring("wan", ("maps",)),  # cross-attention over replicated text: a local call, gathered
    _ring("wan", ("pag", "neighborhood", "decay"), order="before"),
)
#: need whole rows or the whole query grid
REFUSED = (*(_ring("wan", (effect,)) for effect in ("p2p", "seg")), _ring("flux", ("maps",)))
CASES = STOCK + NO_EFFECT + EXACT + REFUSED

RUNS = CaseRuns(CASES)
single, _ranks = RUNS.single, RUNS.ranks


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


# --- the ring steps in one process -------------------------------------------------------------------------------


def _shards(x: torch.Tensor, ring: int) -> list[torch.Tensor]:
    return list(x.chunk(ring, dim=2))


@pytest.mark.parametrize("ring", [2, 4])
def test_key_shards_at_global_indices_merge_to_whole_attention(ring):
    """Each query shard over every key shard (patterns and modifiers placed at global indices, empty shards
    skipped, log-sum-exp merging) equals attention over the whole sequence."""
    generator = torch.Generator().manual_seed(0)
    # 4 frames of 3 x 3 after 12 text tokens (text first, as Flux); a spatial neighborhood (one frame) leaves
    # whole key shards empty for the grid queries of other frames (with 4 shards: queries 12-23, keys 36-47).
    q, k, v = (torch.randn(2, 3, 48, 8, generator=generator) for _ in range(3))
    pattern = NeighborhoodPattern((4, 3, 3), (1, 3, 3), offset=12)
    modifier = DecayModifier((4, 3, 3), (2, 2, 2), 0.5, offset=12)
    whole = attention(q, k, v, pattern=pattern, score_mod=modifier, backend="reference")
    n = 48 // ring
    rows = []
    for rank, q_shard in enumerate(_shards(q, ring)):
        shards = [(ks, vs, ((s * n, n),)) for s, (ks, vs) in enumerate(zip(_shards(k, ring), _shards(v, ring)))]
        shards = shards[rank:] + shards[:rank]  # the ring's order: the local shard first
        out, lse = attend_key_shards(q_shard, shards, ((rank * n, n),), pattern, modifier, None, "reference")
        assert torch.isfinite(lse).all()
        rows.append(out)
    assert (torch.cat(rows, dim=2) - whole).abs().max() <= 1e-6


@pytest.mark.parametrize("backend", ["reference", "flex"])
def test_interleaved_shards_placed_by_runs(backend):
    """Joint attention split per stream (Flux): each rank's shard is ``[text_r, image_r]``, two runs of the whole
    sequence; placed by runs, every backend computes the whole sequence's rows."""
    from visattn.kernels import available_backends

    if not available_backends()[backend][0]:
        pytest.skip(f"{backend} is not available here")
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 44, 8, generator=generator) for _ in range(3))  # 8 text tokens, then 4 x 3 x 3
    pattern = NeighborhoodPattern((4, 3, 3), (3, 3, 3), offset=8)
    whole = attention(q, k, v, pattern=pattern, backend="reference")
    runs = [((0, 4), (8, 18)), ((4, 4), (26, 18))]  # rank r: text [4r, 4r + 4), image [8 + 18r, 26 + 18r)

    def gather(x: torch.Tensor, placed: tuple[tuple[int, int], ...]) -> torch.Tensor:
        return torch.cat([x[:, :, start : start + length] for start, length in placed], dim=2)

    for rank in range(2):
        shards = [(gather(k, runs[s]), gather(v, runs[s]), runs[s]) for s in (rank, 1 - rank)]
        out, _ = attend_key_shards(gather(q, runs[rank]), shards, runs[rank], pattern, None, None, backend)
        assert (out - gather(whole, runs[rank])).abs().max() <= 1e-5


def test_a_shard_the_pattern_masks_entirely_is_skipped():
    pattern = NeighborhoodPattern((4, 3, 3), (1, 3, 3))
    first_to_last = PlacedPattern(pattern, _Placement(((0, 9),), ((27, 9),)))
    assert not _any_pair(first_to_last, 1, 1, 9, 9, "cpu")
    assert _any_pair(PlacedPattern(pattern, _Placement(((27, 9),), ((27, 9),))), 1, 1, 9, 9, "cpu")


def test_ring_refusal_names_what_each_effect_needs():
    import visattn

    assert ring_refusal(visattn.NeighborhoodAttention(kernel_size=3)) is None
    assert ring_refusal(visattn.PerturbedAttentionGuidance(scale=2.0)) is None
    assert "blurs the queries" in ring_refusal(visattn.SmoothedEnergyGuidance(scale=2.0))
    maps = visattn.AttentionMaps()
    assert ring_refusal(maps, frozenset({"self", "cross"})) is None
    assert "joint attention" in ring_refusal(maps, frozenset({"joint"}))
    assert "center_keys" in ring_refusal(visattn.ExtrapolationDecay(mode="ultravico", train_frames=2, center_keys=True))


# --- 2 processes ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", STOCK, ids=lambda case: case.name)
def test_stock_ring_reproduces_one_process(case):
    for rank in _ranks(case):
        assert _max_diff(rank["output"], single(case)["output"]) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("case", NO_EFFECT, ids=lambda case: case.name)
def test_attaching_with_no_effect_changes_stock_ring_nothing(case):
    stock = _ranks(_ring(case.model, order="none"))
    for rank, plain in zip(_ranks(case), stock, strict=True):
        assert np.array_equal(rank["output"], plain["output"])
        assert np.array_equal(rank["after_detach"], plain["output"])


@pytest.mark.slow
@pytest.mark.parametrize("case", EXACT, ids=lambda case: case.name)
def test_index_based_effects_under_ring_equal_one_process(case):
    oracle = single(case)
    changes = _max_diff(oracle["output"], single(_ring(case.model, order="none"))["output"]) > 0
    assert changes or case.effects == ("maps",)  # an observer changes nothing
    stock = _ranks(_ring(case.model, order="none"))
    for rank, plain in zip(_ranks(case), stock, strict=True):
        assert "error" not in rank, rank.get("error")
        assert _max_diff(rank["output"], oracle["output"]) <= TOLERANCE
        assert np.array_equal(rank["after_detach"], plain["output"])
        if "maps" in oracle:
            # Every rank ends with the maps one process makes.
            assert _max_diff(rank["maps"], oracle["maps"]) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("case", REFUSED, ids=lambda case: case.name)
def test_effects_that_need_whole_rows_are_refused_naming_ulysses(case):
    stock = _ranks(_ring(case.model, order="none"))
    for rank, plain in zip(_ranks(case), stock, strict=True):
        assert "cannot run under ring attention (ring_degree=2" in rank["error"]
        assert "ContextParallelConfig(ulysses_degree=2)" in rank["error"]
        assert "output" not in rank  # refused before the denoiser ran
        assert np.array_equal(rank["after_detach"], plain["output"])
