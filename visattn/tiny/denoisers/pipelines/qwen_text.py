"""A tiny Qwen-style tokenizer, processors and text encoders for the Qwen-encoded coverage pipelines, built in code.

One byte-level BPE tokenizer (:func:`qwen_tokenizer`, a ``Qwen2Tokenizer``) serves every Qwen2 / Qwen2.5-VL / Qwen3 /
Qwen3-VL text encoder. It keeps the real Qwen pre-tokenizer (the split regex, then byte-level), lower-cases its input
like the other tiny tokenizers, and has one token per word of :data:`visattn.tiny.vocab.VOCABULARY` and of the
pipelines' prompt templates, both bare and with the leading space (``"red"``, ``"Ġred"``), matched whole before any
merge (``ignore_merges``, as the real Qwen BPE does). Its only merges build the few template words the real
vocabulary splits (:data:`SPLIT_WORDS`); any other word falls back to byte-level characters. Runs of spaces or
newlines and punctuation ending a line are one token, as in the real vocabulary. The chat-format special tokens
(``<|im_start|>``, ``<|vision_start|>``, ``<|image_pad|>``...) come after the vocabulary.

So the pipelines' system prefixes take as many tokens as with the real tokenizer, and their fixed crops (Qwen-Image's
``prompt_template_encode_start_idx`` of 34, HunyuanVideo 1.5's 108, Kandinsky 5's 128, Kandinsky 6's 129) end exactly
where the prompt begins.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, TypeVar
from unittest import mock

from tokenizers import AddedToken, normalizers, pre_tokenizers
from tokenizers.models import BPE
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2_5_VLTextConfig,
    Qwen2_5_VLTextModel,
    Qwen2Tokenizer,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen3Config,
    Qwen3Model,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLModel,
    Qwen3VLProcessor,
)
from transformers.processing_utils import ProcessorMixin

from visattn.tiny.vocab import VOCABULARY

#: words of the pipelines' system prompts and chat roles that :data:`VOCABULARY` lacks
TEMPLATE_WORDS: tuple[str, ...] = tuple(
    """
    action analyze angle animation appear aspects assign assistant attention based behaviors captioning careful
    characters color colors comprehend correct counts described descriptive detail detailing effects engineer
    exact expert follow follows footage game generate generated generation helpful how if input key kind layout
    literally location match model movement movements must name object order pay presented professional
    prompt provided s shakes shown suitable temporal visual whether think
    """.split()
)

#: template words (and typos) the real vocabulary splits, with their pieces (the first carries the leading space)
SPLIT_WORDS: dict[str, tuple[str, ...]] = {
    "dynamism": ("dynam", "ism"),
    "postprocessing": ("post", "processing"),
    "scren": ("sc", "ren"),
    "promt": ("prom", "t"),
}

#: the chat and vision special tokens of the Qwen2-VL / Qwen2.5-VL / Qwen3-VL vocabularies, in their real order
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
#: Qwen3's reasoning markers (plain added tokens, not special: they survive decoding)
THINK_TOKENS: tuple[str, ...] = ("<think>", "</think>")

_P = TypeVar("_P", bound=ProcessorMixin)
_SPACE = "Ġ"  # byte-level's visible space
_NEWLINE = "Ċ"  # byte-level's visible newline

#: Qwen2-VL / Qwen2.5-VL chat template: a default system turn, string or typed-list contents, vision placeholders.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: Qwen3 / Qwen3-VL chat template: no default system turn; with ``enable_thinking=False`` the generation prompt
#: carries an empty reasoning block, as the real Qwen3 template does.
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)

CHAT_TEMPLATES: dict[str, str] = {"qwen2_vl": QWEN2_VL_CHAT_TEMPLATE, "qwen3": QWEN3_CHAT_TEMPLATE}


def _pieces() -> list[str]:
    """The pieces of :data:`SPLIT_WORDS`, first pieces with and without the leading space."""
    pieces = [_SPACE + parts[0] for parts in SPLIT_WORDS.values()]
    return pieces + sorted({part for parts in SPLIT_WORDS.values() for part in parts})


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    words = sorted({*VOCABULARY, *TEMPLATE_WORDS})
    tokens = [*alphabet, *(w for w in words if w not in alphabet), *(_SPACE + word for word in words)]
    # Runs of spaces and newlines, and punctuation ending a line, are one token each in the real vocabulary (the
    # pre-tokenizer keeps them together).
    tokens += [_SPACE * n for n in range(2, 17)] + [_NEWLINE * n for n in range(2, 5)]
    tokens += [mark + _NEWLINE * n for mark in ".,:;!?)" for n in range(1, 3)]
    # The split words grow left to right, the piece with the leading space first: each merge adds one character to
    # a prefix, and merges that start with the space (only one per word can) rank before all others.
    pieces = sorted(_pieces(), key=lambda p: (not p.startswith(_SPACE), len(p)))
    prefixes = list(dict.fromkeys(p[:i] for p in pieces for i in range(2, len(p) + 1)))
    prefixes.sort(key=lambda p: (not p.startswith(_SPACE), len(p)))
    tokens += [p for p in prefixes if p not in tokens]
    return {token: i for i, token in enumerate(tokens)}, tuple((p[:-1], p[-1]) for p in prefixes)


def qwen_tokenizer(chat_template: str = "qwen2_vl", padding_side: str = "right") -> Qwen2Tokenizer:
    """The tiny Qwen tokenizer: pads with ``<|endoftext|>``, no BOS, chat template ``chat_template`` (a key of
    :data:`CHAT_TEMPLATES`).

    Every vocabulary and template word is one token, with or without its leading space, and each of
    :data:`SPLIT_WORDS` its pieces; other words split into byte-level characters. The special tokens come after the
    vocabulary, as in the real one.
    """
    vocab, merges = _vocab_and_merges()
    tokenizer = Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        padding_side=padding_side,
        model_max_length=32768,
        chat_template=CHAT_TEMPLATES[chat_template],
    )
    tokenizer.add_tokens([AddedToken(token, special=False, normalized=False) for token in THINK_TOKENS])
    backend = tokenizer.backend_tokenizer
    # Whole vocabulary words before merges, as the real Qwen2 BPE does.
    backend.model = BPE(vocab=dict(vocab), merges=list(merges), ignore_merges=True, fuse_unk=False, byte_fallback=False)
    backend.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    return tokenizer


def qwen_image_processor(**overrides: Any) -> Qwen2VLImageProcessor:
    """A Qwen2-VL image processor that keeps images tiny: 14-pixel patches merged 2x2, at most 56x56 pixels."""
    config: dict[str, Any] = {"min_pixels": 28 * 28, "max_pixels": 56 * 56, **overrides}
    return Qwen2VLImageProcessor(**config)


def _processor(cls: type[_P], **parts: Any) -> _P:
    # The processors' video processor needs torchvision; without it transformers cannot even name the video
    # processor's base class to check a ``None`` against. No pipeline here passes videos: skip the check for None.
    check = ProcessorMixin.check_argument_for_proper_class

    def check_given(self: ProcessorMixin, name: str, argument: Any) -> Any:
        return None if argument is None else check(self, name, argument)

    with mock.patch.object(ProcessorMixin, "check_argument_for_proper_class", check_given):
        return cls(video_processor=None, **parts)


def qwen2_vl_processor(chat_template: str = "qwen2_vl") -> Qwen2VLProcessor:
    """A Qwen2-VL processor (also Qwen2.5-VL's) from :func:`qwen_tokenizer` and :func:`qwen_image_processor`."""
    return _processor(
        Qwen2VLProcessor,
        image_processor=qwen_image_processor(),
        tokenizer=qwen_tokenizer(chat_template),
        chat_template=CHAT_TEMPLATES[chat_template],
    )


def qwen2_5_vl_processor(chat_template: str = "qwen2_vl") -> Qwen2_5_VLProcessor:
    """A Qwen2.5-VL processor (the Qwen2-VL one's sibling class), built the same way."""
    return _processor(
        Qwen2_5_VLProcessor,
        image_processor=qwen_image_processor(),
        tokenizer=qwen_tokenizer(chat_template),
        chat_template=CHAT_TEMPLATES[chat_template],
    )


def qwen3_vl_processor(chat_template: str = "qwen3") -> Qwen3VLProcessor:
    """A Qwen3-VL processor: 16-pixel patches, merged 2x2 (so 32-pixel image tiles)."""
    return _processor(
        Qwen3VLProcessor,
        image_processor=qwen_image_processor(patch_size=16, min_pixels=32 * 32, max_pixels=64 * 64),
        tokenizer=qwen_tokenizer(chat_template),
        chat_template=CHAT_TEMPLATES[chat_template],
    )


# ------------------------------------------------------------------------------------------------- text encoders
_HEADS = 2


def _ids(tokenizer: Qwen2Tokenizer) -> dict[str, int]:
    convert = tokenizer.convert_tokens_to_ids
    return {
        "image_token_id": convert("<|image_pad|>"),
        "video_token_id": convert("<|video_pad|>"),
        "vision_start_token_id": convert("<|vision_start|>"),
        "vision_end_token_id": convert("<|vision_end|>"),
    }


def _text_config(tokenizer: Qwen2Tokenizer, hidden_size: int, layers: int, **extra: Any) -> dict[str, Any]:
    # Two heads, no GQA, the vocabulary and special-token ids of the tiny tokenizer.
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": _HEADS,
        "num_key_value_heads": _HEADS,
        "head_dim": hidden_size // _HEADS,
        "max_position_embeddings": 2048,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        **extra,
    }


