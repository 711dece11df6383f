"""Which positions of a denoiser's text sequence hold which word of the prompt.

Cross-attention control (Prompt-to-Prompt, Hertz et al., 2022) and attention-map capture (RefAM, "Attention
Magnets") both address text keys by word. Every model family builds its text sequence differently; each family
declares how as data (its :class:`visattn.families.PromptRecipe`: the parts, their tokenizers, the cleaning), and
this module follows the recipe. The kinds of part:

* SD 1.x/2.x and SDXL: one CLIP sequence of 77 tokens, ``<|startoftext|> words <|endoftext|> pad...`` (SDXL's
  two CLIP encoders are concatenated feature-wise, so both share these positions).
* PixArt, CogVideoX, Flux (``tokenizer_2``), Chroma, LTX, the Wan family: one T5 / umT5 sequence of
  ``max_sequence_length`` tokens, ``words </s> <pad>...``.
* SD3: CLIP-L and CLIP-G feature-wise over 77 positions, then the T5 tokens appended along the sequence, so
  the text sequence is ``77 + max_sequence_length`` long and every word appears twice (once in each part).
* HunyuanVideo: Llama over a chat template, ``template.format(prompt)``, with the first ``crop_start`` tokens
  (the system part of the template) cropped; the sequence is ``max_sequence_length`` long and still holds the
  template's closing tokens after the prompt (Framepack: the same, after the image's SigLIP tokens, a reserved
  part). Where the template comes from is a typed record
  (:mod:`visattn.families.base`): a diffusers module's dict (HunyuanVideo), pipeline attributes or module constants
  (Qwen-Image, Krea 2 with a suffix after the padding, Lumina 2's system prompt, Kandinsky 5 and 6), the call's
  default prefix (Sana's ``complex_human_instruction``, ``<bos>`` kept ahead of the cropped prefix), or the
  tokenizer's own ``apply_chat_template`` with a system message and options (Z-Image, FLUX.2, EasyAnimate,
  Ideogram 4, NucleusMoE-Image, Ovis-Image).
* LongCat-Image: the prompt's own tokens (its template is cropped), quoted text tokenized letter by letter;
  MiniMax-H3: the prompt's own tokens, unpadded.
* A part padded on the left (FLUX.2's Mistral, CogView4, Ideogram 4, OmniGen) holds its words at its end; tokens
  the model puts around the text (AuraFlow's registers, UniDiffuser's timestep and image tokens, OmniGen's time
  token) hold no word; pipelines that pad to the longest prompt of the call (Qwen-Image, Kandinsky 5, Lumina-Next,
  Latte, ERNIE-Image, DreamLite) have the call's text length.
* HunyuanImage and HunyuanVideo 1.5 gather each part's valid tokens first (``valid_first``): the ByT5 tokens of the
  prompt's quoted text (a part over a text the pipeline derives from the prompt, which holds no word) come before
  the words, so their count moves the words; parts another input fills (HunyuanVideo 1.5's image tokens, valid
  ahead of the words in image-to-video; Stable Cascade's pooled text and image embedding) are ``"reserved"``:
  positions with no word.

:func:`prompt_tokens` tokenizes the exact string the pipeline tokenizes, with the pipeline's own tokenizers,
and maps each word to its token positions through the tokenizer's character offsets, so words split into
subwords map to all their pieces. Positions are relative to the start of the text sequence (the text span of
the key sequence, see :attr:`visattn.context.CallContext.text_span`).
"""

from __future__ import annotations

import html
import inspect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .attachment import DENOISER_ATTRIBUTES
from .families import CLIP_LENGTH, PROMPT_FAMILIES, PromptRecipe, TextPart, declared_family, family_named
from .families.pipelines import pipeline_blocks_named, pipeline_call_variables_set

__all__ = [
    "CLIP_LENGTH",
    "PROMPT_FAMILIES",
    "STOP_WORDS",
    "PromptTokens",
    "prompt_family",
    "prompt_recipe",
    "prompt_tokens",
    "split_words",
]

