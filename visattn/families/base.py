"""What visattn must know about a denoiser class, as data: how to read its latent grid, timestep and text length
from a forward call, where text sits in its joint sequences, and the static role of each attention module.

Everything else comes from diffusers itself: the stock processors keep computing projections, norms, rotary
embeddings and output paths, and visattn only takes over the attention computation they hand to
``scaled_dot_product_attention`` (see :mod:`visattn.interception`).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..layers import ROLE_KEYWORDS as LAYER_ROLES

#: where the text tokens sit in a joint (MM-DiT) sequence
TEXT_POSITIONS = ("first", "last")

#: CLIP's sequence length: the whole text sequence of SD 1.x/2.x/SDXL, and the CLIP part SD3 puts before T5's
CLIP_LENGTH = 77

#: how one tokenizer's tokens fill part of a text sequence (see :class:`TextPart`)
TEXT_PART_KINDS = ("clip", "t5", "chat_template", "reserved")

#: which end of a text part the padding fills (see :attr:`TextPart.padding`)
PADDING_SIDES = ("right", "left", "tokenizer")

#: how pipelines clean a prompt before tokenizing it (see :class:`PromptRecipe`)
PROMPT_CLEANING = ("prompt_clean", "lower", "strip")

#: what an effect may need from a family (see :meth:`Family.missing`): the latent grid, text tokens, and words
#: mapped to text positions (the tokenizer ladder)
FACTS = ("grid", "text", "words")

#: how a family's pipelines run classifier-free guidance around the denoiser (see :attr:`Family.cfg`)
CFG_KINDS = ("batched", "batched_cond_first", "separate")

#: how a family's pipelines combine the CFG branches (see :attr:`Family.cfg_formula`)
CFG_FORMULAS = ("uncond_plus", "cond_plus")

#: how an input carries the batch where it does not lead with it (see :attr:`Family.batch_inputs`)
NOT_BATCHED_INPUT = "not_batched"  # per token or per frame, shared by every row (its length may equal the batch)
PER_SAMPLE_LIST = "per_sample_list"  # a list with one item (tensor or list) per batch row
FOLDED = "folded"  # m consecutive rows per sample along the leading axis, ``(b m)`` (text repeated per frame)

#: axes of the latent input a family may declare (see :attr:`Family.layout`)
LAYOUTS = ("BCHW", "BCFHW", "BFCHW", "BFHWC", "BNCFHW", "auto", "packed")


@dataclass(frozen=True)
class ModuleConstant:
    """A constant a diffusers module defines (NucleusMoE-Image's ``DEFAULT_SYSTEM_PROMPT``).

    Attributes:
        module: the module's import path.
        attribute: the constant's name in it.
    """

    module: str
    attribute: str

    def value(self) -> Any:
        import importlib

        return getattr(importlib.import_module(self.module), self.attribute)


@dataclass(frozen=True)
class DiffusersTemplate:
    """A chat template dict a diffusers module defines (``{"template": ..., "crop_start": ...}``), for pipelines
    whose default ``prompt_template`` cannot be read from their own signature (bare tokenizers: HunyuanVideo).

    Attributes:
        module: the module's import path.
        attribute: the name of the dict in it.
    """

    module: str
    attribute: str

    def resolve(self, pipeline: Any = None, tokenizer: Any = None) -> dict[str, Any]:
        return dict(ModuleConstant(self.module, self.attribute).value())


@dataclass(frozen=True)
class PipelineTemplate:
    """A template the pipeline keeps as attributes (Qwen-Image's ``prompt_template_encode`` and
    ``prompt_template_encode_start_idx``) or its module keeps as constants (Kandinsky 6's).

    Attributes:
        template: the attribute holding the template, or a :class:`ModuleConstant`; one without ``"{}"`` is a
            prefix the prompt is appended to (after ``joiner``). An attribute that is a method wraps a prompt: it
            is called with ``"{}"`` (OmniGen's ``multimodal_processor.add_prefix_instruction``).
        crop: the number of leading tokens the pipeline drops: the attribute holding it, a
            :class:`ModuleConstant`, or the number.
        suffix: the attribute holding the number of tokens the pipeline appends after padding the prompt (Krea 2's
            ``[prefix | prompt | PAD | suffix]``): the prompt's words sit before them, but they take that many
            positions of ``max_sequence_length``.
        joiner: text the pipeline puts between a prefix and the prompt (Lumina 2's ``" <Prompt Start> "`` after
            its ``system_prompt``).
        prefix: text the pipeline's call puts before the prompt inside the template, which no attribute holds
            (DreamLite's ``"[Generate]: "``).
        key: the key to read where the template and the crop are dicts of several templates (JoyImage-Edit keys
            its ``prompt_template_encode`` and ``prompt_template_encode_start_idx`` by template type: ``"image"``
            for its text-only path); ``None``: they are the values themselves.
    """

    template: str | ModuleConstant
    crop: str | int | ModuleConstant = 0
    suffix: str | None = None
    joiner: str = ""
    prefix: str = ""
    key: str | None = None

    def resolve(self, pipeline: Any = None, tokenizer: Any = None) -> dict[str, Any]:
        text = self._keyed(_read(self.template, pipeline))
        if callable(text):
            text = text("{}")
        if "{}" not in text:
            text = text + self.joiner + "{}"
        text = text.replace("{}", self.prefix + "{}")
        crop = self._keyed(_read(self.crop, pipeline))
        found: dict[str, Any] = {"template": text, "crop_start": crop}
        if self.suffix is not None:
            found["suffix_tokens"] = _pipeline_attribute(pipeline, self.suffix)
        return found

    def _keyed(self, value: Any) -> Any:
        if self.key is None or isinstance(value, int):
            return value
        if not isinstance(value, Mapping) or self.key not in value:
            raise ValueError(
                f"this tokenizer ladder reads the template {self.key!r} of a dict of templates; the pipeline holds "
                f"{value!r}"
            )
        return value[self.key]


@dataclass(frozen=True)
class CallPrefix:
    """The pipeline ``__call__``'s default of ``parameter`` (lines joined by newlines) prefixes the prompt, and of
    the prefix's tokens only the first ``kept`` and the last stay (Sana's ``complex_human_instruction``: ``<bos>``
    and the last ``max_sequence_length - 1`` tokens); an empty default means no prefix, or ``fallback``'s.

    Attributes:
        parameter: the ``__call__`` parameter.
        kept: how many of the prefix's leading tokens (special tokens included) the pipeline keeps.
        fallback: the prefix the pipeline uses when the parameter is empty (SANA-WM's ``chi_prompt`` defaults to
            ``None``, which means its module's ``DEFAULT_CHI_PROMPT``); ``None``: no prefix then.
    """

    parameter: str
    kept: int
    fallback: ModuleConstant | None = None

    def resolve(self, pipeline: Any = None, tokenizer: Any = None) -> dict[str, Any]:
        import inspect

        try:
            lines = inspect.signature(type(pipeline).__call__).parameters[self.parameter].default
        except (AttributeError, KeyError, TypeError, ValueError):
            raise ValueError(
                f"this tokenizer ladder reads the default {self.parameter} of the pipeline's call: pass the "
                "pipeline, not its tokenizers"
            ) from None
        if (not lines or lines is inspect.Parameter.empty) and self.fallback is not None:
            lines = self.fallback.value()
        if not lines or lines is inspect.Parameter.empty:
            return {"template": "{}", "crop_start": 0}
        prefix = lines if isinstance(lines, str) else "\n".join(lines)
        # Of the prefix's tokens (special tokens included) the first `kept` and the last one stay.
        dropped = len(tokenizer(prefix).input_ids) - self.kept - 1
        return {"template": prefix + "{}", "crop_start": dropped, "keep_start": self.kept}


@dataclass(frozen=True)
class TokenizerChatTemplate:
    """The tokenizer's own chat template around one user message.

    Attributes:
        options: keywords of ``apply_chat_template`` as ``(name, value)`` pairs (Z-Image's
            ``enable_thinking=True``).
        generation_prompt: whether the pipeline renders with ``add_generation_prompt=True``.
        system: the system message the pipeline puts before the user message: the pipeline attribute holding it
            (FLUX.2's ``system_message``) or a :class:`ModuleConstant` (NucleusMoE-Image's); ``None``: none.
        prefix: the pipeline attribute holding text the pipeline puts before the prompt inside the user message
            (Ovis-Image's ``system_prompt``); ``None``: the prompt alone.
        crop: the number of leading tokens the pipeline drops: the pipeline attribute holding it (Ovis-Image's
            ``user_prompt_begin_id``), a :class:`ModuleConstant`, or the number.
        content_parts: the roles (``"system"``, ``"user"``) whose content the pipeline passes as
            ``[{"type": "text", "text": ...}]`` (the multimodal form), not as a string.
        special_tokens: whether tokenizing the rendered text adds the tokenizer's special tokens (BOS); ``False``
            where the pipeline lets ``apply_chat_template`` tokenize (FLUX.2) or passes ``add_special_tokens=False``
            (Ideogram 4, Ovis-Image): the rendered template holds its special tokens as text.
    """

    options: tuple[tuple[str, Any], ...] = ()
    generation_prompt: bool = True
    system: str | ModuleConstant | None = None
    prefix: str | None = None
    crop: str | int | ModuleConstant = 0
    content_parts: tuple[str, ...] = ()
    special_tokens: bool = True

    def resolve(self, pipeline: Any = None, tokenizer: Any = None) -> dict[str, Any]:
        def message(role: str, text: str) -> dict[str, Any]:
            return {"role": role, "content": [{"type": "text", "text": text}] if role in self.content_parts else text}

        messages = []
        if self.system is not None:
            messages.append(message("system", _read(self.system, pipeline)))
        # A marker no template holds stands for the prompt, so the rendered text can carry "{}" in its place.
        marker = "\x00PROMPT\x00"
        prefix = "" if self.prefix is None else _pipeline_attribute(pipeline, self.prefix)
        messages.append(message("user", prefix + marker))
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=self.generation_prompt, **dict(self.options)
        )
        if "{" in text or "}" in text:
            raise ValueError(f"the tokenizer's chat template renders braces, which cannot be a template: {text!r}")
        crop = _read(self.crop, pipeline)
        return {"template": text.replace(marker, "{}"), "crop_start": crop, "add_special_tokens": self.special_tokens}


def _read(source: str | int | ModuleConstant, pipeline: Any) -> Any:
    """A value a template source names: a number as it is, a module constant, or a pipeline attribute."""
    if isinstance(source, int):
        return source
    if isinstance(source, ModuleConstant):
        return source.value()
    return _pipeline_attribute(pipeline, source)


def _pipeline_attribute(pipeline: Any, name: str) -> Any:
    """``pipeline.<name>`` for a tokenizer ladder that reads it.

    Raises:
        ValueError: no pipeline was given, or the pipeline has no such attribute (another pipeline of the family,
            e.g. FLUX.2 [klein], builds its text sequence another way).
    """
    if pipeline is None:
        raise ValueError(f"this tokenizer ladder reads the pipeline's {name}: pass the pipeline, not its tokenizers")
    # A dotted name reads through components (Stable Cascade's "prior.config.clip_seq").
    value = pipeline
    for attribute in name.split("."):
        if not hasattr(value, attribute):
            raise ValueError(
                f"{type(pipeline).__name__} has no {name}, which this family's tokenizer ladder reads: the ladder "
                "describes another pipeline of the family, so words cannot be mapped for this one"
            )
        value = getattr(value, attribute)
    return value


#: where a ``"chat_template"`` part's template comes from (see :attr:`TextPart.template`)
TemplateSource = DiffusersTemplate | PipelineTemplate | CallPrefix | TokenizerChatTemplate


@dataclass(frozen=True)
class TextPart:
    """One tokenizer's part of a denoiser's text sequence.

    Attributes:
        kind: ``"clip"``: ``<|startoftext|> words <|endoftext|> pad...`` over :data:`CLIP_LENGTH` positions (two
            CLIP encoders concatenated feature-wise share these positions); ``"t5"``: ``words </s> <pad>...`` over
            ``max_sequence_length`` positions (T5, umT5, and other tokenizers without a template);
            ``"chat_template"``: a chat template around the prompt, with the template's first ``crop_start``
            tokens cropped, over ``max_sequence_length`` positions.
        tokenizers: pipeline component names holding the tokenizer, the first one present is used.
        optional: the pipeline runs without this tokenizer and then fills the part with zero embeddings (SD3's T5).
        template: for ``"chat_template"``, where the template comes from: a :class:`DiffusersTemplate`,
            :class:`PipelineTemplate`, :class:`CallPrefix` or :class:`TokenizerChatTemplate`. A call's own
            ``prompt_template`` (HunyuanVideo) takes its place.
        spell: for ``"t5"``, ``"module:function"`` splitting the prompt into ``(piece, spelled)`` pairs that
            concatenate back to it; the pipeline tokenizes each piece on its own (no special tokens) and a spelled
            piece one character at a time (LongCat-Image's ``split_quotation``: quoted text, letter by letter).
        padding: for the parts that are not CLIP, where the pipeline pads the tokens to ``max_sequence_length``:
            ``"right"`` (after them), ``"left"`` (before them, so a word's positions depend on the prompt's token
            count), or ``"tokenizer"``: the tokenizer's own ``padding_side``, which the pipeline leaves as it is
            (FLUX.2's Mistral tokenizer pads on the left). Left padding is for templates that crop nothing.
        length: the part's own length where the pipeline pads it to a length of its own, not to the call's
            ``max_sequence_length``: a number, or the pipeline attribute holding it (HunyuanImage's
            ``tokenizer_max_length`` and ``tokenizer_2_max_length``; dotted through a component: Stable Cascade's
            ``"prior.config.clip_seq"``); ``None``: ``max_sequence_length`` (77 for CLIP). Required for
            ``"reserved"``.
        derive: for ``"t5"``, ``"module:function"`` turning the prompt into the text this part tokenizes (with
            special tokens, truncated to the part's length), ``None`` from it leaving the part all padding
            (HunyuanImage's ``extract_glyph_text``: the prompt's quoted text, formatted for ByT5). Its tokens hold
            no word: they spell a rewritten text, and the prompt's words sit in the other parts.

        valid_in: for ``"reserved"``, the pipeline classes in which its tokens are valid, not padding (HunyuanVideo
            1.5's image-to-video pipeline feeds SigLIP tokens of the image where the text-to-video one feeds masked
            zeros): where the recipe gathers valid tokens first, they then come before the words.

    The kind ``"reserved"`` is positions another input of the denoiser fills, which hold no word and count as
    padding (HunyuanVideo 1.5's image-prompt tokens, zeros and masked out in text-to-video; Stable Cascade's pooled
    text and image embeddings, each mapped to ``clip_seq`` tokens).
    """

    kind: str
    tokenizers: tuple[str, ...] = ("tokenizer",)
    optional: bool = False
    template: TemplateSource | None = None
    spell: str | None = None
    padding: str = "right"
    length: int | str | None = None
    derive: str | None = None
    valid_in: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in TEXT_PART_KINDS:
            raise ValueError(f"TextPart.kind must be one of {TEXT_PART_KINDS}; got {self.kind!r}")
        if (self.kind == "chat_template") != (self.template is not None):
            raise ValueError("TextPart.template is required for, and only for, kind='chat_template'")
        if self.template is not None and not isinstance(self.template, TemplateSource):
            raise ValueError(f"TextPart.template must be one of {TemplateSource}; got {self.template!r}")
        if self.spell is not None and self.kind != "t5":
            raise ValueError("TextPart.spell is only for kind='t5'")
        if self.padding not in PADDING_SIDES:
            raise ValueError(f"TextPart.padding must be one of {PADDING_SIDES}; got {self.padding!r}")
        if self.padding != "right" and self.kind == "clip":
            raise ValueError("TextPart.padding is only for the parts that are not CLIP")
        if self.derive is not None and (self.kind != "t5" or self.spell is not None):
            raise ValueError("TextPart.derive is only for kind='t5', without spell")
        if self.kind == "reserved" and self.length is None:
            raise ValueError("TextPart.length is required for kind='reserved'")
        if self.valid_in and self.kind != "reserved":
            raise ValueError("TextPart.valid_in is only for kind='reserved'")
        if isinstance(self.length, bool) or not (
            self.length is None or isinstance(self.length, str) or (isinstance(self.length, int) and self.length > 0)
        ):
            raise ValueError(
                f"TextPart.length must be a positive int, a pipeline attribute name or None; got {self.length!r}"
            )

    @property
    def words(self) -> bool:
        """Whether the prompt's words have positions in this part (not in a reserved or derived part)."""
        return self.kind != "reserved" and self.derive is None

    def own_length(self, pipeline: Any = None) -> int | None:
        """The part's :attr:`length` (read from ``pipeline`` where it names an attribute); ``None``: the call's
        ``max_sequence_length`` (or CLIP's 77).

        Raises:
            ValueError: the length is a pipeline attribute and no pipeline (or one without it) was given.
        """
        if self.length is None or isinstance(self.length, int):
            return self.length
        return int(_pipeline_attribute(pipeline, self.length))

    def padding_side(self, tokenizer: Any) -> str:
        """``"right"`` or ``"left"``: where the pipeline pads this part's tokens with ``tokenizer``."""
        if self.padding != "tokenizer":
            return self.padding
        return "left" if getattr(tokenizer, "padding_side", "right") == "left" else "right"

    def default_template(self, pipeline: Any = None, tokenizer: Any = None) -> dict[str, Any]:
        """The pipeline's chat template as ``{"template": ..., "crop_start": ...}`` (with ``keep_start``,
        ``suffix_tokens`` and ``add_special_tokens`` where the source says).

        Raises:
            ValueError: the template lives on the pipeline and no pipeline was given.
        """
        return self.template.resolve(pipeline, tokenizer)


@dataclass(frozen=True)
class PromptRecipe:
    """How a family's pipelines turn a prompt into the denoiser's text sequence (the tokenizer ladder).

    :func:`visattn.words.prompt_tokens` follows it to map each word of a prompt to its text positions.

    Attributes:
        parts: the text sequence's parts in order along the sequence (SD3: CLIP, then T5).
        max_sequence_length: the pipelines' default ``max_sequence_length`` (the length of every part that is
            not CLIP) when the pipeline's own signature does not say; ``None`` for CLIP-only families.
        clean: what the pipeline does to the prompt before tokenizing: ``"prompt_clean"`` (Wan's: HTML entities
            unescaped, whitespace collapsed), ``"lower"`` (lower-cased, stripped: PixArt's ``clean_caption=False``),
            ``"strip"`` (whitespace stripped from both ends: LTX-2).
        leading: positions the denoiser puts ahead of the parts in its text sequence, which hold no word
            (AuraFlow's 8 register tokens; UniDiffuser's two timestep tokens and data-type token).
        trailing: positions the denoiser puts after the parts, which hold no word (UniDiffuser's CLIP image
            token). With ``leading``, the family's ``text_extra_tokens``.
        pipelines: names of the pipeline classes whose text sequence this ladder describes, where other pipelines
            of the family build theirs another way (FLUX.2 [klein]'s Qwen3, Cosmos 2.5's Qwen2.5-VL): words are
            refused for the others. Empty: every pipeline of the family.
        valid_first: the denoiser gathers the parts' valid (unpadded) tokens to the front of its text sequence, in
            the parts' order, and puts every part's padding after them (HunyuanImage: ``[valid ByT5, valid MLLM,
            ByT5 padding, MLLM padding]``), so a word's positions follow the valid tokens of the parts before its
            part (the glyph tokens of the prompt's quoted text); each part's padding side then does not matter.
        refused_with: variables of the running pipeline call, its inputs or its locals, with which the pipeline
            builds its text sequence another way: DreamLite's ``image`` (its edit template puts the image's tokens
            before the words), ERNIE-Image's ``revised_prompts`` (set when its prompt enhancer rewrote the prompts),
            LongCat-Image's ``enable_prompt_rewrite``, FLUX.2's ``caption_upsample_temperature``, Ideogram 4's
            ``prompt_upsampling``, LTX-2's ``enable_prompt_enhancement``, Kandinsky 6's ``expand_prompts``. Words
            are refused while a call with any of them set runs (the text length cannot tell: these pipelines pad to
            the call's longest prompt); a number 0 is not set (FLUX.2 upsamples only at a temperature above it).
        rewriting_blocks: steps of a modular pipeline's blocks that rewrite the prompt before it is encoded
            (FLUX.3's auto blocks start with ``prompt_upsampler``, a Qwen3.5 that expands it into a long caption):
            words are refused for a pipeline whose blocks hold one, when an effect that needs them is attached
            (the encoded text is the rewrite; each prompt of an edit is rewritten apart).
    """

    parts: tuple[TextPart, ...]
    max_sequence_length: int | None = None
    clean: str | None = None
    leading: int = 0
    trailing: int = 0
    pipelines: tuple[str, ...] = ()
    valid_first: bool = False
    refused_with: tuple[str, ...] = ()
    rewriting_blocks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.clean not in (None, *PROMPT_CLEANING):
            raise ValueError(f"PromptRecipe.clean must be one of {PROMPT_CLEANING} or None; got {self.clean!r}")
        if self.variable and self.max_sequence_length is None:
            raise ValueError("a PromptRecipe with a t5 or chat_template part needs max_sequence_length")

    @property
    def fixed_length(self) -> int:
        """Positions of the CLIP parts, the parts of a numeric length, and the leading and trailing tokens: the
        length that does not depend on the call.

        Raises:
            ValueError: a part reads its length from the pipeline (:attr:`TextPart.length` names an attribute).
        """
        return self.fixed_length_in(None)

    def fixed_length_in(self, pipeline: Any) -> int:
        """:attr:`fixed_length` with the part lengths that are pipeline attributes read from ``pipeline``
        (Framepack's SigLIP image tokens).

        Raises:
            ValueError: a part reads its length from the pipeline and ``pipeline`` is ``None`` or lacks it.
        """
        if pipeline is None and any(isinstance(part.length, str) for part in self.parts):
            raise ValueError(
                "this PromptRecipe reads part lengths from the pipeline (TextPart.length names an attribute), so its "
                "fixed length depends on the pipeline"
            )
        return (
            self.leading
            + self.trailing
            + sum(CLIP_LENGTH if part.kind == "clip" else part.own_length(pipeline) or 0 for part in self.parts)
        )

    @property
    def variable(self) -> bool:
        """Whether the call's ``max_sequence_length`` sets part of the sequence's length."""
        return any(part.kind != "clip" and part.length is None for part in self.parts)

    def sequence_length_of(self, text_length: int, pipeline: Any = None) -> int | None:
        """The call's ``max_sequence_length`` for a text sequence of ``text_length`` (``None``: no part has that
        length); every such part is that long (HiDream's T5 and two Llama layers). Part lengths that are pipeline
        attributes are read from ``pipeline``.

        Raises:
            ValueError: a part's length is a pipeline attribute and ``pipeline`` is ``None`` or lacks it.
        """
        if not self.variable:
            return None
        return (text_length - self.fixed_length_in(pipeline)) // sum(
            part.kind != "clip" and part.length is None for part in self.parts
        )


@dataclass
class DenoiserInputs:
    """What the denoiser's forward hook reads from one call."""

    batch_size: int
    grid: tuple[int, int, int] | None
    timestep: float | None
    text_length: int | None = None
    #: the family's other tokens (:attr:`Family.other_tokens`) before and after the grid; ``None``: not readable
    other: tuple[int, int] | None = (0, 0)
    #: the latent input itself (not copied), for facts only the values tell (see ``visattn.state``)
    sample: torch.Tensor | None = None
    #: the call's timestep tensor where :attr:`timestep` was taken from the scheduler instead of read from it
    #: (reading would wait for the device): the denoiser hook checks the two agree once the device is done
    unread_timestep: torch.Tensor | None = None


@dataclass(frozen=True)
class Argument:
    """A forward argument, given by keyword (any of ``names``) or at ``position`` (``None``: keyword only)."""

    names: tuple[str, ...]
    position: int | None = None

    def read(self, args: tuple, kwargs: dict) -> Any:
        for name in self.names:
            if name in kwargs:
                return kwargs[name]
        if self.position is not None and len(args) > self.position:
            return args[self.position]
        return None


@dataclass(frozen=True)
class JoinedText:
    """A further text input the model joins to the family's ``text`` in its attention sequences (a second text
    encoder's tokens, image-prompt tokens): its tokens count toward the text length.

    Attributes:
        argument: the forward argument.
        axis: the axis that counts its tokens.
        times: how many tokens each of its entries along ``axis`` becomes (HiDream joins the Llama features of
            two layers: 2), or the config attribute that says so (Stable Cascade maps each CLIP embedding to
            ``config.clip_seq`` tokens).
    """

    argument: Argument
    axis: int = 1
    times: int | str = 1

    def length(self, model: torch.nn.Module, args: tuple, kwargs: dict) -> int:
        value = self.argument.read(args, kwargs)
        if not isinstance(value, torch.Tensor):
            return 0
        if value.ndim <= self.axis if self.axis >= 0 else value.ndim < -self.axis:
            return 0
        times = self.times
        if isinstance(times, str):
            times = int(getattr(getattr(model, "config", None), times, 1) or 1)
        return int(value.shape[self.axis]) * times


#: where a family's other tokens sit in its self and joint sequences (see :class:`OtherTokens`): between the text
#: (when it comes first) and the grid, or right after the grid (before the text when it comes last)
OTHER_POSITIONS = ("before_grid", "after_grid")


@dataclass(frozen=True)
class PaddedGrid:
    """The model pads the tokens of a non-square grid (height != width) to ``model.<size>`` tokens, the padding
    right after the grid's tokens; a square grid is not padded (HiDream's ``patchify``: ``max_seq``, from
    ``config.max_resolution`` and the patch size).

    Attributes:
        size: the model attribute holding the padded token count.
    """

    size: str

    def count(self, family: Family, model: torch.nn.Module, args: tuple, kwargs: dict, grid: Any) -> int | None:
        if grid is None or grid[1] == grid[2]:
            return 0
        size = getattr(model, self.size, None)
        tokens = math.prod(grid)
        return size - tokens if isinstance(size, int) and size >= tokens else None


@dataclass(frozen=True)
class LatentTokens:
    """Tokens of a latent input the model patch-embeds itself and puts in the sequence: per tensor, the product
    over its last axes of ``ceil(size / kernel)`` (a convolution whose input is padded to a multiple of its kernel:
    Framepack's history embedders); a list input counts each of its tensors (Bria FIBO 2's ``context_latents``).

    Attributes:
        argument: the forward argument (absent or ``None``: no tokens).
        kernel: the patch along the input's last axes, each an int or the config attribute holding it.
    """

    argument: Argument
    kernel: tuple[int | str, ...]

    def count(self, family: Family, model: torch.nn.Module, args: tuple, kwargs: dict, grid: Any) -> int | None:
        value = self.argument.read(args, kwargs)
        items = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
        config = getattr(model, "config", None)
        kernel = [k if isinstance(k, int) else getattr(config, k, None) for k in self.kernel]
        if not all(isinstance(k, int) and k > 0 for k in kernel):
            return None
        total = 0
        for item in items:
            if not isinstance(item, torch.Tensor) or item.ndim < len(kernel):
                return None
            sizes = item.shape[-len(kernel) :]
            total += math.prod(-(-int(size) // k) for size, k in zip(sizes, kernel))
        return total


@dataclass(frozen=True)
class CountedTokens:
    """A token count the model derives from its inputs by a rule of its own, computed by a named counter of
    :mod:`visattn.families.readers` (:data:`~visattn.families.readers.TOKEN_COUNTERS`; Bria FIBO 2's gist count,
    from the text length and the config, with diffusers' own function; MiniMax-H3's rows between the text and the
    grid, from its row indices).

    Attributes:
        counter: the counter's name.
    """

    counter: str

    def count(self, family: Family, model: torch.nn.Module, args: tuple, kwargs: dict, grid: Any) -> int | None:
        from .readers import TOKEN_COUNTERS

        return TOKEN_COUNTERS[self.counter](family, model, args, kwargs, grid)


@dataclass(frozen=True)
class OtherTokens:
    """Tokens a family's self and joint sequences hold besides the latent grid and the text (pad tokens, gist
    tokens, history latents), placed so that effects can tell them apart (:attr:`visattn.context.TokenLayout.other`
    says how each effect treats them).

    Attributes:
        what: what they are, in words (for messages).
        position: one of :data:`OTHER_POSITIONS`; several groups at one position sit in the order declared.
        count: how many there are in one call: :class:`PaddedGrid`, :class:`LatentTokens` or
            :class:`CountedTokens`; a count that cannot be read (``None``) leaves the call's sequences unplaced.
    """

    what: str
    position: str
    count: PaddedGrid | LatentTokens | CountedTokens

    def __post_init__(self) -> None:
        if self.position not in OTHER_POSITIONS:
            raise ValueError(f"OtherTokens.position must be one of {OTHER_POSITIONS}; got {self.position!r}")


@dataclass(frozen=True)
class ReorderedGrid:
    """A way a family's forward can order the latent grid's tokens other than frame by frame, row by row, which
    visattn does not place (Kandinsky 5's NABLA attention lays the video out in 8 x 8 tiles): effects that need the
    grid would read its tokens at the wrong positions, so they are refused, at attach where the model's config
    asks for it on every call, and at a call that passes the input.

    Attributes:
        argument: the forward input that asks for the order: a mapping whose ``flag`` is true.
        flag: the key of that input that asks for the order.
        config: ``(attribute, value)`` of the model's config with which the family's pipelines pass it on every
            call; ``None``: only the call tells.
        what: the order, in words (for messages).
    """

    argument: Argument
    flag: str
    config: tuple[str, Any] | None
    what: str

    def asked_by_config(self, model: torch.nn.Module) -> bool:
        if self.config is None:
            return False
        attribute, value = self.config
        return getattr(getattr(model, "config", None), attribute, None) == value

    def asked_by_call(self, args: tuple, kwargs: dict) -> bool:
        value = self.argument.read(args, kwargs)
        return isinstance(value, Mapping) and bool(value.get(self.flag))

    def refusal(self, effect: str, model: torch.nn.Module, family: str, by_config: bool) -> str:
        """Why ``effect``, which needs the grid, cannot run on ``model`` (of family ``family``)."""
        if by_config:
            attribute, value = self.config
            asked = f"{type(model).__name__} with {attribute}={value!r} (family {family!r})"
        else:
            asked = f"a call of {type(model).__name__} (family {family!r}) with {self.argument.names[0]}[{self.flag!r}]"
        return (
            f"{effect} needs the latent grid, but {asked} orders the grid's tokens {self.what}, which visattn does "
            "not place; effects that do not need the grid (PAG, Prompt-to-Prompt without a local blend, TGATE) "
            "are not refused"
        )


#: an input and how it carries the batch: one of the kinds above, or the axis of the batch (an int)
BatchInput = tuple[Argument, int | str]


@dataclass(frozen=True)
class Family:
    """One denoiser family: the classes it covers and the facts the generic path cannot infer.

    Attributes:
        name: the family key, the one vocabulary of the package (``visattn.tiny``, words, the app, batch).
        classes: diffusers class names of the denoisers (matched along the MRO, so subclasses are covered).
        sample: the latent input argument.
        layout: axes of the latent input: ``"BCHW"``, ``"BCFHW"``, ``"BFCHW"``, ``"BFHWC"``, ``"auto"`` (4-D is
            ``BCHW``, 5-D ``BCFHW``), ``"BNCFHW"`` (``[B, items, C, F, H, W]``, references first and the generated
            item last, which the model moves first and concatenates along frames, so the grid's frames hold the
            generated item, then the references; a 5-D input is one item, ``BCFHW``: JoyImage-Edit), or
            ``"packed"`` (tokens ``[B, N, C]`` whose grid ``grid_reader`` recovers from other arguments).
        patch: config attribute of the spatial patch size (an int, or a ``(t, h, w)`` tuple); ``None``: 1.
        patch_t: config attribute of the temporal patch size; ``None``: 1 (or the tuple's first entry).
        grid_reader: name of a reader in :mod:`visattn.families.readers` for packed latents.
        timestep: the timestep argument.
        timestep_divisor: the model is called with ``scheduler timestep / timestep_divisor``.
        timestep_reversed: the model is called with ``1 - scheduler timestep / 1000`` (1 means clean).
        text: the text hidden-states argument (its length is the text length); ``None``: no text.
        text_extra_tokens: tokens the model puts before the text in its joint sequences (AuraFlow's 8 registers);
            they count as text.
        joined_text: further text inputs the model joins to ``text`` (a second encoder's tokens, image-prompt
            tokens, in whatever order the model puts them): their tokens count as text, so that the text span of
            a call covers every conditioning token (HunyuanImage's ByT5 glyph tokens, HunyuanDiT's T5 tokens).
        text_axis: the axis of the text argument that counts its tokens (Allegro's pipeline passes
            ``[B, 1, T, D]``: ``-2``).
        text_length_config: config attribute of the length the model pads every sample's text to, which is then
            the text length of every call whatever the argument's shape (Wan-Animate 2 takes a per-sample list of
            unpadded embeddings and pads each to ``config.text_len``); ``None``: the text argument's length.
        text_position: ``"first"`` or ``"last"``: where text sits in joint sequences; ``None``: no joint attention.
        cross_keys_lead_with_text: cross-attention keys hold the text first, then other conditioning tokens
            (I2VGenXL appends the image's tokens), so the text span is the keys' first text-length tokens.
        roles: ``(regex, role)`` pairs searched in attention-module names, first match wins, for roles the
            module alone does not tell (a single-stream block fed the concatenated sequence is ``"joint"``;
            cross-attention between the video and another generated stream, LTX-2's and Kandinsky 6's video/audio
            attention, is ``"stream"``: its keys are never text, whatever their count, and no effect acts on it).
        other_stream_layers: regular expressions of attention modules over another generated stream's tokens
            (audio self-attention, the audio's cross-attention to its text): their queries are never placed on the
            latent grid, even where the stream's length equals the grid's token count (grid effects leave them
            alone; perturbation guidance and text effects still act as on any self or cross layer).
        unet_levels: the grid halves (rounding up) at each UNet level.
        frames_in_batch: spatial attention sees each frame as its own batch row (video UNets).
        video: the latents have a frames axis.
        prompt: how the family's pipelines tokenize a prompt (words to text positions); ``None``: not declared,
            so text effects address text positions, not words.
        packed_patch: latent pixels per side of one token of a ``"packed"`` layout (the pipelines pack 2x2).
        cfg: how the pipelines run classifier-free guidance when they do: ``"batched"``, one call on
            ``[uncond, cond]`` rows (the diffusers convention); ``"batched_cond_first"``, one call on
            ``[cond, uncond]`` (Z-Image); ``"separate"``, one call per branch, the conditional first, at the same
            timestep. Calls a pipeline names itself (``transformer.cache_context("cond")``) need no declaration.
        cfg_formula: how the pipelines combine the branches: ``"uncond_plus"``, ``u + g * (c - u)`` (the
            diffusers convention); ``"cond_plus"``, ``c + g * (c - u)`` (Z-Image), which weighs the conditional
            prediction by ``1 + g``.
        batch_inputs: the forward inputs that do not lead with the batch, each with how it carries it (one of
            :data:`NOT_BATCHED_INPUT`, :data:`PER_SAMPLE_LIST`, :data:`FOLDED`, or the batch's axis), so that a
            perturbation branch copies rows correctly (:mod:`visattn.denoiser_batch`); every other tensor whose leading
            axis is the batch is copied row by row.
        context_before_grid: self-attention puts context latents before the grid (Helios's history), so the
            grid is the sequence's last tokens and every token before it is another token (as :attr:`other_tokens`
            before the grid, counted from the call's length).
        other_tokens: tokens the self and joint sequences hold besides the grid and the text, with where they sit
            and how many there are (:class:`OtherTokens`: HiDream's padding, Bria FIBO 2's gist tokens,
            Framepack's history latents).
        joint_one_stream: the joint sequences are one stream where diffusers' context-parallel plan splits them (the
            model packs every modality into one sequence before the block its plan splits: MiniMax-H3), so a
            Ulysses call gathers them in sequence order, not stream by stream (``[text_r, image_r]`` per rank).
        one_sample_per_call: the forward takes one sample per call, without a batch axis (Cosmos 3 Omni packs
            one sample's text and vision tokens into one sequence): a perturbation branch runs as its own call.
        reordered_grid: a way the forward can order the grid's tokens that visattn does not place
            (:class:`ReorderedGrid`); effects that need the grid are refused where it is asked for.
        opaque_layers: regular expressions of attention modules whose attention visattn cannot take over in the calls
            that predict (Wan-Animate 2's self-attention is flex attention there): never hooked, as modules whose
            processor bypasses ``scaled_dot_product_attention``.
        auxiliary_calls: forward keyword values that mark a call predicting nothing (Wan-Animate 2's
            ``kv_cache_mode="extract"`` pass, which fills a key/value cache from the driving video): such a call
            runs stock, no effect acts in it.
        pag_layers: where perturbation guidance acts by default, in diffusers' ``pag_applied_layers`` naming (the
            default of diffusers' PAG pipeline for the family); ``None``: the middle self/joint layer.
        cp_plan: builds the context-parallel plan visattn ships for a class diffusers gives none (a ``_cp_plan``
            of ``ContextParallelInput``/``ContextParallelOutput`` per submodule, for
            ``model.enable_parallelism(cp_plan=...)``; see :func:`visattn.parallel.context_parallel_plan`); a
            builder so that importing the families does not import diffusers. ``None``: no plan shipped.
        cp_gather_inputs: ``(submodule, argument, dim)`` of inputs the plan splits for the forward that a submodule
            needs whole (HunyuanVideo's token refiner reads the whole prompt mask): gathered back along ``dim``
            before it runs, by :func:`visattn.parallel.enable_context_parallelism`.
        cp_gather_outputs: ``(submodule, output, dim)`` of outputs the forward needs whole after a submodule runs:
            element ``output`` of its output (``0`` for a bare tensor) gathered along ``dim`` from every rank, as a
            ``ContextParallelOutput`` entry of a plan gathers a module's output, for a point no plan entry can name:
            a forward that reshapes or slices the tokens right after its last block (Kandinsky 6, Framepack), whose
            index depends on the config (``"blocks.-1"``: the last module of the list ``blocks``, resolved per
            model), or a block whose output holds ``None`` (diffusers' gather hook takes tensors only). Installed by
            :func:`visattn.parallel.enable_context_parallelism`.
        cp_joint_masks: ``(submodules, mask, streams)``: the key mask argument ``mask`` of ``submodules`` (a plan key,
            ``*`` for every module of a list) covers the joint sequence of the arguments ``streams`` concatenated,
            built whole by the forward while the plan splits each stream (Framepack's ``[latents, condition]``):
            cut on each rank to its share of every stream, the layout of its joint keys, before the module runs.
            Installed by :func:`visattn.parallel.enable_context_parallelism`.
        cp_split_counts: the name of a reader in :data:`visattn.families.readers.SPLIT_COUNTS` of the token counts
            the plan splits, where the latent grid and the text do not give them (Framepack's packed history, its
            image and text condition): each must divide the context-parallel degree, checked before any step.
        cp_no_plan: why no context-parallel plan fits a class that has none (from diffusers or in
            :attr:`cp_plan`), read from its forward and processors; the context parallel column of
            ``docs/models.md`` shows it.
        known: declared by visattn (``False`` for the generic fallback of a class never seen).
    """

    name: str
    classes: tuple[str, ...] = ()
    sample: Argument = Argument(("hidden_states", "sample", "x"), 0)
    layout: str = "BCHW"
    patch: str | None = "patch_size"
    patch_t: str | None = "patch_size_t"
    grid_reader: str | None = None
    timestep: Argument = Argument(("timestep", "timesteps", "t"))
    timestep_divisor: float = 1.0
    timestep_reversed: bool = False
    text: Argument | None = Argument(("encoder_hidden_states",))
    text_extra_tokens: int = 0
    joined_text: tuple[JoinedText, ...] = ()
    text_axis: int = 1
    text_length_config: str | None = None
    text_position: str | None = None
    cross_keys_lead_with_text: bool = False
    roles: tuple[tuple[str, str], ...] = ()
    other_stream_layers: tuple[str, ...] = ()
    unet_levels: bool = False
    frames_in_batch: bool = False
    video: bool = False
    prompt: PromptRecipe | None = None
    packed_patch: int = 2
    cfg: str = "batched"
    cfg_formula: str = "uncond_plus"
    batch_inputs: tuple[BatchInput, ...] = ()
    context_before_grid: bool = False
    other_tokens: tuple[OtherTokens, ...] = ()
    joint_one_stream: bool = False
    one_sample_per_call: bool = False
    auxiliary_calls: tuple[tuple[str, Any], ...] = ()
    reordered_grid: ReorderedGrid | None = None
    opaque_layers: tuple[str, ...] = ()
    pag_layers: tuple[str, ...] | None = None
    cp_plan: Callable[[], dict[str, Any]] | None = field(default=None, compare=False)
    cp_gather_inputs: tuple[tuple[str, str, int], ...] = ()
    cp_gather_outputs: tuple[tuple[str, int, int], ...] = ()
    cp_joint_masks: tuple[tuple[str, str, tuple[str, ...]], ...] = ()
    cp_split_counts: str | None = None
    cp_no_plan: str | None = None
    known: bool = True
    _compiled_roles: tuple = field(default=(), init=False, repr=False, compare=False)

    def is_other_stream(self, layer_name: str) -> bool:
        """Whether the queries of ``layer_name`` are another generated stream's tokens (:attr:`other_stream_layers`)."""
        return any(re.search(pattern, layer_name) for pattern in self.other_stream_layers)

    def is_opaque(self, layer_name: str) -> bool:
        """Whether visattn cannot take the attention of ``layer_name`` over (:attr:`opaque_layers`)."""
        return any(re.search(pattern, layer_name) for pattern in self.opaque_layers)

    def is_auxiliary(self, kwargs: dict[str, Any]) -> bool:
        """Whether a forward called with ``kwargs`` predicts nothing (:attr:`auxiliary_calls`)."""
        if not self.auxiliary_calls:
            return False  # most families (this runs at every denoiser call)
        return any(name in kwargs and kwargs[name] == value for name, value in self.auxiliary_calls)

    def __post_init__(self) -> None:
        if self.text_position not in (None, *TEXT_POSITIONS):
            raise ValueError(f"text_position must be one of {TEXT_POSITIONS} or None; got {self.text_position!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}; got {self.layout!r}")
        if self.cfg not in CFG_KINDS:
            raise ValueError(f"cfg must be one of {CFG_KINDS}; got {self.cfg!r}")
        if self.cfg_formula not in CFG_FORMULAS:
            raise ValueError(f"cfg_formula must be one of {CFG_FORMULAS}; got {self.cfg_formula!r}")
        for _, role in self.roles:
            if role not in LAYER_ROLES:
                raise ValueError(f"roles: {role!r} is not a layer role; roles are {LAYER_ROLES}")
        object.__setattr__(self, "_compiled_roles", tuple((re.compile(p), role) for p, role in self.roles))

    # --- attach time ---------------------------------------------------------------------------------------
    def static_role(self, name: str, module: torch.nn.Module) -> str:
        """The role of an attention module known before any call (``layers=["self" | "cross" | "joint"]``)."""
        for pattern, role in self._compiled_roles:
            if pattern.search(name):
                return role
        if getattr(module, "added_kv_proj_dim", None) is not None or getattr(module, "add_q_proj", None) is not None:
            return "joint"
        return "cross" if getattr(module, "is_cross_attention", False) else "self"

    def default_pag_layers(self, roles: dict[str, str]) -> tuple[str, ...]:
        """Where perturbation guidance acts by default on a denoiser whose attention layers have ``roles``
        (``name -> static role``): the family's declared :attr:`pag_layers`, else the middle self/joint layer
        (a transformer has no mid block)."""
        if self.pag_layers is not None:
            return self.pag_layers
        candidates = [name for name, role in roles.items() if role in ("self", "joint")]
        if not candidates:
            raise ValueError(f"the {self.name} family's model has no self or joint attention layer to perturb")
        return ("^" + re.escape(candidates[len(candidates) // 2]) + "$",)

    def missing(self, fact: str) -> str | None:
        """Why this family cannot provide ``fact`` (one of :data:`FACTS`), or ``None`` when it can (or, for the
        generic fallback, may: that is only known at the first call)."""
        if fact not in FACTS:
            raise ValueError(f"fact must be one of {FACTS}; got {fact!r}")
        if fact == "text" and self.text is None:
            return "takes no text: its forward has no text hidden-states input"
        if fact == "grid" and self.layout == "packed" and self.grid_reader is None:
            return "packs its latents into tokens and declares no grid reader, so the latent grid is unknown"
        if fact == "words" and self.known and self.prompt is None:
            return (
                "declares no tokenizer ladder (visattn.families PromptRecipe), so words cannot be mapped to its "
                "text positions; pass visattn.words.PromptTokens where the effect takes them"
            )
        return None

    # --- call time -----------------------------------------------------------------------------------------
    def read_inputs(
        self,
        model: torch.nn.Module,
        args: tuple,
        kwargs: dict,
        schedule: Schedule | None = None,
        scheduler_step: int | None = None,
    ) -> DenoiserInputs:
        """Batch size, latent grid, timestep and text length of one forward call.

        With the running scheduler's ``schedule``, a timestep that is a view of its timesteps is read from their
        values, known on the host (no device sync per call where the timesteps live on a GPU). Where the scheduler
        says which step it takes next (``scheduler_step``, its ``step_index``) and reading the call's timestep would
        wait for the device (:func:`reading_waits`: Flux's ``t / 1000``, a cast copy, a per-token map), the timestep
        is that step's, in the model's units, and the tensor is handed on unread (``unread_timestep``) to be
        checked once the device is done."""
        read_grid = _read_grid()
        sample = latents = self.sample.read(args, kwargs)
        if not isinstance(sample, torch.Tensor):
            sample = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        raw_timestep = self.timestep.read(args, kwargs)
        timestep = unread = None
        if (
            isinstance(raw_timestep, torch.Tensor)
            and reading_waits(raw_timestep)
            and scheduler_step is not None
            and schedule is not None
            and raw_timestep.numel()
            # torch.compile tracing this hook would guard on the scheduler's step (a graph per step)
            and not torch.compiler.is_compiling()
            and (timestep := _scheduled_value(raw_timestep, schedule)) is None
        ):
            timestep, unread = self.model_timestep(schedule.values[scheduler_step]), raw_timestep
        elif timestep is None:
            timestep = _timestep_value(raw_timestep, schedule, clean_is_high=self.timestep_reversed)
        text = self.text.read(args, kwargs) if self.text is not None else None
        text_length = text.shape[self.text_axis] if isinstance(text, torch.Tensor) and text.ndim >= 3 else None
        if text is not None and self.text_length_config is not None:
            # The model pads the text itself (a per-sample list has no length of its own): the padded length is
            # what its attention calls see, and it tells text calls from image-context calls over other tokens.
            padded = getattr(getattr(model, "config", None), self.text_length_config, None)
            text_length = int(padded) if isinstance(padded, int) else text_length
        if text_length is not None and (self.text_extra_tokens or self.joined_text):
            text_length += self.text_extra_tokens + sum(part.length(model, args, kwargs) for part in self.joined_text)
        grid = read_grid(self, model, sample, args, kwargs) if sample is not None else None
        if isinstance(latents, (list, tuple)) and latents:
            # Per-sample latent lists (Z-Image, Wan-Animate 2, Cosmos 3): one item per batch row, whatever the
            # leading size of the first tensor argument, which the reader above falls back to.
            batch_size = len(latents)
        else:
            batch_size = sample.shape[0] if sample is not None else 0
        other = self._other_counts(model, args, kwargs, grid) if self.other_tokens else (0, 0)
        return DenoiserInputs(batch_size, grid, timestep, text_length, other, sample, unread)

    def _other_counts(self, model: torch.nn.Module, args: tuple, kwargs: dict, grid: Any) -> tuple[int, int] | None:
        """The other tokens (:attr:`other_tokens`) before and after the grid in one call, ``None`` if a count
        cannot be read."""
        before = after = 0
        for group in self.other_tokens:
            count = group.count.count(self, model, args, kwargs, grid)
            if count is None:
                return None
            if group.position == "before_grid":
                before += count
            else:
                after += count
        return before, after

    def scheduler_timestep(self, timestep: float | None) -> float | None:
        """The scheduler's timestep for the timestep the model was called with."""
        if timestep is None:
            return None
        if self.timestep_reversed:
            return (1.0 - timestep) * 1000.0
        return timestep * self.timestep_divisor

    def model_timestep(self, scheduler_timestep: float) -> float:
        """The timestep the model is called with at a scheduler timestep (:meth:`scheduler_timestep`'s inverse)."""
        if self.timestep_reversed:
            return 1.0 - scheduler_timestep / 1000.0
        return scheduler_timestep / self.timestep_divisor

    def level_grids(self, top: tuple[int, int, int] | None) -> tuple[tuple[int, int, int], ...]:
        """The grids attention layers may see: the top grid, and each UNet level's (halved, rounded up)."""
        if top is None:
            return ()
        frames, height, width = top
        grids = [top]
        while self.unet_levels and (height > 1 or width > 1) and len(grids) < 8:
            height, width = math.ceil(height / 2), math.ceil(width / 2)
            grids.append((frames, height, width))
        if self.frames_in_batch:
            # Video UNets fold frames into the batch: spatial layers see one frame per row, temporal layers one
            # pixel's frames (no grid of their own).
            return tuple((1, h, w) for _, h, w in grids)
        return tuple(grids)

    def prediction_axes(self, row_ndim: int) -> tuple[int | None, int, int] | None:
        """Where the grid's (frames, height, width) axes sit in one batch row of the prediction, which has the
        latent input's layout; ``None`` for packed latents, whose tokens run in grid order. A ``None`` frames
        axis: the row has none (images). For ``"BNCFHW"``, the axes inside one item (see :meth:`grid_items`)."""
        layout = self.layout
        if layout == "auto":
            layout = "BCHW" if row_ndim == 3 else "BCFHW"
        if layout == "BNCFHW":
            layout = "BCFHW"  # each item (or a 5-D input's one item) is BCFHW
        return {
            "BCHW": (None, 1, 2),
            "BCFHW": (1, 2, 3),
            "BFCHW": (0, 2, 3),
            "BFHWC": (0, 1, 2),
            "packed": None,
        }[layout]

    def grid_items(self, row_ndim: int) -> bool:
        """Whether one prediction row of ``row_ndim`` axes leads with an items axis whose items the grid holds along
        its frames, the last item (the generated one) first (layout ``"BNCFHW"`` with 6-D latents): a grid mask
        then splits into per-item masks that :meth:`prediction_axes` places inside each item."""
        return self.layout == "BNCFHW" and row_ndim == 5

    def token_stride(self, denoiser: torch.nn.Module) -> int:
        """Latent pixels per side of one token of the denoiser's grid: the spatial patch size (the pipeline's
        packing for packed layouts)."""
        if self.layout == "packed":
            return self.packed_patch
        if self.patch is None:
            return 1
        patch = getattr(getattr(denoiser, "config", None), self.patch, None) or 1
        return int(patch[-1] if isinstance(patch, (tuple, list)) else patch)


@functools.cache
def _read_grid():
    """:func:`visattn.families.readers.read_grid`, imported once (``readers`` imports this module)."""
    from .readers import read_grid

    return read_grid


@dataclass(frozen=True)
class Schedule:
    """A scheduler's timesteps (a 1-D tensor, as it holds them) and their values, read once to the host."""

    timesteps: torch.Tensor
    values: list[float]


def _timestep_value(timestep: Any, schedule: Schedule | None = None, clean_is_high: bool = False) -> float | None:
    """The timestep of a call as a float: the first batch row's (pipelines pass a scalar, a batch, or a per-token map).

    A per-token map (``[batch, tokens, ...]``) is read at its noisiest token: where a pipeline conditions some
    tokens (Wan 2.2's and LTX's image-to-video give the first frame's tokens timestep 0, clean), those tokens say
    nothing of the step, and they may come first. Noisiest is the largest timestep, or the smallest where the model
    counts the other way (``clean_is_high``: 1 means clean).

    A timestep that is a view of ``schedule``'s timesteps (SD, SDXL and SD3 pass the scheduler's ``t`` itself or
    ``t.expand(batch)``, Wan too) is read from the values held on the host: reading the tensor would wait for the
    device at every denoiser call where the timesteps live on a GPU."""
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        if timestep.numel() == 0:
            return None
        if schedule is not None:
            value = _scheduled_value(timestep, schedule)
            if value is not None:
                return value
        if timestep.ndim <= 1 and timestep.numel() <= 64:
            # A scalar or one per batch row (every pipeline's call): one host read, no indexing op.
            values = timestep.tolist()
            return float(values[0] if timestep.ndim else values)
        return float(noisiest_timestep(timestep, clean_is_high))
    if isinstance(timestep, (int, float)):
        return float(timestep)
    return None


def reading_waits(timestep: torch.Tensor) -> bool:
    """Whether reading ``timestep``'s value on the host would wait for its device (a CUDA tensor: the host read
    waits for every kernel queued before it, which the stock denoising loops never do per step)."""
    return timestep.is_cuda  # not .device.type: that makes a device object per call


def noisiest_timestep(timestep: torch.Tensor, clean_is_high: bool = False) -> torch.Tensor:
    """The value :func:`_timestep_value` reads, as a 0-d tensor on the timestep's device (no host read)."""
    if timestep.ndim == 0:
        return timestep
    if timestep.ndim == 1:
        return timestep[0]
    return timestep[0].amin() if clean_is_high else timestep[0].amax()


def _scheduled_value(timestep: torch.Tensor, schedule: Schedule) -> float | None:
    """The value of ``timestep``'s first element where it is an element of ``schedule``'s timesteps (a view of
    them, same dtype), else ``None``."""
    held = schedule.timesteps
    # A view's _base is the tensor it views (a view of a view: the first one's): a cheap first test that most other
    # timesteps (Flux's t / 1000, a cast copy) fail.
    if timestep._base is not held or type(timestep) is not torch.Tensor or timestep.dtype != held.dtype:
        return None
    if held.ndim != 1 or held.stride(0) <= 0 or torch.compiler.is_compiling():
        return None
    index, rest = divmod(timestep.storage_offset() - held.storage_offset(), held.stride(0))
    if rest or not 0 <= index < len(schedule.values):
        return None
    return float(schedule.values[index])
