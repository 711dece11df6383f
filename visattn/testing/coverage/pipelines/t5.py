"""Tiny pipelines whose text encoder is T5 (or umT5): one :class:`PipelineSpec` per diffusers pipeline."""

from __future__ import annotations

from diffusers import ChromaPipeline, FlowMatchEulerDiscreteScheduler

from visattn.testing.coverage.images import CHROMA
from visattn.testing.coverage.pipelines.common import TEXT_TOKENS, flow_vae, image_call
from visattn.testing.spec import PipelineSpec
from visattn.testing.text_encoders import t5_encoder
from visattn.testing.tokenizers import t5_tokenizer


def _chroma_components():
    # The pipeline packs 2x2 latent patches: 4 latent channels in, the tiny Chroma takes 16.
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": flow_vae,
        "text_encoder": lambda: t5_encoder(t5_tokenizer(), d_model=32),
        "tokenizer": t5_tokenizer,
        "transformer": CHROMA.build,
        "image_encoder": lambda: None,
        "feature_extractor": lambda: None,
    }


PIPELINES: tuple[PipelineSpec, ...] = (
    PipelineSpec(
        family="chroma",
        pipeline_cls=ChromaPipeline,
        denoiser="transformer",
        components=_chroma_components,
        call_defaults=lambda: image_call(guidance_scale=3.0, max_sequence_length=TEXT_TOKENS),
    ),
)
