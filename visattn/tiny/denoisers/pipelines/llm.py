"""Tiny pipelines whose text encoder is a large language model: decoder-only (Gemma, Gemma 2, Gemma 3, GLM-4,
Mistral 3, SmolLM3, Qwen3-VL) or an encoder-decoder's encoder (T5Gemma, T5Gemma 2). One :class:`PipelineSpec` per
diffusers pipeline.

The tokenizers are built in code like :mod:`visattn.tiny.tokenizers`: :func:`gemma_tokenizer` is a Gemma-style
BPE with byte fallback over :data:`visattn.tiny.vocab.VOCABULARY` (plus :data:`INSTRUCTION_WORDS`, the words of
the instructions these pipelines put before the prompt) and Gemma's special tokens, shared by every pipeline whose
tokenizer is Gemma's; :func:`word_tokenizer` builds the same words with another model's special tokens (GLM-4,
Mistral, SmolLM3), and Ideogram 4 uses the Qwen tokenizer of :mod:`visattn.tiny.denoisers.pipelines.qwen_text`.
The text encoders are tiny random ``transformers`` models sized to them, the VAEs tiny versions of each pipeline's.
None of these families declares a tokenizer ladder (their chat templates and instructions are not expressible as a
:class:`visattn.families.PromptRecipe`), so the words checks do not run on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import PIL.Image
from diffusers import (
    AutoencoderDC,
    AutoencoderKLFlux2,
    AutoencoderKLLTX2Audio,
    AutoencoderKLLTX2Video,
    AutoencoderKLWan,
    BriaFiboPipeline,
    CogView4Pipeline,
    ErnieImagePipeline,
    FlowMatchEulerDiscreteScheduler,
    Flux2Pipeline,
    Ideogram4Pipeline,
    LTX2Pipeline,
    Lumina2Pipeline,
    LuminaPipeline,
    MotifVideoPipeline,
    PRXPipeline,
    SanaPipeline,
    SanaVideoPipeline,
    SanaWMPipeline,
)
from diffusers.guiders import ClassifierFreeGuidance
from diffusers.pipelines.ideogram4.pipeline_ideogram4 import QWEN3_VL_ACTIVATION_LAYERS
from diffusers.pipelines.ltx2 import LTX2TextConnectors, LTX2Vocoder
from diffusers.utils import is_ftfy_available
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import (
    Gemma2Config,
    Gemma2Model,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaModel,
    GemmaTokenizerFast,
    GlmConfig,
    GlmModel,
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    Mistral3Model,
    MistralConfig,
    PixtralVisionConfig,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
    SmolLM3Config,
    SmolLM3ForCausalLM,
    T5Gemma2Config,
    T5Gemma2DecoderConfig,
    T5Gemma2Encoder,
    T5Gemma2EncoderConfig,
    T5Gemma2TextConfig,
    T5GemmaConfig,
    T5GemmaModuleConfig,
    TokenizersBackend,
)
from transformers.models.t5gemma.modeling_t5gemma import T5GemmaEncoder

from visattn.tiny.denoisers.denoiser_spec import built
from visattn.tiny.denoisers.images import COGVIEW4, ERNIE_IMAGE, FLUX2, LUMINA2, LUMINA_NEXT, PRX, SANA
from visattn.tiny.denoisers.pipelines.common import IMAGE_SIZE, TEXT_TOKENS, flow_vae, image_call
from visattn.tiny.denoisers.pipelines.qwen_text import qwen3_vl_model, qwen_tokenizer
from visattn.tiny.denoisers.videos import TINY_DENOISERS as VIDEO_DENOISERS
from visattn.tiny.pipeline_spec import PipelineSpec
from visattn.tiny.vaes import FLOW_IMAGE_VAE, image_vae, wan_vae
from visattn.tiny.vocab import CHARACTERS, VOCABULARY

_SPACE = "▁"  # SentencePiece's word-boundary marker (U+2581)
_HEADS = 2
#: width of every tiny LLM text encoder (the tiny denoisers' caption/text width)
TEXT_WIDTH = 32

#: Gemma's chat and image markers, after its fixed <pad>=0, <eos>=1, <bos>=2, <unk>=3, <mask>=4.
GEMMA_SPECIAL_TOKENS: tuple[str, ...] = (
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)


#: Words of the instructions and system prompts these pipelines put before the prompt (Sana's and Sana-Video's
#: "complex human instruction", Lumina 2's system prompt, Flux 2's system message), added to
#: :data:`visattn.tiny.vocab.VOCABULARY` so that those texts stay a few dozen tokens long.
INSTRUCTION_WORDS: tuple[str, ...] = tuple(
    """
    about adding additional ai alignment already asleep assistant attribution avoid based blooming bustling busy
    clothing colors commentary concrete create crowd curled decker degree description descriptions designed detail
    details diverse double dusk dynamic enhance enhanced evaluate evaluations examples existing featuring filtering
    fluffy focus focusing generate generation gentle give given glowing gradually how if images including lamps
    level lighting motion object only overcomplicating passing past peacefully please position pots prompt prompts
    provides reasons refine responses round scenes settling sizes skyscrapers sleeping slightly smoothly specifics
    speculation start structured suitable sunlight superior surrounded surrounding temporal textual textures
    towering transform visual vivid warm windowsill
    """.split()
)


# ------------------------------------------------------------------------------------------------------ tokenizers
@lru_cache(maxsize=8)
def _word_vocab_and_merges(head: tuple[str, ...]) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    # As visattn.tiny.tokenizers' Llama: "▁"-prefixed words grow left to right with (▁prefix, char) merges, so
    # a vocabulary word is one token and any other word splits into a prefix and characters (bytes beyond them).
    # ``head``: the tokenizer's special tokens, first, in their ids' order.
    words = {*VOCABULARY, *INSTRUCTION_WORDS}
    prefixes = sorted({_SPACE + word[:i] for word in words for i in range(1, len(word) + 1)})
    prefixes.sort(key=len)
    tokens = [*head, *(f"<0x{b:02X}>" for b in range(256)), _SPACE, *CHARACTERS, *prefixes]
    merges = tuple((p[:-1], p[-1]) for p in prefixes)
    return {token: i for i, token in enumerate(tokens)}, merges


def _mark_every_word(backend: Tokenizer) -> None:
    # Lower-case like the other tiny tokenizers, and mark every whitespace-separated word with "▁" (the stock
    # pre-tokenizers leave the first word, or a word after a newline or a chat token, unmarked and so split).
    backend.normalizer = normalizers.Lowercase()
    mark = pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="always")
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), mark])


def gemma_tokenizer() -> GemmaTokenizerFast:
    """A Gemma BPE tokenizer (byte fallback) that prepends ``<bos>``, pads on the right with ``<pad>`` (id 0) and
    knows Gemma's chat tokens (``<start_of_turn>``, ``<end_of_turn>``) and image markers.

    Words of :data:`visattn.tiny.vocab.VOCABULARY` and :data:`INSTRUCTION_WORDS` are one token each.
    """
    vocab, merges = _word_vocab_and_merges(("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *GEMMA_SPECIAL_TOKENS))
    tokenizer = GemmaTokenizerFast(
        vocab=dict(vocab),
        merges=list(merges),
        additional_special_tokens=list(GEMMA_SPECIAL_TOKENS),
        add_bos_token=True,
        padding_side="right",
        model_max_length=8192,
    )
    _mark_every_word(tokenizer.backend_tokenizer)
    return tokenizer


def word_tokenizer(
    specials: tuple[str, ...],
    *,
    special_ids: Mapping[str, int] | None = None,
    prefix: tuple[str, ...] = (),
    padding_side: str = "right",
    chat_template: str | None = None,
    **roles: str,
) -> TokenizersBackend:
    """A BPE tokenizer over the same words as :func:`gemma_tokenizer` for the LLMs whose real tokenizer is a
    byte-level BPE of their own (GLM, Mistral, SmolLM): ``specials`` first (their ids in order), ``special_ids``
    more special tokens at fixed ids past the words (where a pipeline hard-codes an id), ``prefix`` tokens prepended
    to every encoding, ``roles`` (``pad_token="<|endoftext|>"``, ``eos_token=...``) naming special tokens, and an
    optional Jinja ``chat_template``."""
    vocab, merges = _word_vocab_and_merges(specials)
    vocab = {**vocab, **(special_ids or {})}
    specials = (*specials, *(special_ids or {}))
    backend = Tokenizer(BPE(vocab=vocab, merges=list(merges), unk_token=None, byte_fallback=True))
    _mark_every_word(backend)
    backend.decoder = decoders.Sequence([decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()])
    if prefix:
        backend.post_processor = processors.TemplateProcessing(
            single=[*prefix, "$A"], pair=[*prefix, "$A", "$B"], special_tokens=[(t, vocab[t]) for t in prefix]
        )
    named = set(roles.values())
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        additional_special_tokens=[t for t in specials if t not in named],
        padding_side=padding_side,
        model_max_length=8192,
        **roles,
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


#: GLM-4's special tokens: it pads with <|endoftext|> on the left and prefixes every text with "[gMASK]<sop>".
GLM_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
)


def glm_tokenizer() -> TokenizersBackend:
    """GLM-4's tokenizer (CogView 4): ``[gMASK]<sop>`` before the words, left padding with ``<|endoftext|>``."""
    return word_tokenizer(
        GLM_SPECIAL_TOKENS,
        prefix=("[gMASK]", "<sop>"),
        padding_side="left",
        pad_token="<|endoftext|>",
        eos_token="<|endoftext|>",
    )


