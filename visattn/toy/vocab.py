"""Word-level tokenizers for the toy world: every word a toy caption can use is exactly one token.

The toy models learn their text encoders from scratch, so their vocabulary is the toy world's own words (from
:mod:`visattn.toy.data`'s tables and caption grammar) plus special tokens, and one token per word keeps the
text-token positions that Prompt-to-Prompt and attention maps address equal to word positions.

* :func:`clip_tokenizer` (image model): a stock :class:`~transformers.CLIPTokenizer` (byte-level BPE with a
  ``</w>`` end-of-word suffix). BPE can only produce a word by merging pieces, so the vocabulary also holds
  the byte alphabet and each word's suffixes, and the merges are ``(char, suffix</w>)``: a toy word grows
  right-to-left into one token; any other word stops growing and stays a few pieces (never "unknown", so a
  stray character can never be mistaken for the end token that CLIP pools at).
* :func:`t5_tokenizer` (video model): a stock :class:`~transformers.T5Tokenizer` (Unigram) whose pieces are
  ``▁word`` for every toy word; other words become ``<unk>``.

Both are built in code and saved with the pipelines (``save_pretrained``), so nothing is downloaded.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer, T5Tokenizer

from .data import BACKGROUNDS, COLORS, DIRECTIONS, POSITIONS, SHAPES, SIZES

#: The caption grammar's own words ("a small red circle at the top left and ... on a blue background",
#: "a red circle moving right on a black background").
GRAMMAR_WORDS: tuple[str, ...] = ("a", "and", "at", "background", "in", "moving", "on", "the")

#: Every word a toy caption can contain, sorted.
WORDS: tuple[str, ...] = tuple(
    sorted(
        set(GRAMMAR_WORDS)
        | set(SHAPES)
        | set(COLORS)
        | set(BACKGROUNDS)
        | set(SIZES)
        | set(DIRECTIONS)
        | {word for position in POSITIONS for word in position.split()}
    )
)


def unknown_words(prompt: str) -> tuple[str, ...]:
    """The words of ``prompt`` a toy model never saw in training (in order, once each): to a toy model they mean
    nothing, so a prompt made of them draws arbitrary shapes."""
    seen: dict[str, None] = {}
    for word in prompt.lower().replace(",", " ").split():
        if word not in WORDS:
            seen.setdefault(word)
    return tuple(seen)


#: Text length of the image model (CLIP pads every prompt to it). The longest toy caption (three objects,
#: every one "at the top left"-long) is 30 words plus start and end tokens.
CLIP_MAX_LENGTH = 32

CLIP_BOS, CLIP_EOS, CLIP_PAD = "<|startoftext|>", "<|endoftext|>", "<|pad|>"
_END_OF_WORD = "</w>"
_SPACE = "▁"  # SentencePiece's word-boundary marker (U+2581)


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    # Specials first so their ids are small and fixed: 0 start, 1 end, 2 pad.
    tokens = [CLIP_BOS, CLIP_EOS, CLIP_PAD]
    # ByteLevel maps every byte to a printable character; covering all 256 (bare and word-final) means no input
    # is ever unknown.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens += alphabet + [ch + _END_OF_WORD for ch in alphabet]
    # Every suffix of two or more letters, shorter ones first (the order BPE applies merges in).
    suffixes = sorted({word[i:] for word in WORDS for i in range(len(word) - 1)}, key=lambda s: (len(s), s))
    tokens += [s + _END_OF_WORD for s in suffixes]
    merges = tuple((s[0], s[1:] + _END_OF_WORD) for s in suffixes)
    return {token: i for i, token in enumerate(tokens)}, merges


def clip_tokenizer(max_length: int = CLIP_MAX_LENGTH) -> CLIPTokenizer:
    """The image model's CLIP tokenizer: ``<|startoftext|> words <|endoftext|> <|pad|>...``.

    ``model_max_length`` is ``max_length``; Stable Diffusion pipelines pad every prompt to it.
    """
    if max_length < 3:
        raise ValueError(f"max_length={max_length} must be >= 3 (start, one word, end)")
    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=CLIP_EOS,  # never produced: every byte has a token
        bos_token=CLIP_BOS,
        eos_token=CLIP_EOS,
        pad_token=CLIP_PAD,
        model_max_length=max_length,
    )


def _t5_pieces() -> list[tuple[str, float]]:
    # T5's fixed layout: <pad>=0, </s>=1, <unk>=2, then the words; every word scores the same.
    return [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(_SPACE + word, -1.0) for word in WORDS]


def t5_tokenizer(max_length: int = 512) -> T5Tokenizer:
    """The video model's T5 tokenizer: ``words </s> <pad>...``, one ``▁word`` piece per toy word."""
    return T5Tokenizer(vocab=_t5_pieces(), extra_ids=0, model_max_length=max_length)
