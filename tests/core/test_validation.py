"""Every bad input a clear error, up front (issue 27, items 5-8): one regression test per reported case.

Each error is a ValueError or TypeError raised where the value enters visattn (constructor, attach, kernel entry),
naming the parameter; nothing fails late, inside torch, or silently.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

import visattn
from visattn import validation
from visattn.interception import layer_hook
from visattn.kernels import attention
from visattn.kernels.natten_api import na1d, na2d, na3d
from visattn.kernels.neighborhood import NeighborhoodPattern
from visattn.kernels.patterns import AllOf, required_tokens
from visattn.tiny import call_kwargs, tiny_denoiser, tiny_pipeline
from visattn.validation import ParameterTypeError


@functools.cache
def flux() -> torch.nn.Module:
    return tiny_denoiser("flux")


def flux_inputs() -> dict:
    """4x4 packed latent tokens and 8 text tokens, batch 2 (the layout the tiny Flux expects)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.zeros(4, 4, 3)
    ids[..., 1] = torch.arange(4)[:, None]
    ids[..., 2] = torch.arange(4)[None, :]
    return {
        "hidden_states": torch.randn(2, 16, 16, generator=generator),
        "encoder_hidden_states": torch.randn(2, 8, 32, generator=generator),
        "pooled_projections": torch.randn(2, 32, generator=generator),
        "timestep": torch.full((2,), 0.5),
        "guidance": torch.full((2,), 3.5),
        "img_ids": ids.reshape(-1, 3),
        "txt_ids": torch.zeros(8, 3),
        "return_dict": False,
    }


def untouched(model: torch.nn.Module, processors: dict) -> bool:
    modules = visattn.attention_layers(model)
    return all(modules[name].processor is p for name, p in processors.items()) and not any(
        layer_hook(m) for m in modules.values()
    )


# --- the shared checks ------------------------------------------------------------------------------------------
def test_type_errors_are_value_errors_too_and_name_the_parameter():
    with pytest.raises(TypeError, match="strength must be a number in \\[0, 1\\]; got None"):
        visattn.PerturbedAttentionGuidance(strength=None)
    # Code that caught ValueError for any bad argument keeps working.
    assert issubclass(ParameterTypeError, ValueError)
    with pytest.raises(TypeError, match="layers must be None, a layer identifier .* got 5"):
        visattn.PerturbedAttentionGuidance(layers=5)
    with pytest.raises(TypeError, match="layers must be None"):
        visattn.attach(flux(), visattn.AttentionMaps(), layers=5)


@pytest.mark.parametrize("value", [10**400, -(10**400), 1e308 * 10, float("nan"), 1e30, -1.0])
def test_huge_or_non_finite_scales_are_value_errors_not_overflow(value):
    with pytest.raises(ValueError, match="scale must be (a finite number )?in \\[0, 10000\\]"):
        visattn.PerturbedAttentionGuidance(scale=value)
    with pytest.raises(ValueError, match="scale"):
        visattn.SmoothedEnergyGuidance(scale=value)


def test_the_scale_limit_is_documented_and_can_be_raised(monkeypatch):
    assert validation.MAX_SCALE == 1e4
    with pytest.raises(ValueError, match="raise visattn.validation.MAX_SCALE"):
        visattn.PerturbedAttentionGuidance(scale=2e4)
    monkeypatch.setattr(validation, "MAX_SCALE", 1e5)
    assert visattn.PerturbedAttentionGuidance(scale=2e4).scale == 2e4


def test_limits_can_be_set_from_the_environment(monkeypatch):
    monkeypatch.setenv("VISATTN_MAX_SCALE", "5e4")
    assert validation._limit("MAX_SCALE", 1e4) == 5e4
    monkeypatch.setenv("VISATTN_MAX_SCALE", "lots")
    with pytest.raises(ValueError, match="VISATTN_MAX_SCALE='lots' must be a number"):
        validation._limit("MAX_SCALE", 1e4)


