"""Facts of the text-to-video transformers: one :class:`Family` record per class.

Argument positions follow each class's ``forward`` signature; ``text_position`` says where each joint sequence
puts the text (checked against the SDPA calls of the tiny models in :mod:`visattn.tiny.denoisers`).
"""

from __future__ import annotations

from .base import (
    NOT_BATCHED_INPUT,
    PER_SAMPLE_LIST,
    Argument,
    CallPrefix,
    CountedTokens,
    DiffusersTemplate,
    Family,
    JoinedText,
    LatentTokens,
    ModuleConstant,
    OtherTokens,
    PipelineTemplate,
    PromptRecipe,
    ReorderedGrid,
    TextPart,
    TokenizerChatTemplate,
)

#: HunyuanVideo's default prompt_template (Llama chat template, its system part cropped)
_HUNYUAN_TEMPLATE = DiffusersTemplate(
    "diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video", "DEFAULT_PROMPT_TEMPLATE"
)

#: the module of Kandinsky 6's pipeline, which keeps its prompt template as constants
_KANDINSKY6 = "diffusers.pipelines.kandinsky6.pipeline_kandinsky6_ti2va"

#: the Wan pipelines and their descendants: umT5 over 512 tokens, after prompt_clean (HTML unescape, whitespace)
WAN_PROMPT = PromptRecipe((TextPart("t5"),), max_sequence_length=512, clean="prompt_clean")


def _hunyuan_video_cp_plan() -> dict:
    """HunyuanVideo's context-parallel plan (diffusers 0.42.1 ships none), read from its ``forward``.

    The token refiner (``context_embedder``) attends over the whole prompt and pools it, so the text is split only
    after it; the latent tokens after the patch embedding and the RoPE table (``[L, D]`` cos and sin) with them.
    Both streams are split so that Ulysses' all-to-all gathers each joint call's keys exactly once (replicated
    text would be gathered once per rank); visattn reorders the ``[image_r, text_r]`` shards for its effects
    (:func:`visattn.parallel.joint_order`). The output projection gathers the latent tokens.

    The prompt mask is split too: the forward builds each joint mask from the text it holds (this rank's shard)
    and ``encoder_attention_mask.sum(1)``, which must then count this rank's valid tokens; the refiner gets the
    whole mask back (the family's ``cp_gather_inputs``), so the plan is exact only through
    :func:`visattn.parallel.enable_context_parallelism`. Not covered: the image-to-video ``token_replace``
    variant, whose blocks split the first frame's tokens off.
    """
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    def split_output(dim: int, ndim: int) -> ContextParallelInput:
        return ContextParallelInput(split_dim=dim, expected_dims=ndim, split_output=True)

    return {
        "x_embedder": {0: split_output(1, 3)},
        "rope": {0: split_output(0, 2), 1: split_output(0, 2)},
        "context_embedder": {0: split_output(1, 3)},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
        "": {"encoder_attention_mask": ContextParallelInput(split_dim=1, expected_dims=2)},
    }