def _vl_rope(hidden_size: int) -> dict[str, Any]:
    # Multimodal RoPE: the head's rotary half (head_dim / 2 frequencies) is split into (t, h, w) sections.
    half = hidden_size // _HEADS // 2
    section = [half - 2 * (half // 4), half // 4, half // 4]
    return {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": section}}


def qwen2_5_vl_model(
    tokenizer: Qwen2Tokenizer, *, hidden_size: int = 32, layers: int = 2
) -> Qwen2_5_VLForConditionalGeneration:
    """A Qwen2.5-VL (language model and a 1-block vision tower) sized to ``tokenizer``."""
    config = Qwen2_5_VLConfig(
        text_config=_text_config(tokenizer, hidden_size, layers, **_vl_rope(hidden_size)),
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": _HEADS,
            "out_hidden_size": hidden_size,
            "fullatt_block_indexes": [0],
            "window_size": 56,
        },
        **_ids(tokenizer),
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def qwen2_5_vl_text_model(
    tokenizer: Qwen2Tokenizer, *, hidden_size: int = 32, layers: int = 2, initializer_range: float = 0.02
) -> Qwen2_5_VLTextModel:
    """Qwen2.5-VL's language model alone (HunyuanVideo 1.5's text encoder); a larger ``initializer_range`` than
    Qwen's 0.02 gives larger text features (a tiny denoiser then tells prompts apart more)."""
    config = Qwen2_5_VLTextConfig(
        **_text_config(tokenizer, hidden_size, layers, initializer_range=initializer_range, **_vl_rope(hidden_size))
    )
    return Qwen2_5_VLTextModel(config).eval()


def qwen2_vl_model(
    tokenizer: Qwen2Tokenizer, *, hidden_size: int = 32, layers: int = 2
) -> Qwen2VLForConditionalGeneration:
    """A Qwen2-VL (language model and a 1-block vision tower) sized to ``tokenizer``."""
    config = Qwen2VLConfig(
        text_config=_text_config(tokenizer, hidden_size, layers, **_vl_rope(hidden_size)),
        vision_config={"depth": 1, "embed_dim": 16, "hidden_size": hidden_size, "num_heads": _HEADS, "mlp_ratio": 2},
        **_ids(tokenizer),
    )
    return Qwen2VLForConditionalGeneration(config).eval()


def qwen3_vl_config(tokenizer: Qwen2Tokenizer, *, hidden_size: int = 32, layers: int = 2) -> Qwen3VLConfig:
    """A Qwen3-VL config: the language model sized to ``tokenizer``, a 1-block vision tower with 16-pixel patches."""
    return Qwen3VLConfig(
        text_config=_text_config(tokenizer, hidden_size, layers, **_vl_rope(hidden_size)),
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": _HEADS,
            "out_hidden_size": hidden_size,
            "patch_size": 16,
            "num_position_embeddings": 16,
            "deepstack_visual_indexes": [0],
        },
        **_ids(tokenizer),
    )


def qwen3_vl_model(
    tokenizer: Qwen2Tokenizer, *, hidden_size: int = 32, layers: int = 2
) -> Qwen3VLForConditionalGeneration:
    """A Qwen3-VL with its LM head."""
    return Qwen3VLForConditionalGeneration(qwen3_vl_config(tokenizer, hidden_size=hidden_size, layers=layers)).eval()


def qwen3_vl_base_model(tokenizer: Qwen2Tokenizer, *, hidden_size: int = 32, layers: int = 2) -> Qwen3VLModel:
    """A Qwen3-VL without its LM head (Krea 2's text encoder)."""
    return Qwen3VLModel(qwen3_vl_config(tokenizer, hidden_size=hidden_size, layers=layers)).eval()


def qwen3_model(tokenizer: Qwen2Tokenizer, *, hidden_size: int = 32, layers: int = 2) -> Qwen3Model:
    """A Qwen3 decoder without its LM head (Z-Image's and Ovis-Image's text encoder)."""
    return Qwen3Model(Qwen3Config(**_text_config(tokenizer, hidden_size, layers))).eval()
