"""The call context carries the denoiser-level facts (visattn.context.DenoiserCall), read once per denoiser call."""

from __future__ import annotations

import pytest
import torch

import visattn
from visattn.effects.base import Effect
from visattn.tiny import call_kwargs, latent_grid, tiny_pipeline


class _Contexts(Effect):
    """Keeps every call's context; changes nothing."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.contexts = []
        self.scales = []

    def apply(self, call) -> None:
        self.contexts.append(call.ctx)
        denoiser = call.ctx.denoiser
        self.scales.append(None if denoiser is None else denoiser.guidance_scale)


@pytest.fixture(scope="module")
def sd():
    return tiny_pipeline("unet")


def test_every_layer_sees_the_input_grid_the_pipeline_its_prompt_and_guidance(sd):
    recorder = _Contexts()
    kwargs = call_kwargs("unet", prompt="a red circle", guidance_scale=5.0)
    with visattn.attach(sd, recorder):
        sd(**kwargs)
    top = latent_grid("unet", kwargs)
    contexts = recorder.contexts
    assert {ctx.input_grid for ctx in contexts} == {top}
    # Lower UNet levels see a smaller grid of their own, and the input grid beside it.
    assert {ctx.grid for ctx in contexts} > {top}
    assert all(ctx.denoiser.pipeline is sd for ctx in contexts)
    assert {ctx.denoiser.prompt.prompt for ctx in contexts} == {"a red circle"}
    assert set(recorder.scales) == {5.0}
    # One record per denoiser call, shared by its attention calls: two steps, two records.
    assert len({id(ctx.denoiser) for ctx in contexts}) == kwargs["num_inference_steps"]


def test_a_bare_denoiser_has_no_pipeline_and_no_guidance(sd):
    recorder = _Contexts()
    unet = sd.unet
    sample = torch.randn(1, unet.config.in_channels, 8, 8)
    text = torch.randn(1, 4, unet.config.cross_attention_dim)
    with visattn.attach(unet, recorder), torch.no_grad():
        unet(sample, 10, text)
    assert recorder.contexts
    assert all(ctx.denoiser.pipeline is None for ctx in recorder.contexts)
    assert set(recorder.scales) == {1.0}
    assert {ctx.input_grid for ctx in recorder.contexts} == {(1, 8, 8)}


@pytest.mark.parametrize(
    "effect",
    [
        lambda: visattn.AttentionMaps(words="red"),
        lambda: visattn.ExtrapolationDecay(train_size=2, factor=0.5),
        lambda: visattn.EntropyScaling(train_tokens=4),
    ],
    ids=["AttentionMaps", "ExtrapolationDecay", "EntropyScaling"],
)
def test_observing_and_grid_sized_effects_do_not_wrap_the_denoiser(effect):
    """Effects read denoiser-level facts from the context; only effects that change the denoiser call (add batch
    branches, blend predictions, swap inputs) wrap it."""
    assert not effect().wraps_denoiser