#: Mistral's (tekken) special tokens, in their ids' order: [IMG] is 10, the image token of Mistral 3.
MISTRAL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
)

#: Mistral Small 3's chat template, reduced to what the pipelines send: a system prompt, user turns of text and
#: image parts, assistant turns.
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = namespace(value='') %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{% set text.value = text.value + part['text'] %}"
    "{% else %}{% set text.value = text.value + '[IMG]' %}{% endif %}"
    "{% endfor %}{% set text = text.value %}{% endif %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif message['role'] == 'user' %}[INST]{{ text }}[/INST]"
    "{% else %}{{ text }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


def mistral_tokenizer() -> TokenizersBackend:
    """Mistral's tokenizer: ``<s>`` before the words, left padding with ``<pad>``, its chat template."""
    return word_tokenizer(
        MISTRAL_SPECIAL_TOKENS,
        prefix=("<s>",),
        padding_side="left",
        chat_template=MISTRAL_CHAT_TEMPLATE,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


#: Pixtral's vision patch and Mistral 3's spatial merge (the tiny vision tower sees 8x8 patches)
_PIXTRAL_PATCH = 8
_MISTRAL3_MERGE = 2


#: SmolLM3's (Llama 3's) special tokens at their real ids: Bria Fibo's pipeline encodes an empty prompt as the
#: bare id 128000.
SMOLLM3_SPECIAL_IDS: dict[str, int] = {
    "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001,
    "<|finetune_right_pad_id|>": 128004,
}


def smollm3_tokenizer() -> TokenizersBackend:
    """SmolLM3's tokenizer: ``<|begin_of_text|>`` (id 128000) before the words, right padding."""
    return word_tokenizer(
        ("<unk>",),
        special_ids=SMOLLM3_SPECIAL_IDS,
        prefix=("<|begin_of_text|>",),
        bos_token="<|begin_of_text|>",
        eos_token="<|end_of_text|>",
        pad_token="<|finetune_right_pad_id|>",
        unk_token="<unk>",
    )


# --------------------------------------------------------------------------------------------------- text encoders
def _llm_kwargs(tokenizer: TokenizersBackend, hidden_size: int = TEXT_WIDTH, layers: int = 2) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": _HEADS,
        "num_key_value_heads": 1,
        "head_dim": hidden_size // _HEADS,
        "max_position_embeddings": 2048,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def gemma_model(tokenizer: TokenizersBackend, *, hidden_size: int = TEXT_WIDTH) -> GemmaModel:
    """A Gemma decoder used as a text encoder (Lumina-Next, which reads ``hidden_states[-2]``)."""
    return GemmaModel(GemmaConfig(**_llm_kwargs(tokenizer, hidden_size))).eval()


def gemma2_model(tokenizer: TokenizersBackend, *, hidden_size: int = TEXT_WIDTH) -> Gemma2Model:
    """A Gemma 2 decoder used as a text encoder (Sana, Lumina 2)."""
    return Gemma2Model(Gemma2Config(**_llm_kwargs(tokenizer, hidden_size), sliding_window=64)).eval()


def glm_model(tokenizer: TokenizersBackend, *, hidden_size: int = TEXT_WIDTH) -> GlmModel:
    """A GLM-4 decoder used as a text encoder (CogView 4, which reads ``hidden_states[-2]``)."""
    return GlmModel(GlmConfig(**_llm_kwargs(tokenizer, hidden_size))).eval()


def _mistral3_config(tokenizer: TokenizersBackend, hidden_size: int) -> Mistral3Config:
    vision = PixtralVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=_HEADS,
        head_dim=8,
        image_size=4 * _PIXTRAL_PATCH,
        patch_size=_PIXTRAL_PATCH,
    )
    text = MistralConfig(**_llm_kwargs(tokenizer, hidden_size), sliding_window=None)
    return Mistral3Config(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=_MISTRAL3_MERGE,
    )


