"""Prompt-to-Prompt: edit a generation by editing its text, keeping the source's layout through its attention.

Hertz et al., 2022, "Prompt-to-Prompt Image Editing with Cross Attention Control": the source and the target
prompt are generated together from the same noise; during the first part of sampling the target's
cross-attention probabilities are replaced by the source's, so the target keeps the source's composition and
only what the changed words control changes. Three edits:

* word swap, :meth:`PromptToPrompt.replace`: same word count; target token ``i`` takes the source's map of token
  ``i`` (a swapped word with another token count receives the source word's mass spread evenly).
* refinement, :meth:`PromptToPrompt.refine`: words added or removed; maps go through a word alignment
  (:mod:`visattn.alignment`), and target tokens with no source counterpart keep their own maps.
* re-weighting, :meth:`PromptToPrompt.reweight`: one prompt; chosen tokens' probabilities are multiplied by a
  scale (combinable with a swap or a refinement through ``weights=``).

Self-attention maps are injected too during ``self_steps``, and :class:`LocalBlend`
(:mod:`visattn.effects.local_blend`) keeps everything outside the edited words' region equal to the source.
Video-P2P (Liu et al., 2023) applies the same edits to video models; here the video families (Wan, CogVideoX,
HunyuanVideo) use the same code, with per-frame maps.

How it maps onto visattn
------------------------
* The batch. ``pipe(prompt=p2p.prompts, generator=p2p.generator(seed))``: diffusers repeats each prompt
  ``num_images_per_prompt`` times in a row, so every branch of the denoiser's batch (``"uncond"`` and
  ``"cond"`` with classifier-free guidance, one branch per call for Wan, guidance-distilled Flux and
  HunyuanVideo, a ``"perturbed:k"`` twin of the conditional rows added by PAG) holds ``n`` source rows followed
  by ``n`` target rows. Row ``j`` of the first half pairs with row ``j`` of the second half.
* Which branches are edited. Like the authors' implementation, the conditional branches (every branch but
  ``"uncond"``) are edited and the unconditional one is left alone; ``edit_uncond=True`` also injects the
  source's unconditional maps into the target's (identity token mapping: both use the same negative prompt).
* The same noise. As the authors' notebooks make one latent for every prompt, the effect gives the target rows
  the source rows' initial latents, whatever generator the call gets (or none): attached to a pipeline, it wraps
  the pipeline's ``prepare_latents`` until detach (:meth:`PromptToPrompt.prepare_pipeline`). With
  :meth:`PromptToPrompt.generator` (one identically seeded generator per row) the source rows are exactly a
  plain generation with that seed (up to float rounding of a larger batch).
  At the first step the effect checks that the rows agree and raises a ValueError otherwise (a denoiser driven
  by hand with different noise per row), since an edit from different noise is silently meaningless.
* Cross-attention (SD 1.x/2.x, SDXL, PixArt, Wan: role ``"cross"``) is edited as in the paper; rows are not
  renormalized (a refinement's added word keeps its own probability on top of the source's, a re-weighted
  word's probability is scaled), exactly as the authors' code does.
* Joint attention (SD3, Flux, CogVideoX, HunyuanVideo: role ``"joint"``): in the rows of latent queries, the
  latent-to-text block of the joint softmax is the cross-attention and the latent-to-latent block is the
  self-attention. The text block is edited like a cross-attention map; the latent block (the source's during
  ``self_steps``, the target's own otherwise) is then rescaled so that every row sums to one again: it takes
  the mass the edited text block leaves (``1 - sum(text)``), keeping its shape. If the edited text block alone
  exceeds one (a large re-weighting), it is itself normalized to one and the latent block gets zero. The source
  rows go through the same normalization (a no-op up to rounding), so an identity edit stays bit-exact. Rows of
  text queries are not edited.
* Self-attention (role ``"self"``) of the target is replaced by the source's during ``self_steps``. The
  authors restrict this to layers of at most 16x16 tokens on SD; here every selected layer is injected, and
  ``layers=`` restricts it.
* Composition. The edit is an editor of the attention core's probability stage
  (:mod:`visattn.kernels.probabilities`): the core computes the call with every other effect's pattern, score
  modifier, attention mask and identity blend, in whatever order the effects were given, and the edit changes
  the softmax's probabilities before they weight the values; reads of the same call
  (:class:`~visattn.effects.AttentionMaps`) see the edited probabilities, and the local blend reads the
  probabilities before the edit (as the authors' ``AttentionStore`` stores them). Calls outside every window are
  not touched.
* Speed. In cross-attention over text keys the edit is linear over the keys: target token ``t`` receives
  ``sum_s mapper[s, t] * P_src[s]`` where it is injected, its own ``P_tgt[t]`` otherwise, times the equalizer
  where the schedule controls it. It is handed to the core as a :class:`~visattn.kernels.LinearEdit` (one per
  pair of row halves), which computes it as attention over mixed values, ``attention(q_src, k_src, mix @ v_tgt)``
  (plus ``attention(q_tgt, k_tgt, keep * v_tgt)`` where target tokens keep their own maps: a refinement's added
  words, a word's shorter schedule), on any backend and without materializing probabilities, unless another
  effect adds a pattern or score modifier to the call. Joint attention's edit renormalizes the image block
  against the edited text block, which is not linear, but each of its parts (the text block's and the other keys'
  weighted values, and their sums) is an attention call over values that are zero outside one block: joint calls
  (and cross calls with keys besides the text) hand the core a :class:`~visattn.kernels.TextBlockEdit` per pair,
  computed so on any backend without materializing probabilities (the reference backend, which another effect's
  pattern or score modifier needs, runs it materialized, chunk by chunk). Where self-attention and every text
  token are injected through an identity map (no re-weighting, every word's window open), the target's
  image-query rows are the source's whole rows: attention with the source rows' image queries and keys over the
  target's values (a :class:`~visattn.kernels.LinearEdit` of those queries), cheaper still. Where the
  edit is attention with the source rows' queries and keys (self-attention injection, a word swap with an
  identity map), the target rows' queries and keys are the source rows' before the call runs
  (:meth:`PromptToPrompt.shared_query_key_rows`): projected so on large layers, copied in place on small ones.
* Per-row processors. A processor that calls attention once per batch row (Mochi) never puts a source and its
  target in one call: the layer hook keeps each source row's queries, keys and values until its target row's call
  in the same layer call, and answers that call with the pair (``pairs_rows``), using only the target's output.
  The source rows' own calls stay plain; the kept rows are released when the layer call ends. A family that takes
  one sample per call (Cosmos 3 Omni: source and target are separate denoiser calls) is refused at attach.
* Memory: no edit holds probabilities, except where another effect's pattern or score modifier has the reference
  backend run it materialized, chunk by chunk (``batch x heads x 1024 queries x keys`` floats at a time; the
  authors' code holds them all).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from .. import validation
from ..alignment import TokenMap, token_map, word_pairs
from ..context import BatchLayout, CallContext, StepInfo
from ..denoiser_batch import prediction_of, with_prediction
from ..families import Family
from ..kernels.core import gather_rows
from ..kernels.probabilities import LinearEdit, ProbabilityRead, TextBlockEdit
from ..steps import in_steps, normalize_steps
from ..validation import check_weight
from ..words import PromptTokens, prompt_family, prompt_recipe, prompt_tokens, split_words
from .base import AttentionCall, Effect
from .local_blend import BlendRun, LocalBlend, _mask_for_prediction, blend_latents

__all__ = ["LocalBlend", "PromptToPrompt", "_mask_for_prediction"]

Window = tuple[float, float] | None

_UNCOND = "uncond"
_COND = "cond"


# --- argument checking ---------------------------------------------------------------------------------------


def _words(prompt: Any, parameter: str) -> tuple[str, ...]:
    if isinstance(prompt, PromptTokens):
        if not prompt.words:
            raise ValueError(f"{parameter} has no words: {prompt!r}")
        return prompt.words
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"{parameter} must be a non-empty prompt string or PromptTokens; got {prompt!r}")
    return tuple(word for word, _, _ in split_words(prompt))


def _text(prompt: str | PromptTokens) -> str:
    return prompt.prompt if isinstance(prompt, PromptTokens) else prompt


def _word_lookup(prompt: str, words: tuple[str, ...]) -> PromptTokens:
    """A position-less :class:`PromptTokens` whose ``index`` checks words (and lists the prompt's words)."""
    return PromptTokens(prompt, words, tuple(() for _ in words), (), 0)


def _window(value: Any, parameter: str) -> Window:
    """``None`` for never (``None`` or ``0``), else a ``(start, stop)`` fraction range."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0):
        return None
    if isinstance(value, bool):
        raise ValueError(f"{parameter} must be a fraction or a (start, stop) fraction range; got {value!r}")
    return normalize_steps(value, parameter)


def _self_active(window: Window, step: StepInfo) -> bool:
    """Whether self-attention is injected at ``step``: the authors' ``int(N * start) <= i < int(N * stop)``
    (``AttentionControlEdit.num_self_replace``), or the fraction range where the schedule is unknown."""
    if window is None:
        return False
    if step.index is None or not step.total:
        return in_steps(window, step.fraction)
    return int(step.total * window[0]) <= step.index < int(step.total * window[1])


def _cross_active(window: Window, step: StepInfo) -> bool:
    """Whether cross-attention is injected at ``step``: the authors' ``int((N + 1) * start) <= i <
    int((N + 1) * stop)`` (``get_time_words_attention_alpha``, a table of ``num_steps + 1`` rows read at step
    ``i``), or the fraction range where the schedule is unknown."""
    if window is None:
        return False
    if step.index is None or not step.total:
        return in_steps(window, step.fraction)
    rows = step.total + 1
    return int(rows * window[0]) <= step.index < int(rows * window[1])


def _cross_schedule(cross_steps: Any, prompt: str, words: tuple[str, ...]) -> dict[str, Window]:
    """``{"default": window, word: window, ...}``; a word missing from the dict follows ``"default"``, and a dict
    without ``"default"`` controls every other token for the whole schedule, as in the authors' code."""
    if not isinstance(cross_steps, Mapping):
        return {"default": _window(cross_steps, "cross_steps")}
    schedule = {"default": _window(cross_steps.get("default", 1.0), "cross_steps['default']")}
    lookup = _word_lookup(prompt, words)
    for word, value in cross_steps.items():
        if word == "default":
            continue
        if not isinstance(word, str):
            raise ValueError(f"cross_steps keys must be words of the target prompt or 'default'; got {word!r}")
        try:
            lookup.index(word)
        except ValueError as error:
            raise ValueError(f"cross_steps: {error}") from None
        schedule[word] = _window(value, f"cross_steps[{word!r}]")
    return schedule


def _check_weights(weights: Any, prompt: str, words: tuple[str, ...]) -> dict[str, float]:
    if weights is None:
        return {}
    if not isinstance(weights, Mapping):
        raise ValueError(f"weights must be a dict {{word: scale}}; got {weights!r}")
    lookup = _word_lookup(prompt, words)
    checked = {}
    for word, scale in weights.items():
        if not isinstance(word, str):
            raise ValueError(f"weights keys must be words of the target prompt; got {word!r}")
        try:
            lookup.index(word)
        except ValueError as error:
            raise ValueError(f"weights: {error}") from None
        # Bounded (visattn.validation.MAX_SCALE): a weight multiplies probabilities, and 1e39 overflows float32.
        checked[word] = check_weight(scale, f"weights[{word!r}]")
    return checked


# --- the batch ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pair:
    """One branch's rows: ``count`` source rows, then as many target rows."""

    name: str
    source: slice
    target: slice
    count: int


def _injects_joint_rows(plan: _Plan, ctx: CallContext) -> bool:
    """Whether ``plan``'s joint call injects self-attention and every text token through an identity map: the
    target rows' image queries then attend with the source rows' image queries and keys (their whole rows of
    probabilities, text and latent keys together), over the target's own values."""
    text = ctx.keys.text
    if plan.role != "joint" or not plan.self_on or not plan.edits or text is None or not text.length:
        return False
    return not plan.moves_values


def _pairs_of(layout: BatchLayout) -> tuple[_Pair, ...] | None:
    """The source/target halves of every branch, or ``None`` if some branch has an odd number of rows (made once per
    layout: every denoiser call and edited layer asks)."""
    key = layout.key
    pairs = _PAIRS.get(key, _NO_PAIRS)
    if pairs is _NO_PAIRS:
        pairs = []
        for name, start, stop in key:
            if (stop - start) % 2:
                pairs = None
                break
            half = (stop - start) // 2
            pairs.append(_Pair(name, slice(start, start + half), slice(start + half, stop), half))
        if len(_PAIRS) >= 256:
            _PAIRS.clear()
        pairs = _PAIRS[key] = None if pairs is None else tuple(pairs)
    return pairs


#: the pairs of each batch layout seen, by its key
_PAIRS: dict[tuple, tuple[_Pair, ...] | None] = {}
_NO_PAIRS = object()


# --- token resolution ----------------------------------------------------------------------------------------


@dataclass
class _Tokens:
    """The two prompts tokenized for one text-sequence length, and everything derived from them."""

    source: PromptTokens
    target: PromptTokens
    mapping: TokenMap
    windows: list[tuple[tuple[int, ...], Window]]
    default: Window
    equalizer: torch.Tensor | None
    blend_source: tuple[int, ...]
    blend_target: tuple[int, ...]
    #: the positions of LocalBlend's ``subtract`` words in each prompt (empty without any)
    subtract_source: tuple[int, ...]
    subtract_target: tuple[int, ...]
    _mixes: dict = field(default_factory=dict)
    _edits: dict = field(default_factory=dict)

    def alpha(self, step: StepInfo) -> torch.Tensor:
        """Per target text position, whether its cross-attention is injected at this step."""
        alpha = torch.full((self.mapping.length,), _cross_active(self.default, step), dtype=torch.bool)
        for positions, window in self.windows:
            alpha[list(positions)] = _cross_active(window, step)
        return alpha

    def value_mix(
        self, alpha: torch.Tensor, identity: bool, equalizer: torch.Tensor | None, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:func:`_value_mix`'s edit of the text keys, ``edited = source @ mix + target * keep`` (``keep`` ``None``
        where zero), made once per step pattern and device."""
        key = (bytes(alpha.tolist()), identity, equalizer is not None, device)
        if key not in self._mixes:
            mix, keep = _value_mix(None if identity else self.mapping, alpha, equalizer)
            self._mixes[key] = (mix.to(device), None if keep is None else keep.to(device))
        return self._mixes[key]

    def linear_edit(
        self, pair: _Pair, alpha: torch.Tensor, identity: bool, equalizer: torch.Tensor | None, device: torch.device
    ) -> LinearEdit:
        """The :class:`~visattn.kernels.LinearEdit` of ``pair`` with :meth:`value_mix`'s map, made once per rows,
        step pattern and device (so what it works out once, as :attr:`~visattn.kernels.LinearEdit.moves_values`,
        is not worked out again at every denoiser call)."""
        key = (pair.source.start, pair.source.stop, pair.target.start, pair.target.stop, bytes(alpha.tolist()))
        key += (identity, equalizer is not None, device)
        edit = self._edits.get(key)
        if edit is None:
            edit = self._edits[key] = LinearEdit(
                pair.source, pair.target, *self.value_mix(alpha, identity, equalizer, device)
            )
        return edit


@dataclass
class _PairEdit:
    pair: _Pair
    alpha: torch.Tensor | None  # per target text position; None for self-attention
    identity: bool  # the unconditional branch: same text on both sides, token i -> token i
    equalizer: torch.Tensor | None


@dataclass
class _Plan:
    role: str
    edits: list[_PairEdit]
    self_on: bool
    tokens: _Tokens | None
    collect: list[_Pair]
    #: what the calls of this plan reuse, by device: the cross-attention edits as LinearEdits, and the rows whose
    #: queries and keys each row of a self-attention call attends with
    _linear: dict = field(default_factory=dict)
    _self_rows: dict = field(default_factory=dict)
    _joint: dict = field(default_factory=dict)
    _blocks: dict = field(default_factory=dict)

    def linear_edits(self, device: torch.device) -> list[LinearEdit]:
        """The cross-attention edits as :class:`~visattn.kernels.LinearEdit` s, one per pair of row halves."""
        edits = self._linear.get(device)
        if edits is None:
            edits = self._linear[device] = [
                self.tokens.linear_edit(edit.pair, edit.alpha, edit.identity, edit.equalizer, device)
                for edit in self.edits
            ]
        return edits

    def joint_edits(self, device: torch.device, image: slice) -> list[LinearEdit]:
        """A joint call's edits where self-attention and every text token are injected through an identity map:
        each target row's ``image`` queries take the source row's probabilities over every key, as
        :class:`~visattn.kernels.LinearEdit` s of those queries (no matrix: the identity)."""
        key = (device, image.start, image.stop)
        edits = self._joint.get(key)
        if edits is None:
            edits = self._joint[key] = [
                LinearEdit(edit.pair.source, edit.pair.target, None, queries=image) for edit in self.edits
            ]
        return edits

    def text_block_edits(self, device: torch.device, text: slice, image: slice) -> list[TextBlockEdit]:
        """The edits of a joint call (or of a cross-attention call with keys besides the text) as
        :class:`~visattn.kernels.probabilities.TextBlockEdit` s of the ``image`` queries, one per pair of row halves:
        the ``text`` keys edited through :meth:`_Tokens.value_mix`'s map, the other keys the source's while
        self-attention is injected in a joint call (else the target's own), rescaled to what the text leaves; in a
        joint call the source rows go through the same renormalization (a no-op up to rounding)."""
        key = (device, text.start, text.stop, image.start, image.stop)
        edits = self._blocks.get(key)
        if edits is None:
            joint = self.role == "joint"
            edits = self._blocks[key] = [
                TextBlockEdit(
                    edit.pair.source,
                    edit.pair.target,
                    text,
                    *self.tokens.value_mix(edit.alpha, edit.identity, edit.equalizer, device),
                    others_from_source=joint and self.self_on,
                    queries=image,
                    renormalize_source=joint,
                )
                for edit in self.edits
            ]
        return edits

    @functools.cached_property
    def moves_values(self) -> bool:
        """Whether a cross-attention edit of the plan changes the target rows' values (see
        :attr:`~visattn.kernels.LinearEdit.moves_values`); read on the CPU, where the token maps are made."""
        return any(edit.moves_values for edit in self.linear_edits(torch.device("cpu")))

    @functools.cached_property
    def shared_rows(self) -> dict[int, int]:
        """Each target row of the plan's edits mapped to its source row."""
        return {
            target: source
            for edit in self.edits
            for source, target in zip(
                range(edit.pair.source.start, edit.pair.source.stop),
                range(edit.pair.target.start, edit.pair.target.stop),
                strict=True,
            )
        }

    def self_rows(self, batch: int, device: torch.device) -> torch.Tensor:
        """For a self-attention call of ``batch`` rows, the row whose queries and keys each row attends with: a
        target row takes its source row's (the source's self-attention map injected)."""
        rows = self._self_rows.get((batch, device))
        if rows is None:
            order = list(range(batch))
            for edit in self.edits:
                order[edit.pair.target] = range(edit.pair.source.start, edit.pair.source.stop)
            rows = self._self_rows[(batch, device)] = torch.tensor(order, device=device)
        return rows


#: plans one attachment keeps per generation (a generation makes a handful: roles x step patterns x batches)
_PLANS_KEPT = 64
_NO_PLAN = object()


@dataclass
class _Run:
    """What one attachment of a :class:`PromptToPrompt` learns while editing (:meth:`PromptToPrompt.new_run`)."""

    #: the local blend's maps and mask (``None`` without a blend)
    blend: BlendRun | None = None
    #: the prompts' token positions per ``(id(pipeline), text length)`` (``(0, length)`` for PromptTokens)
    tokens: dict[tuple[int, int], _Tokens] = field(default_factory=dict)
    #: the branch sets seen at step 0 of this generation (a set seen again starts a new generation)
    seen_at_start: set[tuple[str, ...]] = field(default_factory=set)
    #: pairs of the denoiser call's conditional branch, and the local-blend maps of row-pair calls of the layer
    #: call so far (a per-row processor answers one pair per call; the blend takes a layer's pairs together)
    blend_pairs: int = 0
    row_maps: list[torch.Tensor] = field(default_factory=list)
    #: the plans of this generation, by what they depend on (see PromptToPrompt._plan); the denoiser call last seen
    #: and the step pattern and pipeline it runs with
    plans: dict[tuple, _Plan | None] = field(default_factory=dict)
    plans_for: Any = None
    plans_key: tuple = ()

    @property
    def mask(self) -> torch.Tensor | None:
        """This attachment's local-blend mask (see :attr:`LocalBlend.mask`)."""
        return None if self.blend is None else self.blend.mask

    def reset(self) -> None:
        """Forget the generation: the blend's maps and mask, the branches seen at its start."""
        if self.blend is not None:
            self.blend.reset()
        self.seen_at_start.clear()
        self.plans.clear()
        self.plans_for = None


class PromptToPrompt(Effect):
    """Prompt-to-Prompt editing (Hertz et al., 2022) for every supported family; see the module docstring.

    Build it with :meth:`replace`, :meth:`refine` or :meth:`reweight`, attach it, and call the pipeline with
    ``prompt=p2p.prompts`` and ``generator=p2p.generator(seed)``; the output holds the source images, then the
    target images.

    A configuration (issue 27): its parameters are fixed once built (assigning one raises AttributeError; the
    dict-like ones are read-only views; :meth:`~visattn.effects.Effect.copy_with` builds a changed copy), and
    what it learns while editing (token positions, the generation's first branches, the local blend's maps and
    mask) lives in the run state each attachment makes (:meth:`new_run`; ``attachment.run_of(p2p)``), so one
    edit attached to several pipelines, or attached again, acts as independent copies.

    Args:
        source, target: the two prompts (equal for a pure re-weighting); or both as
            :class:`visattn.words.PromptTokens` (their text positions given, so no tokenizer is needed: a denoiser
            attached alone, or a family whose tokenizer ladder is not declared).
        mode: ``"replace"`` (word swap: same word count) or ``"refine"`` (words added or removed).
        cross_steps: when the target's cross-attention is replaced by the source's: a fraction ``f`` (the first
            ``f`` of the schedule), a ``(start, stop)`` fraction range, ``0``/``None`` for never, or a dict
            ``{"default": ..., word: ...}`` with a schedule per target word (the authors' 0.8 by default). Steps
            ``int((N + 1) * start) <= i < int((N + 1) * stop)`` of ``N``, as the authors' table of ``N + 1`` rows.
        self_steps: when the target's self-attention is replaced by the source's (fraction or range; the authors'
            0.4 by default; ``0``/``None`` for never): steps ``int(N * start) <= i < int(N * stop)``, as theirs.
        weights: ``{word: scale}`` for words of the target; their probabilities are multiplied by ``scale`` while
            their cross-attention is controlled (during ``cross_steps``), as the authors' ``AttentionReweight``.
        local_blend: a :class:`LocalBlend` (the authors' latent blend by default, see
            :mod:`visattn.effects.local_blend`), or ``None``.
        layers: attention layers to control (diffusers' ``pag_applied_layers`` identifiers and the role keywords
            ``"self"``, ``"cross"``, ``"joint"``); ``None`` controls every layer.
        edit_uncond: also inject into the unconditional branch (the authors edit the conditional one only).
        prompt_template: a HunyuanVideo or Framepack ``prompt_template`` to locate the words with; ``None``: the
            running call's own (the one it passes, or its default).

    Raises:
        ValueError: a bad schedule or weight, a word that is not in its prompt (the message lists the prompt's
            words), or ``"replace"`` with different word counts (pointing to :meth:`refine`).
    """

    roles = ("self", "cross", "joint")
    frozen_parameters = True

    #: the edit pairs each branch's rows as ``[source..., target...]`` within one call: a processor that calls
    #: attention once per batch row (Mochi) gets each target row's call answered together with its source row's
    #: (:class:`visattn.interception.AttentionLayerHook` keeps the source rows of the layer call until then)
    pairs_rows = True

    def needs(self) -> tuple[str, ...]:
        # Prompts given as PromptTokens carry their text positions; prompt strings need the tokenizer ladder.
        words = ("words",) if isinstance(self.source, str) else ()
        return ("text", *words, "grid") if self.local_blend is not None else ("text", *words)

    def __init__(
        self,
        source: str | PromptTokens,
        target: str | PromptTokens,
        *,
        mode: str = "replace",
        cross_steps: Any = 0.8,
        self_steps: Any = 0.4,
        weights: Mapping[str, float] | None = None,
        local_blend: LocalBlend | None = None,
        layers: str | Iterable[str] | None = None,
        edit_uncond: bool = False,
        prompt_template: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(layers=layers)
        source_words = _words(source, "source")
        target_words = _words(target, "target")
        if isinstance(source, PromptTokens) != isinstance(target, PromptTokens):
            raise ValueError("source and target must both be prompt strings or both PromptTokens")
        if isinstance(source, PromptTokens) and source.length != target.length:
            raise ValueError(
                f"source and target PromptTokens describe text sequences of {source.length} and {target.length} "
                "positions; both must be the sequence the denoiser sees"
            )
        word_pairs(source_words, target_words, mode)  # raises for a bad mode or a swap with different counts
        if local_blend is not None and not isinstance(local_blend, LocalBlend):
            raise ValueError(f"local_blend must be a LocalBlend or None; got {type(local_blend).__name__}")
        if local_blend is not None:
            _check_blend_words(local_blend, source, source_words, target, target_words)
        if prompt_template is not None and not isinstance(prompt_template, Mapping):
            raise ValueError(f"prompt_template must be a dict or None; got {prompt_template!r}")
        self.source, self.target, self.mode = source, target, mode
        # Parameters are fixed once built (frozen_parameters): the containers are read-only views too.
        self.cross_steps = MappingProxyType(_cross_schedule(cross_steps, _text(target), target_words))
        self.self_steps = _window(self_steps, "self_steps")
        self.weights = MappingProxyType(_check_weights(weights, _text(target), target_words))
        self.local_blend = local_blend
        self.edit_uncond = validation.check_bool(edit_uncond, "edit_uncond")
        self.prompt_template = None if prompt_template is None else MappingProxyType(dict(prompt_template))

    def new_run(self) -> _Run:
        """What one attachment learns while editing (token positions per pipeline, the generation's first
        branches, the local blend's maps and mask): :class:`_Run`."""
        return _Run(blend=None if self.local_blend is None else self.local_blend.new_run())

    def use_family_defaults(self, family: Family, roles: dict[str, str]) -> None:
        super().use_family_defaults(family, roles)
        if family.one_sample_per_call:
            # Source and target are separate denoiser calls: pairing them would keep every layer's attention of
            # the source call alive until the target's call, and no pipeline of the family batches two prompts.
            raise ValueError(
                f"PromptToPrompt pairs source and target rows inside one attention call, but the {family.name!r} "
                f"family ({', '.join(family.classes)}) takes one sample per call, without a batch axis: source and "
                "target never share a call, so the edit cannot be made"
            )

    def bind(self, roles: dict[str, str]) -> frozenset[str]:
        selected = super().bind(roles)
        text_layers = {name for name, role in roles.items() if role in ("cross", "joint")}
        # Only where the model's modules show their roles: a new-style attention module can be cross or joint
        # attention at run time while its class does not say so (Lumina 2, LTX-2), and is checked per call.
        if self.local_blend is not None and text_layers and not text_layers & selected:
            raise ValueError(
                f"LocalBlend reads cross-attention maps, but layers={self.layers} selects no cross- or joint-attention "
                f"layer of this model (it has {', '.join(sorted(set(roles.values())))} layers)"
            )
        return selected

    # --- constructors --------------------------------------------------------------------------------------
    @classmethod
    def replace(
        cls,
        source: str | PromptTokens,
        target: str | PromptTokens,
        *,
        cross_steps: Any = 0.8,
        self_steps: Any = 0.4,
        local_blend: LocalBlend | None = None,
        weights: Mapping[str, float] | None = None,
        **options: Any,
    ) -> PromptToPrompt:
        """Word swap: ``target`` has as many words as ``source`` (``"a cat riding a bike"`` ->
        ``"a dog riding a bike"``); word ``i`` of the target takes the source's maps of word ``i``.
        ``options``: ``layers``, ``edit_uncond``, ``prompt_template`` (see the class)."""
        return cls(
            source,
            target,
            mode="replace",
            cross_steps=cross_steps,
            self_steps=self_steps,
            local_blend=local_blend,
            weights=weights,
            **options,
        )

    @classmethod
    def refine(
        cls,
        source: str | PromptTokens,
        target: str | PromptTokens,
        *,
        cross_steps: Any = 0.8,
        self_steps: Any = 0.4,
        local_blend: LocalBlend | None = None,
        weights: Mapping[str, float] | None = None,
        **options: Any,
    ) -> PromptToPrompt:
        """Refinement: words added to or removed from ``source`` (``"a cat"`` -> ``"a fluffy cat"``); maps follow a
        word alignment, and added words keep their own maps."""
        return cls(
            source,
            target,
            mode="refine",
            cross_steps=cross_steps,
            self_steps=self_steps,
            local_blend=local_blend,
            weights=weights,
            **options,
        )

    @classmethod
    def reweight(
        cls,
        prompt: str,
        weights: Mapping[str, float],
        *,
        cross_steps: Any = 0.8,
        self_steps: Any = 0.4,
        local_blend: LocalBlend | None = None,
        **options: Any,
    ) -> PromptToPrompt:
        """Re-weighting: the same prompt twice; the target's probabilities of the words in ``weights`` are
        multiplied by their scale (``{"fluffy": 3.0}`` strengthens, ``0.2`` weakens)."""
        if not isinstance(weights, Mapping) or not weights:
            raise ValueError(f"reweight needs weights, a non-empty dict {{word: scale}}; got {weights!r}")
        return cls(
            prompt,
            prompt,
            mode="replace",
            cross_steps=cross_steps,
            self_steps=self_steps,
            local_blend=local_blend,
            weights=weights,
            **options,
        )

    # --- what the caller passes to the pipeline ----------------------------------------------------------------
    @property
    def prompts(self) -> list[str]:
        """``[source, target]``, for ``pipe(prompt=p2p.prompts, ...)``."""
        return [_text(self.source), _text(self.target)]

    def generator(
        self, seed: int, num_images_per_prompt: int = 1, device: torch.device | str = "cpu"
    ) -> list[torch.Generator]:
        """Generators for ``pipe(..., generator=...)`` whose source rows are exactly a plain generation.

        Any generator gives source and target the same noise (:meth:`prepare_pipeline`); these make the source
        image ``j`` the image a one-image generation with seed ``seed + j`` gives.

        One generator per row, ``[source images..., target images...]``: image ``j`` of each prompt uses seed
        ``seed + j``, so the source image ``j`` is exactly what ``generator=torch.Generator().manual_seed(seed + j)``
        gives in a plain generation of one image.
        """
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an int; got {seed!r}")
        if isinstance(num_images_per_prompt, bool) or not isinstance(num_images_per_prompt, int):
            raise ValueError(f"num_images_per_prompt must be an int >= 1; got {num_images_per_prompt!r}")
        if num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be an int >= 1; got {num_images_per_prompt!r}")
        return [torch.Generator(device).manual_seed(seed + j) for _ in range(2) for j in range(num_images_per_prompt)]

    def prepare_pipeline(self, pipeline: Any) -> Any:
        """Give the target prompt's rows the source prompt's initial noise, whatever generator the call gets (or
        none), as the authors' notebooks do with one latent for every prompt: the pipeline's ``prepare_latents``
        is wrapped on the instance (every diffusers pipeline makes its initial latents there) until detach. With a
        :class:`LocalBlend` that blends latents (the authors'), the pipeline's ``scheduler.step`` is wrapped too,
        so that the blend follows each scheduler step as the authors' step callback does."""
        undo = [_wrap_method(pipeline, "prepare_latents", lambda original: _shared_noise_of(original))]
        if self.local_blend is not None and self.local_blend.blends_latents:
            scheduler = getattr(pipeline, "scheduler", None)
            if scheduler is not None:
                undo.append(_wrap_method(scheduler, "step", lambda original: _blending_step(original, id(self))))
        undo = [u for u in undo if u is not None]
        if not undo:
            return None

        def undo_all() -> None:
            for u in reversed(undo):
                u()

        return undo_all

    def reset(self) -> None:
        """Forget the most recent generation's local-blend maps and mask; a new generation starts over by itself
        (each attachment keeps its own, see :meth:`new_run`)."""
        if self.local_blend is not None:
            self.local_blend.reset()

    # --- the denoiser call -----------------------------------------------------------------------------------
    def wrap_denoiser(self, forward, args, kwargs, state):
        layout = state.batch
        if layout is None:
            return forward(*args, **kwargs)
        pairs = _pairs_of(layout)
        if pairs is None:
            sizes = ", ".join(f"{b.name!r}: {b.size}" for b in layout.branches)
            raise ValueError(
                f"PromptToPrompt pairs each branch's rows as [source..., target...], but the denoiser's batch has "
                f"branches of odd size ({sizes}); call the pipeline with prompt=p2p.prompts"
            )
        run = self.run_of(state)
        step = state.step
        if step.index == 0:
            self._start_generation(run, layout.names, state.pipeline)
            self._check_noise(state.inputs.sample if state.inputs is not None else None, pairs)
        blend = run.blend
        if blend is None:
            return forward(*args, **kwargs)
        run.blend_pairs = next((pair.count for pair in pairs if pair.name == _COND), 0)
        run.row_maps.clear()
        blend.begin_call()
        output = forward(*args, **kwargs)
        made = _COND in layout.names and blend.end_call(step, state.family.unet_levels)
        if not self.local_blend.blends_latents:
            return with_prediction(output, blend.blend_prediction(prediction_of(output), pairs, state.family))
        if made:
            slot = _blend_slot(state.pipeline, id(self))
            if slot is None:
                blend.warn_unblended()
            else:
                slot.pending = functools.partial(blend_latents, mask=blend.mask, family=state.family)
        return output

    def _start_generation(self, run: _Run, names: tuple[str, ...], pipeline: Any) -> None:
        # A branch seen at step 0 again means a new generation (pipelines that call the denoiser once per
        # branch make several step-0 calls per generation).
        if names in run.seen_at_start:
            run.reset()
        run.seen_at_start.add(names)
        if self.local_blend is None or not self.local_blend.blends_latents:
            return  # no latent blend: the scheduler's step is not wrapped (prepare_pipeline)
        slot = _blend_slot(pipeline, id(self))
        if slot is not None:
            slot.pending = None  # nothing left over from an interrupted generation

    def _check_noise(self, sample: torch.Tensor | None, pairs: Sequence[_Pair]) -> None:
        if sample is None:
            return
        if len(pairs) == 1 and _made_with_equal_halves(sample) and pairs[0].target.stop == sample.shape[0]:
            return  # prepare_latents' own output, unchanged since: its halves are equal (no compare, no device sync)
        for pair in pairs:
            if not torch.equal(sample[pair.source], sample[pair.target]):
                raise ValueError(
                    "PromptToPrompt: the source and target rows start from different noise (the denoiser's input "
                    f"rows {pair.source.start}..{pair.source.stop - 1} and {pair.target.start}.."
                    f"{pair.target.stop - 1} differ at the first step). Attached to a pipeline, visattn gives them "
                    "the same initial latents; driving the denoiser yourself, pass latents whose source and target "
                    "rows are equal"
                )

    # --- the attention call ----------------------------------------------------------------------------------
    def shared_query_key_rows(self, ctx: CallContext) -> dict[int, int] | None:
        """The target rows of a call whose edit is attention with the source rows' queries and keys over the target
        rows' own values: self-attention injection, and a cross-attention word swap or schedule whose token map is
        the identity (no re-weighting, no refinement, no local blend collecting maps). The layer's hook may then
        project those rows' queries and keys as copies of their source rows' (see
        :meth:`~visattn.effects.Effect.shared_query_key_rows`)."""
        plan = self._plan(ctx)
        if plan is None:
            return {}
        if plan.collect:
            return None
        if plan.role == "joint":
            return plan.shared_rows if _injects_joint_rows(plan, ctx) else None
        image = ctx.queries.image
        if image.start != 0 or image.stop != ctx.queries.length:
            return None
        if plan.role == "cross":
            text = ctx.keys.text
            if text is None or text.start != 0 or text.stop != ctx.keys.length or plan.moves_values:
                return None
        elif plan.role != "self":
            return None
        return plan.shared_rows

    def shared_query_span(self, ctx: CallContext) -> slice | None:
        """In a joint call, the image queries (:meth:`shared_query_key_rows` shares the target rows there only: the
        text queries keep the target's own queries and keys); every query otherwise."""
        return ctx.queries.image.as_slice() if ctx.role == "joint" else None

    def probability_editors(
        self, ctx: CallContext, device: torch.device
    ) -> tuple[LinearEdit, ...] | tuple[TextBlockEdit, ...] | None:
        """A cross-attention or joint call whose edit is all this effect does there (no local blend collecting maps):
        the edit's :class:`~visattn.kernels.LinearEdit` s (cross-attention over text keys alone) or
        :class:`~visattn.kernels.TextBlockEdit` s (joint attention, cross-attention with other keys), the same
        objects :meth:`apply` adds, made once per step pattern (see
        :meth:`~visattn.effects.Effect.probability_editors`); ``()`` where the call has nothing to edit; ``None`` for
        every other call (self-attention, and edits that move no values, share rows instead, see
        :meth:`shared_query_key_rows`)."""
        plan = self._plan(ctx)
        if plan is None:
            return ()
        if plan.collect or plan.role == "self":
            return None
        if not plan.edits:
            return ()
        image, text = ctx.queries.image, ctx.keys.text
        if plan.role == "joint":
            if _injects_joint_rows(plan, ctx):
                return None  # the target rows' image queries attend with the source rows': shared rows answer it
            return tuple(plan.text_block_edits(device, text.as_slice(), image.as_slice()))
        if image.start != 0 or image.stop != ctx.queries.length:
            return None
        if text.start != 0 or text.stop != ctx.keys.length:
            return tuple(plan.text_block_edits(device, text.as_slice(), image.as_slice()))
        if not plan.moves_values:
            return None  # the target rows attend with the source rows' queries and keys: shared rows answer it
        return tuple(plan.linear_edits(device))

    def row_plan_key(self, step: StepInfo) -> tuple:
        """Of the step, the plans (and so :meth:`shared_query_key_rows`) depend on whether the effect's window, its
        self-attention window and each cross-attention window are open (see
        :meth:`~visattn.effects.Effect.row_plan_key`): a layer reuses its plan across the steps where none of them
        opens or closes."""
        cross = tuple(_cross_active(window, step) for window in self.cross_steps.values())
        return in_steps(self.steps, step.fraction), _self_active(self.self_steps, step), cross

    def apply(self, call: AttentionCall) -> None:
        if call.output is not None:
            return  # an earlier effect computed this call itself
        ctx = call.ctx
        plan = self._plan(ctx)
        if plan is None:
            return
        if call.shared_rows and plan.shared_rows.items() <= call.shared_rows.items():
            # The processor projected the target rows' queries and keys as their source rows' (the layer's hook asked
            # shared_query_key_rows before it ran): the call is the edit already.
            return
        image = ctx.queries.image
        mask = call.attn_mask
        if (
            plan.role == "self"
            and image.start == 0
            and image.stop == call.q.shape[2]
            and (mask is None or mask.dim() < 4 or mask.shape[0] == 1)
        ):
            # Injecting the source's self-attention map, softmax(q_s k_s^T) v_t, is attention with the source
            # rows' queries and keys: no probabilities to materialize, and any backend can run it.
            rows = plan.self_rows(call.q.shape[0], call.q.device)
            call.q, call.k = gather_rows(call.q, rows), gather_rows(call.k, rows)
            return
        # LocalBlend's maps of this call, [source/target (then the subtract words' source/target), pairs, image
        # queries], read before the edit (the target's own map of a target word, as the authors store them); a
        # backward recomputation (context parallelism's replay) edits again but collects nothing twice.
        if plan.collect and not call.replay:
            maps = torch.zeros(self.local_blend.sides, plan.collect[0].count, image.length, device=call.q.device)
            run = self.run_of(ctx)
            call.reads.extend(self._blend_reads(ctx, plan, maps))
            call.observers.append(lambda done: self._add_maps(run, maps, ctx))
        if not plan.edits:
            return
        text = ctx.keys.text
        if (
            plan.role == "cross"
            and text.start == 0
            and text.stop == call.k.shape[2]
            and image.start == 0
            and image.stop == call.q.shape[2]
        ):
            # Cross-attention over text keys alone: the edit is linear over the keys (the authors' mapper einsum,
            # refinement alphas and equalizer), so the core computes it as attention over mixed values.
            call.editors.extend(plan.linear_edits(call.q.device))
            return
        if _injects_joint_rows(plan, ctx):
            # Self-attention injected and every text token too, through an identity map: the target's image-query
            # rows become the source's whole rows (text and latent keys together, which sum to one already), which
            # is attention with the source rows' image queries and keys over the target's values.
            call.editors.extend(plan.joint_edits(call.q.device, image.as_slice()))
            return
        if plan.role != "self":
            # Joint attention (and cross-attention over text and other conditioning): the text block edited like a
            # cross-attention map, the other keys rescaled to what it leaves of each row; the core computes it from
            # attention calls over block values (no materialized probabilities) unless another effect's pattern or
            # score modifier needs the reference backend, which runs the same edit materialized.
            call.editors.extend(plan.text_block_edits(call.q.device, text.as_slice(), image.as_slice()))
            return

        def edit(probs: torch.Tensor, start: int, stop: int) -> None:
            lo, hi = max(image.start, start), min(image.stop, stop)
            if lo >= hi:
                return  # rows of text queries are not edited
            self._edit(probs, slice(lo - start, hi - start), ctx, plan)

        call.editors.append(edit)

    def _plan(self, ctx: CallContext) -> _Plan | None:
        """What this call edits and collects (``None``: nothing), made once per what it depends on: the call's role,
        batch, text keys, whether it has image queries and a grid, the pipeline (the prompts' tokens), and of the
        step only whether each window is open (:meth:`row_plan_key`): a generation makes its plans at the steps
        where a window opens or closes, and the steps between reuse them."""
        if ctx.queries.image is None or ctx.role not in self.roles:
            return None
        run = self.run_of(ctx)
        if ctx.denoiser is None:
            return self._make_plan(ctx)
        if run.plans_for is not ctx.denoiser:
            # A new denoiser call: read once what of it the plans depend on.
            run.plans_for = ctx.denoiser
            run.plans_key = (self.row_plan_key(ctx.step), id(ctx.denoiser.pipeline))
        text = ctx.keys.text
        key = (ctx.role, None if text is None else (text.start, text.stop), ctx.grid is not None, ctx.batch.key)
        key += run.plans_key
        plans = run.plans
        plan = plans.get(key, _NO_PLAN)
        if plan is _NO_PLAN:
            if len(plans) >= _PLANS_KEPT:
                plans.clear()
            plan = plans[key] = self._make_plan(ctx)
        return plan

    def _make_plan(self, ctx: CallContext) -> _Plan | None:
        pairs = _pairs_of(ctx.batch)
        if pairs is None:
            return None
        self_on = _self_active(self.self_steps, ctx.step)
        edited = [pair for pair in pairs if pair.name != _UNCOND or self.edit_uncond]
        if ctx.role == "self":
            if not (self_on and edited):
                return None
            return _Plan("self", [_PairEdit(pair, None, False, None) for pair in edited], True, None, [])
        text = ctx.keys.text
        if text is None or text.length == 0:
            return None
        blends = self.local_blend is not None and ctx.grid is not None and any(p.name == _COND for p in pairs)
        if not edited and not blends:
            # Nothing to edit or collect (the unconditional call of a pipeline that runs its branches one by one,
            # whose text is the negative prompt's): the prompts' words need not fit its text.
            return None
        tokens = self._resolve(text.length, ctx)
        alpha = tokens.alpha(ctx.step)
        edits = []
        for pair in edited:
            if pair.name == _UNCOND:
                uncond = torch.full_like(alpha, _cross_active(self.cross_steps["default"], ctx.step))
                edits.append(_PairEdit(pair, uncond, True, None))
            else:
                edits.append(_PairEdit(pair, alpha, False, tokens.equalizer))
        joint_self = ctx.role == "joint" and self_on
        edits = [edit for edit in edits if joint_self or bool(edit.alpha.any())]
        collect = []
        if self.local_blend is not None and ctx.grid is not None:
            collect = [pair for pair in pairs if pair.name == _COND]
        if not edits and not collect:
            return None
        return _Plan(ctx.role, edits, self_on, tokens, collect)

    def _resolve(self, length: int, ctx: CallContext) -> _Tokens:
        """The prompts' token positions for a text sequence of ``length`` (cached)."""
        pipe = ctx.denoiser.pipeline if ctx.denoiser is not None else None
        cache = self.run_of(ctx).tokens
        if isinstance(self.source, PromptTokens):
            # Positions given: no tokenizer needed (a denoiser called by hand, or a family without a ladder).
            if self.source.length != length:
                raise ValueError(
                    f"PromptToPrompt: this attention call has {length} text tokens, but the PromptTokens given "
                    f"describe a text sequence of {self.source.length}"
                )
            key = (0, length)  # the same positions for every pipeline
            if key not in cache:
                cache[key] = self._tokens_for(self.source, self.target, length)
            return cache[key]
        if pipe is None:
            raise ValueError(
                "PromptToPrompt needs the pipeline's tokenizers to find the words: attach it to the pipeline "
                "(visattn.attach(pipe, p2p)), not to the denoiser alone"
            )
        key = (id(pipe), length)
        if key in cache:
            return cache[key]
        options: dict[str, Any] = {}
        # The text length this call sees settles the call's max_sequence_length (SD3 puts 77 CLIP tokens first).
        sequence_length = prompt_recipe(prompt_family(pipe)).sequence_length_of(length, pipe)
        if sequence_length is not None:
            options["max_sequence_length"] = sequence_length
        # The template the running call passes (HunyuanVideo, Framepack) wraps the prompt, unless one is given here.
        template = self.prompt_template if self.prompt_template is not None else ctx.denoiser.prompt.prompt_template
        if template is not None:
            options["prompt_template"] = dict(template)
        source = prompt_tokens(pipe, self.source, **options)
        target = prompt_tokens(pipe, self.target, **options)
        if source.length != length:
            raise ValueError(
                f"PromptToPrompt: this attention call has {length} text tokens, but {self.source!r} tokenizes to a "
                f"text sequence of {source.length} for the {source.family} family"
            )
        cache[key] = self._tokens_for(source, target, length)
        return cache[key]

    def _tokens_for(self, source: PromptTokens, target: PromptTokens, length: int) -> _Tokens:
        """The token map, per-word windows, equalizer and blend positions of the two prompts."""
        mapping = token_map(source, target, word_pairs(source.words, target.words, self.mode))
        windows = [(target.positions(word), window) for word, window in self.cross_steps.items() if word != "default"]
        equalizer = None
        if self.weights:
            equalizer = torch.ones(length)
            for word, scale in self.weights.items():
                equalizer[list(target.positions(word))] = scale
        blend = self.local_blend
        words = () if blend is None else blend.words
        subtract = () if blend is None else blend.subtract
        return _Tokens(
            source,
            target,
            mapping,
            windows,
            self.cross_steps["default"],
            equalizer,
            _positions_of_any(source, words),
            _positions_of_any(target, words),
            _positions_of_any(source, subtract),
            _positions_of_any(target, subtract),
        )

    # --- editing a call's probabilities ----------------------------------------------------------------------
    def _add_maps(self, run: _Run, maps: torch.Tensor, ctx: CallContext) -> None:
        """Give one call's ``[2, pairs, tokens]`` local-blend maps to the blend; a row-pair call (fewer pairs than
        the denoiser's conditional branch: a per-row processor) waits for the layer's other pairs, which follow
        in row order."""
        if maps.shape[1] < run.blend_pairs:
            run.row_maps.append(maps)
            if sum(part.shape[1] for part in run.row_maps) < run.blend_pairs:
                return
            maps = torch.cat(run.row_maps, dim=1)
            run.row_maps.clear()
        run.blend.add_layer(maps, ctx.grid, ctx.input_grid, ctx.layer_name)

    def _blend_reads(self, ctx: CallContext, plan: _Plan, maps: torch.Tensor) -> list[ProbabilityRead]:
        """Reads filling ``maps[side]`` with the head mean of the blend words' summed probabilities, before the edit,
        for the source (side 0) and the target (side 1) rows of the conditional branch; sides 2 and 3 the same for
        the blend's ``subtract`` words, where it has any."""
        text, image = ctx.keys.text, ctx.queries.image.as_slice()
        tokens = plan.tokens
        reads = []
        for pair in plan.collect:
            sides = [(pair.source, tokens.blend_source), (pair.target, tokens.blend_target)]
            if maps.shape[0] > 2:
                sides += [(pair.source, tokens.subtract_source), (pair.target, tokens.subtract_target)]
            for side, (half, positions) in enumerate(sides):
                if positions:
                    columns = torch.tensor([text.start + p for p in positions], device=maps.device)

                    def observe(block: torch.Tensor, side: int = side) -> None:
                        maps[side] = ctx.mean_over_heads(block.sum(-1))

                    reads.append(ProbabilityRead(observe, rows=half, queries=image, keys=columns, before_edits=True))
        return reads

    def _edit(self, probs: torch.Tensor, rows: slice, ctx: CallContext, plan: _Plan) -> None:
        # Self-attention whose call the source rows' queries and keys cannot answer (part of the queries, a mask
        # per row): the target's probabilities become the source's. Joint and cross calls edit through
        # TextBlockEdits and LinearEdits, which the reference backend applies materialized too.
        for edit in plan.edits:
            probs[edit.pair.target, :, rows] = probs[edit.pair.source, :, rows]

    def __repr__(self) -> str:
        return (
            f"PromptToPrompt(mode={self.mode!r}, source={self.source!r}, target={self.target!r}, "
            f"cross_steps={dict(self.cross_steps)}, self_steps={self.self_steps}, weights={dict(self.weights)}, "
            f"local_blend={self.local_blend}, layers={self.layers}, edit_uncond={self.edit_uncond})"
        )


#: the tensors _shared_noise made (by id): a weak reference and the version they were made at. A pipeline that hands
#: one to the denoiser unchanged (Flux's packed latents) needs no check that its source and target rows are equal.
_EQUAL_HALVES: dict[int, tuple[weakref.ref, int]] = {}


def _with_equal_halves(tensor: torch.Tensor) -> torch.Tensor:
    key = id(tensor)
    _EQUAL_HALVES[key] = (weakref.ref(tensor, lambda _, key=key: _EQUAL_HALVES.pop(key, None)), tensor._version)
    return tensor


def _made_with_equal_halves(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is one :func:`_shared_noise` made, not written to since (its halves are still equal)."""
    entry = _EQUAL_HALVES.get(id(tensor))
    return entry is not None and entry[0]() is tensor and entry[1] == tensor._version


def _shared_noise(prepared: Any) -> Any:
    """``prepare_latents``'s result with the second half of the batch (the target prompt's rows) made equal to the
    first (the source's): a tensor, a per-sample list, or a tuple whose batch-sized tensors (latents, noise, image
    latents) all follow the first's rows. New tensors: latents the user passed are never written to."""
    first = prepared[0] if isinstance(prepared, tuple) and prepared else prepared
    if isinstance(first, torch.Tensor):
        rows = first.shape[0] if first.dim() else 0
    else:
        rows = len(first) if isinstance(first, list) else 0
    if rows < 2 or rows % 2:
        return prepared  # one prompt's rows (an unconditional pass, a single image): nothing to pair
    half = rows // 2

    def shared(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == rows:
            first = value[:half]  # one view, twice: each op costs a generation of tiny models about 10 us
            return _with_equal_halves(torch.cat([first, first]))
        if isinstance(value, list) and len(value) == rows and all(isinstance(v, torch.Tensor) for v in value):
            return value[:half] + [v.clone() for v in value[:half]]
        return value

    if isinstance(prepared, tuple):
        return tuple(shared(value) for value in prepared)
    return shared(prepared)


def _positions_of_any(tokens: PromptTokens, words: Sequence[str]) -> tuple[int, ...]:
    positions: set[int] = set()
    for word in words:
        try:
            positions.update(tokens.positions(word))
        except ValueError:
            continue  # a local-blend word may be in only one of the prompts
    return tuple(sorted(positions))


def _value_mix(
    mapping: TokenMap | None, alpha: torch.Tensor, equalizer: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(mix, keep)``: the target's probabilities over the text keys with the source's injected where ``alpha`` (per
    target token) holds, through ``mapping`` (``None``: token ``i`` from token ``i``), then re-weighted by
    ``equalizer``, are ``source @ mix + target * keep`` (``keep`` ``None`` where zero).

    The authors' edits are linear over the keys: a word swap is ``source @ mapper`` (``einsum('hpw,bwn->bhpn')``),
    a refinement ``source[..., mapper] * alphas + target * (1 - alphas)``, each blended with the target by the
    per-word schedule (``alpha_words``), and a re-weighting multiplies the result by the equalizer where the
    schedule controls the word. So ``mix[s, t] = mapper[s, t] * active[t] * scale[t]`` and ``keep[t] = (1 -
    active[t]) * scale[t]``, with ``active`` the injected target tokens and ``scale`` the equalizer where
    ``alpha`` holds, else one.
    """
    length = alpha.shape[0]
    alpha = alpha.cpu()
    if mapping is None:  # the unconditional branch: the same text on both sides, token i from token i
        mapper, active = torch.eye(length), alpha
    else:
        source_index, target_index, weight, mapped = mapping.tensors()
        mapper = torch.zeros(length, length).index_put_((source_index, target_index), weight, accumulate=True)
        active = alpha & mapped
    scale = torch.ones(length) if equalizer is None else torch.where(alpha, equalizer.cpu().float(), 1.0)
    mix = mapper * (active * scale)
    keep = (~active) * scale
    return mix, (keep if bool(keep.any()) else None)


def _check_blend_words(blend: LocalBlend, source, source_words: tuple[str, ...], target, target_words) -> None:
    """Raise ValueError for a blend word (or ``subtract`` word) in neither prompt (listing both prompts' words)."""
    for kind, word in [("word", word) for word in blend.words] + [("subtract word", word) for word in blend.subtract]:
        found = False
        for prompt, words in ((source, source_words), (target, target_words)):
            try:
                _word_lookup(_text(prompt), words).index(word)
                found = True
            except ValueError:
                pass
        if not found:
            raise ValueError(
                f"LocalBlend {kind} {word!r} is in neither prompt; the source's words are {list(source_words)}, "
                f"the target's {list(target_words)}"
            )


def _wrap_method(owner: Any, name: str, wrap: Callable[[Callable], Callable]) -> Callable[[], None] | None:
    """Shadow ``owner.name`` on the instance by ``wrap(original)``; returns what restores it (``None`` when
    ``owner`` has no such method)."""
    original = getattr(owner, name, None)
    if not callable(original):
        return None
    shadowed = name in vars(owner)
    setattr(owner, name, wrap(original))

    def undo() -> None:
        if shadowed:
            setattr(owner, name, original)
        else:
            vars(owner).pop(name, None)

    return undo


def _shared_noise_of(original: Callable) -> Callable:
    def prepare_latents(*args: Any, **kwargs: Any) -> Any:
        return _shared_noise(original(*args, **kwargs))

    return prepare_latents


class _BlendSlot:
    """The latent blend the next scheduler step applies (set by the conditional denoiser call of the step)."""

    def __init__(self, owner: int) -> None:
        self.owner = owner
        self.pending: Callable[[Any], Any] | None = None


def _blending_step(original: Callable, owner: int) -> Callable:
    """``scheduler.step`` followed by the pending local blend of its latents (the authors' ``step_callback``)."""
    slot = _BlendSlot(owner)

    @functools.wraps(original)
    def step(*args: Any, **kwargs: Any) -> Any:
        output = original(*args, **kwargs)
        pending, slot.pending = slot.pending, None
        if pending is None:
            return output
        if isinstance(output, tuple):
            return (pending(output[0]), *output[1:])
        if hasattr(output, "prev_sample"):
            output.prev_sample = pending(output.prev_sample)
            return output
        return pending(output)

    step.visattn_local_blend = slot
    return step


def _blend_slot(pipeline: Any, owner: int) -> _BlendSlot | None:
    """The blend slot of the edit ``owner`` on the pipeline's scheduler (``None``: not wrapped, a bare denoiser)."""
    step = getattr(getattr(pipeline, "scheduler", None), "step", None)
    while step is not None:
        slot = getattr(step, "visattn_local_blend", None)
        if isinstance(slot, _BlendSlot) and slot.owner == owner:
            return slot
        step = getattr(step, "__wrapped__", None)
    return None
