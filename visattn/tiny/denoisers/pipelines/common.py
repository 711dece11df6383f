"""Pieces the tiny coverage pipelines share: the call every pipeline runs, seeded components, a flow VAE."""

from __future__ import annotations

from typing import Any

from visattn.tiny.vaes import FLOW_IMAGE_VAE, image_vae

#: pixels of the tiny images: 16x16 latents with the 2x VAE
IMAGE_SIZE = 32
#: text length of calls that take ``max_sequence_length`` (short, so each call is fast)
TEXT_TOKENS = 16
PROMPT = "a red circle"


def image_call(**extra: Any) -> dict[str, Any]:
    """A two-step call at :data:`IMAGE_SIZE` with numpy output (the generator is added by ``call_kwargs``)."""
    return {
        "prompt": PROMPT,
        "num_inference_steps": 2,
        "height": IMAGE_SIZE,
        "width": IMAGE_SIZE,
        "output_type": "np",
        **extra,
    }


def flow_vae(latent_channels: int = 4):
    """The 2x image VAE with the flow pipelines' shift/scale and no quant convs, ``latent_channels`` wide."""
    return image_vae({**FLOW_IMAGE_VAE, "latent_channels": latent_channels})