def mistral3_model(tokenizer: TokenizersBackend, *, hidden_size: int = TEXT_WIDTH) -> Mistral3ForConditionalGeneration:
    """Mistral 3 (a Pixtral vision tower and a Mistral decoder) used as a text encoder (Flux 2)."""
    return Mistral3ForConditionalGeneration(_mistral3_config(tokenizer, hidden_size)).eval()


def mistral3_base_model(tokenizer: TokenizersBackend, *, hidden_size: int = TEXT_WIDTH) -> Mistral3Model:
    """Mistral 3 without its language-model head (ERNIE-Image, which reads ``hidden_states[-2]``)."""
    return Mistral3Model(_mistral3_config(tokenizer, hidden_size)).eval()


def gemma3_model(tokenizer: TokenizersBackend, *, hidden_size: int = TEXT_WIDTH) -> Gemma3ForConditionalGeneration:
    """Gemma 3 (a SigLIP vision tower and a Gemma 3 decoder) used as a text encoder (LTX-2, which stacks the
    hidden states of every layer, embeddings included)."""
    vision = _siglip_tiny()
    text = Gemma3TextConfig(**_llm_kwargs(tokenizer, hidden_size), query_pre_attn_scalar=hidden_size // _HEADS)
    token = tokenizer.convert_tokens_to_ids
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=token("<start_of_image>"),
        eoi_token_index=token("<end_of_image>"),
        image_token_index=token("<image_soft_token>"),
    )
    return Gemma3ForConditionalGeneration(config).eval()


