"""Tiny modular pipelines: the covered denoiser classes that diffusers drives only through a ``ModularPipeline``.

Flux 3, Wan-Animate 2 and MiniMax-H3 have no classic ``DiffusionPipeline``; diffusers ships their pipelines as
blocks (``Flux3AutoBlocks``, ...) that a ``ModularPipeline`` runs. Each :class:`PipelineSpec` here names the
modular pipeline class, the blocks it is made from (``pipeline_kwargs["blocks"]``: a zero-argument factory, so each
pipeline gets its own blocks), and the tiny offline components :func:`visattn.testing.tiny_pipeline` sets on it
with ``update_components``. The pipelines guide through a diffusers guider (``ClassifierFreeGuidance``, the
component ``guider``), which calls the denoiser once per branch inside ``cache_context("cond" | "uncond")``.

A call returns the ``PipelineState``; its ``images`` (or ``videos``) hold the output.
"""

from __future__ import annotations

from typing import Any

from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.modular_pipelines import Flux3AutoBlocks, Flux3ModularPipeline

from visattn.testing.coverage.images import FLUX3
from visattn.testing.coverage.pipelines.common import TEXT_TOKENS, image_call
from visattn.testing.coverage.pipelines.llm import flux2_vae
from visattn.testing.coverage.pipelines.qwen_text import qwen3_vl_model, qwen3_vl_processor
from visattn.testing.pipeline_spec import ComponentFactory, PipelineSpec

# --- Flux 3 ---------------------------------------------------------------------------------------------------------
#: the Qwen3-VL hidden states Flux 3 stacks per text token (8 of 32 in the real model); two of the tiny encoder's
#: two layers, 16 wide each, give the tiny transformer's 32-wide text input
FLUX3_TEXT_LAYERS = (1, 2)


def _flux3_blocks() -> Flux3AutoBlocks:
    # The auto blocks start with a prompt upsampler (a Qwen3.5 that rewrites the prompt); diffusers' docstring says
    # to pop it to encode the prompt as given, which keeps the call deterministic and the words the user's.
    blocks = Flux3AutoBlocks()
    blocks.sub_blocks.pop("prompt_upsampler")
    return blocks


def _flux3_components() -> dict[str, ComponentFactory]:
    # Qwen3-VL over the chat template, the window right-padded to a multiple of 80 tokens and capped at
    # max_sequence_length (16 here); the 2x Flux 2 VAE's 4 latent channels packed 2x2 give the 16 the tiny
    # transformer takes. The guider is the blocks' default ClassifierFreeGuidance (scale 3.5): two calls per step.
    return {
        "tokenizer": qwen3_vl_processor,
        "text_encoder": lambda: qwen3_vl_model(qwen3_vl_processor().tokenizer, hidden_size=16),
        "vae": flux2_vae,
        "transformer": FLUX3.build,
        "scheduler": FlowMatchEulerDiscreteScheduler,
    }


def _flux3_call() -> dict[str, Any]:
    return image_call(max_sequence_length=TEXT_TOKENS, text_encoder_out_layers=FLUX3_TEXT_LAYERS)


FLUX3_PIPELINE = PipelineSpec(
    family="flux3",
    pipeline_cls=Flux3ModularPipeline,
    denoiser="transformer",
    components=_flux3_components,
    call_defaults=_flux3_call,
    pipeline_kwargs={"blocks": _flux3_blocks},
)

PIPELINES: tuple[PipelineSpec, ...] = (FLUX3_PIPELINE,)

KNOWN_PIPELINE_LIMITS: dict[str, str] = {}
