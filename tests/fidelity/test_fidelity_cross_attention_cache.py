"""T-GATE's default (cross- and self-attention caching, the after-gate pass) against the authors' code (issue 28).

The references below are transcriptions, written here from reading HaozheLiu-ST/T-GATE:

* ``tgate/tgate_utils.py``, ``tgate_scheduler`` (``gate_step=10, sp_interval=5, fi_interval=1, warm_up=2``): the
  cache/reuse flags of cross- and self-attention per step, ``keep_shape=False`` at step ``gate_step - 1``;
* ``tgate/tgate_utils.py``, ``register_forward`` and ``tgate_processor``: each ``Attention`` module keeps one
  ``cache``; a call reuses it when its kind's ``reuse`` flag is set and a cache exists, otherwise computes (the
  compute path is diffusers' ``AttnProcessor2_0``, here the module's own forward) and, when its kind's ``cache``
  flag is set, stores the output (``keep_shape=False``: the mean of the two halves ``[uncond, cond]``);
* ``tgate/SD.py`` and ``tgate/SDXL.py``, ``__call__``'s loop: before the gate ``[latents] * 2`` with
  ``[negative, prompt]`` embeddings (SDXL: pooled embeddings and time ids too) and CFG; from the gate on the
  latents alone with the negative embeddings (SDXL: ``negative_add_text_embeds``, ``negative_add_time_ids``),
  the prediction used without CFG.

Each reference drives the tiny pipeline's own components (``encode_prompt``, ``prepare_latents``, its scheduler
and UNet) through that loop; visattn's run is the same pipeline with the effect attached, ``output_type="latent"``.
"""

from __future__ import annotations

import functools

import pytest
import torch

import visattn
from visattn.effects import CrossAttentionCache
from visattn.effects.cross_attention_cache import tgate_phase
from visattn.tiny import call_kwargs, tiny_pipeline

TOLERANCE = 1e-5
STEPS = 12  # past the authors' gate (10), so every phase of their schedule runs


@functools.cache
def pipeline(family: str):
    return tiny_pipeline(family)


def authors_tgate_scheduler(cur_step, gate_step=10, sp_interval=5, fi_interval=1, warm_up=2):
    """``tgate_utils.tgate_scheduler``: ``(ca_kwards, sa_kwards, keep_shape)`` as ``(cache, reuse)`` pairs."""
    if cur_step < gate_step - 1:
        ca = (False, False)
        if cur_step < warm_up:
            sa = (False, False)
        elif cur_step == warm_up:
            sa = (True, False)
        else:
            sa = (True, False) if cur_step % sp_interval == 0 else (False, True)
        keep_shape = True
    elif cur_step == gate_step - 1:
        ca, sa, keep_shape = (True, False), (True, False), False
    else:
        ca = (False, True)
        sa = (True, False) if cur_step % fi_interval == 0 else (False, True)
        keep_shape = True
    return ca, sa, keep_shape