#: Lower-case function words and punctuation. They carry little spatial meaning and, like the start token,
#: soak up surplus attention in text-to-image models (RefAM, "Attention Magnets"), so attention maps drop them
#: before renormalizing over the remaining words.
STOP_WORDS: frozenset[str] = frozenset(
    """
    a an the this that these those some any each every all both either neither no nor not only own same such
    of in on at to from with without by for into onto over under above below near behind beside between among
    around through across along against inside outside upon via per off out up down about after before during
    while until than then so as if because though although whether
    and or but yet
    is am are was were be been being has have had having do does did doing can could will would shall should
    may might must
    it its itself he him his she her hers they them their theirs we us our ours you your yours i me my mine
    who whom whose which what where when why how there here very too also just more most less least
    . , ; : ! ? ' " - ( ) [ ] { } / \\ & * + = < > | ~ ^ ` _ @ # % $
    """.split()
)

# Runs of letters and digits form a word; every other non-space character is a word of its own, the way
# CLIP's and T5's pre-tokenizers split punctuation off.
_WORD = re.compile(r"[^\W_]+|[^\w\s]|_")


@dataclass(frozen=True)
class PromptTokens:
    """A prompt's words and where each sits in the denoiser's text sequence.

    Attributes:
        prompt: the prompt as given.
        words: the prompt's words in order, lower-cased, with punctuation split off as its own words.
        word_tokens: for each word, its token positions in the text sequence (the keys of cross attention, the
            text part of joint attention); a word split into subwords has several, and in SD3 every word has
            positions in both the CLIP part and the T5 part.
        special: positions of start/end/padding tokens and of the prompt template (HunyuanVideo): every
            position that belongs to no word.
        length: the length of the text sequence the denoiser sees.
        family: the family key the positions were computed for.
    """

    prompt: str
    words: tuple[str, ...]
    word_tokens: tuple[tuple[int, ...], ...]
    special: tuple[int, ...]
    length: int
    family: str = ""

    def index(self, word: str | int) -> tuple[int, ...]:
        """Indices into :attr:`words` of ``word``: a word text (every occurrence; several words such as
        ``"red circle"`` match where they appear in a row) or a word index (negative counts from the end).

        Raises:
            ValueError: ``word`` is not in the prompt, or the index is out of range; the message lists the words.
        """
        if isinstance(word, bool) or not isinstance(word, (int, str)):
            raise ValueError(f"word must be a word of the prompt or a word index; got {word!r}")
        if isinstance(word, int):
            if not -len(self.words) <= word < len(self.words):
                raise ValueError(
                    f"word index {word} is out of range for the {len(self.words)} words of the prompt: "
                    f"{self._listing()}"
                )
            return (word % len(self.words),)
        wanted = tuple(match.group(0).lower() for match in _WORD.finditer(word))
        n = len(wanted)
        starts = [i for i in range(len(self.words) - n + 1) if n and self.words[i : i + n] == wanted]
        if not starts:
            raise ValueError(f"word {word!r} is not in the prompt; its words are {self._listing()}")
        return tuple(sorted({i + j for i in starts for j in range(n)}))

    def positions(self, word: str | int) -> tuple[int, ...]:
        """Text-sequence positions of ``word`` (see :meth:`index` for what ``word`` may be), sorted.

        Raises:
            ValueError: ``word`` is not in the prompt; the message lists the prompt's words.
        """
        return tuple(sorted({p for i in self.index(word) for p in self.word_tokens[i]}))

    def content_words(self, stop_words: frozenset[str] = STOP_WORDS) -> tuple[int, ...]:
        """Indices of the words that are not in ``stop_words``."""
        return tuple(i for i, word in enumerate(self.words) if word not in stop_words)

    def _listing(self) -> str:
        return "[" + ", ".join(f"{i}: {w!r}" for i, w in enumerate(self.words)) + "]"


def split_words(prompt: str) -> tuple[tuple[str, int, int], ...]:
    """``(word, start, stop)`` of each word of ``prompt``: lower-cased runs of letters and digits, and each
    punctuation character on its own."""
    return tuple((m.group(0).lower(), m.start(), m.end()) for m in _WORD.finditer(prompt))