def t5gemma_encoder(tokenizer: TokenizersBackend, *, hidden_size: int = TEXT_WIDTH) -> T5GemmaEncoder:
    """The encoder of T5Gemma (an encoder-decoder Gemma 2), bidirectional, used alone (PRX)."""
    module = T5GemmaModuleConfig(**_llm_kwargs(tokenizer, hidden_size), query_pre_attn_scalar=hidden_size // _HEADS)
    # the encoder-decoder config completes the module's (dropout rates, is_decoder=False)
    config = T5GemmaConfig(encoder=module, decoder=module.to_dict(), vocab_size=len(tokenizer))
    return T5GemmaEncoder(config.encoder).eval()


def _siglip_tiny() -> SiglipVisionConfig:
    # a 16x16-pixel SigLIP of 2x2 patches: the vision towers of the multimodal encoders are built, never run
    return SiglipVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=_HEADS,
        image_size=16,
        patch_size=8,
    )


def t5gemma2_encoder(tokenizer: TokenizersBackend, *, hidden_size: int = TEXT_WIDTH) -> T5Gemma2Encoder:
    """The encoder of T5Gemma 2 (Gemma 3 based, with a SigLIP vision tower), used alone (Motif-Video)."""
    text = _llm_kwargs(tokenizer, hidden_size)
    token = tokenizer.convert_tokens_to_ids
    images = {
        "boi_token_index": token("<start_of_image>"),
        "eoi_token_index": token("<end_of_image>"),
        "image_token_index": token("<image_soft_token>"),
    }
    encoder = T5Gemma2EncoderConfig(
        text_config=T5Gemma2TextConfig(**text, query_pre_attn_scalar=hidden_size // _HEADS),
        vision_config=_siglip_tiny(),
        mm_tokens_per_image=4,
        **images,
    )
    decoder = T5Gemma2DecoderConfig(**text, query_pre_attn_scalar=hidden_size // _HEADS)
    # the encoder-decoder config completes the encoder's (dropout rates)
    config = T5Gemma2Config(encoder=encoder, decoder=decoder, image_token_index=images["image_token_index"])
    return T5Gemma2Encoder(config.encoder, eoi_token_index=images["eoi_token_index"]).eval()


def smollm3_model(tokenizer: TokenizersBackend, *, hidden_size: int = TEXT_WIDTH) -> SmolLM3ForCausalLM:
    """SmolLM3 with its LM head (Bria Fibo reads its last two hidden states); the vocabulary spans the real ids of
    the special tokens."""
    kwargs = _llm_kwargs(tokenizer, hidden_size)
    kwargs.pop("head_dim")
    kwargs["vocab_size"] = max(SMOLLM3_SPECIAL_IDS.values()) + 1
    return SmolLM3ForCausalLM(SmolLM3Config(**kwargs)).eval()


# ---------------------------------------------------------------------------------------------------------- VAEs
#: Sana's deep-compression autoencoder, 2x here (two levels): 32x32 images are 16x16 latents of 4 channels.
SANA_VAE: dict[str, Any] = {
    "in_channels": 3,
    "latent_channels": 4,
    "attention_head_dim": 4,
    "encoder_block_types": ("ResBlock", "EfficientViTBlock"),
    "decoder_block_types": ("ResBlock", "EfficientViTBlock"),
    "encoder_block_out_channels": (8, 8),
    "decoder_block_out_channels": (8, 8),
    "encoder_qkv_multiscales": ((), (5,)),
    "decoder_qkv_multiscales": ((), (5,)),
    "encoder_layers_per_block": (1, 1),
    "decoder_layers_per_block": (1, 1),
    "downsample_block_type": "conv",
    "upsample_block_type": "interpolate",
    "decoder_norm_types": "rms_norm",
    "decoder_act_fns": "silu",
    "scaling_factor": 0.41407,
}


def sana_vae() -> AutoencoderDC:
    return AutoencoderDC(**SANA_VAE).eval()


#: LTX-2's video VAE, 8x spatially (2x2 patches, then two spatio-temporal halvings) and 4x temporally: 9 frames of
#: 32x32 are 3 latent frames of 4x4 latents with 4 channels.
LTX2_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (8, 8),
    "decoder_block_out_channels": (8, 8),
    "layers_per_block": (1, 1, 1),
    "decoder_layers_per_block": (1, 1, 1),
    "spatio_temporal_scaling": (True, True),
    "decoder_spatio_temporal_scaling": (True, True),
    "decoder_inject_noise": (False, False, False),
    "downsample_type": ("spatiotemporal", "spatiotemporal"),
    "upsample_type": ("spatiotemporal", "spatiotemporal"),
    "upsample_residual": (False, False),
    "upsample_factor": (1, 1),
    "patch_size": 2,
    "patch_size_t": 1,
    "decoder_causal": False,
}


def ltx2_vae() -> AutoencoderKLLTX2Video:
    return AutoencoderKLLTX2Video(**LTX2_VAE).eval()


#: Flux 2's VAE, 2x here, with 4 latent channels: the pipeline patchifies 2x2 into the transformer's 16 channels
#: and normalizes them with the VAE's batch-norm statistics.
FLUX2_VAE: dict[str, Any] = {
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "block_out_channels": (16, 32),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": IMAGE_SIZE,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}


def flux2_vae() -> AutoencoderKLFlux2:
    return AutoencoderKLFlux2(**FLUX2_VAE).eval()


#: LTX-2's audio VAE: mel spectrograms of 8 bins, 4 latent channels; it compresses time and mel bins 4x (fixed),
#: so the transformer's audio tokens have 4 x 8 / 4 = 8 channels.
LTX2_AUDIO_VAE: dict[str, Any] = {
    "base_channels": 8,
    "ch_mult": (1, 1, 1),
    "num_res_blocks": 1,
    "latent_channels": 4,
    "mel_bins": 8,
    "resolution": 32,
}


def ltx2_audio_vae() -> AutoencoderKLLTX2Audio:
    return AutoencoderKLLTX2Audio(**LTX2_AUDIO_VAE).eval()


def ltx2_vocoder() -> LTX2Vocoder:
    """LTX-2's mel-to-waveform vocoder: 2 channels x 8 mel bins in, 4x upsampled stereo out."""
    return LTX2Vocoder(
        in_channels=2 * LTX2_AUDIO_VAE["mel_bins"],
        hidden_channels=16,
        upsample_kernel_sizes=[4, 4],
        upsample_factors=[2, 2],
        resnet_kernel_sizes=[3],
        resnet_dilations=[[1]],
    ).eval()


#: Wan 2.2's VAE (residual, 2x2 patches in, 16 latent channels), 16x spatially with three downsampling levels:
#: Bria Fibo hard-codes a scale factor of 16 and takes the 16 channels as they are.
WAN22_VAE: dict[str, Any] = {
    "base_dim": 8,
    "z_dim": 16,
    "dim_mult": [1, 1, 1, 1],
    "num_res_blocks": 1,
    "temperal_downsample": [False, True, True],
    "is_residual": True,
    "in_channels": 12,
    "out_channels": 12,
    "patch_size": 2,
    "scale_factor_spatial": 16,
    "scale_factor_temporal": 4,
    "latents_mean": [0.0] * 16,
    "latents_std": [1.0] * 16,
}


def wan22_vae() -> AutoencoderKLWan:
    return AutoencoderKLWan(**WAN22_VAE).eval()


#: 8x image VAE (four levels) for the pipelines that hard-code ``vae_scale_factor = 8`` (Lumina, Lumina 2).
VAE_8X: dict[str, Any] = {
    **FLOW_IMAGE_VAE,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 8, 16, 16),
}

#: pixels of the images of the 8x-VAE pipelines: 8x8 latents, a 4x4 token grid after 2x2 patches
IMAGE_SIZE_8X = 64


#: text length of the pipelines whose system prompt counts in max_sequence_length (Lumina 2's is 40 tokens here,
#: Flux 2's chat template 31): it and the prompt must fit
TEMPLATE_TEXT_TOKENS = 48


#: frames of the tiny videos: 3 latent frames with the 4x temporal VAEs
NUM_FRAMES = 9


def _video_denoiser(class_name: str) -> Any:
    return next(entry for entry in VIDEO_DENOISERS if entry.class_name == class_name)


def _video_call(frames_key: str = "num_frames", **extra: Any) -> dict[str, Any]:
    return image_call(**{frames_key: NUM_FRAMES}, **extra)


def _call_8x(**extra: Any) -> dict[str, Any]:
    return image_call(height=IMAGE_SIZE_8X, width=IMAGE_SIZE_8X, **extra)


# ------------------------------------------------------------------------------------------------------- pipelines
# Sana: Gemma 2 encodes a long "complex human instruction" + the prompt, of which the pipeline keeps <bos> and the
# last max_sequence_length - 1 tokens. Resolution binning would snap 32x32 to a 512+ bucket (and rejects the tiny
# sample_size), so it is off.
def _sana_components() -> dict[str, Any]:
    return {
        "tokenizer": gemma_tokenizer,
        "text_encoder": lambda: gemma2_model(gemma_tokenizer()),
        "vae": sana_vae,
        "transformer": SANA.build,
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
    }


# Lumina 2: Gemma 2 encodes "<system prompt> <Prompt Start> <prompt>" truncated to max_sequence_length and the
# pipeline reads hidden_states[-2]; CFG runs one call per branch (conditional first) with a renormalized result.
def _lumina2_components() -> dict[str, Any]:
    return {
        "transformer": LUMINA2.build,
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": lambda: image_vae(VAE_8X),
        "text_encoder": lambda: gemma2_model(gemma_tokenizer()),
        "tokenizer": gemma_tokenizer,
    }


# Lumina-Next: Gemma (hidden_states[-2]), batched CFG with the CONDITIONAL half first and guidance on 3 of the
# latent channels only; the learned-sigma half of the output is dropped. Caption cleaning would need bs4 + ftfy.
def _lumina_components() -> dict[str, Any]:
    return {
        "transformer": LUMINA_NEXT.build,
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": lambda: image_vae(VAE_8X),
        "text_encoder": lambda: gemma_model(gemma_tokenizer()),
        "tokenizer": gemma_tokenizer,
    }


# Sana-Video: Sana's text path (instruction + select) with the Wan VAE (4x4x4 here, 4 latent channels); the call
# names its frame count ``frames``. Resolution binning rejects the tiny sample_size.
def _sana_video_components() -> dict[str, Any]:
    return {
        "tokenizer": gemma_tokenizer,
        "text_encoder": lambda: gemma2_model(gemma_tokenizer()),
        "vae": wan_vae,
        "transformer": _video_denoiser("SanaVideoTransformer3DModel").build,
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0),
    }