def _wan_vace_cp_plan() -> dict:
    """Wan-VACE's context-parallel plan (diffusers 0.42.1 ships one for Wan, none for Wan-VACE), read from its
    ``forward``: Wan's plan, with the control tokens split beside the video's.

    The VACE blocks run first on ``[video + control]`` tokens of the same grid, and the hints they return are added
    to the main blocks' tokens, so the first VACE block gets both streams split and the first main block the video
    (each call gets the whole forward variable); the RoPE table is split with them and the output projection
    gathers the video. The text stays whole: Wan's processor attends to it without Ulysses (a local call).
    """
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    tokens = ContextParallelInput(split_dim=1, expected_dims=3)
    rope = ContextParallelInput(split_dim=1, expected_dims=4, split_output=True)
    return {
        "rope": {0: rope, 1: rope},
        "vace_blocks.0": {"hidden_states": tokens, "control_hidden_states": tokens},
        "blocks.0": {"hidden_states": tokens},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


def _motif_video_cp_plan() -> dict:
    """Motif-Video's context-parallel plan (diffusers 0.42.1 ships none), read from its ``forward``.

    The latent tokens after the patch embedding and the RoPE table (``[L, D]`` cos and sin) are split, and so is
    the text after its projection (``context_embedder``, a plain projection): every joint call holds
    ``[video_r, text_r]``, so Ulysses' all-to-all gathers each key once, and the text cross-attention gathers the
    text shards whole. The prompt mask is split with the text, so the joint mask the forward builds
    (``[ones(video_r), mask_r]``) and the cross-attention's text part describe this rank's keys; the dispatcher's
    Ulysses template all-gathers such a local mask in the layout of the gathered keys. The decoder blocks attend
    over ``[decoder_r, video_r]`` (both split). The output projection gathers the latent tokens. Not covered:
    ``image_embeds`` (image-to-video), which the forward prepends whole to this rank's text shard, so the image
    tokens would be gathered once per rank.
    """
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    def split_output(dim: int, ndim: int) -> ContextParallelInput:
        return ContextParallelInput(split_dim=dim, expected_dims=ndim, split_output=True)

    return {
        "x_embedder": {0: split_output(1, 3)},
        "rope": {0: split_output(0, 2), 1: split_output(0, 2)},
        "context_embedder": {0: split_output(1, 3)},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
        "": {"encoder_attention_mask": ContextParallelInput(split_dim=1, expected_dims=2)},
    }


def _kandinsky5_cp_plan() -> dict:
    """Kandinsky 5's context-parallel plan (diffusers 0.42.1 ships none), read from its ``forward``.

    The forward reads the grid from the embedded latents (``[B, F, H, W, D]``), builds the RoPE table from that
    shape and the pipeline's ``visual_rope_pos``, and reshapes the tokens back to that shape before its output
    layer, with no module between the blocks and that reshape. So the split is by frames, at the input: the latents
    along their frame axis and the frame positions with them (the height and width positions stay whole), so that
    each rank builds the RoPE of its own frames and holds a contiguous run of tokens; the output layer's result is
    gathered along frames. The text stays whole for the text blocks (Ulysses over replicated text: every key
    doubled, the same attention) and is split for each visual block's cross-attention, whose all-to-all gathers it
    once. Needs a frame count and a text length the degree divides, and a temporal patch of 1. Not covered: the
    NABLA sparse attention (``sparse_params``), whose mask the processor builds from this rank's queries and keys.
    """
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    # split_output=True on a list element leaves it whole (diffusers' hook splits only the others).
    whole = ContextParallelInput(split_dim=0, expected_dims=1, split_output=True)
    return {
        "": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=5),
            "visual_rope_pos": [ContextParallelInput(split_dim=0, expected_dims=1), whole, whole],
        },
        "visual_transformer_blocks.*": {"text_embed": ContextParallelInput(split_dim=1, expected_dims=3)},
        "out_layer": ContextParallelOutput(gather_dim=1, expected_dims=5),
    }


def _kandinsky6_cp_plan() -> dict:
    """Kandinsky 6's context-parallel plan (diffusers 0.42.1 ships none), read from its ``forward``.

    The forward flattens the embedded video and its RoPE table to tokens before the fused blocks and reshapes the
    tokens to the grid right after the last one, so the video tokens are split at the first block's input (their
    RoPE rows at every block's) and gathered at the last block's output (the family's ``cp_gather_outputs``: the
    last block's index depends on the config, and its output holds ``None`` without audio, which diffusers' gather
    hook refuses; so the plan is exact only through :func:`visattn.parallel.enable_context_parallelism`). The text
    stays whole for the text blocks (Ulysses over replicated text: every key doubled, the same attention) and is
    split for each fused block, with its padding mask, so that both text cross-attentions gather it once. The audio
    tokens stay whole: their self-attention and the video-audio cross-attentions run Ulysses over replicated audio
    (doubled keys or queries, the same attention), so any audio length splits. Needs a video token count and a text
    length the degree divides.
    """
    from diffusers.models._modeling_parallel import ContextParallelInput

    return {
        "visual_transformer_blocks.0": {"vis": ContextParallelInput(split_dim=1, expected_dims=3)},
        # Each block gets the forward's whole variables: the RoPE rows, the text and its mask are split at every one.
        "visual_transformer_blocks.*": {
            "vis_rope": ContextParallelInput(split_dim=0, expected_dims=5),
            "text_v": ContextParallelInput(split_dim=1, expected_dims=3),
            "text_a": ContextParallelInput(split_dim=1, expected_dims=3),
            "attn_mask": ContextParallelInput(split_dim=1, expected_dims=2),
        },
    }