# --- family and tokenizer resolution ------------------------------------------------------------------------


def prompt_family(target: Any, family: str | None = None) -> str:
    """The family key of a pipeline (by its denoiser's class), or ``family`` checked; either way a family whose
    tokenizer ladder is declared (:data:`PROMPT_FAMILIES`).

    Raises:
        ValueError: an unknown ``family``, a family without a declared ladder, or a target whose family cannot
            be recognized.
    """
    if family is not None:
        key = family_named(family).name
    elif _is_tokenizer(target) or isinstance(target, Mapping):
        raise ValueError(
            f"family=None needs a pipeline to recognize the family; with tokenizers, pass family= one of "
            f"{PROMPT_FAMILIES}"
        )
    else:
        denoiser = next((getattr(target, n) for n in DENOISER_ATTRIBUTES if getattr(target, n, None) is not None), None)
        declared = declared_family(denoiser) if denoiser is not None else None
        if declared is None:
            what = type(denoiser).__name__ if denoiser is not None else f"{type(target).__name__} (no denoiser)"
            raise ValueError(
                f"cannot tell the model family of {what}; pass family= one of {PROMPT_FAMILIES}, or a pipeline of one"
            )
        key = declared.name
    if key not in PROMPT_FAMILIES:
        raise ValueError(
            f"the {key} family declares no tokenizer ladder (visattn.families), so words cannot be mapped to its "
            f"text positions; families that declare one: {PROMPT_FAMILIES}. Address text positions directly instead"
        )
    return key


def prompt_recipe(family: str) -> PromptRecipe:
    """How the pipelines of ``family`` (a key of :data:`PROMPT_FAMILIES`) tokenize a prompt."""
    return family_named(prompt_family(None, family)).prompt


def _is_tokenizer(obj: Any) -> bool:
    return callable(obj) and hasattr(obj, "convert_ids_to_tokens")


def _tokenizer(target: Any, part: TextPart, family: str) -> Any:
    """The first of the part's tokenizer components that ``target`` (a pipeline, a mapping, or a tokenizer) has;
    ``None`` for a missing optional part."""
    if _is_tokenizer(target):
        return target
    for name in part.tokenizers:
        tokenizer = target.get(name) if isinstance(target, Mapping) else getattr(target, name, None)
        if tokenizer is not None:
            return tokenizer
    if part.optional:
        return None
    raise ValueError(f"the {family} family needs a tokenizer named {' or '.join(part.tokenizers)}; none was given")


def _call_default(target: Any, parameter: str, fallback: Any) -> Any:
    """The default of a pipeline ``__call__`` parameter (pipelines of one family differ, e.g. PixArt-α/Σ)."""
    if _is_tokenizer(target) or isinstance(target, Mapping) or not callable(target):
        return fallback
    try:
        default = inspect.signature(type(target).__call__).parameters[parameter].default
    except (KeyError, TypeError, ValueError):
        return fallback
    return fallback if default is inspect.Parameter.empty else default


# --- alignment -----------------------------------------------------------------------------------------------


def _align(
    tokenizer: Any, text: str, region: int, words: Sequence[tuple[str, int, int]]
) -> tuple[list[list[int]], int]:
    """Token indices of each word in ``tokenizer(text)`` (special tokens included) and the token count.

    ``region`` is where the prompt starts inside ``text`` (non-zero when a template wraps it); ``words`` carry
    character spans relative to the prompt.
    """
    try:
        encoding = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        offsets = encoding["offset_mapping"]
    except (NotImplementedError, KeyError, TypeError, ValueError):
        return _align_by_prefix(tokenizer, text, region, words)
    special = encoding.get("special_tokens_mask") or [0] * len(offsets)
    spans = [(region + start, region + stop) for _, start, stop in words]
    per_word: list[list[int]] = [[] for _ in words]
    for index, ((start, stop), is_special) in enumerate(zip(offsets, special, strict=True)):
        if is_special:
            continue
        for w, (w_start, w_stop) in enumerate(spans):
            # A token belongs to every word its characters overlap; a zero-width piece (SentencePiece's bare
            # "▁" before an unknown word) to the word it sits in.
            if (start < w_stop and stop > w_start) or (start == stop and w_start <= start < w_stop):
                per_word[w].append(index)
    return per_word, len(offsets)


