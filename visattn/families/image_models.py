"""Facts of the text-to-image transformers (and PixArt-style DiTs): one :class:`Family` record per class.

Argument positions follow each class's ``forward`` signature; ``text_position`` says where each joint sequence
puts the text (checked against the SDPA calls of the tiny models in :mod:`visattn.tiny.denoisers`).
"""

from __future__ import annotations

from .base import (
    PER_SAMPLE_LIST,
    Argument,
    CallPrefix,
    CountedTokens,
    Family,
    JoinedText,
    LatentTokens,
    ModuleConstant,
    OtherTokens,
    PaddedGrid,
    PipelineTemplate,
    PromptRecipe,
    TextPart,
    TokenizerChatTemplate,
)


def _text(position: int, name: str = "encoder_hidden_states") -> Argument:
    return Argument((name,), position)


def _timestep(position: int, name: str = "timestep") -> Argument:
    return Argument((name,), position)


#: Qwen-Image's pipelines keep their chat template and the count of leading tokens they drop as attributes
QWEN_TEMPLATE = PipelineTemplate("prompt_template_encode", crop="prompt_template_encode_start_idx")


#: Flow-matching pipelines that call the transformer with ``t / 1000`` and pack latents with ``img_ids``.
def _packed_with_ids(name: str, classes: tuple[str, ...], timestep: int, divisor: float = 1000.0, **facts) -> Family:
    return Family(
        name,
        classes,
        layout="packed",
        grid_reader="img_ids",
        timestep=_timestep(timestep),
        timestep_divisor=divisor,
        text=_text(1),
        text_position="first",
        # Single-stream blocks receive text and latents already concatenated.
        roles=(("single_transformer_blocks", "joint"),),
        **facts,
    )


