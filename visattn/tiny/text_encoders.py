"""Tiny random-weight text encoders (CLIP, T5, UMT5, Llama) sized to the tiny tokenizers.

Each builder takes the tokenizer it will be paired with so that the vocabulary size and special-token ids in
the model config always agree with it; the hidden sizes are the only knobs the pipelines need.
"""

from __future__ import annotations

from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    LlamaConfig,
    LlamaModel,
    T5Config,
    T5EncoderModel,
    TokenizersBackend,
    UMT5Config,
    UMT5EncoderModel,
)

# Two heads of width >= 8 everywhere: other visattn code selects heads and needs more than one.
_HEADS = 2
_LAYERS = 2


def clip_text_model(
    tokenizer: TokenizersBackend, *, hidden_size: int = 32, projection_dim: int | None = None
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """A CLIP text encoder; with ``projection_dim`` it is the ``...WithProjection`` variant (SDXL, SD3)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=projection_dim or hidden_size,
        # CLIP pools the hidden state at the first eos_token_id; it must be the tokenizer's, not the default.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_cls = CLIPTextModelWithProjection if projection_dim is not None else CLIPTextModel
    return model_cls(config).eval()


def _t5_kwargs(tokenizer: TokenizersBackend, d_model: int) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "d_model": d_model,
        "d_kv": d_model // _HEADS,
        "d_ff": 2 * d_model,
        "num_layers": _LAYERS,
        "num_heads": _HEADS,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 32,
        "dropout_rate": 0.0,
        "use_cache": False,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


def t5_encoder(tokenizer: TokenizersBackend, *, d_model: int = 32) -> T5EncoderModel:
    """A T5 encoder (PixArt, SD3, Flux, CogVideoX)."""
    return T5EncoderModel(T5Config(**_t5_kwargs(tokenizer, d_model))).eval()


def umt5_encoder(tokenizer: TokenizersBackend, *, d_model: int = 32) -> UMT5EncoderModel:
    """A UMT5 encoder (Wan)."""
    return UMT5EncoderModel(UMT5Config(**_t5_kwargs(tokenizer, d_model))).eval()


def llama_model(tokenizer: TokenizersBackend, *, hidden_size: int = 32) -> LlamaModel:
    """A Llama decoder used as a text encoder (HunyuanVideo).

    HunyuanVideo reads ``hidden_states[-3]`` (it skips the last two layers), so this needs at least 2 layers;
    3 makes the layer it reads a real intermediate one.
    """
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=3,
        num_attention_heads=_HEADS,
        num_key_value_heads=_HEADS,
        head_dim=hidden_size // _HEADS,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaModel(config).eval()