def _framepack_cp_plan() -> dict:
    """HunyuanVideo Framepack's context-parallel plan (diffusers 0.42.1 ships none), read from its ``forward``.

    The forward packs ``[history, video]`` latent tokens and their RoPE rows in its own code, builds the
    ``[image, text]`` condition and one key mask over ``[latents, condition]``, runs the double- and single-stream
    blocks and slices the video off the packed tokens. So both streams are split at the first block's input (each
    joint call then holds ``[latents_r, condition_r]``, and Ulysses gathers every key once), the RoPE rows at every
    block's; the key mask is cut to each rank's share of both streams (the family's ``cp_joint_masks``), and the
    latents are gathered at the last single-stream block's output (``cp_gather_outputs``), before the slice: the
    plan is exact only through :func:`visattn.parallel.enable_context_parallelism`. Needs packed latent and
    condition token counts the degree divides; with one row per call the forward crops the condition to its valid
    tokens (image tokens plus the prompt's valid ones), whose count must then divide.
    """
    from diffusers.models._modeling_parallel import ContextParallelInput

    tokens = ContextParallelInput(split_dim=1, expected_dims=3)
    rope = [ContextParallelInput(split_dim=0, expected_dims=2)] * 2
    return {
        "transformer_blocks.0": {"hidden_states": tokens, "encoder_hidden_states": tokens},
        "transformer_blocks.*": {"freqs_cis": rope},
        "single_transformer_blocks.*": {"image_rotary_emb": rope},
    }


def _video(
    name: str,
    classes: tuple[str, ...],
    timestep: int,
    text: int,
    layout: str = "BCFHW",
    text_position: str | None = None,
    **facts,
) -> Family:
    return Family(
        name,
        classes,
        layout=layout,
        timestep=Argument(("timestep",), timestep),
        text=Argument(("encoder_hidden_states",), text),
        text_position=text_position,
        video=True,
        **facts,
    )


