"""Kandinsky 5's NABLA attention (the 10 s models) lays the video out in tiles of 8 x 8 tokens, which visattn does not
place on the grid: effects that need the grid are refused (at attach where the config asks for it on every call, at
a call that passes it), instead of reading the tokens at the wrong positions."""

from __future__ import annotations

import pytest
import torch

import visattn
from visattn.tiny.denoisers import tiny_denoiser_entry
from visattn.tiny.denoisers.videos import TEXT
from visattn.tiny.probes import synthetic_prompt

KANDINSKY5 = "Kandinsky5Transformer3DModel"
TILES = "orders the grid's tokens in tiles of 8 x 8 \\(NABLA attention's sparse_params, the 10 s models\\)"


def nabla_model() -> torch.nn.Module:
    model = tiny_denoiser_entry(KANDINSKY5).build()
    model.register_to_config(attention_type="nabla")
    return model


@pytest.mark.parametrize(
    "effect",
    [
        lambda: visattn.NeighborhoodAttention(kernel_size=3),
        lambda: visattn.AttentionMaps(prompt=synthetic_prompt(TEXT), drop_special=False),
        lambda: visattn.SmoothedEnergyGuidance(scale=2.0),
    ],
    ids=["NeighborhoodAttention", "AttentionMaps", "SmoothedEnergyGuidance"],
)
def test_grid_effects_are_refused_at_attach_on_nabla_models(effect):
    model = nabla_model()
    effect = effect()
    before = dict(model.attn_processors)
    with pytest.raises(
        ValueError,
        match=f"{type(effect).__name__} needs the latent grid, but {KANDINSKY5} with "
        f"attention_type='nabla' \\(family 'kandinsky5'\\) {TILES}",
    ):
        visattn.attach(model, effect)
    # Nothing half-applied: no hook, the processors as they were.
    assert dict(model.attn_processors) == before
    assert not any(visattn.interception.layer_hook(m) for m in visattn.attention_layers(model).values())


def test_effects_without_the_grid_still_attach_to_nabla_models():
    model = nabla_model()
    with visattn.attach(model, visattn.PerturbedAttentionGuidance(scale=2.0)) as handle:
        assert handle.attached


def test_a_call_asking_for_tiles_is_refused_and_one_without_runs():
    entry = tiny_denoiser_entry(KANDINSKY5)
    model = entry.build()
    maps = visattn.AttentionMaps(prompt=synthetic_prompt(TEXT), drop_special=False)
    with torch.no_grad(), visattn.attach(model, maps):
        with pytest.raises(
            ValueError,
            match=f"AttentionMaps needs the latent grid, but a call of {KANDINSKY5} "
            f"\\(family 'kandinsky5'\\) with sparse_params\\['to_fractal'\\] {TILES}",
        ):
            model(**{**entry.inputs(2), "sparse_params": {"to_fractal": True}})
        model(**entry.inputs(2))
    assert maps.contributions > 0
