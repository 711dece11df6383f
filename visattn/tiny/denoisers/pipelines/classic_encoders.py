"""Tiny tokenizers, encoders and processors for :mod:`visattn.tiny.denoisers.pipelines.classic`, built in code.

What the classic pipelines need beyond :mod:`visattn.tiny.tokenizers` and :mod:`visattn.tiny.text_encoders`:
BERT (HunyuanDiT) and GPT-2 (UniDiffuser's captioner) tokenizers over the shared vocabulary, a Llama with its LM head
(HiDream), CLIP and SigLIP vision towers with their processors, OmniGen's tokenizer, and the stand-ins that let
OmniGen's pipeline be built without torchvision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from tokenizers import pre_tokenizers
from transformers import (
    BertConfig,
    BertModel,
    BertTokenizer,
    CLIPImageProcessor,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
    GPT2Tokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    SiglipVisionConfig,
    SiglipVisionModel,
    TokenizersBackend,
)

from visattn.tiny.tokenizers import llama_tokenizer
from visattn.tiny.vocab import CHARACTERS, VOCABULARY

# Two heads everywhere, as in visattn.tiny.text_encoders.
_HEADS = 2
_LAYERS = 2


# --- tokenizers -------------------------------------------------------------------------------------------------


def bert_tokenizer() -> BertTokenizer:
    """A lower-casing WordPiece tokenizer: ``[CLS] words [SEP]``, padded with ``[PAD]`` (id 0).

    Every :data:`VOCABULARY` word is one token; any other word splits into its first character and ``##``
    continuation characters.
    """
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    continuations = [f"##{ch}" for ch in CHARACTERS]
    words = [word for word in VOCABULARY if word not in CHARACTERS]
    vocab = {token: i for i, token in enumerate([*specials, *CHARACTERS, *continuations, *words])}
    return BertTokenizer(vocab=vocab, model_max_length=512)


def gpt2_tokenizer() -> GPT2Tokenizer:
    """A byte-level GPT-2 tokenizer without merges: one token per byte, and ``<|endoftext|>``."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: i for i, token in enumerate([*alphabet, "<|endoftext|>"])}
    return GPT2Tokenizer(vocab=vocab, merges=[])


#: Phi-3 chat tokens of OmniGen's instruction template
PHI3_TOKENS: tuple[str, ...] = ("<|user|>", "<|end|>", "<|assistant|>", "<|diffusion|>")


def omnigen_tokenizer() -> LlamaTokenizer:
    """The tiny Llama tokenizer with OmniGen's Phi-3 chat tokens as special tokens."""
    tokenizer = llama_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(PHI3_TOKENS)})
    return tokenizer


# --- text encoders ------------------------------------------------------------------------------------------------


def bert_model(tokenizer: TokenizersBackend, *, hidden_size: int = 32) -> BertModel:
    """A two-layer BERT encoder sized to ``tokenizer``."""
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    return BertModel(config).eval()


def llama_causal_lm(tokenizer: TokenizersBackend, *, hidden_size: int = 32) -> LlamaForCausalLM:
    """A two-layer Llama with its LM head, attending eagerly (HiDream asks it for attention weights too)."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        num_key_value_heads=_HEADS,
        head_dim=hidden_size // _HEADS,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation="eager",  # SDPA returns no attention weights
    )
    return LlamaForCausalLM(config).eval()


# --- image encoders and processors ----------------------------------------------------------------------------


def clip_image_encoder(
    image_size: int, *, projection_dim: int = 32, patch_size: int = 8
) -> CLIPVisionModelWithProjection:
    """A two-layer CLIP vision tower (32 wide) with its projection, for ``image_size`` pixels."""
    config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=projection_dim,
    )
    return CLIPVisionModelWithProjection(config).eval()


def clip_image_processor(size: int) -> CLIPImageProcessor:
    """CLIP's preprocessing (resize, center crop, normalize) to ``size`` pixels."""
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def siglip_image_encoder(image_size: int, *, hidden_size: int = 16) -> SiglipVisionModel:
    """A two-layer SigLIP vision tower for ``image_size`` pixels, in patches of 8."""
    config = SiglipVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        image_size=image_size,
        patch_size=8,
    )
    return SiglipVisionModel(config).eval()


# --- OmniGen without torchvision ------------------------------------------------------------------------------


class _ToTensor:
    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


class _Normalize:
    def __init__(self, mean: list[float], std: list[float], inplace: bool = False) -> None:
        self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        return (tensor - self.mean) / self.std


class _Compose:
    def __init__(self, steps: list[Callable[[Any], Any]]) -> None:
        self.steps = steps

    def __call__(self, value: Any) -> Any:
        for step in self.steps:
            value = step(value)
        return value


def _lambda(function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return function


class _Transforms:
    """The four ``torchvision.transforms`` OmniGen's processor builds (it runs them on input images only)."""

    Compose = _Compose
    Lambda = staticmethod(_lambda)
    ToTensor = _ToTensor
    Normalize = _Normalize


def allow_omnigen_without_torchvision() -> None:
    """Let ``OmniGenPipeline`` be built where torchvision is not installed.

    diffusers imports OmniGen's processor (and, inside it, ``torchvision.transforms``) only when torchvision is
    installed, yet the pipeline's constructor always builds that processor. Without torchvision, this hands the
    pipeline module diffusers' own processor class and the processor module stand-ins for the four transforms it
    builds, which only input images go through (a text-to-image call never runs them). With torchvision installed
    it changes nothing.
    """
    from diffusers.pipelines.omnigen import pipeline_omnigen, processor_omnigen

    if not hasattr(processor_omnigen, "transforms"):
        processor_omnigen.transforms = _Transforms
    if not hasattr(pipeline_omnigen, "OmniGenMultiModalProcessor"):
        pipeline_omnigen.OmniGenMultiModalProcessor = processor_omnigen.OmniGenMultiModalProcessor