class AuthorsAttention:
    """``register_forward`` + ``tgate_processor`` on every ``Attention`` module of a UNet."""

    def __init__(self, unet):
        self.modules = [module for module in unet.modules() if type(module).__name__ == "Attention"]
        self.flags = ((False, False), (False, False), True)

    def __enter__(self):
        for module in self.modules:
            module.forward = functools.partial(self.forward, module, module.forward)
            module.tgate_cache = None
        return self

    def __exit__(self, *exc):
        for module in self.modules:
            del module.forward, module.tgate_cache

    def forward(self, module, original, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        (ca_cache, ca_reuse), (sa_cache, sa_reuse), keep_shape = self.flags
        cross = encoder_hidden_states is not None
        cache = module.tgate_cache
        if cross and ca_reuse and cache is not None:
            return cache
        if not cross and sa_reuse and cache is not None:
            return cache
        out = original(hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask)
        if (cross and ca_cache) or (not cross and sa_cache):
            if keep_shape:
                module.tgate_cache = out
            else:
                hidden_uncond, hidden_pred_text = out.chunk(2)
                module.tgate_cache = (hidden_uncond + hidden_pred_text) / 2
        return out


def authors_loop(pipe, sdxl: bool, gate_step=10, **schedule) -> torch.Tensor:
    """``SD.py`` / ``SDXL.py``: the T-GATE denoising loop, returning the final latents."""
    kwargs = call_kwargs("StableDiffusionXLPipeline" if sdxl else "unet")
    generator, guidance, height, width = kwargs["generator"], kwargs["guidance_scale"], kwargs["height"], 32
    device = "cpu"
    added = None
    if sdxl:
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=kwargs["prompt"], device=device, num_images_per_prompt=1, do_classifier_free_guidance=True
        )
    else:
        embeds, negative = pipe.encode_prompt(kwargs["prompt"], device, 1, True)
    pipe.scheduler.set_timesteps(STEPS, device=device)
    timesteps = pipe.scheduler.timesteps
    latents = pipe.prepare_latents(
        1, pipe.unet.config.in_channels, height, width, embeds.dtype, device, generator, None
    )
    extra_step_kwargs = pipe.prepare_extra_step_kwargs(generator, 0.0)
    cfg_embeds = torch.cat([negative, embeds])
    if sdxl:
        projection = pipe.text_encoder_2.config.projection_dim
        time_ids = pipe._get_add_time_ids(
            (height, width), (0, 0), (height, width), dtype=embeds.dtype, text_encoder_projection_dim=projection
        )
        negative_time_ids = time_ids
        cfg_added = {
            "text_embeds": torch.cat([negative_pooled, pooled]),
            "time_ids": torch.cat([negative_time_ids, time_ids]),
        }
        negative_added = {"text_embeds": negative_pooled, "time_ids": negative_time_ids}
    num_warmup_steps = max(len(timesteps) - STEPS * pipe.scheduler.order, 0)
    with AuthorsAttention(pipe.unet) as attention, torch.no_grad():
        for i, t in enumerate(timesteps):
            if (i - num_warmup_steps) < gate_step:
                model_input, encoder = torch.cat([latents] * 2), cfg_embeds
                added = cfg_added if sdxl else None
            else:
                model_input, encoder = latents, negative
                added = negative_added if sdxl else None
            model_input = pipe.scheduler.scale_model_input(model_input, t)
            if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % pipe.scheduler.order == 0):
                attention.flags = authors_tgate_scheduler(i - num_warmup_steps, gate_step, **schedule)
            noise_pred = pipe.unet(
                model_input, t, encoder_hidden_states=encoder, added_cond_kwargs=added, return_dict=False
            )[0]
            if (i - num_warmup_steps) < gate_step:
                noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                noise_pred = noise_pred_uncond + guidance * (noise_pred_text - noise_pred_uncond)
            latents = pipe.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]
    return latents


def visattn_latents(family: str, *effects) -> torch.Tensor:
    pipe = pipeline(family)
    with visattn.attach(pipe, *effects), torch.no_grad():
        return pipe(**call_kwargs(family, num_inference_steps=STEPS, output_type="latent"))[0]


def test_schedule_matches_the_authors_scheduler():
    names = {(False, False): "compute", (True, False): "store", (False, True): "reuse"}
    for gate, warm_up, sp, fi in [(10, 2, 5, 1), (6, 0, 2, 3), (4, 3, 1, 2), (25, 2, 5, 1)]:
        for step in range(30):
            ca, sa, _ = authors_tgate_scheduler(step, gate, sp, fi, warm_up)
            assert tgate_phase(step, gate, warm_up, sp, fi) == (names[ca], names[sa]), (gate, step)


@pytest.mark.parametrize("family, sdxl", [("unet", False), ("StableDiffusionXLPipeline", True)])
def test_default_matches_the_authors_loop(family, sdxl):
    expected = authors_loop(pipeline(family), sdxl)
    ours = visattn_latents(family, CrossAttentionCache())
    assert (ours - expected).abs().max() <= TOLERANCE
    stock = visattn_latents(family)
    assert (stock - expected).abs().max() > 1e-4


def test_custom_schedule_matches_the_authors_loop():
    schedule = dict(sp_interval=2, fi_interval=2, warm_up=1)
    expected = authors_loop(pipeline("unet"), False, gate_step=6, **schedule)
    ours = visattn_latents("unet", CrossAttentionCache(gate_step=6, **schedule))
    assert (ours - expected).abs().max() <= TOLERANCE


def test_bad_parameters_name_parameter_value_and_range():
    for name in ("sp_interval", "fi_interval"):
        for value in (0, -1, 2.5, True):
            with pytest.raises(ValueError, match=f"{name}={value!r} must be an integer >= 1"):
                CrossAttentionCache(**{name: value})
    with pytest.raises(ValueError, match="warm_up=-1 must be an integer >= 0"):
        CrossAttentionCache(warm_up=-1)
    with pytest.raises(ValueError, match=r"gate_step=1 comes before warm_up=2: .* \(gate_step >= warm_up"):
        CrossAttentionCache(gate_step=1)
    CrossAttentionCache(gate_step=1, warm_up=0)  # an early gate with no warm-up is fine
    CrossAttentionCache(gate_step=1, self_attention=False)  # the warm-up is self-attention's
