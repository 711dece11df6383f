"""Facts of the UNet denoisers: one :class:`Family` record per class.

UNet levels halve the grid (rounding up); video UNets fold frames into the batch of their spatial layers, so
those layers see one frame per row, and their temporal layers (a pixel's frames) have no grid of their own.
"""

from __future__ import annotations

from .base import FOLDED, Argument, Family, JoinedText, PipelineTemplate, PromptRecipe, TextPart

#: SD 1.x/2.x, SDXL (two CLIP tokenizers sharing positions), AnimateDiff, ModelScope: one CLIP sequence
CLIP_PROMPT = PromptRecipe((TextPart("clip", ("tokenizer", "tokenizer_2")),))


def _unet(name: str, classes: tuple[str, ...], text: int | None, **facts) -> Family:
    return Family(
        name,
        classes,
        sample=Argument(("sample",), 0),
        patch=None,
        patch_t=None,
        timestep=Argument(("timestep",), 1),
        text=None if text is None else Argument(("encoder_hidden_states",), text),
        unet_levels=True,
        **facts,
    )


def _video_unet(name: str, classes: tuple[str, ...], text: int | None, layout: str = "BCFHW", **facts) -> Family:
    return _unet(name, classes, text, layout=layout, frames_in_batch=True, video=True, **facts)


UNET_FAMILIES: tuple[Family, ...] = (
    # PAG's default: the mid block (Ahn et al. 2024 for Stable Diffusion; diffusers' SD/SDXL PAG pipelines).
    # ControlNet-XS (SD and SDXL) is that UNet with a small control branch beside each block, attending at the
    # block's grid; the mid block default perturbs both branches' mid self-attention.
    _unet(
        "unet",
        ("UNet2DConditionModel", "UNetControlNetXSModel"),
        text=2,
        prompt=CLIP_PROMPT,
        pag_layers=("mid",),
    ),
    _unet("unet_2d", ("UNet2DModel",), text=None),
    # Kandinsky3Pipeline batches [uncond, cond] and guides with (g + 1) * cond - g * uncond. Every block's
    # attentions.0 is its self-attention (run first in down blocks, last in up blocks); its Attention module is
    # built with a cross_attention_dim (is_cross_attention), so the module alone does not tell.
    _unet(
        "kandinsky3",
        ("Kandinsky3UNet",),
        text=2,
        cfg_formula="cond_plus",
        roles=((r"_blocks\.\d+\.attentions\.0\.", "self"),),
        # T5 over 128 tokens, cut after the longest prompt's valid tokens and one more (the call's text length).
        prompt=PromptRecipe((TextPart("t5"),), max_sequence_length=128),
    ),
    # Stable Cascade (stage C prior, stage B decoder): called with the scheduler's own timestep ratio; its self_attn
    # blocks attend over [image tokens, text, pooled text, image embedding] keys. The pipelines batch [cond, uncond].
    Family(
        "stable_cascade",
        ("StableCascadeUNet",),
        sample=Argument(("sample",), 0),
        timestep=Argument(("timestep_ratio",), 1),
        text=Argument(("clip_text",), 3),
        # keys [image, CLIP text, pooled text, CLIP image]: the pooled text and the image embedding are mapped to
        # config.clip_seq tokens each and count as text (the decoder stage gets the pooled text only)
        joined_text=(
            JoinedText(Argument(("clip_text_pooled",), 2), times="clip_seq"),
            JoinedText(Argument(("clip_img",), 4), times="clip_seq"),
        ),
        text_position="last",
        roles=((r"\.attention$", "joint"),),
        unet_levels=True,
        cfg="batched_cond_first",
        # The prior: CLIP's last hidden states over its 77 positions, then the pooled text and the image embedding
        # (zeros without images), each mapped to prior.config.clip_seq tokens that hold no word. Not the decoder
        # stage's: it gets no CLIP text.
        prompt=PromptRecipe(
            (
                TextPart("clip"),
                TextPart("reserved", length="prior.config.clip_seq"),
                TextPart("reserved", length="prior.config.clip_seq"),
            ),
            pipelines=("StableCascadePriorPipeline",),
        ),
    ),
    _unet(
        "dreamlite_unet",
        ("DreamLiteUNetModel",),
        text=2,
        # Generate mode (no input image): Qwen3-VL over the pipeline's generate template around "[Generate]: "
        # + the prompt, its first prompt_template_encode_generate_start_idx tokens dropped; each prompt keeps its
        # valid tokens, padded to the longest prompt of the call (the call's text length). Not edit mode (an input
        # image): its template puts the image's tokens before the words.
        prompt=PromptRecipe(
            (
                TextPart(
                    "chat_template",
                    template=PipelineTemplate(
                        "prompt_template_encode_generate",
                        crop="prompt_template_encode_generate_start_idx",
                        prefix="[Generate]: ",
                    ),
                ),
            ),
            max_sequence_length=200,
            refused_with=("image",),
        ),
    ),
    # aMUSEd: a [B, H, W] map of VQ token ids, one token per latent pixel, and no timestep (it unmasks tokens);
    # with downsample=True every attention runs one level down (H/2 x W/2). Output: logits [B, codebook, H, W].
    Family(
        "amused",
        ("UVit2DModel",),
        sample=Argument(("input_ids",), 0),
        grid_reader="token_ids",
        patch=None,
        patch_t=None,
        timestep=Argument(()),
        text=Argument(("encoder_hidden_states",), 1),
        unet_levels=True,
        # CLIP's penultimate hidden states over the tokenizer's padded length (77).
        prompt=PromptRecipe((TextPart("clip"),)),
    ),
    _video_unet("unet_3d", ("UNet3DConditionModel",), text=2, prompt=CLIP_PROMPT),
    _video_unet(
        "animatediff",
        ("UNetMotionModel",),
        batch_inputs=((Argument(("encoder_hidden_states",), 2), FOLDED),),
        text=2,
        prompt=CLIP_PROMPT,
        pag_layers=("mid_block.*attn1",),
    ),
    # Cross-attention keys are the text followed by image tokens the model appends itself.
    # Cross-attention keys: [text, the first frame's latent tokens, CLIP image tokens].
    _video_unet("i2vgen_xl", ("I2VGenXLUNet",), text=5, cross_keys_lead_with_text=True, prompt=CLIP_PROMPT),
    # One CLIP image token instead of text.
    _video_unet("svd", ("UNetSpatioTemporalConditionModel",), text=None, layout="BFCHW"),
)
