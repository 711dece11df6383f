"""Spatiotemporal Skip Guidance: both modes against hand references, equality with PAG, families, errors."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import visattn
from visattn import BatchLayout, Branch, CallContext, Span, TokenLayout
from visattn.effects import (
    AttentionCall,
    NeighborhoodAttention,
    PerturbedAttentionGuidance,
    SpatioTemporalSkipGuidance,
)
from visattn.kernels import attention
from visattn.tiny import VIDEO_PIPELINES, call_kwargs, tiny_pipeline

# The spatiotemporal attention of each tiny video model: Wan's self-attention, the others' joint attention.
SPATIOTEMPORAL = {"wan": "self", "cogvideox": "joint", "hunyuan_video": "joint"}


@functools.cache
def pipeline(family: str):
    return tiny_pipeline(family)


def run(family: str, *effects, **overrides) -> np.ndarray:
    pipe = pipeline(family)
    with visattn.attach(pipe, *effects):
        return np.asarray(pipe(**call_kwargs(family, **overrides))[0], dtype=np.float64)


def one_call(effect, q, k, v):
    n = q.shape[2]
    layout = TokenLayout(n, image=Span(0, n))
    ctx = CallContext(
        role="self",
        layer_name="layer",
        layer_index=0,
        family="test",
        heads=q.shape[1],
        head_dim=q.shape[3],
        queries=layout,
        keys=layout,
        batch=BatchLayout((Branch("cond", 0, 1), Branch(effect.branch, 1, 2))),
        grid=(2, 2, 2),
    )
    call = AttentionCall(ctx, q, k, v)
    effect.apply(call)
    return call.run()


def test_skip_mode_makes_the_attention_contribute_nothing_for_the_perturbed_rows():
    q, k, v = (torch.randn(2, 2, 8, 16) for _ in range(3))
    out = one_call(SpatioTemporalSkipGuidance(1.0, layers="self", mode="skip"), q, k, v)
    assert torch.equal(out[1:], torch.zeros_like(out[1:]))
    assert torch.equal(out[:1], attention(q[:1], k[:1], v[:1]))


def test_identity_mode_outputs_the_values_for_the_perturbed_rows():
    q, k, v = (torch.randn(2, 2, 8, 16) for _ in range(3))
    out = one_call(SpatioTemporalSkipGuidance(1.0, layers="self", mode="identity"), q, k, v)
    assert torch.equal(out[1:], v[1:])
    assert torch.equal(out[:1], attention(q[:1], k[:1], v[:1]))


@pytest.mark.parametrize("family", VIDEO_PIPELINES)
def test_identity_mode_equals_pag_on_the_same_layers(family):
    layers = SPATIOTEMPORAL[family]
    stg = run(family, SpatioTemporalSkipGuidance(2.0, layers=layers, mode="identity"))
    pag = run(family, PerturbedAttentionGuidance(2.0, layers=layers))
    assert np.array_equal(stg, pag)
    assert np.abs(stg - run(family)).max() > 1e-4


def test_identity_mode_rows_are_not_projected_as_pags(monkeypatch):
    """In "identity" mode the perturbed rows' attention is their values, as PAG's: their query and key projections
    are skipped the same way (here on every layer, the work threshold lifted), with the same image."""
    from visattn import interception

    stg = SpatioTemporalSkipGuidance(2.0, layers="mid", mode="identity")
    every_row = run("unet", stg)
    monkeypatch.setattr(interception, "_MIN_SKIPPED_WORK", 0)
    module = pipeline("unet").unet.mid_block.attentions[0].transformer_blocks[0].attn1
    outputs = []
    handle = module.to_q.register_forward_hook(lambda mod, args, out: outputs.append(out.detach().clone()))
    try:
        planned = run("unet", stg)
    finally:
        handle.remove()
    assert outputs and all(out.shape[0] == 3 and not out[2].any() for out in outputs)  # [uncond, cond, perturbed]
    assert np.abs(planned - every_row).max() <= 1e-6


def test_scale_zero_is_exactly_the_baseline():
    assert np.array_equal(run("wan", SpatioTemporalSkipGuidance(0.0, layers="self")), run("wan"))


class Capture(visattn.Effect):
    """Keeps the keyword inputs of the first denoiser call (to replay them by hand)."""

    def __init__(self):
        super().__init__()
        self.kwargs = None

    def wrap_denoiser(self, forward, args, kwargs, state):
        if self.kwargs is None:
            self.kwargs = dict(kwargs)
        return forward(*args, **kwargs)


class ZeroValues(visattn.Effect):
    """Skip mode forced on every row, written independently of the effect."""

    roles = ("self",)

    def apply(self, call):
        call.v = torch.zeros_like(call.v)


class IdentityMap(visattn.Effect):
    """Identity mode forced on every row."""

    roles = ("self",)

    def apply(self, call):
        call.output = call.v.clone()


@pytest.mark.parametrize("mode, forced", [("skip", ZeroValues), ("identity", IdentityMap)])
def test_guidance_arithmetic_matches_a_hand_written_two_pass_reference(mode, forced):
    """A Wan conditional call: eps = eps_c + s (eps_c - eps_p), with eps_p from a separately perturbed pass."""
    capture = Capture()
    run("wan", capture)
    transformer, kwargs, scale = pipeline("wan").transformer, capture.kwargs, 1.5
    with torch.no_grad():
        eps_c = transformer(**kwargs)[0]
        with visattn.attach(transformer, forced(layers="blocks.1.attn1")):
            eps_p = transformer(**kwargs)[0]
        with visattn.attach(transformer, SpatioTemporalSkipGuidance(scale, layers="blocks.1.attn1", mode=mode)):
            guided = transformer(**kwargs)[0]
    assert (eps_c - eps_p).abs().max() > 1e-4
    torch.testing.assert_close(guided, eps_c + scale * (eps_c - eps_p), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", VIDEO_PIPELINES)
@pytest.mark.parametrize("mode", ["skip", "identity"])
def test_every_video_family_runs_guided_generation(family, mode):
    guided = run(family, SpatioTemporalSkipGuidance(3.0, layers=SPATIOTEMPORAL[family], mode=mode))
    assert np.isfinite(guided).all()
    assert np.abs(guided - run(family)).max() > 1e-4


def test_image_families_are_allowed_as_skip_layer_guidance():
    guided = run("unet", SpatioTemporalSkipGuidance(3.0, layers="mid", mode="skip"))
    assert np.isfinite(guided).all() and np.abs(guided - run("unet")).max() > 1e-4


def test_composes_with_neighborhood_attention():
    sparse = run("wan", NeighborhoodAttention((2, 3, 3), layers="self"))
    both = run(
        "wan", SpatioTemporalSkipGuidance(2.0, layers="blocks.1"), NeighborhoodAttention((2, 3, 3), layers="self")
    )
    assert np.isfinite(both).all() and np.abs(both - sparse).max() > 1e-4


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match=r"scale must be in \[0, 10000\]; got -0.5"):
        SpatioTemporalSkipGuidance(-0.5, layers="self")
    with pytest.raises(ValueError, match=r"mode must be one of \('block', 'skip', 'identity'\); got 'drop'"):
        SpatioTemporalSkipGuidance(1.0, layers="self", mode="drop")
    with pytest.raises(ValueError, match="layers=None: STG needs the layers to skip"):
        SpatioTemporalSkipGuidance(1.0, layers=None)
    with pytest.raises(ValueError, match="matches no attention layer"):
        visattn.attach(pipeline("wan"), SpatioTemporalSkipGuidance(1.0, layers="nowhere"))
