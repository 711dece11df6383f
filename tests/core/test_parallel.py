"""Context parallelism (diffusers' enable_parallelism, Ulysses) with visattn attached: 2 gloo processes on CPU.

One spawn runs every case on both ranks (``harness.parallel``); each test compares a case with the same
case in one process, the oracle. Stock context parallelism reproduces one process; attaching visattn (before or
after enable_parallelism) with no effect changes nothing; every effect under Ulysses equals one process, on Wan
(self- and cross-attention, text replicated), Flux (joint attention whose text and image are split per rank) and
MiniMax-H3 (joint attention over one packed sequence that diffusers' plan splits as one stream);
observers and LocalBlend end with the same maps and masks on every rank; detach restores the stock split model. Ring
attention: tests/core/test_parallel_ring.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from harness.parallel import EFFECTS, Case, CaseRuns

pytestmark = pytest.mark.slow

#: the bar of the issue for effects under Ulysses (fp32, max abs diff against one process)
TOLERANCE = 1e-5

STOCK = tuple(Case(model, order="none") for model in ("wan", "flux"))
NO_EFFECT = tuple(Case(model, order=order) for model in ("wan", "flux") for order in ("after", "before"))
WAN_EFFECTS = tuple(Case("wan", (effect,)) for effect in EFFECTS)
# Flux has no cross-attention or 3-D grid: its joint layers carry the text, so P2P edits and maps act there.
FLUX_EFFECTS = tuple(Case("flux", (effect,)) for effect in EFFECTS if effect != "radial")
COMPOSED = (Case("wan", ("pag", "neighborhood", "maps"), order="before"), Case("flux", ("seg", "p2p_blend", "maps")))
CASES = STOCK + NO_EFFECT + WAN_EFFECTS + FLUX_EFFECTS + COMPOSED


RUNS = CaseRuns(CASES)
single, _ranks = RUNS.single, RUNS.ranks


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


@pytest.mark.parametrize("case", STOCK, ids=lambda case: case.name)
def test_stock_context_parallelism_reproduces_one_process(case):
    for rank in _ranks(case):
        assert _max_diff(rank["output"], single(case)["output"]) <= TOLERANCE


@pytest.mark.parametrize("case", NO_EFFECT, ids=lambda case: case.name)
def test_attaching_with_no_effect_changes_nothing_and_detach_restores(case):
    stock = _ranks(Case(case.model, order="none"))
    for rank, plain in zip(_ranks(case), stock, strict=True):
        assert np.array_equal(rank["output"], plain["output"])
        assert np.array_equal(rank["after_detach"], plain["output"])


@pytest.mark.parametrize("case", WAN_EFFECTS + FLUX_EFFECTS + COMPOSED, ids=lambda case: case.name)
def test_every_effect_under_ulysses_equals_one_process(case):
    oracle = single(case)
    assert _max_diff(oracle["output"], single(Case(case.model, order="none"))["output"]) > 0 or "maps" in case.effects
    stock = _ranks(Case(case.model, order="none"))
    for rank, plain in zip(_ranks(case), stock, strict=True):
        assert "error" not in rank, rank.get("error")
        assert _max_diff(rank["output"], oracle["output"]) <= TOLERANCE
        assert np.array_equal(rank["after_detach"], plain["output"])
        for key in ("maps", "mask"):
            if key in oracle:
                # Every rank ends with the maps and masks one process makes.
                assert _max_diff(rank[key], oracle[key]) <= TOLERANCE, key


# MiniMax-H3: diffusers' plan splits its one packed [text | audio | video] sequence at the first block, so its joint
# calls are one stream (Family.joint_one_stream): gathered in sequence order, never reordered stream by stream.
MINIMAX_STOCK = Case("minimax_h3", order="none")
MINIMAX_EFFECTS = tuple(Case("minimax_h3", (effect,)) for effect in ("pag", "seg", "neighborhood", "maps", "p2p"))
MINIMAX_RUNS = CaseRuns((MINIMAX_STOCK, *MINIMAX_EFFECTS))


def test_minimax_h3s_one_stream_under_ulysses_equals_one_process():
    for rank in MINIMAX_RUNS.ranks(MINIMAX_STOCK):
        assert _max_diff(rank["output"], MINIMAX_RUNS.single(MINIMAX_STOCK)["output"]) <= TOLERANCE


@pytest.mark.parametrize("case", MINIMAX_EFFECTS, ids=lambda case: case.name)
def test_effects_on_minimax_h3s_packed_sequence_under_ulysses_equal_one_process(case):
    oracle = MINIMAX_RUNS.single(case)
    assert _max_diff(oracle["output"], MINIMAX_RUNS.single(MINIMAX_STOCK)["output"]) > 0 or "maps" in case.effects
    stock = MINIMAX_RUNS.ranks(MINIMAX_STOCK)
    for rank, plain in zip(MINIMAX_RUNS.ranks(case), stock, strict=True):
        assert "error" not in rank, rank.get("error")
        assert _max_diff(rank["output"], oracle["output"]) <= TOLERANCE
        assert np.array_equal(rank["after_detach"], plain["output"])
        if "maps" in oracle:
            assert _max_diff(rank["maps"], oracle["maps"]) <= TOLERANCE