IMAGE_FAMILIES: tuple[Family, ...] = (
    Family(
        "pixart",
        ("PixArtTransformer2DModel",),
        timestep=_timestep(2),
        text=_text(1),
        # T5 over max_sequence_length tokens; _text_preprocessing(clean_caption=False) lower-cases and strips.
        prompt=PromptRecipe((TextPart("t5"),), max_sequence_length=120, clean="lower"),
        pag_layers=("blocks.1",),  # PixArtSigmaPAGPipeline's default: the first transformer block
    ),
    Family(
        "sd3",
        ("SD3Transformer2DModel",),
        timestep=_timestep(3),
        text=_text(1),
        text_position="last",
        # CLIP-L and CLIP-G feature-wise over 77 positions, then T5 along the sequence (zeros without T5).
        prompt=PromptRecipe(
            (TextPart("clip", ("tokenizer", "tokenizer_2")), TextPart("t5", ("tokenizer_3",), optional=True)),
            max_sequence_length=256,
        ),
        pag_layers=("blocks.1",),  # StableDiffusion3PAGPipeline's default
    ),
    _packed_with_ids(
        "flux",
        ("FluxTransformer2DModel",),
        cfg="separate",
        timestep=3,
        # CLIP's pooled embedding is no token; the text sequence is T5's (tokenizer_2).
        prompt=PromptRecipe((TextPart("t5", ("tokenizer_2",)),), max_sequence_length=512),
    ),
    _packed_with_ids(
        "flux2",
        ("Flux2Transformer2DModel",),
        timestep=2,
        # Flux2Pipeline embeds its guidance (one call a step, whatever guidance_scale says); the [klein] pipelines
        # call once per branch, in named cache contexts.
        cfg="separate",
        # Mistral 3 over its chat template [system_message, prompt] without a generation prompt, tokenized by
        # apply_chat_template (no further <s>) and padded on the tokenizer's side (Mistral's: left) to
        # max_sequence_length, nothing cropped. Flux2Pipeline's ladder: the [klein] pipelines' Qwen3 template
        # differs.
        prompt=PromptRecipe(
            (
                TextPart(
                    "chat_template",
                    template=TokenizerChatTemplate(
                        generation_prompt=False,
                        system="system_message",
                        content_parts=("system", "user"),
                        special_tokens=False,
                    ),
                    padding="tokenizer",
                ),
            ),
            max_sequence_length=512,
            pipelines=("Flux2Pipeline",),
            # With a temperature Flux2Pipeline has Mistral rewrite the prompt first and encodes the rewrite.
            refused_with=("caption_upsample_temperature",),
        ),
    ),
    _packed_with_ids(
        "flux3",
        ("Flux3Transformer2DModel",),
        timestep=2,
        # Flux3ModularPipeline's text encoder step: Qwen3-VL over its processor's chat template (one user message, a
        # generation prompt), right-padded to a multiple of 80 tokens capped at max_sequence_length (the call's text
        # length; each guider branch has its own), nothing cropped. Words are those of the prompt as given: the
        # auto blocks' prompt upsampler (their first step, unless popped) has the blocks encode its rewrite.
        prompt=PromptRecipe(
            (TextPart("chat_template", template=TokenizerChatTemplate()),),
            max_sequence_length=8192,
            rewriting_blocks=("prompt_upsampler",),
        ),
    ),
    _packed_with_ids(
        "chroma",
        ("ChromaTransformer2DModel",),
        cfg="separate",
        timestep=2,
        prompt=PromptRecipe((TextPart("t5"),), max_sequence_length=512),
    ),
    _packed_with_ids(
        "ovis_image",
        ("OvisImageTransformer2DModel",),
        timestep=2,
        # Qwen3 over its chat template (thinking off) around one user message, system_prompt + prompt, tokenized
        # without further special tokens and padded to user_prompt_begin_id + max_sequence_length; the first
        # user_prompt_begin_id tokens (the template's head and the system prompt) are dropped.
        prompt=PromptRecipe(
            (
                TextPart(
                    "chat_template",
                    template=TokenizerChatTemplate(
                        options=(("enable_thinking", False),),
                        prefix="system_prompt",
                        crop="user_prompt_begin_id",
                        special_tokens=False,
                    ),
                ),
            ),
            max_sequence_length=256,
        ),
    ),
    _packed_with_ids(
        "longcat_image",
        ("LongCatImageTransformer2DModel",),
        timestep=2,
        # Qwen2.5-VL over [prefix | prompt | PAD | suffix], prefix and suffix cropped: the prompt's own tokens (quoted
        # text letter by letter) padded to tokenizer_max_length (512). Words are those of the prompt as given, so
        # they are refused in a call with enable_prompt_rewrite (its default: the rewrite replaces the prompt with the
        # text encoder's own). Not the edit pipeline's: it keeps the image tokens ahead of the prompt.
        prompt=PromptRecipe(
            (TextPart("t5", spell="diffusers.pipelines.longcat_image.pipeline_longcat_image:split_quotation"),),
            max_sequence_length=512,
            refused_with=("enable_prompt_rewrite",),
        ),
    ),
    _packed_with_ids(
        "bria",
        ("BriaTransformer2DModel",),
        timestep=3,
        divisor=1.0,
        # T5 tokens (no padding tokens: the pipeline zero-pads the embeddings to max_sequence_length).
        prompt=PromptRecipe((TextPart("t5"),), max_sequence_length=128),
    ),
    _packed_with_ids(
        "bria_fibo",
        ("BriaFiboTransformer2DModel",),
        timestep=4,
        divisor=1.0,
        # SmolLM3 over the prompt (its structured JSON caption as given), padded on the right (SmolLM3's side) to
        # the longest prompt of the call and then with zeros to the negative prompt's length: the call's text length.
        prompt=PromptRecipe((TextPart("t5"),), max_sequence_length=2048),
    ),
    Family(
        "qwen_image",
        ("QwenImageTransformer2DModel",),
        layout="packed",
        grid_reader="img_shapes",
        timestep=_timestep(3),
        timestep_divisor=1000.0,
        text=_text(1),
        text_position="first",
        # Qwen2.5-VL over the pipeline's chat template, its first prompt_template_encode_start_idx tokens dropped;
        # each prompt keeps its valid tokens, padded to the longest prompt of the call (so the call's text length,
        # not max_sequence_length, is the sequence's length).
        prompt=PromptRecipe(
            (TextPart("chat_template", template=QWEN_TEMPLATE),),
            max_sequence_length=512,
        ),
    ),
    Family(
        "qwen_image_21",
        ("QwenImage21Transformer2DModel",),
        layout="packed",
        grid_reader="img_shapes_last",
        timestep=_timestep(2),
        timestep_divisor=1000.0,
        text=_text(1),
        text_position="first",
        # One block-causal joint sequence [text, image] per block, in two SDPA calls: text queries over the text,
        # image queries over every key.
        roles=(("^transformer_blocks", "joint"),),
        # Qwen2.5-VL over the pipeline's text-to-image template, its first _drop_idx tokens (the system turn)
        # dropped; each prompt keeps its valid tokens, padded to the longest prompt of the call (the call's text
        # length: the pipeline sets no limit, so max_sequence_length is only the length of a mapping made outside a
        # call). Not with condition images (their tokens join the template).
        prompt=PromptRecipe(
            (
                TextPart(
                    "chat_template", ("processor",), template=PipelineTemplate("prompt_template_t2i", crop="_drop_idx")
                ),
            ),
            max_sequence_length=1024,
        ),
    ),
    Family(
        "nucleus_moe_image",
        ("NucleusMoEImageTransformer2DModel",),
        cfg="separate",
        layout="packed",
        grid_reader="img_shapes",
        timestep=_timestep(4),
        timestep_divisor=1000.0,
        text=_text(2),
        # Image queries over [image, text] keys (the text is key/value only): the joint sequence's text is last.
        text_position="last",
        # Qwen3-VL (the "processor") over its chat template, [DEFAULT_SYSTEM_PROMPT, prompt as a text part] with a
        # generation prompt, nothing cropped, padded on the tokenizer's side to the longest prompt of the call (a
        # multiple of 8: the call's text length).
        prompt=PromptRecipe(
            (
                TextPart(
                    "chat_template",
                    ("processor",),
                    template=TokenizerChatTemplate(
                        system=ModuleConstant(
                            "diffusers.pipelines.nucleusmoe_image.pipeline_nucleusmoe_image", "DEFAULT_SYSTEM_PROMPT"
                        ),
                        content_parts=("user",),
                    ),
                    padding="tokenizer",
                ),
            ),
            max_sequence_length=1024,
        ),
    ),
    Family(
        "krea2",
        ("Krea2Transformer2DModel",),
        cfg="separate",
        cfg_formula="cond_plus",  # noise_pred = cond + g * (cond - uncond)
        layout="packed",
        grid_reader="image_position_ids",
        timestep=_timestep(2),
        timestep_divisor=1000.0,
        text=_text(1),
        text_position="first",
        # The text fusion attends across text-encoder layers and over the text; the blocks over [text, image].
        roles=(("^text_fusion", "text"), ("^transformer_blocks", "joint")),
        # Qwen3-VL over [prefix | prompt | PAD | suffix]: the prefix's first prompt_template_encode_start_idx
        # tokens dropped, the prompt padded so that the suffix's tokens end the max_sequence_length positions.
        prompt=PromptRecipe(
            (
                TextPart(
                    "chat_template",
                    template=PipelineTemplate(
                        "prompt_template_encode_prefix",
                        crop="prompt_template_encode_start_idx",
                        suffix="prompt_template_encode_num_suffix_tokens",
                    ),
                ),
            ),
            max_sequence_length=512,
        ),
    ),
    Family(
        "sana",
        ("SanaTransformer2DModel",),
        timestep=_timestep(2),
        text=_text(1),
        pag_layers=("transformer_blocks.0",),  # SanaPAGPipeline's default
        # Gemma 2 over the call's complex_human_instruction + the lower-cased prompt, padded; the pipeline keeps
        # <bos> and the last max_sequence_length - 1 tokens (the instruction's last token, the prompt, padding).
        prompt=PromptRecipe(
            (TextPart("chat_template", template=CallPrefix("complex_human_instruction", kept=1)),),
            max_sequence_length=300,
            clean="lower",
        ),
    ),
    Family(
        "lumina2",
        ("Lumina2Transformer2DModel",),
        cfg="separate",
        timestep=_timestep(1),
        timestep_reversed=True,
        text=_text(2),
        text_position="first",
        # The context refiner attends over the text, the noise refiner over the image, the main layers over
        # [text, image] (all the same module class).
        roles=(("^context_refiner", "text"), (r"^layers\.", "joint")),
        # Gemma 2 over "<system_prompt> <Prompt Start> <prompt>" (<bos> first), padded to max_sequence_length, nothing
        # cropped: the system prompt takes positions of max_sequence_length.
        prompt=PromptRecipe(
            (TextPart("chat_template", template=PipelineTemplate("system_prompt", joiner=" <Prompt Start> ")),),
            max_sequence_length=256,
        ),
    ),
    # LuminaPipeline batches [cond, uncond] (its negative prompt after the prompt).
    Family(
        "lumina_next",
        ("LuminaNextDiT2DModel",),
        cfg="batched_cond_first",
        timestep=_timestep(1),
        timestep_reversed=True,
        text=_text(2),
        # Gemma over the lower-cased prompt (clean_caption=False; the call's default True needs bs4 and ftfy and
        # rewrites the prompt) padded to the longest prompt of the call, at most max_sequence_length.
        prompt=PromptRecipe((TextPart("t5"),), max_sequence_length=256, clean="lower"),
    ),
    Family(
        "cogview4",
        ("CogView4Transformer2DModel",),
        cfg="separate",
        timestep=_timestep(2),
        text=_text(1),
        text_position="first",
        roles=(("", "joint"),),  # its processor joins [text, image] (the module looks like self-attention)
        # GLM-4 over the prompt ([gMASK]<sop> first), padded on the left to the longest prompt of the call and
        # then to a multiple of 16: the call's text length, the words at its end.
        prompt=PromptRecipe((TextPart("t5", padding="left"),), max_sequence_length=1024),
    ),
    Family(
        "cogview3plus",
        ("CogView3PlusTransformer2DModel",),
        timestep=_timestep(2),
        text=_text(1),
        text_position="first",
        prompt=PromptRecipe((TextPart("t5"),), max_sequence_length=224),
        roles=(("^transformer_blocks", "joint"),),  # [text, image] in one sequence
    ),
    Family(
        "auraflow",
        ("AuraFlowTransformer2DModel",),
        text_extra_tokens=8,  # register tokens before the text (AuraFlowTransformer2DModel.register_tokens)
        timestep=_timestep(2),
        timestep_divisor=1000.0,
        text=_text(1),
        text_position="first",
        roles=(("^single_transformer_blocks", "joint"),),  # fed [registers, text, image] already concatenated
        # T5-style (Pile-T5) tokens padded to max_sequence_length, after the 8 register tokens.
        prompt=PromptRecipe((TextPart("t5"),), max_sequence_length=256, leading=8),
    ),
    Family(
        "hidream_image",
        ("HiDreamImageTransformer2DModel",),
        batch_inputs=((Argument(("encoder_hidden_states_llama3",), 3), 1),),
        timestep=_timestep(1, "timesteps"),
        text=_text(2, "encoder_hidden_states_t5"),
        # [T5, last Llama layer, this block's Llama layer] after the image, in both stream kinds
        joined_text=(JoinedText(Argument(("encoder_hidden_states_llama3",), 3), axis=2, times=2),),
        text_position="last",
        # patchify pads a non-square image's tokens to max_seq (config.max_resolution / patch) before the text; the
        # pad keys are zeroed (hidden_states_masks), not masked, so every query still gives them weight
        other_tokens=(OtherTokens("pad tokens", "after_grid", PaddedGrid("max_seq")),),
        roles=(("", "joint"),),
        # T5 (tokenizer_3), then Llama 3.1 (tokenizer_4) twice (the last layer's and the block's), each padded to
        # max_sequence_length on its tokenizer's side; CLIP gives only pooled embeddings.
        prompt=PromptRecipe(
            (
                TextPart("t5", ("tokenizer_3",)),
                TextPart("t5", ("tokenizer_4",), padding="tokenizer"),
                TextPart("t5", ("tokenizer_4",), padding="tokenizer"),
            ),
            max_sequence_length=128,
        ),
    ),
    Family(
        "hunyuan_dit",
        ("HunyuanDiT2DModel",),
        timestep=_timestep(1),
        text=_text(2),
        joined_text=(JoinedText(Argument(("encoder_hidden_states_t5",), 4)),),  # CLIP tokens, then T5's
        pag_layers=("blocks.1",),  # HunyuanDiTPAGPipeline's default
        # Chinese BERT ("CLIP") over 77 positions, then mT5 (tokenizer_2) over 256: every word sits in both.
        prompt=PromptRecipe((TextPart("clip"), TextPart("t5", ("tokenizer_2",))), max_sequence_length=256),
    ),
    Family(
        "hunyuan_image",
        ("HunyuanImageTransformer2DModel",),
        timestep=_timestep(1),
        text=_text(2),
        # The glyph (ByT5) tokens join the MLLM's, each row's valid tokens first.
        joined_text=(JoinedText(Argument(("encoder_hidden_states_2",))),),
        text_position="last",
        # The token refiner (context_embedder) attends over the MLLM text only; single-stream blocks get the
        # image and text already concatenated.
        roles=(("^context_embedder", "text"), ("^single_transformer_blocks", "joint")),
        # ByT5 over the prompt's quoted text (Text "...". , padded to tokenizer_2_max_length; all padding without
        # quotes), then Qwen2.5-VL over the pipeline's chat template, its first prompt_template_encode_start_idx
        # tokens dropped, padded to tokenizer_max_length; the model puts both parts' valid tokens first. The glyph
        # tokens hold no word. Not the refiner pipeline's: it feeds no glyph tokens.
        prompt=PromptRecipe(
            (
                TextPart(
                    "t5",
                    ("tokenizer_2",),
                    length="tokenizer_2_max_length",
                    derive="diffusers.pipelines.hunyuan_image.pipeline_hunyuanimage:extract_glyph_text",
                ),
                TextPart("chat_template", template=QWEN_TEMPLATE, length="tokenizer_max_length"),
            ),
            valid_first=True,
            pipelines=("HunyuanImagePipeline",),
        ),
    ),
    Family(
        "bria_fibo2",
        ("BriaFibo2Transformer2DModel",),
        cfg="separate",
        timestep=_timestep(1),
        timestep_divisor=1000.0,
        # [B, 1 + injection layers, T, D]: the Perceiver's bundle, then one per injection layer, each T tokens
        text=_text(2),
        text_axis=2,
        # The Perceiver makes the gist tokens from the text; injection layers cross-attend to a text bundle (the text
        # effects act there); the main layers attend over [gist, image, context images], no text.
        other_tokens=(
            OtherTokens("gist tokens", "before_grid", CountedTokens("bria_fibo2_gists")),
            OtherTokens(
                "context image tokens",
                "after_grid",
                LatentTokens(Argument(("context_latents",), 4), ("patch_size", "patch_size")),
            ),
        ),
        roles=(("^perceiver", "text"), (r"\.cross_attention$", "cross"), (r"^layers\.\d+\.attention$", "joint")),
        # No tokenizer ladder: the main layers' text positions hold gist tokens the Perceiver makes from the whole
        # text, none of which is a word's.
    ),
    # OmniGen: text ids, then one time token, then the image; the time token counts as text here. The pipeline
    # batches [prompt, negative prompt(, image-only prompt)]: the conditional rows first.
    Family(
        "omnigen",
        ("OmniGenTransformer2DModel",),
        cfg="batched_cond_first",
        timestep=_timestep(1),
        text=_text(2, "input_ids"),
        text_position="first",
        # Its decoder layers' self_attn modules are built as cross-attention (is_cross_attention) yet attend over
        # the whole joint sequence.
        roles=((r"^layers\.\d+\.self_attn$", "joint"),),
        # Phi-3's tokens (<s> first) of the processor's instruction template around the prompt, padded on the left
        # to the longest prompt of the call (the negative prompt's, by default: the call's text length), then the
        # time token, which holds no word. Text-to-image calls: with input_images, the prompt's <img><|image_1|></img>
        # tags put the images' tokens among the words.
        prompt=PromptRecipe(
            (
                TextPart(
                    "chat_template",
                    template=PipelineTemplate("multimodal_processor.add_prefix_instruction"),
                    padding="left",
                ),
            ),
            max_sequence_length=1024,
            trailing=1,
            refused_with=("input_images",),
        ),
    ),
    # PRX: image queries over [text, image] keys (the text is not updated: no text queries at all).
    Family(
        "prx",
        ("PRXTransformer2DModel",),
        timestep=_timestep(1),
        timestep_divisor=1000.0,
        text=_text(2),
        text_position="first",
        roles=(("", "joint"),),
    ),
    Family(
        "glm_image",
        ("GlmImageTransformer2DModel",),
        cfg="separate",
        timestep=_timestep(4),
        text=_text(1),
        text_position="first",
        roles=(("^transformer_blocks", "joint"),),  # [glyph text, image] in one sequence
        # No tokenizer ladder: the text it attends to is only ByT5's tokens of the prompt's quoted texts (each on its
        # own, left-padded across the batch); the rest of the prompt reaches it as the AR model's image tokens, so
        # its words hold no text position.
    ),
    Family(
        "ernie_image",
        ("ErnieImageTransformer2DModel",),
        timestep=_timestep(1),
        text=_text(2, "text_bth"),
        text_position="last",
        roles=(("", "joint"),),  # single-stream: [image, text] in one sequence
        # Mistral 3 over each prompt on its own (<s> first), zero-padded on the right to the longest prompt of the
        # call: the call's text length (the pipeline sets no limit, so max_sequence_length is only the length of a
        # mapping made outside a call). Words are those of the prompt as given: refused when the prompt enhancer ran
        # (use_pe=True and a pe model), which sets revised_prompts and encodes its rewrite instead.
        prompt=PromptRecipe((TextPart("t5"),), max_sequence_length=1024, refused_with=("revised_prompts",)),
    ),
    # DiTPipeline batches [class labels, null class]: the conditional rows first.
    # UniDiffuser (U-ViT): one joint self-attention over [t_img, t_text, data_type, text, CLIP image, image], the text
    # mid-sequence (no text position). text2img runs the conditional call, then one with noise for text, at one step.
    Family(
        "unidiffuser",
        ("UniDiffuserModel",),
        sample=Argument(("latent_image_embeds",), 0),
        timestep=_timestep(3, "timestep_img"),
        text=_text(2, "prompt_embeds"),
        # Before the image: two timestep tokens, the data-type token (UniDiffuser-v1), the text and one CLIP image
        # token, all counted as text here.
        text_extra_tokens=4,
        text_position="first",
        roles=((r"\.attn1$", "joint"),),
        cfg="separate",
        # CLIP over 77 positions (its features encoded by the caption decoder), between the three leading tokens
        # and the CLIP image token.
        prompt=PromptRecipe((TextPart("clip", ("clip_tokenizer",)),), leading=3, trailing=1),
    ),
    Family("dit", ("DiTTransformer2DModel",), cfg="batched_cond_first", timestep=_timestep(1), text=None),
    # Z-Image: per-sample lists of latents and caption features; patch sizes are forward arguments. The pipeline
    # calls with 1 - t / 1000. Main layers attend over [image, text], each part padded to a multiple of 32 tokens
    # with learned pad tokens (counted as text here; the image part is padded only when it is not a multiple).
    Family(
        "z_image",
        ("ZImageTransformer2DModel",),
        batch_inputs=(
            (Argument(("x",), 0), PER_SAMPLE_LIST),
            (Argument(("cap_feats",), 2), PER_SAMPLE_LIST),
            (Argument(("siglip_feats",)), PER_SAMPLE_LIST),
            (Argument(("image_noise_mask",)), PER_SAMPLE_LIST),
        ),
        cfg="batched_cond_first",
        cfg_formula="cond_plus",  # noise_pred = pos + g * (pos - neg)
        sample=Argument(("x",), 0),
        layout="BCFHW",
        grid_reader="sample_list",
        patch="patch_size",
        patch_t="f_patch_size",
        timestep=_timestep(1, "t"),
        timestep_reversed=True,
        text=_text(2, "cap_feats"),
        text_position="last",
        roles=(("^context_refiner", "text"), (r"^layers\.", "joint")),
        # Qwen3 over its tokenizer's chat template (a user message, thinking on), nothing cropped; each prompt keeps
        # its valid tokens, at most max_sequence_length of them, template included (the text-to-image, img2img,
        # inpaint and ControlNet pipelines; not the omni pipeline with condition images, which splits the prompt).
        prompt=PromptRecipe(
            (TextPart("chat_template", template=TokenizerChatTemplate(options=(("enable_thinking", True),))),),
            max_sequence_length=512,
        ),
    ),
    # Ideogram 4: one packed [left padding, text, image] sequence in both hidden_states and encoder_hidden_states
    # (the padding counts as text here); called with 1 - t / 1000. Its unconditional model sees the image alone.
    Family(
        "ideogram4",
        ("Ideogram4Transformer2DModel",),
        cfg="separate",
        layout="packed",
        grid_reader="indicated_image_rows",
        timestep=_timestep(1),
        timestep_reversed=True,
        text=_text(2),
        text_position="first",
        roles=(("^layers", "joint"),),
        # Qwen3-VL over its tokenizer's chat template (one user message as a text part, a generation prompt, no
        # further special tokens), left-padded to max_sequence_length; prompt_upsampling (off by default) encodes the
        # prompt enhancer's rewrite instead.
        prompt=PromptRecipe(
            (
                TextPart(
                    "chat_template",
                    template=TokenizerChatTemplate(content_parts=("user",), special_tokens=False),
                    padding="left",
                ),
            ),
            max_sequence_length=2048,
            refused_with=("prompt_upsampling",),
        ),
    ),
    # No tokenizer ladder: no pipeline drives it on its own (it is the DreamLite UNet's inner transformer, whose
    # family, dreamlite_unet, maps the words).
    Family(
        "dreamlite_transformer",
        ("DreamLiteTransformer2DModel",),
        patch=None,
        timestep=_timestep(2),
        text=_text(1),
    ),
)