def test_seg_sigma_may_be_infinite_but_the_threshold_is_bounded():
    assert visattn.SmoothedEnergyGuidance(sigma=10**400).sigma == math.inf
    assert visattn.SmoothedEnergyGuidance(sigma=1e308).sigma == 1e308
    with pytest.raises(ValueError, match="inf_threshold must be > 0 and <= 1e\\+06"):
        visattn.SmoothedEnergyGuidance(sigma=1e308, inf_threshold=1e308)
    with pytest.raises(ValueError, match="sigma must be > 0; got nan"):
        visattn.SmoothedEnergyGuidance(sigma=float("nan"))


def test_reweight_weights_and_local_blend_radius_are_bounded():
    with pytest.raises(ValueError, match=r"weights\['red'\] must be in \[-10000, 10000\]; got 1e\+39"):
        visattn.PromptToPrompt.reweight("a red cat", {"red": 1e39})
    with pytest.raises(ValueError, match=r"radius must be an integer in \[0, 256\]; got 1000000000000"):
        visattn.LocalBlend("cat", radius=10**12)
    assert visattn.LocalBlend("cat", radius=256).radius == 256


def test_attention_maps_resolution_is_bounded():
    with pytest.raises(ValueError, match="resolution=8192 is 67108864 pixels per frame; at most 4194304"):
        visattn.AttentionMaps(prompt="a cat", resolution=8192)
    assert visattn.AttentionMaps(prompt="a cat", resolution=2048).resolution == (2048, 2048)


# --- PAG: heads and layers, at construction and at attach ---------------------------------------------------------
@pytest.mark.parametrize(
    "heads, message",
    [
        ({"[": [0]}, "heads key='\\[' is not a valid regular expression"),
        ({"mid": [True]}, "heads\\['mid'\\] must be non-negative head indices"),
        ({"mid": [-1]}, "non-negative head indices"),
        ({"mid": ["0"]}, "non-negative head indices"),
        ({}, "non-empty dict"),
        ([0, 1], "heads must be None or a non-empty dict"),
    ],
)
def test_bad_heads_fail_at_construction(heads, message):
    with pytest.raises(ValueError, match=message):
        visattn.PerturbedAttentionGuidance(heads=heads)


def test_heads_matching_no_perturbed_layer_fail_at_attach_and_leave_the_model_alone():
    model = flux()
    processors = {name: m.processor for name, m in visattn.attention_layers(model).items()}
    with pytest.raises(ValueError, match="heads key 'nomatch' matches none of the layers .* perturb nothing"):
        visattn.attach(model, visattn.PerturbedAttentionGuidance(heads={"nomatch": [0]}))
    assert untouched(model, processors)


def test_heads_of_a_layer_pag_does_not_act_on_fail_at_attach():
    # layers="blocks.0" selects Wan's self-attention attn1 and cross-attention attn2; PAG perturbs only attn1.
    pag = visattn.PerturbedAttentionGuidance(layers="blocks.0", heads={"attn2": [0]})
    with pytest.raises(ValueError, match="heads key 'attn2' matches none of the layers .*\\(blocks.0.attn1\\)"):
        visattn.attach(tiny_denoiser("wan"), pag)


def test_head_indices_beyond_the_layers_head_count_fail_at_attach():
    model = flux()
    pag = visattn.PerturbedAttentionGuidance(layers="transformer_blocks.0", heads={"transformer_blocks.0": [2]})
    with pytest.raises(ValueError, match="index 2 is out of range for layer 'transformer_blocks.0.attn', which has 2"):
        visattn.attach(model, pag)
    # In range: attaches and runs.
    ok = visattn.PerturbedAttentionGuidance(layers="transformer_blocks.0", heads={"transformer_blocks.0": [1]})
    with visattn.attach(model, ok), torch.no_grad():
        assert torch.isfinite(model(**flux_inputs())[0]).all()