def _align_by_prefix(
    tokenizer: Any, text: str, region: int, words: Sequence[tuple[str, int, int]]
) -> tuple[list[list[int]], int]:
    """Alignment for tokenizers without character offsets (slow tokenizers): tokenize growing prefixes, each
    ending at a word boundary; a word owns the tokens from the first one its prefix changes to the end.

    Comparing the tokens, not only counting them, matters where a token spans a word boundary: in "a dog's toy"
    CLIP's ``'s`` merges the punctuation word ``'`` with ``s``, so the prefix ending at ``s`` has as many tokens
    as the one ending at ``'``, and the changed last token belongs to both words.
    """
    full = list(tokenizer(text).input_ids)
    plain = list(tokenizer(text, add_special_tokens=False).input_ids)
    # Leading special tokens (BOS) shift every position by their count.
    lead = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), 0)
    per_word: list[list[int]] = []
    previous = list(tokenizer(text[:region], add_special_tokens=False).input_ids) if region else []
    for _, _, stop in words:
        current = list(tokenizer(text[: region + stop], add_special_tokens=False).input_ids)
        changed = next(
            (i for i, (a, b) in enumerate(zip(previous, current)) if a != b), min(len(previous), len(current))
        )
        per_word.append(list(range(lead + changed, lead + len(current))))
        previous = current
    return per_word, len(full)


def _align_spelled(
    tokenizer: Any, prompt: str, words: Sequence[tuple[str, int, int]], spell: str
) -> tuple[list[list[int]], int]:
    """Alignment for pipelines that tokenize the pieces of a prompt on their own, some one character at a time
    (see :attr:`visattn.families.TextPart.spell`): each piece's tokens follow the previous pieces' tokens."""
    import importlib

    module, attribute = spell.split(":")
    pieces = getattr(importlib.import_module(module), attribute)(prompt)
    if "".join(piece for piece, _ in pieces) != prompt:
        raise ValueError(f"{spell} does not split {prompt!r} into pieces that make it up; cannot align its words")
    per_word: list[list[int]] = [[] for _ in words]
    count = start = 0
    for piece, spelled in pieces:
        for chunk, offset in [(c, i) for i, c in enumerate(piece)] if spelled else [(piece, 0)]:
            # Word spans relative to this chunk; the chunk's own alignment gives the tokens inside it.
            at = start + offset
            inside = [(w, max(b, at) - at, min(e, at + len(chunk)) - at) for w, b, e in words]
            chunk_words, chunk_count = _align(_NoSpecialTokens(tokenizer), chunk, 0, inside)
            for w, (_, b, e) in enumerate(inside):
                if b < e:
                    per_word[w] += [count + p for p in chunk_words[w]]
            count += chunk_count
        start += len(piece)
    return per_word, count