def _first_frame() -> PIL.Image.Image:
    """A deterministic 32x32 RGB image (color ramps) for the image-to-video pipelines."""
    ramp = np.linspace(0, 255, IMAGE_SIZE, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[::-1, None]), axis=-1)
    return PIL.Image.fromarray(np.ascontiguousarray(pixels))


def _dolly(frames: int) -> np.ndarray:
    """Camera-to-world poses of a camera moving along x: ``(frames, 4, 4)``."""
    c2w = np.tile(np.eye(4, dtype=np.float32), (frames, 1, 1))
    c2w[:, 0, 3] = np.linspace(0.0, 1.0, frames, dtype=np.float32)
    return c2w


# Sana-WM: camera-controlled image-to-world, one prompt per call (a str), Sana's instruction + select on Gemma 2,
# the LTX-2 VAE; the first latent frame is the encoded image, held clean with a per-frame timestep of 0. The tiny
# Sana-WM of visattn.tiny.denoisers.videos, with chunked Plücker rays for the 4x temporal VAE here: 6 ray channels
# per pixel frame of a latent frame (the real model's 48 are for LTX-2's 8x).
_SANA_WM = built(
    "SanaWMTransformer3DModel",
    in_channels=4,
    num_layers=2,
    hidden_size=TEXT_WIDTH,
    num_attention_heads=2,
    softmax_every_n=2,
    linear_head_dim=16,
    chunk_plucker_channels=6 * 4,
    chunk_plucker_post_attn_blocks=-1,
    image_size=256,
    caption_channels=TEXT_WIDTH,
    mlp_ratio=2.0,
)


