"""Tiny CLIP, T5 and Llama tokenizers built in code, so tests never download a tokenizer.

All three share :data:`visattn.tiny.vocab.VOCABULARY`: each of those words is one token, and any other word
splits into several character-level pieces. They lower-case their input like CLIP does, so "Red" and "red"
give the same token.

How each keeps vocabulary words whole while still splitting unknown words:

* CLIP (byte-level BPE with a ``</w>`` end-of-word suffix): every suffix of a vocabulary word is a token and
  the only merges are ``(char, suffix</w>)``. Only the last symbol of a word carries ``</w>``, so at any
  point exactly one merge applies and words grow right-to-left into one token when they are in the
  vocabulary; an unknown word stops growing and keeps its leading characters as separate tokens.
* T5 (SentencePiece-style Unigram): ``▁word`` pieces score far above single characters, so the best
  segmentation of a known word is the word itself and of an unknown one is a prefix piece plus characters.
* Llama (BPE with byte fallback): the mirror image of CLIP, growing ``▁``-prefixed words left-to-right with
  ``(▁prefix, char)`` merges; characters outside the alphabet fall back to ``<0xNN>`` byte tokens.

The real CLIP tokenizer (:func:`real_clip_tokenizer`) is built from OpenAI's BPE merges, which the
``open_clip_torch`` package ships as ``bpe_simple_vocab_16e6.txt.gz``; it is what Stable Diffusion's
``tokenizer/`` folder holds (49,408 tokens, same ids), so words can be tested on the real vocabulary offline.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

from tokenizers import normalizers, pre_tokenizers
from transformers import CLIPTokenizer, LlamaTokenizer, T5Tokenizer, TokenizersBackend

from visattn.tiny.vocab import CHARACTERS, VOCABULARY

#: Kinds accepted by :func:`text_tokenizer`.
TOKENIZER_KINDS: tuple[str, ...] = ("clip", "t5", "llama")

CLIP_MAX_LENGTH = 77
_END_OF_WORD = "</w>"
_SPACE = "▁"  # SentencePiece's word-boundary marker (U+2581)

#: Special tokens of the Llama-3 chat format that HunyuanVideo's prompt template uses.
LLAMA_TEMPLATE_TOKENS: tuple[str, ...] = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


@lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    # ByteLevel maps every byte to a printable character; covering all 256 means no input is ever unknown.
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    # Every suffix of two or more letters; shorter ones first, the order real BPE merges are learned in.
    suffixes = sorted({word[i:] for word in VOCABULARY for i in range(len(word) - 1)}, key=lambda s: (len(s), s))
    tokens = alphabet + [ch + _END_OF_WORD for ch in alphabet] + [s + _END_OF_WORD for s in suffixes]
    tokens += ["<|startoftext|>", "<|endoftext|>"]  # at the end, like the real CLIP vocabulary
    merges = tuple((s[0], s[1:] + _END_OF_WORD) for s in suffixes)
    return {token: i for i, token in enumerate(tokens)}, merges


@lru_cache(maxsize=1)
def _t5_pieces() -> tuple[tuple[str, float], ...]:
    # T5's fixed layout: <pad>=0, </s>=1, <unk>=2. Scores are log-probabilities: a word piece (-2) beats any
    # split of that word into two or more pieces, and a bare "▁" (-3) lets unknown words start a segmentation.
    # Words also come without "▁" (-2.5), as in real SentencePiece vocabularies, so "top-left" keeps "left"
    # whole and "zebrafish" becomes "▁zebra" + "fish".
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (_SPACE, -3.0)]
    pieces += [(ch, -8.0) for ch in CHARACTERS]
    pieces += [(_SPACE + word, -2.0) for word in VOCABULARY]
    pieces += [(word, -2.5) for word in VOCABULARY if word not in CHARACTERS]
    return tuple(pieces)


@lru_cache(maxsize=1)
def _llama_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    prefixes = sorted({_SPACE + word[:i] for word in VOCABULARY for i in range(1, len(word) + 1)})
    prefixes.sort(key=len)  # stable: shorter prefixes (earlier merges) first, alphabetical within a length
    tokens = ["<unk>", "<s>", "</s>", "<pad>"]
    tokens += [f"<0x{b:02X}>" for b in range(256)]  # byte fallback for characters outside the alphabet
    tokens += [_SPACE, *CHARACTERS, *prefixes, *LLAMA_TEMPLATE_TOKENS]
    merges = tuple((p[:-1], p[-1]) for p in prefixes)
    return {token: i for i, token in enumerate(tokens)}, merges


def clip_tokenizer() -> CLIPTokenizer:
    """A CLIP BPE tokenizer: ``<|startoftext|>`` ... ``<|endoftext|>``, padded with ``<|endoftext|>``.

    ``model_max_length`` is 77, so ``padding="max_length"`` pads to 77 like the real one.
    """
    vocab, merges = _clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=CLIP_MAX_LENGTH)


def t5_tokenizer() -> T5Tokenizer:
    """A T5 Unigram tokenizer that appends ``</s>`` and pads with ``<pad>`` (id 0); no sentinel tokens."""
    tokenizer = T5Tokenizer(vocab=list(_t5_pieces()), extra_ids=0, model_max_length=512)
    tokenizer.backend_tokenizer.normalizer = normalizers.Lowercase()
    return tokenizer


def llama_tokenizer() -> LlamaTokenizer:
    """A Llama BPE tokenizer that prepends ``<s>``, pads on the right with ``<pad>``, knows the chat tokens.

    Right padding matches HunyuanVideo's text encoder, whose pipeline crops the prompt template from the left.
    """
    vocab, merges = _llama_vocab_and_merges()
    tokenizer = LlamaTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        pad_token="<pad>",
        add_bos_token=True,
        additional_special_tokens=list(LLAMA_TEMPLATE_TOKENS),
        padding_side="right",
        model_max_length=2048,
    )
    backend = tokenizer.backend_tokenizer
    backend.normalizer = normalizers.Lowercase()
    # The stock Llama pre-tokenizer marks only the first word with "▁"; a word glued to a newline or a chat
    # token (as in HunyuanVideo's template) would then miss its "▁" and be split. Splitting on whitespace and
    # marking every word keeps each vocabulary word whole wherever it appears.
    mark_every_word = pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="always")
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), mark_every_word])
    return tokenizer


#: the file of OpenAI's CLIP BPE merges inside the ``open_clip`` package
CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
#: merges the real CLIP tokenizer uses: the file's lines after its header, up to a 49,408-token vocabulary
_CLIP_MERGES = 49152 - 256 - 2


def clip_bpe_path() -> Path | None:
    """The CLIP BPE merges file of an installed ``open_clip_torch``, or ``None`` when it is not installed.

    The package is located, not imported: importing ``open_clip`` needs torchvision and timm, the data file does not.
    """
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / CLIP_BPE_FILE
    return path if path.is_file() else None


def _byte_characters() -> list[str]:
    """GPT-2's byte-to-character table, in CLIP's order: printable bytes stand for themselves, the others map
    to characters from U+0100 up (so every byte sequence is a string of visible characters)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = dict(zip(printable, printable))
    extra = 0
    for byte in range(256):
        if byte not in codes:
            codes[byte] = 256 + extra
            extra += 1
    return [chr(codes[byte]) for byte in [*printable, *(b for b in range(256) if b not in printable)]]