class _NoSpecialTokens:
    """A tokenizer called with ``add_special_tokens=False``, as pipelines that tokenize pieces of a prompt do."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text: str, **kwargs: Any) -> Any:
        return self.tokenizer(text, **{**kwargs, "add_special_tokens": False})


def _too_long(family: str, part: str, count: int, limit: int, prompt: str) -> ValueError:
    return ValueError(
        f"prompt {prompt[:60]!r}{'...' if len(prompt) > 60 else ''} has {count} {part} tokens (special tokens "
        f"included) but the {family} text sequence holds {limit}; the pipeline would truncate it and positions "
        f"past the limit would not exist. Shorten the prompt"
        + ("" if part == "CLIP" else " or raise max_sequence_length")
    )


def _clip_part(tokenizer: Any, prompt: str, words, family: str) -> tuple[list[list[int]], int]:
    # Pipelines pad these parts to the tokenizer's model_max_length, at most 77 (HunyuanDiT's BERT says 512 and
    # is padded to 77; the toy model's CLIP tokenizer holds 32).
    limit = getattr(tokenizer, "model_max_length", CLIP_LENGTH)
    limit = min(limit, CLIP_LENGTH) if isinstance(limit, int) and limit > 0 else CLIP_LENGTH
    per_word, count = _align(tokenizer, prompt, 0, words)
    if count > limit:
        raise _too_long(family, "CLIP", count, limit, prompt)
    return per_word, limit


def _t5_part(
    tokenizer: Any, prompt: str, words, family: str, max_length: int, spell: str | None = None
) -> tuple[list[list[int]], int]:
    """Positions of each word in the part and the count of its tokens (the rest is padding)."""
    per_word, count = (
        _align(tokenizer, prompt, 0, words) if spell is None else _align_spelled(tokenizer, prompt, words, spell)
    )
    if count > max_length:
        raise _too_long(family, "T5", count, max_length, prompt)
    return per_word, count


def _wan_clean(prompt: str) -> str:
    # WanPipeline's prompt_clean: HTML entities unescaped (twice), whitespace runs collapsed, ends stripped.
    # (It also runs ftfy when installed; that repairs mojibake and leaves ordinary text as it is.)
    return re.sub(r"\s+", " ", html.unescape(html.unescape(prompt))).strip()


def rewritten_prompt_reason(pipeline: Any, recipe: PromptRecipe | None) -> str | None:
    """Why words cannot be mapped to ``pipeline``'s text positions because its blocks rewrite the prompt before
    encoding it (:attr:`~visattn.families.PromptRecipe.rewriting_blocks`: FLUX.3's ``prompt_upsampler``), with the
    fix; ``None`` where they do not."""
    if recipe is None:
        return None
    steps = pipeline_blocks_named(pipeline, recipe.rewriting_blocks)
    if not steps:
        return None
    pops = "; ".join(f"blocks.sub_blocks.pop({step!r})" for step in steps)
    return (
        f"{type(pipeline).__name__}'s blocks rewrite the prompt before encoding it ({', '.join(steps)}): the text "
        "the model sees is the rewrite, each prompt rewritten apart, so words cannot be mapped to its text "
        f"positions. Build the pipeline from blocks without that step ({pops}) to encode the prompt as given, or "
        "address text positions directly"
    )


def prompt_tokens(
    pipe_or_tokenizers: Any,
    prompt: str,
    family: str | None = None,
    *,
    max_sequence_length: int | None = None,
    prompt_template: Mapping[str, Any] | None = None,
) -> PromptTokens:
    """Map each word of ``prompt`` to its positions in the denoiser's text sequence.

    Args:
        pipe_or_tokenizers: a diffusers pipeline; or its tokenizers as a mapping of component names
            (``{"tokenizer": ..., "tokenizer_3": ...}``) or a single tokenizer, with ``family`` given.
        prompt: the prompt, as passed to the pipeline.
        family: one of :data:`PROMPT_FAMILIES`; recognized from the pipeline when ``None``.
        max_sequence_length: the T5/umT5/Llama sequence length of the call (``max_sequence_length`` of the
            pipeline call); the pipeline's default when ``None``. Ignored by the CLIP-only families.
        prompt_template: HunyuanVideo's or Framepack's ``prompt_template`` of the call (``template`` and
            ``crop_start``); the pipeline's default when ``None``.

    Raises:
        ValueError: unknown family; a missing tokenizer; a prompt with more tokens than the text sequence
            holds (with the counts), since the pipeline would silently truncate it.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string; got {type(prompt).__name__}")
    key = prompt_family(pipe_or_tokenizers, family)
    recipe = family_named(key).prompt
    # A pipeline (not its tokenizers) says which pipeline and call the text is built for.
    for_pipeline = not (_is_tokenizer(pipe_or_tokenizers) or isinstance(pipe_or_tokenizers, Mapping))
    if recipe.pipelines and for_pipeline:
        name = type(pipe_or_tokenizers).__name__
        if name not in recipe.pipelines:
            raise ValueError(
                f"the {key} tokenizer ladder describes the text sequence of {', '.join(recipe.pipelines)}; {name} "
                "builds its own another way, so words cannot be mapped to its text positions. Address text "
                "positions directly instead"
            )
    if recipe.refused_with and for_pipeline:
        given = pipeline_call_variables_set(pipe_or_tokenizers, recipe.refused_with)
        if given:
            raise ValueError(
                f"the {key} tokenizer ladder describes calls without {', '.join(given)}; this call's "
                f"{type(pipe_or_tokenizers).__name__} builds its text sequence another way with it (other tokens "
                "before the words, or a rewritten prompt), so words cannot be mapped to its text positions. Call it "
                "without, or address text positions directly"
            )
    reason = rewritten_prompt_reason(pipe_or_tokenizers, recipe) if for_pipeline else None
    if reason is not None:
        raise ValueError(reason)
    prompt_text = _clean(prompt, recipe.clean)
    words = split_words(prompt_text)
    if max_sequence_length is None and recipe.variable:
        max_sequence_length = _call_default(pipe_or_tokenizers, "max_sequence_length", recipe.max_sequence_length)
    if max_sequence_length is not None and (
        isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) or max_sequence_length < 1
    ):
        raise ValueError(f"max_sequence_length must be a positive int; got {max_sequence_length!r}")
    tokenized = [part for part in recipe.parts if part.kind != "reserved"]
    if _is_tokenizer(pipe_or_tokenizers) and len(tokenized) > 1:
        names = " and ".join("/".join(part.tokenizers) for part in tokenized)
        raise ValueError(f"{key} needs its tokenizers {names}: pass the pipeline or a mapping of them")

    # Each part of the text sequence in turn; positions of later parts follow the earlier parts' lengths (or,
    # where the denoiser gathers valid tokens first, the earlier parts' valid tokens).
    per_word: list[list[int]] = [[] for _ in words]
    length = start = recipe.leading
    for part in recipe.parts:
        tokenizer = None if part.kind == "reserved" else _tokenizer(pipe_or_tokenizers, part, key)
        part_words, valid, part_length = _part_positions(
            part,
            tokenizer,
            pipe_or_tokenizers,
            prompt_text,
            words,
            key,
            max_sequence_length,
            prompt_template,
            recipe.valid_first,
        )
        per_word = [mine + [start + p for p in theirs] for mine, theirs in zip(per_word, part_words, strict=True)]
        length += part_length
        start = start + valid if recipe.valid_first else length

    length += recipe.trailing
    owned = {p for positions in per_word for p in positions}
    return PromptTokens(
        prompt=prompt,
        words=tuple(word for word, _, _ in words),
        word_tokens=tuple(tuple(positions) for positions in per_word),
        special=tuple(p for p in range(length) if p not in owned),
        length=length,
        family=key,
    )