def _sana_wm_components() -> dict[str, Any]:
    return {
        "tokenizer": gemma_tokenizer,
        "text_encoder": lambda: gemma2_model(gemma_tokenizer()),
        "vae": ltx2_vae,
        "transformer": _SANA_WM,
        "scheduler": FlowMatchEulerDiscreteScheduler,
    }


def _sana_wm_call() -> dict[str, Any]:
    return _video_call(
        image=_first_frame(),
        c2w=_dolly(NUM_FRAMES),
        intrinsics=[40.0, 40.0, IMAGE_SIZE / 2, IMAGE_SIZE / 2],
        guidance_scale=5.0,
        max_sequence_length=TEXT_TOKENS,
    )


# CogView 4: GLM-4 (hidden_states[-2]) on the prompt left-padded to a multiple of 16 tokens (no max length
# padding); one call per CFG branch, named by cache_context; the flow schedule shifts with the image token count.
def _cogview4_components() -> dict[str, Any]:
    return {
        "tokenizer": glm_tokenizer,
        "text_encoder": lambda: glm_model(glm_tokenizer()),
        "vae": flow_vae,
        "transformer": COGVIEW4.build,
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(
            base_image_seq_len=256, base_shift=0.25, max_shift=0.75, time_shift_type="linear", use_dynamic_shifting=True
        ),
    }


# Flux 2: Mistral 3 on its chat template (system message + prompt), hidden states of several layers stacked
# feature-wise: two layers of a 16-wide decoder give the tiny Flux 2's 32 text channels (the real pipeline stacks
# layers 10, 20, 30). Guidance-distilled: guidance_scale is embedded, one call per step. The "tokenizer" is the
# real one's AutoProcessor (PixtralProcessor) only for image inputs; transformers cannot build that without
# torchvision (not a dependency), so it is the bare Mistral tokenizer, whose apply_chat_template serves the
# text-only calls (no reference images, no caption upsampling) the same way.
_FLUX2_TEXT_WIDTH = 16
_FLUX2_TEXT_LAYERS = (1, 2)


def _flux2_components() -> dict[str, Any]:
    return {
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        "vae": flux2_vae,
        "text_encoder": lambda: mistral3_model(mistral_tokenizer(), hidden_size=_FLUX2_TEXT_WIDTH),
        "tokenizer": mistral_tokenizer,
        "transformer": FLUX2.build,
    }


# ERNIE-Image: Mistral 3 encodes each prompt unpadded (hidden_states[-2]); the pipeline zero-pads the batch and
# passes the lengths. The VAE scale counts the pipeline's 2x2 patchify (4x here: 8x8 tokens of 16 channels). The
# optional prompt enhancer (pe, a Ministral 3 LM that generates a new prompt) is left out.
def _ernie_image_components() -> dict[str, Any]:
    return {
        "transformer": ERNIE_IMAGE.build,
        "vae": flux2_vae,
        "text_encoder": lambda: mistral3_base_model(mistral_tokenizer()),
        "tokenizer": mistral_tokenizer,
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "pe": lambda: None,
        "pe_tokenizer": lambda: None,
    }


# LTX-2: audio + video. Gemma 3's hidden states of every layer (embeddings included) are stacked, normalized and
# projected by the text connectors (one for video, one for audio; their learnable registers replace padding, so the
# text length must be a multiple of their count), the transformer denoises video and audio tokens together; the
# audio VAE decodes mel spectrograms that the vocoder turns into waveforms. The default guidance runs three calls
# per step: CFG batched [uncond, cond] ("cond_uncond"), spatio-temporal guidance (block 1 skipped, "uncond_stg")
# and modality isolation (no audio<->video attention, "uncond_modality").
_LTX2_LAYERS = 2


