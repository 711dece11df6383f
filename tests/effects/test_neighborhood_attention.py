"""NeighborhoodAttention through attach on every family."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import visattn
from visattn.effects import NeighborhoodAttention
from visattn.tiny import TINY_PIPELINES, call_kwargs, latent_grid, tiny_pipeline

# UNet levels have different grids; the whole-grid kernel is checked on the top (full-resolution) level.
TOP_LEVEL = {"unet": ["down_blocks.0", "up_blocks.1"], "StableDiffusionXLPipeline": ["down_blocks.0", "up_blocks.1"]}


@functools.cache
def pipeline(family: str):
    return tiny_pipeline(family)


def run(family: str, *effects) -> np.ndarray:
    with visattn.attach(pipeline(family), *effects):
        return np.asarray(pipeline(family)(**call_kwargs(family))[0], dtype=np.float64)


@pytest.mark.parametrize("family", TINY_PIPELINES)
def test_a_kernel_covering_the_whole_grid_equals_dense_attention(family):
    frames, height, width = latent_grid(family, call_kwargs(family))
    kernel = (height, width) if frames == 1 else (frames, height, width)
    dense = run(family)
    whole = run(family, NeighborhoodAttention(kernel, layers=TOP_LEVEL.get(family)))
    assert np.abs(dense - whole).max() <= 1e-5


@pytest.mark.parametrize("family", TINY_PIPELINES)
def test_sparse_neighborhoods_run_end_to_end_and_change_the_result(family):
    frames, _, _ = latent_grid(family, call_kwargs(family))
    kernel = 3 if frames == 1 else (2, 3, 3)
    dense = run(family)
    sparse = run(family, NeighborhoodAttention(kernel, layers=TOP_LEVEL.get(family)))
    assert np.isfinite(sparse).all() and np.abs(dense - sparse).max() > 1e-4


def test_spatial_kernel_on_video_stays_within_each_frame():
    frames, height, width = latent_grid("wan", call_kwargs("wan"))
    per_frame = run("wan", NeighborhoodAttention((height, width), layers="self"))
    explicit = run("wan", NeighborhoodAttention((1, height, width), layers="self"))
    assert np.array_equal(per_frame, explicit)
    assert np.abs(per_frame - run("wan")).max() > 1e-4


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match="kernel_size must be an integer >= 1"):
        NeighborhoodAttention(0)
    with pytest.raises(ValueError, match="dilation must be an integer >= 1"):
        NeighborhoodAttention(3, dilation=(1, 0))
    with pytest.raises(ValueError, match=r"text must be one of \('full', 'text'\); got 'none'"):
        NeighborhoodAttention(3, text="none")
    with pytest.raises(ValueError, match="kernel"):
        run("pixart", NeighborhoodAttention(99))