@lru_cache(maxsize=1)
def _real_clip_vocab_and_merges(path: Path) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : _CLIP_MERGES + 1])
    characters = _byte_characters()
    tokens = characters + [c + _END_OF_WORD for c in characters] + ["".join(merge) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(tokens)}, merges  # type: ignore[return-value]


def real_clip_tokenizer() -> CLIPTokenizer:
    """The tokenizer of Stable Diffusion's CLIP text encoder (``openai/clip-vit-large-patch14``): the same 49,408
    tokens and ids, lower-casing, punctuation split off, 77 positions. Built from the merges that
    ``open_clip_torch`` ships (:func:`clip_bpe_path`); nothing is downloaded.

    Raises:
        ModuleNotFoundError: ``open_clip_torch`` is not installed (``pip install --no-deps open_clip_torch``: the
            data file is all that is needed, not its torch, torchvision and timm requirements).
    """
    path = clip_bpe_path()
    if path is None:
        raise ModuleNotFoundError(
            f"the real CLIP vocabulary comes from open_clip_torch's {CLIP_BPE_FILE}; install it with "
            "pip install --no-deps open_clip_torch"
        )
    vocab, merges = _real_clip_vocab_and_merges(path)
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=CLIP_MAX_LENGTH)


def text_tokenizer(kind: str) -> TokenizersBackend:
    """Build a fresh tokenizer of ``kind`` (one of :data:`TOKENIZER_KINDS`)."""
    builders = {"clip": clip_tokenizer, "t5": t5_tokenizer, "llama": llama_tokenizer}
    if kind not in builders:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {TOKENIZER_KINDS}")
    return builders[kind]()