def _ltx2_components() -> dict[str, Any]:
    return {
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(
            base_image_seq_len=1024,
            max_image_seq_len=4096,
            base_shift=0.95,
            max_shift=2.05,
            shift_terminal=0.1,
            use_dynamic_shifting=True,
            time_shift_type="exponential",
        ),
        "vae": ltx2_vae,
        "audio_vae": ltx2_audio_vae,
        "text_encoder": lambda: gemma3_model(gemma_tokenizer()),
        "tokenizer": gemma_tokenizer,
        "connectors": lambda: LTX2TextConnectors(
            caption_channels=TEXT_WIDTH,
            text_proj_in_factor=_LTX2_LAYERS + 1,
            video_connector_num_attention_heads=_HEADS,
            video_connector_attention_head_dim=TEXT_WIDTH // _HEADS,
            video_connector_num_layers=1,
            video_connector_num_learnable_registers=8,
            audio_connector_num_attention_heads=_HEADS,
            audio_connector_attention_head_dim=TEXT_WIDTH // _HEADS,
            audio_connector_num_layers=1,
            audio_connector_num_learnable_registers=8,
        ).eval(),
        "transformer": _video_denoiser("LTX2VideoTransformer3DModel").build,
        "vocoder": ltx2_vocoder,
        "processor": lambda: None,
        "prompt_enhancer": lambda: None,
        "duration_head": lambda: None,
    }


# PRX: the T5Gemma encoder on the prompt padded to tokenizer_max_length (it has no max_sequence_length); batched
# CFG. Every prompt goes through ftfy.fix_text first (even with skip_text_cleaning), so the pipeline needs ftfy,
# which visattn does not depend on: the spec is listed only where ftfy is installed. Resolution binning would snap
# 32x32 to a 512-scale bucket.
def _prx_components() -> dict[str, Any]:
    return {
        "transformer": PRX.build,
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "text_encoder": lambda: t5gemma_encoder(gemma_tokenizer()),
        "tokenizer": gemma_tokenizer,
        "vae": flow_vae,
    }


_PRX = PipelineSpec(
    family="prx",
    pipeline_cls=PRXPipeline,
    denoiser="transformer",
    components=_prx_components,
    call_defaults=lambda: image_call(
        guidance_scale=4.0, tokenizer_max_length=TEXT_TOKENS, use_resolution_binning=False, skip_text_cleaning=True
    ),
)


# Motif-Video: T5Gemma 2's encoder, the Wan VAE, latents concatenated with an (empty) first-frame condition and
# its mask (9 channels in); guidance goes through a diffusers guider (its calls named "pred_cond", "pred_uncond",
# conditional first), whose scale is the guider's, not a call argument.
def _motif_video_components() -> dict[str, Any]:
    return {
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True),
        "vae": wan_vae,
        "text_encoder": lambda: t5gemma2_encoder(gemma_tokenizer()),
        "tokenizer": gemma_tokenizer,
        "transformer": _video_denoiser("MotifVideoTransformer3DModel").build,
        "guider": lambda: ClassifierFreeGuidance(guidance_scale=5.0),
        "feature_extractor": lambda: None,
    }


# Bria Fibo: SmolLM3's last two hidden states concatenated (32 wide: the joint text) plus every layer's hidden
# state for the per-block text injections (16 wide, the last one repeated to cover the blocks); the prompt is padded
# to the longest, the empty negative prompt is the bare id 128000, and the pipeline zero-pads both to one length with
# a key mask. Wan 2.2's 16x VAE: 64x64 images are 4x4 latents, taken unpatched as 4x4 tokens of 16 channels.
_BRIA_FIBO_TEXT_WIDTH = 16
_BRIA_FIBO = built(
    "BriaFiboTransformer2DModel",
    patch_size=1,
    in_channels=16,
    num_layers=1,
    num_single_layers=1,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=2 * _BRIA_FIBO_TEXT_WIDTH,
    axes_dims_rope=[4, 6, 6],
    text_encoder_dim=_BRIA_FIBO_TEXT_WIDTH,
)


def _bria_fibo_components() -> dict[str, Any]:
    return {
        "transformer": _BRIA_FIBO,
        "scheduler": lambda: FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True),
        "vae": wan22_vae,
        "text_encoder": lambda: smollm3_model(smollm3_tokenizer(), hidden_size=_BRIA_FIBO_TEXT_WIDTH),
        "tokenizer": smollm3_tokenizer,
    }


# Ideogram 4: Qwen3-VL's language model run layer by layer on the chat-formatted prompt, left-padded, 13 layers
# tapped (up to layer 35, so 36 thin layers here) and concatenated; one packed sequence [padding, text, image] per
# row with a block-diagonal segment mask. Asymmetric CFG: a second transformer (unconditional_transformer, same
# class, here the same tiny weights) denoises the image tokens alone, and the two velocities blend with the step's
# guidance weight.
_IDEOGRAM4_TEXT_WIDTH = 16
_IDEOGRAM4 = built(
    "Ideogram4Transformer2DModel",
    in_channels=16,
    num_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    intermediate_size=64,
    adaln_dim=16,
    llm_features_dim=len(QWEN3_VL_ACTIVATION_LAYERS) * _IDEOGRAM4_TEXT_WIDTH,
    mrope_section=(4, 2, 2),
)


