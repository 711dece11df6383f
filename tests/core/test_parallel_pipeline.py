"""A whole pipeline call with classifier-free guidance, and gradients, under context parallelism (Ulysses, and ring
for gradients through index-based effects; 2 gloo processes): both equal one process with visattn's effects
attached."""

from __future__ import annotations

import numpy as np
import pytest
from harness.parallel import (
    parallel_pipeline,
    parallel_text_gradient,
    run_on_ranks,
    single_process_pipeline,
    single_process_text_gradient,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("effects", [(), ("pag", "neighborhood", "maps")], ids=["no-effect", "pag+neighborhood+maps"])
def test_a_pipeline_call_with_cfg_equals_one_process(effects):
    """WanPipeline runs its conditional and unconditional calls separately (named cache contexts); PAG folds its
    term into the conditional one with the pipeline's scale on every rank."""
    oracle = single_process_pipeline(effects)
    for frames in run_on_ranks(parallel_pipeline, effects, world=2):
        assert np.abs(frames - oracle).max() <= 1e-5


def test_wan22_two_transformers_each_split_equal_one_process():
    """Wan 2.2 hands the low-noise steps to transformer_2 (boundary_ratio) with its own guidance scale: visattn rides
    both splits, and PAG folds with the scale of the stage that runs."""
    effects = ("pag", "neighborhood", "maps")
    oracle = single_process_pipeline(effects, True)
    assert np.abs(oracle - single_process_pipeline(effects)).max() > 1e-4  # the second transformer ran
    for frames in run_on_ranks(parallel_pipeline, effects, True, world=2):
        assert np.abs(frames - oracle).max() <= 1e-5


@pytest.mark.parametrize(
    "effects", [(), ("neighborhood", "maps"), ("pag", "seg")], ids=["no-effect", "neighborhood+maps", "pag+seg"]
)
def test_gradients_summed_over_ranks_equal_one_process(effects):
    """What null-text inversion optimizes: the gradient with respect to the (replicated) text embeddings. diffusers'
    Ulysses backward recomputes the attention; visattn answers that recomputation as it answered the forward."""
    oracle = single_process_text_gradient(effects)
    total = sum(run_on_ranks(parallel_text_gradient, effects, world=2))
    assert np.abs(total - oracle).max() <= 1e-5 * max(1.0, float(np.abs(oracle).max()))


def test_gradients_through_index_based_effects_under_ring_summed_over_ranks_equal_one_process():
    """Under ring visattn computes the ring calls its effects act on with plain autograd (the key/value gather is
    autograd-aware), so the text-embedding gradient summed over ranks is the one-process gradient."""
    effects = ("pag", "neighborhood", "decay")
    oracle = single_process_text_gradient(effects)
    total = sum(run_on_ranks(parallel_text_gradient, effects, True, world=2))
    assert np.abs(total - oracle).max() <= 1e-5 * max(1.0, float(np.abs(oracle).max()))