def test_layers_an_effect_never_acts_on_fail_at_attach():
    # attn2 is Wan's cross-attention: PAG perturbs self-attention, so it would do nothing.
    with pytest.raises(ValueError, match="selects only cross attention layers .* would do nothing"):
        visattn.attach(tiny_denoiser("wan"), visattn.PerturbedAttentionGuidance(layers="attn2"))


def test_a_role_an_effect_cannot_act_on_fails_at_construction_or_attach():
    with pytest.raises(ValueError, match="names 'cross' attention, which PerturbedAttentionGuidance does not act on"):
        visattn.PerturbedAttentionGuidance(layers="cross")
    with pytest.raises(ValueError, match="names 'cross' attention"):
        visattn.NeighborhoodAttention(3, layers=["cross"])
    # Effects that do not check in their constructor are checked at attach, before anything is hooked.
    model = tiny_denoiser("wan")
    with pytest.raises(ValueError, match="ExtrapolationDecay\\(layers=...\\) names 'cross' attention"):
        visattn.attach(model, visattn.ExtrapolationDecay(train_size=2, layers="cross"))
    assert not any(layer_hook(m) for m in visattn.attention_layers(model).values())


# --- AttentionMaps: the prompt given must be the call's -----------------------------------------------------------
def test_attention_maps_for_another_prompt_than_the_calls_is_an_error():
    pipe = tiny_pipeline("unet")
    kwargs = call_kwargs("unet", prompt="a red circle")
    with visattn.attach(pipe, visattn.AttentionMaps(prompt="a blue square")):
        with pytest.raises(ValueError, match="AttentionMaps\\(prompt=\\['a blue square'\\]\\) does not match the"):
            pipe(**kwargs)
    maps = visattn.AttentionMaps(prompt="a red circle")
    with visattn.attach(pipe, maps):
        pipe(**kwargs)
    assert "circle" in maps.maps()


# --- kernel entry points ------------------------------------------------------------------------------------------
Q = torch.randn(1, 2, 16, 8)


@pytest.mark.parametrize(
    "q, message",
    [
        (Q.long(), "q must be a floating-point tensor .* got torch.int64"),
        (Q.bool(), "q must be a floating-point tensor .* got torch.bool"),
        (Q.to(torch.complex64), "q must be a floating-point tensor .* got torch.complex64"),
        (Q.numpy(), "q must be a torch.Tensor; got ndarray"),
        (None, "q must be a torch.Tensor; got NoneType"),
    ],
)
def test_attention_refuses_wrong_types(q, message):
    with pytest.raises(TypeError, match=message):
        attention(q, Q, Q)


@pytest.mark.parametrize("axis", [0, 1, 2, 3])
def test_attention_refuses_empty_axes(axis):
    empty = Q.narrow(axis, 0, 0)
    with pytest.raises(ValueError, match="q has an empty axis"):
        attention(empty, Q, Q)


def test_attention_refuses_mismatched_shapes_scales_and_patterns():
    with pytest.raises(ValueError, match="k and v must have as many tokens"):
        attention(Q, Q, Q[:, :, :10])
    with pytest.raises(ValueError, match="q and k must have one head_dim"):
        attention(Q, Q[..., :4], Q)
    with pytest.raises(ValueError, match="share batch and heads"):
        attention(Q, Q[:, :1], Q[:, :1])
    with pytest.raises(ValueError, match="one dtype"):
        attention(Q, Q.double(), Q)
    with pytest.raises(ValueError, match="scale must be a number; got nan"):
        attention(Q, Q, Q, scale=float("nan"))
    with pytest.raises(ValueError, match="pattern needs at least 25 queries and 25 keys \\(grid \\(5, 5\\)\\)"):
        attention(Q, Q, Q, pattern=NeighborhoodPattern((5, 5), 3))
    with pytest.raises(ValueError, match="attn_mask of shape \\(3, 16\\) does not broadcast"):
        attention(Q, Q, Q, attn_mask=torch.ones(3, 16, dtype=torch.bool))
    with pytest.raises(TypeError, match="pattern must be a Pattern or None; got str"):
        attention(Q, Q, Q, pattern="window")
    # The same call with a fitting grid runs.
    assert attention(Q, Q, Q, pattern=NeighborhoodPattern((4, 4), 3)).shape == Q.shape