def _part_positions(
    part: TextPart,
    tokenizer: Any,
    target: Any,
    prompt: str,
    words,
    family: str,
    max_length: int | None,
    prompt_template: Mapping[str, Any] | None,
    valid_first: bool = False,
) -> tuple[list[list[int]], int, int]:
    """Each word's positions inside one part of the text sequence, the part's valid (unpadded) token count and
    its length (``valid_first``: the denoiser moves the valid tokens to the front, whatever the padding side)."""
    if part.kind == "clip":
        part_words, length = _clip_part(_text_tokenizer(tokenizer), prompt, words, family)
        return part_words, length, length
    if part.length is not None:
        pipeline = None if _is_tokenizer(target) or isinstance(target, Mapping) else target
        max_length = part.own_length(pipeline)
    if part.kind == "reserved":
        # Positions another input fills: no word; valid tokens in the pipelines that fill them.
        return [[] for _ in words], max_length if type(target).__name__ in part.valid_in else 0, max_length
    if tokenizer is None:
        # An optional part the pipeline fills with zero embeddings: positions with no word.
        return [[] for _ in words], 0, max_length
    if part.derive is not None:
        return (
            [[] for _ in words],
            _derived_count(_text_tokenizer(tokenizer), prompt, part.derive, max_length),
            max_length,
        )
    template: Mapping[str, Any] = {}
    if part.kind == "t5":
        part_words, count = _t5_part(_text_tokenizer(tokenizer), prompt, words, family, max_length, part.spell)
    else:
        template = prompt_template
        if template is None:
            pipeline = None if _is_tokenizer(target) or isinstance(target, Mapping) else target
            # The chat template is rendered by what the pipeline calls (a processor, FLUX.2's and EasyAnimate's).
            template = _call_default(target, "prompt_template", None) or part.default_template(pipeline, tokenizer)
        part_words, count = _template_part(_text_tokenizer(tokenizer), prompt, words, family, max_length, template)
    if not valid_first and part.padding_side(_text_tokenizer(tokenizer)) == "left":
        if template.get("crop_start") or template.get("suffix_tokens"):
            raise ValueError(
                f"the {family} tokenizer ladder pads on the left but crops its template or appends a suffix"
            )
        # Left padding puts the tokens at the end of the part: every position moves by the padding's length.
        part_words = [[p + max_length - count for p in positions] for positions in part_words]
    return part_words, count, max_length