VIDEO_MODEL_FAMILIES: tuple[Family, ...] = (
    _video("wan", ("WanTransformer3DModel",), timestep=1, text=2, prompt=WAN_PROMPT),
    _video(
        "wan_vace",
        ("WanVACETransformer3DModel",),
        timestep=1,
        text=2,
        prompt=WAN_PROMPT,
        # One scale per VACE layer, not per sample (its length equals the batch of a one-row call).
        batch_inputs=((Argument(("control_hidden_states_scale",), 5), NOT_BATCHED_INPUT),),
        cp_plan=_wan_vace_cp_plan,
    ),
    _video(
        "wan_animate",
        ("WanAnimateTransformer3DModel",),
        cp_no_plan=(
            "its face adapter attends per frame (frames folded into the batch) through Ulysses' all-to-all, which "
            "would join different frames' tokens from different ranks"
        ),
        timestep=1,
        text=2,
        prompt=WAN_PROMPT,
        # attn2 attends to the text (and image tokens); the module alone looks like self or joint attention.
        roles=((r"\.attn2$", "cross"),),
    ),
    _video(
        "skyreels_v2",
        ("SkyReelsV2Transformer3DModel",),
        timestep=1,
        text=2,
        prompt=WAN_PROMPT,
        cp_no_plan=(
            "its cross-attention sends the replicated text through Ulysses' all-to-all, and diffusion forcing "
            "builds per-token timesteps and a causal mask whole"
        ),
    ),
    _video(
        "chronoedit",
        ("ChronoEditTransformer3DModel",),
        cfg="separate",
        timestep=1,
        text=2,
        prompt=WAN_PROMPT,
        # attn2 attends to the text (and image tokens); the module alone looks like self or joint attention.
        roles=((r"\.attn2$", "cross"),),
    ),
    # Helios prepends history latents to the video inside its self-attention: the grid is its last tokens
    # (context_before_grid).
    _video("helios", ("HeliosTransformer3DModel",), context_before_grid=True, timestep=1, text=2, prompt=WAN_PROMPT),
    _video(
        "anyflow",
        ("AnyFlowTransformer3DModel",),
        cp_no_plan="its RoPE table is a dict (query, key), which diffusers' plan hooks cannot split",
        timestep=1,
        text=3,
        layout="BFCHW",
        prompt=WAN_PROMPT,
        # attn2 attends to the text (and image tokens); the module alone looks like self or joint attention.
        roles=((r"\.attn2$", "cross"),),
    ),
    _video(
        "cogvideox",
        ("CogVideoXTransformer3DModel",),
        timestep=2,
        text=1,
        layout="BFCHW",
        text_position="first",
        roles=(("", "joint"),),
        prompt=PromptRecipe((TextPart("t5"),), max_sequence_length=226),
    ),
    # CogVideoX-style processors join [text, video] in attn1, which as a module looks like self-attention.
    _video(
        "consisid",
        ("ConsisIDTransformer3DModel",),
        timestep=2,
        text=1,
        layout="BFCHW",
        text_position="first",
        roles=((r"\.attn1$", "joint"),),
    ),
    _video(
        "easyanimate",
        ("EasyAnimateTransformer3DModel",),
        timestep=1,
        text=3,
        text_position="first",
        roles=((r"\.attn1$", "joint"),),
        # Qwen2-VL over its tokenizer's chat template (one user message as a text part, a generation prompt),
        # padded on the right to max_sequence_length, nothing cropped.
        prompt=PromptRecipe(
            (TextPart("chat_template", template=TokenizerChatTemplate(content_parts=("user",))),),
            max_sequence_length=256,
        ),
    ),
    _video(
        "hunyuan_video",
        ("HunyuanVideoTransformer3DModel",),
        timestep=1,
        text=2,
        text_position="last",
        # The token refiner's attention (context_embedder) attends over text only.
        roles=(("^context_embedder", "text"), ("", "joint")),
        cp_plan=_hunyuan_video_cp_plan,
        cp_gather_inputs=(("context_embedder", "attention_mask", 1),),
        # Llama over the pipeline's chat template, its system part cropped.
        prompt=PromptRecipe(
            (TextPart("chat_template", template=_HUNYUAN_TEMPLATE),),
            max_sequence_length=256,
        ),
    ),
    _video(
        "hunyuan_video15",
        ("HunyuanVideo15Transformer3DModel",),
        cp_no_plan=(
            "its processor builds a query-by-key text mask from the local sequence, which Ulysses cannot gather"
        ),
        timestep=1,
        text=2,
        # [image-prompt tokens, glyph (ByT5) tokens, MLLM tokens], each row's valid tokens first, after the video
        joined_text=(JoinedText(Argument(("encoder_hidden_states_2",))), JoinedText(Argument(("image_embeds",)))),
        text_position="last",
        roles=(("^context_embedder", "text"), ("", "joint")),
        # The model gathers the valid tokens first: the image-prompt tokens (vision_num_semantic_tokens SigLIP tokens
        # of the image in image-to-video, ahead of the words; zeros and masked out in text-to-video), ByT5 over the
        # prompt's double-quoted text (padded to tokenizer_2_max_length, all padding without quotes), Qwen2.5-VL over
        # its tokenizer's chat template [system_message, prompt] with a generation prompt, the first
        # prompt_template_encode_start_idx tokens dropped, padded to tokenizer_max_length. The glyph tokens hold no
        # word.
        prompt=PromptRecipe(
            (
                TextPart(
                    "reserved", length="vision_num_semantic_tokens", valid_in=("HunyuanVideo15ImageToVideoPipeline",)
                ),
                TextPart(
                    "t5",
                    ("tokenizer_2",),
                    length="tokenizer_2_max_length",
                    derive="diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5:extract_glyph_texts",
                ),
                TextPart(
                    "chat_template",
                    template=TokenizerChatTemplate(
                        system="system_message", crop="prompt_template_encode_start_idx", special_tokens=False
                    ),
                    length="tokenizer_max_length",
                ),
            ),
            valid_first=True,
            pipelines=("HunyuanVideo15Pipeline", "HunyuanVideo15ImageToVideoPipeline"),
        ),
    ),
    # Framepack: joint [history latents (4x, 2x, clean), video, image tokens, text]; the SigLIP image tokens join the
    # text (as HunyuanVideo 1.5's image-prompt tokens), the history latents are other tokens before the grid.
    # Tokenizer ladder: the image's SigLIP tokens (last_hidden_state: one per patch, no class token) ahead of
    # HunyuanVideo's Llama template (the module's DEFAULT_PROMPT_TEMPLATE, its system part cropped), padded to
    # max_sequence_length. A one-row call (one prompt, no batch: each CFG branch is a call of its own) keeps only
    # the valid tokens (the forward cuts the text at the row's mask), so its text length is the prompt's: the call's
    # max_sequence_length read off the text length is then the prompt's token count, which the ladder's padding fits.
    _video(
        "hunyuan_video_framepack",
        ("HunyuanVideoFramepackTransformer3DModel",),
        cp_plan=_framepack_cp_plan,
        cp_joint_masks=(
            ("transformer_blocks.*", "attention_mask", ("hidden_states", "encoder_hidden_states")),
            ("single_transformer_blocks.*", "attention_mask", ("hidden_states", "encoder_hidden_states")),
        ),
        cp_gather_outputs=(("single_transformer_blocks.-1", 0, 1),),
        cp_split_counts="framepack_tokens",
        batch_inputs=tuple(
            (Argument((name,)), NOT_BATCHED_INPUT)
            for name in (
                "indices_latents",
                "indices_latents_clean",
                "indices_latents_history_2x",
                "indices_latents_history_4x",
            )
        ),
        cfg="separate",
        timestep=1,
        text=2,
        joined_text=(JoinedText(Argument(("image_embeds",), 5)),),
        text_position="last",
        prompt=PromptRecipe(
            (
                TextPart("reserved", length="image_encoder.embeddings.num_patches"),
                TextPart(
                    "chat_template",
                    template=DiffusersTemplate(
                        "diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video_framepack", "DEFAULT_PROMPT_TEMPLATE"
                    ),
                ),
            ),
            max_sequence_length=256,
            pipelines=("HunyuanVideoFramepackPipeline",),
        ),
        # HunyuanVideoHistoryPatchEmbed: proj (1, 2, 2), proj_2x (2, 4, 4), proj_4x (4, 8, 8), the 2x and 4x inputs
        # padded to a multiple of their kernel; packed as [4x, 2x, clean, video]
        other_tokens=tuple(
            OtherTokens("history latents", "before_grid", LatentTokens(Argument((name,)), kernel))
            for name, kernel in (
                ("latents_history_4x", (4, 8, 8)),
                ("latents_history_2x", (2, 4, 4)),
                ("latents_clean", (1, 2, 2)),
            )
        ),
        # single-stream blocks get the latents and the text already concatenated
        roles=(("^context_embedder", "text"), ("", "joint")),
    ),
    _video(
        "mochi",
        ("MochiTransformer3DModel",),
        timestep=2,
        text=1,
        text_position="last",
        timestep_reversed=True,
        prompt=PromptRecipe((TextPart("t5"),), max_sequence_length=256),
    ),
    _video(
        "allegro",
        ("AllegroTransformer3DModel",),
        timestep=2,
        text=1,
        text_axis=-2,  # the pipeline passes the T5 states as [B, 1, T, D]
        # T5 over max_sequence_length tokens; _text_preprocessing(clean_caption=False) lower-cases and strips.
        prompt=PromptRecipe((TextPart("t5"),), max_sequence_length=512, clean="lower"),
    ),
    # Latte folds frames into the batch, sample-major: spatial blocks see one frame per row (text repeated per
    # frame), temporal blocks one position's frames.
    _video(
        "latte",
        ("LatteTransformer3DModel",),
        timestep=1,
        text=2,
        frames_in_batch=True,
        # T5 over the lower-cased prompt (clean_caption=False; PixArt's text path), padded to 120 tokens; with
        # mask_feature (the default) the pipeline keeps the prompt's valid tokens only (the call's text length).
        prompt=PromptRecipe((TextPart("t5"),), max_sequence_length=120, clean="lower"),
    ),
    _video(
        "cosmos",
        ("CosmosTransformer3DModel",),
        timestep=1,
        text=2,
        # CosmosTextToWorldPipeline: the conditional call, then the unconditional one, combined as
        # cond + g * (cond - uncond); the [1, 1, H, W] padding mask is shared by every row.
        cfg="separate",
        cfg_formula="cond_plus",
        batch_inputs=((Argument(("padding_mask",), 7), NOT_BATCHED_INPUT),),
        # T5 over max_sequence_length (padding embeddings zeroed) in Cosmos 1 and 2; Cosmos 2.5 encodes a
        # Qwen2.5-VL chat template instead.
        prompt=PromptRecipe(
            (TextPart("t5"),),
            max_sequence_length=512,
            pipelines=(
                "CosmosTextToWorldPipeline",
                "CosmosVideoToWorldPipeline",
                "Cosmos2TextToImagePipeline",
                "Cosmos2VideoToWorldPipeline",
            ),
        ),
    ),
    _video(
        "sana_video",
        ("SanaVideoTransformer3DModel",),
        cp_no_plan=(
            "its self-attention is linear attention the processor computes itself, without diffusers' dispatcher"
        ),
        timestep=2,
        text=1,
        # Sana's text path: Gemma 2 over the call's complex_human_instruction + the lower-cased prompt, <bos> and
        # the last max_sequence_length - 1 tokens kept.
        prompt=PromptRecipe(
            (TextPart("chat_template", template=CallPrefix("complex_human_instruction", kept=1)),),
            max_sequence_length=300,
            clean="lower",
        ),
    ),
    _video(
        "sana_wm",
        ("SanaWMTransformer3DModel",),
        timestep=1,
        text=2,
        text_axis=-2,  # the pipeline passes the Gemma states as [B, 1, T, D]
        roles=((r"\.cross_attn$", "cross"),),
        # Sana's text path without lower-casing: Gemma 2 over the call's chi_prompt (None: the module's
        # DEFAULT_CHI_PROMPT) + the prompt, padded on the right; <bos> and the last max_sequence_length - 1 tokens
        # kept.
        prompt=PromptRecipe(
            (
                TextPart(
                    "chat_template",
                    template=CallPrefix(
                        "chi_prompt",
                        kept=1,
                        fallback=ModuleConstant("diffusers.pipelines.sana_wm.pipeline_sana_wm", "DEFAULT_CHI_PROMPT"),
                    ),
                ),
            ),
            max_sequence_length=300,
        ),
        cp_no_plan=(
            "its self-attention (gated-delta-net linear attention, or its softmax variant) calls torch itself, "
            "without diffusers' dispatcher"
        ),
    ),
    _video(
        "kandinsky5",
        ("Kandinsky5Transformer3DModel",),
        cfg="separate",
        timestep=2,
        text=1,
        layout="BFHWC",
        # The text encoder blocks attend over the text; the visual blocks' cross_attention modules to the text.
        roles=(("^text_transformer_blocks", "text"), (r"\.cross_attention$", "cross")),
        # The 10 s models' NABLA attention (attention_type "nabla": the pipeline passes sparse_params on every call)
        # lays the video out in tiles of 8 x 8 tokens (fractal_flatten), a block-sparse flex attention over them.
        reordered_grid=ReorderedGrid(
            Argument(("sparse_params",), 7),
            "to_fractal",
            ("attention_type", "nabla"),
            "in tiles of 8 x 8 (NABLA attention's sparse_params, the 10 s models)",
        ),
        cp_plan=_kandinsky5_cp_plan,
        # Qwen2.5-VL over the pipeline's prompt_template around the prompt_clean'ed prompt, its first
        # prompt_template_encode_start_idx tokens dropped; padded to the longest prompt of the call (the call's
        # text length). CLIP gives only the pooled embedding.
        prompt=PromptRecipe(
            (
                TextPart(
                    "chat_template",
                    template=PipelineTemplate("prompt_template", crop="prompt_template_encode_start_idx"),
                ),
            ),
            max_sequence_length=256,
            clean="prompt_clean",
        ),
    ),
    _video(
        "kandinsky6",
        ("Kandinsky6Transformer3DModel",),
        timestep=3,
        text=1,
        layout="BFHWC",
        # Video and audio text encoder blocks attend over the text; the video/audio blocks' cross_attention modules
        # to the text, va_/av_cross_attention between the video and audio streams (keys never text).
        roles=(
            ("_text_transformer_blocks", "text"),
            (r"\.(va|av)_cross_attention$", "stream"),
            ("cross_attention$", "cross"),
        ),
        other_stream_layers=(r"\.audio_dec_block\.",),
        cp_plan=_kandinsky6_cp_plan,
        cp_gather_outputs=(("visual_transformer_blocks.-1", 0, 1),),
        # Qwen2.5-VL over the module's _PROMPT_TEMPLATE, its first _QWEN_CROP_START tokens dropped, padded to
        # max_sequence_length (expand_prompts off, the default: the expansion rewrites the prompt). CLIP gives only
        # the pooled embedding.
        prompt=PromptRecipe(
            (
                TextPart(
                    "chat_template",
                    template=PipelineTemplate(
                        ModuleConstant(_KANDINSKY6, "_PROMPT_TEMPLATE"),
                        crop=ModuleConstant(_KANDINSKY6, "_QWEN_CROP_START"),
                    ),
                ),
            ),
            max_sequence_length=1024,
            refused_with=("expand_prompts",),
        ),
    ),
    # MotifVideoPipeline guides through a diffusers guider: one call per branch, "pred_cond" then "pred_uncond".
    _video(
        "motif_video",
        ("MotifVideoTransformer3DModel",),
        timestep=1,
        text=2,
        text_position="last",
        cfg="separate",
        # cross_attn modules attend to the text; the attn modules of both block kinds over [video, text]
        roles=((r"\.cross_attn$", "cross"), (r"\.attn$", "joint")),
        # T5Gemma 2 over the prompt, padded to max_sequence_length on the tokenizer's own side.
        prompt=PromptRecipe((TextPart("t5", padding="tokenizer"),), max_sequence_length=512),
        cp_plan=_motif_video_cp_plan,
    ),
    _video(
        "ltx",
        ("LTXVideoTransformer3DModel",),
        timestep=2,
        text=1,
        layout="packed",
        grid_reader="frames_height_width",
        packed_patch=1,  # the pipeline packs with the transformer's patch size, 1
        prompt=PromptRecipe((TextPart("t5"),), max_sequence_length=128),
        # attn2 attends to the text (and image tokens); the module alone looks like self or joint attention.
        roles=((r"\.attn2$", "cross"),),
    ),
    _video(
        "ltx2",
        ("LTX2VideoTransformer3DModel",),
        timestep=4,
        text=2,
        layout="packed",
        grid_reader="frames_height_width",
        packed_patch=1,
        # attn2/audio_attn2 attend to the text, the *_to_*_attn modules between the video and audio streams (keys
        # never text); audio_attn1/audio_attn2 over the audio's tokens (never the grid)
        roles=((r"attn2$", "cross"), (r"_to_\w+_attn$", "stream")),
        other_stream_layers=(r"\.audio_attn\d$",),
        # Gemma 3 over the stripped prompt, padded on the left to max_sequence_length; the text connectors move
        # each row's valid tokens to the front (learnable registers fill the rest), so the words sit where right
        # padding would put them, in the video and the audio text alike. enable_prompt_enhancement has Gemma rewrite
        # the prompt first and encodes the rewrite.
        prompt=PromptRecipe(
            (TextPart("t5"),),
            max_sequence_length=1024,
            clean="strip",
            refused_with=("enable_prompt_enhancement",),
        ),
    ),
    # Wan-Animate 2: per-sample lists of [C, F, H, W] latents and of unpadded text, which the model pads to
    # config.text_len (the text length its cross-attention sees; its second call is over CLIP image tokens). Its
    # self-attention is flex attention (no SDPA): only the cross-attention can be taken over.
    _video(
        "wan_animate_2",
        ("WanAnimate2Transformer3DModel",),
        cp_no_plan=(
            "its processor applies RoPE from the whole grid's sizes and scatters the tokens into buffers laid out "
            "for a block mask of the whole video, which a sequence shard cannot fill"
        ),
        timestep=1,
        text=2,
        text_length_config="text_len",
        grid_reader="sample_list",
        roles=((r"\.cross_attn$", "cross"),),  # over the text, and over the CLIP image tokens (its added k/v)
        # the modular pipeline's extract pass fills the key/value cache from the driving video and predicts nothing
        auxiliary_calls=(("kv_cache_mode", "extract"),),
        opaque_layers=(r"\.self_attn$",),  # flex attention in the denoising passes
        # umT5 over the prompt as given (no prompt_clean), its valid tokens padded with zeros to config.text_len.
        prompt=PromptRecipe((TextPart("t5"),), max_sequence_length=512),
    ),
    # MiniMax-H3: packed rows of one [text, conditioning or reference rows, audio, video] layout shared by the batch,
    # scattered to index positions, called with t in [0, 1] (1 = clean). The rows between the text and the video
    # (conditioning, references, audio) are other tokens; text effects act on the text rows, grid effects on the video.
    _video(
        "minimax_h3",
        ("MiniMaxH3Transformer3DModel",),
        timestep=3,
        text=2,
        layout="packed",
        grid_reader="video_indices",
        timestep_reversed=True,
        text_position="first",
        other_tokens=(OtherTokens("audio and conditioning rows", "before_grid", CountedTokens("minimax_h3_rows")),),
        joint_one_stream=True,  # diffusers' plan splits the packed sequence at the first block
        # one packed sequence of every modality in each block (no cross-attention anywhere)
        roles=(("^token_refiner", "text"), ("^transformer_blocks", "joint")),
        # The text-to-video-and-audio request (t2va): Qwen3-VL over the prompt verbatim, no chat template and no
        # special tokens (the step passes add_special_tokens=False; Qwen2's tokenizer adds none anyway), unpadded
        # (one prompt, a string, per call): the text length is the prompt's token count, the call's
        # max_sequence_length here (512 is only the length of a mapping made outside a call). A keyframe (image,
        # last_image: fl2va) or references (ref2va) put their labels and vision blocks before the words.
        prompt=PromptRecipe(
            (TextPart("t5"),), max_sequence_length=512, refused_with=("references", "image", "last_image")
        ),
    ),
    # JoyImage-Edit: [B, items, C, T, H, W], references concatenated along time after the generated image (grid
    # frames 1...); the prediction keeps the input's item order; joint [image, text] in the double blocks.
    # Tokenizer ladder of its text-only path (no input image): Qwen3-VL over prompt_template_encode["image"], the
    # first prompt_template_encode_start_idx["image"] tokens dropped, each prompt's valid tokens zero-padded on the
    # right to the longest prompt of the call (the call's text length; max_sequence_length caps it). With an input
    # image (the edit it is made for) the prompt goes through Qwen3-VL's processor as "<image>\n" + the instruction,
    # so the image's tokens, as many as the processor makes of its size, sit before the words, which no part
    # expresses: words are refused in such a call (refused_with), PromptTokens (positions given) serve it.
    _video(
        "joyimage_edit",
        ("JoyImageEditTransformer3DModel",),
        cp_no_plan=(
            "its RoPE tables are nested tuples built by a method, not a module's output, which diffusers' plan "
            "hooks cannot split"
        ),
        layout="BNCFHW",
        cfg="separate",
        timestep=1,
        text=2,
        grid_reader="items_along_time",
        text_position="last",
        roles=(("^double_blocks", "joint"),),
        prompt=PromptRecipe(
            (
                TextPart(
                    "chat_template",
                    template=PipelineTemplate(
                        "prompt_template_encode", crop="prompt_template_encode_start_idx", key="image"
                    ),
                ),
            ),
            max_sequence_length=4096,
            refused_with=("image",),
        ),
    ),
    # JoyImage-Edit Plus: every item (the generated image, then the references) patchified on its own into one
    # padded patch sequence [B, max_patches, C, pt, ph, pw], its grid in patches per item in shape_list (a list per
    # sample); joint [patches, text] in the double blocks, the padding masked. Its pipeline always encodes the
    # reference images' tokens before the words (Qwen3-VL's processor, "<image>\n" per reference), so no tokenizer
    # ladder is declared: PromptTokens (positions given) address its text.
    _video(
        "joyimage_edit_plus",
        ("JoyImageEditPlusTransformer3DModel",),
        cp_no_plan=(
            "its RoPE tables are built per sample from shape_list inside the forward, not by a module whose output "
            "diffusers' plan hooks could split"
        ),
        layout="packed",
        timestep=1,
        text=2,
        grid_reader="shape_list",
        text_position="last",
        roles=(("^double_blocks", "joint"),),
        other_tokens=(
            OtherTokens(
                "reference image patches and padding", "after_grid", CountedTokens("padded_patches_after_grid")
            ),
        ),
        batch_inputs=((Argument(("shape_list",), 4), PER_SAMPLE_LIST),),
    ),
    # Cosmos 3 Omni: one packed sample per call (no batch axis: one_sample_per_call),
    # vision latents as a list of [1, C, F, H, W], text as token ids, per-token scheduler timesteps. Vision queries
    # attend over [text, vision] keys; the text's own attention is causal, which visattn leaves alone.
    Family(
        "cosmos3_omni",
        ("Cosmos3OmniTransformer",),
        cp_no_plan=(
            "both attention calls of every layer reach diffusers' dispatcher with enable_gqa=True (grouped-query "
            "heads) and the text pathway with is_causal=True, which diffusers 0.42.1's context-parallel templates "
            "refuse (Ulysses and ring); the class shards one packed sample through its own seams (_cp_shard_fn, "
            "_cp_gather_fn) and a context-parallel processor outside diffusers' plans, which visattn does not ride"
        ),
        one_sample_per_call=True,
        sample=Argument(("vision_tokens",), 5),
        layout="packed",
        grid_reader="vision_token_shapes",
        timestep=Argument(("vision_timesteps",), 9),
        text=Argument(("input_ids",), 0),
        text_position="first",
        video=True,
    ),
)