def test_required_tokens_of_composite_patterns():
    grid = NeighborhoodPattern((4, 4), 3, offset=2, extra_keys=5)
    assert required_tokens(grid) == (18, 23)
    assert required_tokens(AllOf((grid, NeighborhoodPattern((2, 2), 1)))) == (18, 23)
    assert required_tokens(None) is None


@pytest.mark.parametrize("function, dims", [(na1d, 1), (na2d, 2), (na3d, 3)])
def test_natten_api_refuses_bad_inputs(function, dims):
    x = torch.randn(1, *(4,) * dims, 2, 8)
    for bad, error, message in (
        (x.long(), TypeError, "query must be a floating-point tensor"),
        (x.bool(), TypeError, "query must be a floating-point tensor"),
        (x.to(torch.complex64), TypeError, "query must be a floating-point tensor"),
        (x.numpy(), TypeError, "query must be a torch.Tensor; got ndarray"),
        (None, TypeError, "query must be a torch.Tensor; got NoneType"),
        (x[:0], ValueError, "query has an empty axis"),
        (x[..., :0, :], ValueError, "query has an empty axis"),
        (x[..., :0], ValueError, "query has an empty axis"),
    ):
        with pytest.raises(error, match=f"na{dims}d: {message}"):
            function(bad, x, x, 3)
    with pytest.raises(ValueError, match=f"na{dims}d: scale must be a number; got nan"):
        function(x, x, x, 3, scale=float("nan"))
    assert function(x, x, x, 3).shape == x.shape


def test_checks_read_no_tensor_values():
    """The kernel checks look at shapes, dtypes and devices only: a meta tensor (no data) passes them."""
    meta = torch.empty(1, 2, 16, 8, device="meta")
    validation.check_attention_inputs(meta, meta, meta, pattern=NeighborhoodPattern((4, 4), 3))


def test_tensors_on_different_devices_are_refused():
    meta = torch.empty(1, 2, 16, 8, device="meta")
    with pytest.raises(ValueError, match="tensors must be on one device; got q on cpu, k on meta, v on cpu"):
        validation.check_attention_inputs(Q, meta, Q)


def test_numpy_scalars_are_numbers():
    assert visattn.PerturbedAttentionGuidance(scale=np.float32(2.0)).scale == 2.0
    assert visattn.LocalBlend("cat", radius=np.int64(2)).radius == 2


# --- the STG, extrapolation and TGATE parameters --------------------------------------------------------------------
def _entropy_scaling_on_a_huge_training_size():
    model = tiny_denoiser("flux")
    with visattn.attach(model, visattn.EntropyScaling(train_tokens=10**400)), torch.no_grad():
        model(**flux_inputs())


@pytest.mark.parametrize(
    "make, parameter",
    [
        # STG's scale is bounded by MAX_SCALE like every guidance scale
        (lambda: visattn.SpatioTemporalSkipGuidance(10**400, layers="blocks.0"), "scale"),
        (lambda: visattn.SpatioTemporalSkipGuidance(1e30, layers="blocks.0"), "scale"),
        # a non-bool is not taken as one (bool(None) would be False)
        (lambda: visattn.CrossAttentionCache(average=None), "average"),
        # train_tokens is bounded (the first call would divide it into a float)
        (_entropy_scaling_on_a_huge_training_size, "train_tokens"),
    ],
)
def test_stg_tgate_and_extrapolation_parameters_are_bounded_and_typed(make, parameter):
    with pytest.raises((ValueError, TypeError), match=parameter):
        make()