def _derived_count(tokenizer: Any, prompt: str, derive: str, max_length: int) -> int:
    """The valid tokens of a part over the text ``derive`` makes of the prompt (see
    :attr:`visattn.families.TextPart.derive`), truncated to the part's length as the pipeline does."""
    import importlib

    module, attribute = derive.split(":")
    text = getattr(importlib.import_module(module), attribute)(prompt)
    return 0 if text is None else min(len(tokenizer(text).input_ids), max_length)


def _text_tokenizer(tokenizer: Any) -> Any:
    """The text tokenizer of a multimodal processor (Kandinsky 5's Qwen2-VL processor), or ``tokenizer`` itself."""
    inner = getattr(tokenizer, "tokenizer", None)
    return inner if inner is not None and not _is_tokenizer(tokenizer) and _is_tokenizer(inner) else tokenizer


def _clean(prompt: str, cleaning: str | None) -> str:
    """The prompt as the pipeline tokenizes it (see :attr:`visattn.families.PromptRecipe.clean`)."""
    if cleaning == "prompt_clean":
        return _wan_clean(prompt)
    if cleaning == "lower":
        return prompt.lower().strip()
    if cleaning == "strip":
        return prompt.strip()
    return prompt


def _template_part(
    tokenizer: Any, prompt: str, words, family: str, max_length: int, template: Any
) -> tuple[list[list[int]], int]:
    """Positions of each word inside a chat template whose first ``crop_start`` tokens the pipeline crops, and
    the count of the template's tokens that stay (the rest of the part is padding)."""
    if not isinstance(template, Mapping) or "template" not in template or template["template"].count("{}") != 1:
        raise ValueError(f"prompt_template must be a dict whose 'template' holds one '{{}}'; got {template!r}")
    crop_start = template.get("crop_start")
    if crop_start is None:
        # What HunyuanVideoPipeline._get_llama_prompt_embeds does: the template padded to the tokenizer's
        # maximum length, less the "{}" placeholder and <|eot_id|>.
        crop_start = len(tokenizer(template["template"], padding="max_length").input_ids) - 2
    region = template["template"].index("{}")
    # A template rendered with its special tokens as text is tokenized without adding them again (FLUX.2).
    if not template.get("add_special_tokens", True):
        tokenizer = _NoSpecialTokens(tokenizer)
    per_word, count = _align(tokenizer, template["template"].format(prompt), region, words)
    # Tokens the pipeline appends after padding the prompt (Krea 2) take positions the prompt cannot have.
    budget = max_length - template.get("suffix_tokens", 0)
    if count > budget + crop_start:
        raise _too_long(family, "Llama", count - crop_start, budget, prompt)
    # The crop may start after tokens the pipeline keeps (Sana keeps <bos> ahead of the cropped instruction).
    keep = template.get("keep_start", 0)
    if any(keep <= p < keep + crop_start for positions in per_word for p in positions):
        raise ValueError(
            f"prompt_template crop_start={crop_start} crops part of the prompt: the template has fewer tokens "
            f"before its '{{}}' with this tokenizer"
        )
    kept = [[p - crop_start if p >= keep else p for p in positions] for positions in per_word]
    return kept, count - crop_start
