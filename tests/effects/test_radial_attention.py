"""RadialAttention (:mod:`visattn.effects.radial_attention`) end to end on the tiny video pipelines. The pattern's
mask and density: ``tests/kernels/test_radial.py``."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import visattn
from visattn.effects import NeighborhoodAttention, PerturbedAttentionGuidance, RadialAttention
from visattn.tiny import VIDEO_PIPELINES, call_kwargs, latent_grid, tiny_pipeline

# Settings that make the tiny grids (3 frames of 4 x 4 tokens) visibly sparse.
SPARSE = {"decay_factor": 0.25, "block_size": 2, "dense_steps": None}


# --- the effect, end to end ---------------------------------------------------------------------------------
@functools.cache
def pipeline(family: str):
    return tiny_pipeline(family)


def run(family: str, *effects, backend: str = "auto", layers=None) -> np.ndarray:
    pipe = pipeline(family)
    with visattn.attach(pipe, *effects, backend=backend, layers=layers):
        return np.asarray(pipe(**call_kwargs(family))[0], dtype=np.float64)


@functools.cache
def dense(family: str) -> np.ndarray:
    return run(family)


@pytest.mark.parametrize("family", VIDEO_PIPELINES)
def test_radial_attention_runs_end_to_end_and_changes_the_result(family):
    assert latent_grid(family, call_kwargs(family))[0] > 1
    sparse = run(family, RadialAttention(**SPARSE))
    assert np.isfinite(sparse).all()
    assert np.abs(sparse - dense(family)).max() > 1e-4


@pytest.mark.parametrize("family", VIDEO_PIPELINES)
def test_dense_steps_one_is_exactly_dense(family):
    assert np.array_equal(run(family, RadialAttention(**{**SPARSE, "dense_steps": 1.0})), dense(family))


@pytest.mark.parametrize("family", VIDEO_PIPELINES)
def test_bands_covering_everything_equal_dense_attention(family):
    frames = latent_grid(family, call_kwargs(family))[0]
    covering = run(family, RadialAttention(dense_distance=frames, split_threshold=1, dense_steps=None))
    assert np.allclose(covering, dense(family), atol=1e-6)
    # every window spans a whole frame and no distance is split away
    wide = run(family, RadialAttention(block_size=16, split_threshold=16, dense_steps=None))
    assert np.allclose(wide, dense(family), atol=1e-6)


def test_dense_steps_keep_the_first_steps_dense():
    # Two steps: 0.5 keeps step 0 dense and makes step 1 radial, so the result lies between the two.
    all_steps = run("wan", RadialAttention(**SPARSE))
    half = run("wan", RadialAttention(**{**SPARSE, "dense_steps": 0.5}))
    assert np.abs(half - dense("wan")).max() > 1e-5 and np.abs(half - all_steps).max() > 1e-5


def test_dense_layers_by_count_and_by_identifier():
    # The tiny Wan has two self-attention layers (blocks.0.attn1, blocks.1.attn1) between cross-attentions.
    assert np.array_equal(run("wan", RadialAttention(**SPARSE, dense_layers=2)), dense("wan"))
    first = run("wan", RadialAttention(**SPARSE, dense_layers=1))
    assert np.abs(first - dense("wan")).max() > 1e-5
    assert np.abs(first - run("wan", RadialAttention(**SPARSE))).max() > 1e-5
    assert np.array_equal(run("wan", RadialAttention(**SPARSE, dense_layers="blocks.0.attn1")), first)
    with pytest.raises(ValueError, match="dense_layers"):
        run("wan", RadialAttention(**SPARSE, dense_layers="no_such_block"))


def test_patterns_are_cached_per_layout_and_configuration():
    seen = []

    class Spy(RadialAttention):
        def apply(self, call):
            super().apply(call)
            seen.append(call.patterns[-1])

    run("cogvideox", Spy(**SPARSE))
    assert len(seen) > 2 and all(p is seen[0] for p in seen)
    assert seen[0].offset == 16 and seen[0].prefix_keys  # CogVideoX puts its text first


def test_flex_backend_matches_the_reference_backend():
    for family in ("wan", "cogvideox"):
        reference = run(family, RadialAttention(**SPARSE), backend="reference")
        flex = run(family, RadialAttention(**SPARSE), backend="flex")
        assert np.allclose(flex, reference, atol=1e-5)


def test_composes_with_neighborhood_attention_and_pag():
    radial = run("wan", RadialAttention(**SPARSE))
    both = run("wan", RadialAttention(**SPARSE), NeighborhoodAttention((3, 3, 3)))
    assert np.isfinite(both).all() and np.abs(both - radial).max() > 1e-5
    guided = run("cogvideox", RadialAttention(**SPARSE), PerturbedAttentionGuidance(scale=2.0, layers="blocks.1"))
    assert np.isfinite(guided).all()
    assert np.abs(guided - run("cogvideox", RadialAttention(**SPARSE))).max() > 1e-5


def test_a_one_frame_video_stays_exactly_dense():
    # Wan used for a still image: no temporal distance to decay over, so the call is left alone.
    pipe = pipeline("wan")
    kwargs = {**call_kwargs("wan"), "num_frames": 1}
    assert latent_grid("wan", kwargs)[0] == 1
    baseline = np.asarray(pipe(**kwargs)[0])
    with visattn.attach(pipe, RadialAttention(**SPARSE)):
        radial = np.asarray(pipe(**{**call_kwargs("wan"), "num_frames": 1})[0])
    assert np.array_equal(radial, baseline)


def test_image_families_raise_a_clear_error():
    with pytest.raises(ValueError, match="RadialAttention works on video families .* 'pixart' family"):
        run("pixart", RadialAttention(dense_steps=None))
    # The failed call left nothing attached: the pipeline runs normally afterwards.
    assert np.isfinite(np.asarray(pipeline("pixart")(**call_kwargs("pixart"))[0])).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"decay_factor": -1.0}, r"decay_factor must be > 0 and <= 10000; got -1.0"),
        ({"block_size": 2.5}, "block_size=2.5 is not allowed"),
        ({"dense_distance": 0}, "dense_distance=0 is not allowed"),
        ({"sink_frames": -1}, "sink_frames=-1 is not allowed"),
        ({"dense_steps": 1.5}, r"dense_steps must be in \[0, 1\]; got 1.5"),
        ({"dense_layers": -1}, "dense_layers=-1 is not allowed"),
        ({"dense_layers": 2.0}, "dense_layers=2.0 is not allowed"),
        ({"text": "none"}, r"text must be one of \('full', 'text'\); got 'none'"),
    ],
)
def test_bad_effect_parameters_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RadialAttention(**kwargs)


def test_dense_steps_need_the_pipelines_schedule():
    with pytest.raises(ValueError, match="steps"):
        visattn.attach(pipeline("wan").transformer, RadialAttention(dense_steps=0.2))
    with visattn.attach(pipeline("wan").transformer, RadialAttention(dense_steps=None)):
        pass