def _ideogram4_text_encoder() -> Any:
    # the pipeline reads text_encoder.language_model: Qwen3-VL without its LM head
    layers = max(QWEN3_VL_ACTIVATION_LAYERS) + 1
    return qwen3_vl_model(qwen_tokenizer("qwen3"), hidden_size=_IDEOGRAM4_TEXT_WIDTH, layers=layers).model


def _ideogram4_components() -> dict[str, Any]:
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler,
        "vae": flux2_vae,
        "text_encoder": _ideogram4_text_encoder,
        "tokenizer": lambda: qwen_tokenizer("qwen3"),
        "transformer": _IDEOGRAM4,
        "unconditional_transformer": _IDEOGRAM4,
        "prompt_enhancer_head": lambda: None,
    }


PIPELINES: tuple[PipelineSpec, ...] = (
    PipelineSpec(
        family="sana",
        pipeline_cls=SanaPipeline,
        denoiser="transformer",
        components=_sana_components,
        call_defaults=lambda: image_call(
            guidance_scale=4.5, max_sequence_length=TEXT_TOKENS, use_resolution_binning=False
        ),
    ),
    PipelineSpec(
        family="lumina2",
        pipeline_cls=Lumina2Pipeline,
        denoiser="transformer",
        components=_lumina2_components,
        call_defaults=lambda: _call_8x(guidance_scale=4.0, max_sequence_length=TEMPLATE_TEXT_TOKENS),
    ),
    PipelineSpec(
        family="lumina_next",
        pipeline_cls=LuminaPipeline,
        denoiser="transformer",
        components=_lumina_components,
        call_defaults=lambda: _call_8x(guidance_scale=4.0, clean_caption=False),
    ),
    PipelineSpec(
        family="sana_video",
        pipeline_cls=SanaVideoPipeline,
        denoiser="transformer",
        components=_sana_video_components,
        call_defaults=lambda: _video_call(
            "frames", guidance_scale=6.0, max_sequence_length=TEXT_TOKENS, use_resolution_binning=False
        ),
    ),
    PipelineSpec(
        family="sana_wm",
        pipeline_cls=SanaWMPipeline,
        denoiser="transformer",
        components=_sana_wm_components,
        call_defaults=_sana_wm_call,
        one_prompt_per_call="SanaWMPipeline takes one prompt (a string) per call",
    ),
    PipelineSpec(
        family="cogview4",
        pipeline_cls=CogView4Pipeline,
        denoiser="transformer",
        components=_cogview4_components,
        call_defaults=lambda: image_call(guidance_scale=5.0, max_sequence_length=TEXT_TOKENS),
    ),
    PipelineSpec(
        family="flux2",
        pipeline_cls=Flux2Pipeline,
        denoiser="transformer",
        components=_flux2_components,
        call_defaults=lambda: image_call(
            guidance_scale=4.0, max_sequence_length=TEMPLATE_TEXT_TOKENS, text_encoder_out_layers=_FLUX2_TEXT_LAYERS
        ),
    ),
    PipelineSpec(
        family="ernie_image",
        pipeline_cls=ErnieImagePipeline,
        denoiser="transformer",
        components=_ernie_image_components,
        call_defaults=lambda: image_call(guidance_scale=4.0),
    ),
    PipelineSpec(
        family="ltx2",
        pipeline_cls=LTX2Pipeline,
        denoiser="transformer",
        components=_ltx2_components,
        call_defaults=lambda: _video_call(
            guidance_scale=3.0, spatio_temporal_guidance_blocks=[1], max_sequence_length=TEXT_TOKENS
        ),
    ),
    PipelineSpec(
        family="motif_video",
        pipeline_cls=MotifVideoPipeline,
        denoiser="transformer",
        components=_motif_video_components,
        call_defaults=lambda: _video_call(max_sequence_length=TEXT_TOKENS),
    ),
    *((_PRX,) if is_ftfy_available() else ()),
    PipelineSpec(
        family="bria_fibo",
        pipeline_cls=BriaFiboPipeline,
        denoiser="transformer",
        components=_bria_fibo_components,
        call_defaults=lambda: _call_8x(guidance_scale=5.0, max_sequence_length=TEXT_TOKENS),
    ),
    PipelineSpec(
        family="ideogram4",
        pipeline_cls=Ideogram4Pipeline,
        denoiser="transformer",
        components=_ideogram4_components,
        # a constant scale: the default per-step schedule has one weight for each of 48 steps
        call_defaults=lambda: image_call(guidance_scale=5.0, guidance_schedule=None, max_sequence_length=TEXT_TOKENS),
    ),
)

#: pipelines whose end-to-end test fails today because of visattn, by key, with the reason
KNOWN_PIPELINE_LIMITS: dict[str, str] = {}
