"""``AttentionMaps``: per-word cross-attention maps of any family, collected on the fly without changing the output.

Prompt-to-Prompt (Hertz et al., 2022, "Prompt-to-Prompt Image Editing with Cross Attention Control") showed that
the image-to-text attention of a word is a map of where that word is drawn; DAAM and RefAM ("Attention Magnets
for Zero-Shot Referral Segmentation") aggregate these maps over layers, heads and steps. For UNets, PixArt and
Wan the maps are cross-attention probabilities (image queries, text keys); for MM-DiTs (SD3, Flux, CogVideoX,
HunyuanVideo) they are the image-query/text-key block of the joint softmax.

How the probabilities are obtained: the effect reads a block of each call's final probabilities through the
attention core's probability stage (:class:`visattn.kernels.ProbabilityRead`): the rows of one batch branch,
the image queries and the text keys of the tracked words. The core serves it from the chunks it materializes when
the call is edited (Prompt-to-Prompt), and otherwise computes just that block, ``exp(q k_text^T * scale
(+ score_mod, masks) - lse)``, from the backend's log-sum-exp (recomputed for those rows when the backend gives
none, as dense SDPA). The full map is never stored, and the call's output is never changed.

RefAM's observation drives the ``drop_special`` default: start/end tokens, padding and stop words soak up most
of the text attention ("attention magnets"), so the maps are renormalized over the remaining words.

The maps are summed on the fly (over heads, layers and steps, resized to one resolution per frame), so memory
does not grow with the number of steps or layers.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import heatmaps as rendering
from .. import validation
from ..context import CallContext, DenoiserCall, StepInfo
from ..kernels.probabilities import ProbabilityRead
from ..steps import in_steps
from ..words import STOP_WORDS, PromptTokens, prompt_family, prompt_recipe, prompt_tokens, split_words
from .base import NO_READS, AttentionCall, Effect, ProbabilityReader

#: the smallest normal number of each float dtype (a word mass's floor before dividing by it)
_TINY = {dtype: torch.finfo(dtype).tiny for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}

# --- which positions to track ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PromptPlan:
    tokens: PromptTokens
    names: tuple[str, ...]
    word_matrix: torch.Tensor  # [K, words]: 1 where a tracked position belongs to the word
    kept: torch.Tensor | None  # [K]: 1 on positions the renormalization sums over (drop_special), else None


@dataclass(frozen=True)
class _Plan:
    positions: torch.Tensor  # [K] text positions to compute (union over prompts)
    prompts: tuple[_PromptPlan, ...]
    #: the key indices of ``positions`` by (device, first text key), and the prompts' matrices by device: made
    #: once, read by every call
    keys: dict = field(default_factory=dict, compare=False, repr=False)

    def matrices_at(self, device: torch.device) -> tuple[tuple[torch.Tensor, torch.Tensor | None], ...]:
        """Each prompt's ``(word_matrix, kept)`` on ``device``, ``kept`` as a ``[K, 1]`` column (moved once, read by
        every call)."""
        matrices = self.keys.get(device)
        if matrices is None:
            matrices = self.keys[device] = tuple(
                (p.word_matrix.to(device), None if p.kept is None else p.kept.to(device).unsqueeze(1))
                for p in self.prompts
            )
        return matrices

    def keys_at(self, device: torch.device, text_start: int) -> torch.Tensor:
        """The tracked positions as key indices of a call whose text starts at key ``text_start``, on ``device``."""
        keys = self.keys.get((device, text_start))
        if keys is None:
            keys = self.keys[(device, text_start)] = self.positions.to(device) + text_start
        return keys


def _check_words(words: Any) -> tuple[str | int, ...] | None:
    if words is None:
        return None
    if isinstance(words, (str, int)) and not isinstance(words, bool):
        words = (words,)
    if not isinstance(words, Iterable):
        raise ValueError(f"words must be None, a word, a word index, or a list of them; got {words!r}")
    words = tuple(words)
    bad = [w for w in words if isinstance(w, bool) or not isinstance(w, (str, int)) or (isinstance(w, str) and not w)]
    if not words or bad:
        raise ValueError(f"words must be non-empty words (str) or word indices (int); got {words!r}")
    return words


def _check_resolution(resolution: Any) -> tuple[int, int] | None:
    """``None`` or ``(height, width)``, at most :data:`visattn.validation.MAX_MAP_PIXELS` pixels: the running sums
    hold ``words x frames x height x width`` floats for the whole run, so the size is bounded up front."""
    if resolution is None:
        return None
    if isinstance(resolution, int) and not isinstance(resolution, bool) and resolution > 0:
        size = (resolution, resolution)
    elif (
        isinstance(resolution, Sequence)
        and len(resolution) == 2
        and all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in resolution)
    ):
        size = (int(resolution[0]), int(resolution[1]))
    else:
        raise ValueError(f"resolution must be None, a positive int or a (height, width) pair; got {resolution!r}")
    if size[0] * size[1] > validation.MAX_MAP_PIXELS:
        raise ValueError(
            f"resolution={resolution!r} is {size[0] * size[1]} pixels per frame; at most "
            f"{validation.MAX_MAP_PIXELS} are allowed (each tracked word keeps a float32 map of that size per frame; "
            "raise visattn.validation.MAX_MAP_PIXELS for more, or render larger with heatmaps(size=...))"
        )
    return size


def _prompt_texts(prompts: Any) -> tuple[str, ...] | None:
    """The prompt texts of ``AttentionMaps(prompt=...)`` or of a pipeline call (``None``: not comparable)."""
    if isinstance(prompts, (str, PromptTokens)):
        prompts = (prompts,)
    if not isinstance(prompts, Sequence) or not all(isinstance(p, (str, PromptTokens)) for p in prompts):
        return None
    return tuple(p.prompt if isinstance(p, PromptTokens) else p for p in prompts)


def _check_prompt(prompt: Any) -> tuple[str | PromptTokens, ...]:
    if isinstance(prompt, (str, PromptTokens)):
        return (prompt,)
    if isinstance(prompt, Sequence) and prompt and all(isinstance(p, (str, PromptTokens)) for p in prompt):
        return tuple(prompt)
    raise ValueError(
        "prompt must be the prompt of the call (a str), a list of prompts, or PromptTokens from "
        f"visattn.words.prompt_tokens (needed to know which text positions hold which word); got {prompt!r}"
    )


class AttentionMaps(Effect):
    """Collect per-word attention maps (image queries to text keys) while a pipeline runs; an observer only.

    The output is unchanged bit for bit: the effect adds an observer to each cross/joint attention call and
    reads the probabilities after the core ran (see the module docstring for how). Maps accumulate over the
    pipeline runs of one attachment until :meth:`reset`.

    Each attachment collects its own maps (its run state, a :class:`CollectedMaps`): one ``AttentionMaps``
    attached to two pipelines keeps two independent sets. The results methods (:meth:`maps`, :meth:`heatmaps`,
    :meth:`overlay`, :meth:`sheet`, :attr:`contributions`, :attr:`nbytes`) read the latest run's, that is the
    attachment whose generation observed a call most recently; ``attachment.run_of(maps)`` gives one
    attachment's, with the same methods.

    Args:
        words: words to track (text, all occurrences; several words such as ``"red car"`` in a row; or word
            indices); ``None`` tracks every word (every non-stop word with ``drop_special``).
        layers: layers to observe (diffusers' identifiers, ``"cross"``/``"joint"``); ``None``: every layer with
            text keys.
        steps: fraction of the schedule (``f`` or ``(start, stop)``) to aggregate over.
        resolution: ``(height, width)`` (or an int) of the maps; ``None``: the denoiser's latent token grid.
        drop_special: drop start/end tokens, padding and stop words and renormalize each query's attention over
            the remaining words (RefAM); words asked for explicitly always count. ``False`` keeps raw
            probabilities (for joint attention, the image-to-text block of the joint softmax). The
            renormalization is per pixel, so it lifts pixels where the kept words get little mass in total (often
            the background): a word's share of its map on a small object reads lower than in raw probabilities.
            Use ``False`` to measure how much attention a word gets where, and the default for heatmaps that
            show which word a pixel listens to.
        prompt: the prompt(s) of the call, or :class:`~visattn.words.PromptTokens` from
            :func:`~visattn.words.prompt_tokens`. Several prompts give maps per prompt. ``None`` (the default)
            reads the prompt (and a HunyuanVideo ``prompt_template``) from the running pipeline call; pass it
            when the pipeline gets ``prompt_embeds`` instead, or when the denoiser is called directly.
        branch: the batch branch whose rows are read (``"cond"``: the conditional half of CFG).
        stop_words: the words ``drop_special`` drops.
    """

    roles = ("cross", "joint")
    frozen_parameters = True

    def needs(self) -> tuple[str, ...]:
        # Prompts given as PromptTokens carry their text positions; prompt strings need the tokenizer ladder.
        words = self._prompt_from_call or any(isinstance(prompt, str) for prompt in self.prompts)
        return ("text", "grid", "words") if words else ("text", "grid")

    def __init__(
        self,
        words: str | int | Iterable[str | int] | None = None,
        layers: str | Iterable[str] | None = None,
        steps=None,
        resolution: int | tuple[int, int] | None = None,
        drop_special: bool = True,
        *,
        prompt: str | PromptTokens | Sequence[str | PromptTokens] | None = None,
        branch: str = "cond",
        stop_words: Iterable[str] = STOP_WORDS,
    ) -> None:
        super().__init__(layers=layers, steps=steps)
        self.words = _check_words(words)
        self.resolution = _check_resolution(resolution)
        self.drop_special = validation.check_bool(drop_special, "drop_special")
        # Without a prompt, the prompt is read from the running pipeline call (CallContext.denoiser.prompt).
        self._prompt_from_call = prompt is None
        self.prompts = None if prompt is None else _check_prompt(prompt)
        if not isinstance(branch, str) or not branch:
            raise ValueError(f"branch must be a batch-branch name such as 'cond'; got {branch!r}")
        self.branch = branch
        if isinstance(stop_words, str) or not isinstance(stop_words, Iterable):
            raise validation.ParameterTypeError(f"stop_words must be a collection of words; got {stop_words!r}")
        self.stop_words = frozenset(str(w).lower() for w in stop_words)
        # Which of this effect's runs (one per attachment) collected last: what the results methods read.
        self._collected = _Collected()

    # --- state ------------------------------------------------------------------------------------------------
    def new_run(self) -> CollectedMaps:
        run = CollectedMaps(self)
        self._collected.runs.add(run)
        return run

    def latest(self) -> CollectedMaps | None:
        """The maps of the attachment whose generation observed a call most recently (``None`` before any)."""
        return self._collected.latest

    def reset(self) -> None:
        """Forget every collected map, in every attachment of this effect (the settings stay);
        ``attachment.run_of(maps).reset()`` forgets one attachment's."""
        for run in list(self._collected.runs):
            run.reset()

    @property
    def contributions(self) -> int:
        """Attention calls summed into the latest run's maps (0 before any)."""
        latest = self.latest()
        return 0 if latest is None else latest.contributions

    @property
    def nbytes(self) -> int:
        """Bytes held by the latest run's running sums (independent of the number of steps and layers aggregated)."""
        latest = self.latest()
        return 0 if latest is None else latest.nbytes

    # --- call time -----------------------------------------------------------------------------------------------
    def read_denoiser_call(self, state: Any) -> None:
        """Read (``prompt=None``) or check (``prompt=...``) the prompt of the running pipeline call, once per denoiser
        call and before it runs: the prompt is a fact of the denoiser call, and attention calls answered from a plan
        (:meth:`probability_reads`) never see it."""
        denoiser = state.call
        if denoiser is not None:
            run: CollectedMaps = self.run_of(state)
            if self._prompt_from_call:
                run.read_prompt_of_call(denoiser)
            else:
                run.check_prompt_of_call(denoiser)

    def row_plan_key(self, step: StepInfo) -> bool:
        """Whether the reads are made depends, of the step, only on whether the effect's window is open (see
        :meth:`~visattn.effects.Effect.row_plan_key`)."""
        return in_steps(self.steps, step.fraction)

    def _reads_in(self, ctx: CallContext) -> bool:
        """Whether this effect reads a call with context ``ctx``: image queries, text keys and its branch's rows."""
        if ctx.grid is None or ctx.queries.image is None or ctx.keys.text is None or ctx.keys.text.length == 0:
            return False
        return self.branch in ctx.batch.names  # not e.g. the unconditional call of a pipeline that runs branches apart

    def _read(
        self, run: CollectedMaps, ctx: CallContext, plan: _Plan, rows: slice, device: torch.device
    ) -> ProbabilityRead:
        """The read of one call of context ``ctx``: ``rows`` (the branch's), its image queries, the plan's text keys."""
        n_rows, n_prompts = rows.stop - rows.start, len(plan.prompts)
        if n_rows % n_prompts:
            raise ValueError(
                f"AttentionMaps got {n_prompts} prompts but the {self.branch!r} branch has {n_rows} rows; "
                "pass every prompt of the call (in order)"
            )
        keys = plan.keys_at(device, ctx.keys.text.start)

        def observe(block: torch.Tensor) -> None:
            run.observe(ctx, plan, block)

        return ProbabilityRead(observe, rows=rows, queries=ctx.queries.image.as_slice(), keys=keys)

    def apply(self, call: AttentionCall) -> None:
        ctx = call.ctx
        if not self._reads_in(ctx) or call.replay:
            return  # a replay is a backward recomputation: this call's maps were collected in the forward
        run: CollectedMaps = self.run_of(ctx)
        self._collected.latest = run
        plan = run.plan(ctx.keys.text.length, ctx)
        call.reads.append(self._read(run, ctx, plan, ctx.batch.rows(self.branch), call.q.device))

    def probability_reads(self, ctx: CallContext, device: torch.device) -> ProbabilityReader:
        """The read :meth:`apply` adds to calls of context ``ctx`` on ``device``, made again whenever the plan of the
        prompt changes (a new prompt, :meth:`reset`); ``None`` at a call before the plan is made, which makes and
        checks it (see :meth:`~visattn.effects.Effect.probability_reads`)."""
        if not self._reads_in(ctx):
            return NO_READS
        run: CollectedMaps = self.run_of(ctx)
        collected, text_length = self._collected, ctx.keys.text.length
        rows = ctx.batch.rows(self.branch)
        made: list = [None, ()]  # the plan the reads below were made for, and them

        def reads() -> tuple[ProbabilityRead, ...] | None:
            plan = run.plans.get(text_length)
            if plan is None:
                return None
            if plan is not made[0]:
                n_rows = rows.stop - rows.start
                if n_rows % len(plan.prompts):
                    return None  # the full path says why
                made[:] = [plan, (self._read(run, ctx, plan, rows, device),)]
            collected.latest = run
            return made[1]

        return reads

    def _tokens(self, prompt: str | PromptTokens, text_length: int, ctx: CallContext) -> PromptTokens:
        layer = ctx.layer_name
        if isinstance(prompt, str):
            pipeline = ctx.denoiser.pipeline if ctx.denoiser is not None else None
            if pipeline is None:
                raise ValueError(
                    "AttentionMaps(prompt=str) needs the pipeline's tokenizers: attach the pipeline, not its "
                    "denoiser, or pass prompt=visattn.words.prompt_tokens(pipe, prompt)"
                )
            # The text length seen here settles the call's max_sequence_length (SD3 puts 77 CLIP tokens first).
            length = prompt_recipe(prompt_family(pipeline)).sequence_length_of(text_length, pipeline)
            template = ctx.denoiser.prompt.prompt_template
            options = {} if template is None else {"prompt_template": template}
            prompt = prompt_tokens(pipeline, prompt, max_sequence_length=length, **options)
        if prompt.length != text_length:
            raise ValueError(
                f"the prompt tokens describe a text sequence of {prompt.length} positions but layer {layer!r} sees "
                f"{text_length} text tokens; build them with the call's max_sequence_length"
            )
        return prompt

    def _build_plan(self, prompts: tuple, text_length: int, ctx: CallContext) -> _Plan:
        tokens = [self._tokens(prompt, text_length, ctx) for prompt in prompts]
        selections = [self._select(t) for t in tokens]
        if self.words is not None:
            found = {sel for selection in selections for sel, _, _ in selection}
            missing = [w for w in self.words if w not in found]
            if missing:
                listing = "; ".join(f"{t.prompt!r}: {list(t.words)}" for t in tokens)
                raise ValueError(f"words {missing} are in none of the prompts; their words are {listing}")
        kept_sets = []
        for t, selection in zip(tokens, selections, strict=True):
            kept = {p for i in t.content_words(self.stop_words) for p in t.word_tokens[i]}
            kept |= {p for _, _, positions in selection for p in positions}
            kept_sets.append(kept)
        union = sorted(
            {p for selection in selections for _, _, positions in selection for p in positions}
            | (set().union(*kept_sets) if self.drop_special else set())
        )
        column = {p: i for i, p in enumerate(union)}
        prompts = []
        for t, selection, kept in zip(tokens, selections, kept_sets, strict=True):
            matrix = torch.zeros(len(union), len(selection))
            for j, (_, _, positions) in enumerate(selection):
                matrix[[column[p] for p in positions], j] = 1.0
            kept_vector = None
            if self.drop_special:
                kept_vector = torch.zeros(len(union))
                kept_vector[[column[p] for p in kept]] = 1.0
            prompts.append(_PromptPlan(t, tuple(name for _, name, _ in selection), matrix, kept_vector))
        return _Plan(torch.tensor(union, dtype=torch.long), tuple(prompts))

    def _select(self, tokens: PromptTokens) -> list[tuple[str | int | None, str, tuple[int, ...]]]:
        """``(selector, name, positions)`` of each tracked word of one prompt (selectors absent there skipped)."""
        selection: list[tuple[str | int | None, str, tuple[int, ...]]] = []
        names: set[str] = set()
        if self.words is None:
            indices = tokens.content_words(self.stop_words) if self.drop_special else range(len(tokens.words))
            for i in indices:
                if tokens.words[i] not in names:
                    names.add(tokens.words[i])
                    selection.append((None, tokens.words[i], tokens.positions(tokens.words[i])))
            return selection
        for selector in self.words:
            try:
                positions = tokens.positions(selector)
            except ValueError:
                continue
            if isinstance(selector, str):
                name = " ".join(word for word, _, _ in split_words(selector))
            else:
                name = tokens.words[selector]
                name = name if name not in names else f"{name}[{selector % len(tokens.words)}]"
            if name in names:
                continue
            names.add(name)
            selection.append((selector, name, positions))
        return selection

    # --- results: the latest run's --------------------------------------------------------------------------------
    def _latest_maps(self) -> CollectedMaps:
        latest = self.latest()
        if latest is None:
            raise RuntimeError(
                "AttentionMaps has no maps yet: run the pipeline with it attached (it observes cross/joint "
                "attention layers of the chosen branch and steps)"
            )
        return latest

    def maps(self) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """The latest run's maps (:meth:`CollectedMaps.maps`)."""
        return self._latest_maps().maps()

    def heatmaps(self, size: int | tuple[int, int] | None = None) -> dict[str, Any] | list[dict[str, Any]]:
        """The latest run's heatmaps (:meth:`CollectedMaps.heatmaps`)."""
        return self._latest_maps().heatmaps(size)

    def overlay(self, image: Any, alpha: float = 0.5, prompt: int = 0) -> dict[str, Any]:
        """The latest run's maps over ``image`` (:meth:`CollectedMaps.overlay`)."""
        return self._latest_maps().overlay(image, alpha, prompt)

    def sheet(self, images: Sequence[Any], labels: Sequence[str] | None = None, title: str | None = None) -> Any:
        """The latest run's sheet (:meth:`CollectedMaps.sheet`)."""
        return self._latest_maps().sheet(images, labels, title)

    def __repr__(self) -> str:
        return (
            f"AttentionMaps(words={self.words}, layers={self.layers}, steps={self.steps}, "
            f"resolution={self.resolution}, drop_special={self.drop_special}, branch={self.branch!r})"
        )


class _Collected:
    """Which of an :class:`AttentionMaps`'s runs (one per attachment) collected last; the effect's results methods
    read that one."""

    def __init__(self) -> None:
        self.runs: weakref.WeakSet[CollectedMaps] = weakref.WeakSet()
        self.latest: CollectedMaps | None = None


class CollectedMaps:
    """One attachment's collected maps: what an :class:`AttentionMaps` learns and sums while attached there (its
    run state, ``attachment.run_of(maps)``), with the same results methods as the effect.

    Attributes:
        prompts: the prompts the maps are of (given, or read from the pipeline call).
        contributions: attention calls summed into the maps.
    """

    def __init__(self, effect: AttentionMaps) -> None:
        self.effect = effect
        self.prompts = effect.prompts
        self.reset()

    def reset(self) -> None:
        """Forget the collected maps (the prompt stays)."""
        self.plans: dict[int, _Plan] = {}
        self.sums: list[torch.Tensor] | None = None
        self.names: tuple[tuple[str, ...], ...] | None = None
        self.size: tuple[int, int, int] | None = None
        self.contributions = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the running sums (independent of the number of steps and layers aggregated)."""
        return sum(t.numel() * t.element_size() for t in self.sums or ())

    def read_prompt_of_call(self, denoiser: DenoiserCall) -> None:
        """Take the prompt from the pipeline's running ``__call__`` (its words are located, with the call's
        template where it passes one, once the text length is seen: Framepack's one-row calls drop the padding)."""
        if denoiser.pipeline is None:
            return
        prompt = denoiser.prompt.prompt
        if prompt is None:
            return  # called with prompt_embeds: _plan asks for prompt= explicitly
        prompts = _check_prompt(prompt)
        if prompts == self.prompts:
            return
        if self.sums is not None:
            raise ValueError(
                f"AttentionMaps holds maps of the prompt(s) {self.prompts!r}; call reset() before a call with "
                f"another prompt ({prompts!r}), or use one AttentionMaps per prompt"
            )
        self.prompts, self.plans = prompts, {}

    def check_prompt_of_call(self, denoiser: DenoiserCall | None) -> None:
        """ValueError when ``prompt=`` is not the running pipeline call's prompt: the maps would carry the words of
        one prompt over the attention of another. Compared once per denoiser call; nothing to compare without a
        pipeline, with ``prompt_embeds``, or with a prompt template that rewrites the text.
        """
        if denoiser is None:
            return
        called = _prompt_texts(denoiser.prompt.prompt)
        if called is None or denoiser.prompt.prompt_template is not None:
            return
        if any(isinstance(p, PromptTokens) and not p.family for p in self.prompts):
            return  # positions given by hand (no tokenizer behind them): their words are the user's to name
        given = _prompt_texts(self.prompts)
        if given != called:
            raise ValueError(
                f"AttentionMaps(prompt={list(given)!r}) does not match the pipeline call's prompt {list(called)!r}; "
                "the maps would label the wrong words. Pass the call's prompt(s), in order, or leave prompt=None to "
                "read it from the call"
            )

    def plan(self, text_length: int, ctx: CallContext) -> _Plan:
        if self.prompts is None:
            raise ValueError(
                "AttentionMaps needs the prompt to know which text positions hold which word: the pipeline was "
                "called without one (prompt_embeds?); pass AttentionMaps(prompt=...)"
            )
        plan = self.plans.get(text_length)
        if plan is None:
            plan = self.plans[text_length] = self.effect._build_plan(self.prompts, text_length, ctx)
        return plan

    def observe(self, ctx: CallContext, plan: _Plan, block: torch.Tensor) -> None:
        """Add one call's maps: ``block`` holds its probabilities ``[rows, heads, image queries, tracked keys]``."""
        n_rows, n_prompts = block.shape[0], len(plan.prompts)
        if n_rows == 1 and ctx.head_group is None:
            prompts: Sequence[torch.Tensor] = (block.mean(dim=(0, 1)),)  # one row of one prompt: [Nimg, K]
        else:
            probs = ctx.mean_over_heads(block)  # [rows, Nimg, K]
            # Pipelines repeat each prompt num_images_per_prompt times in a row: average each prompt's images.
            if n_rows != n_prompts:
                probs = probs.view(n_prompts, n_rows // n_prompts, *probs.shape[1:]).mean(dim=1)
            prompts = probs.unbind(0)
        grid = ctx.grid
        for index, (p, (word_matrix, kept)) in enumerate(zip(prompts, plan.matrices_at(block.device), strict=True)):
            masses = p @ word_matrix  # [Nimg, words]
            if kept is not None:
                masses = masses / (p @ kept).clamp_min(_TINY[p.dtype])
            self._accumulate(index, masses, grid, plan, ctx)
        self.contributions += 1

    def _accumulate(
        self, index: int, masses: torch.Tensor, grid: tuple[int, int, int], plan: _Plan, ctx: CallContext
    ) -> None:
        """Add one prompt's word masses ``[tokens, words]`` of a call on ``grid`` to its sums."""
        if self.sums is None:
            size = self.effect.resolution or ctx.input_grid[1:]
            self.size = (grid[0], int(size[0]), int(size[1]))
            self.sums = [
                torch.zeros(len(p.names), *self.size, device=masses.device, dtype=torch.float32) for p in plan.prompts
            ]
            # The sums read as [tokens, words], where a call's masses add without a transposed copy.
            self._sums_by_token = [sums.flatten(1).t() for sums in self.sums]
            self.names = tuple(p.names for p in plan.prompts)
        if grid == self.size and masses.device == self.sums[index].device:
            self._sums_by_token[index].add_(masses)
            return
        frames, height, width = self.size
        maps = masses.t().reshape(-1, *grid)
        if maps.shape[1:] != self.size:
            if maps.shape[1] == frames:
                downsampling = maps.shape[-2] > height or maps.shape[-1] > width
                maps = F.interpolate(maps, size=(height, width), mode="bilinear", antialias=downsampling)
            else:
                maps = F.interpolate(maps.unsqueeze(1), size=self.size, mode="trilinear").squeeze(1)
        self.sums[index] += maps.to(self.sums[index].device)

    def _per_prompt(self) -> list[dict[str, torch.Tensor]]:
        if self.sums is None or self.contributions == 0:
            raise RuntimeError(
                "AttentionMaps has no maps yet: run the pipeline with it attached (it observes cross/joint "
                "attention layers of the chosen branch and steps)"
            )
        return [
            {name: (sums[i] / self.contributions).cpu() for i, name in enumerate(names)}
            for sums, names in zip(self.sums, self.names, strict=True)
        ]

    def maps(self) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Word -> ``[frames, H, W]`` map, averaged over the observed heads, layers and steps.

        With ``drop_special`` each query's values over the tracked and remaining words sum to at most 1 (the
        word's share of the attention to meaningful words); otherwise they are attention probabilities. One
        dict per prompt (a list) when several prompts were given.
        """
        per_prompt = self._per_prompt()
        return per_prompt[0] if len(self.prompts) == 1 else per_prompt

    def heatmaps(self, size: int | tuple[int, int] | None = None) -> dict[str, Any] | list[dict[str, Any]]:
        """Word -> heatmap (a PIL image; a list of images, one per latent frame, for video).

        Each word is scaled from its own minimum to its maximum over all frames, so a near-uniform map still shows
        its structure and frames of a video compare. ``size`` is ``(width, height)`` or an int; ``None`` keeps the
        maps' resolution.
        """
        result = []
        for maps in self._per_prompt():
            images = {}
            for name, values in maps.items():
                array = values.numpy()
                low, high = float(array.min()), float(array.max())
                frames = [rendering.heatmap(frame, size=size, vmin=low, vmax=high) for frame in array]
                images[name] = frames[0] if self.size[0] == 1 else frames
            result.append(images)
        return result[0] if len(self.prompts) == 1 else result

    def overlay(self, image: Any, alpha: float = 0.5, prompt: int = 0) -> dict[str, Any]:
        """Word -> the map drawn over ``image`` (alpha blend, map resized to the image).

        Args:
            image: one generated image (PIL, or an ``[H, W, 3]`` array as ``output_type="np"`` gives); for video
                its frames (a list of those or an ``[F, H, W, 3]`` array), matched to latent frames in time.
            alpha: opacity of the heatmap in ``[0, 1]``.
            prompt: which prompt's maps to draw when several prompts were given.

        Returns:
            Word -> a PIL image, or for video a list of PIL images, one per video frame.
        """
        per_prompt = self._per_prompt()
        if isinstance(prompt, bool) or not isinstance(prompt, int) or not 0 <= prompt < len(per_prompt):
            raise ValueError(f"prompt must be an index below {len(per_prompt)}; got {prompt!r}")
        frames = _frames(image)
        latent_frames = self.size[0]
        result: dict[str, Any] = {}
        for name, values in per_prompt[prompt].items():
            array = values.numpy()
            low, high = float(array.min()), float(array.max())
            drawn = [
                rendering.overlay(frame, array[_latent_frame(i, len(frames), latent_frames)], alpha, high, low)
                for i, frame in enumerate(frames)
            ]
            result[name] = drawn[0] if _is_single(image) else drawn
        return result

    def sheet(self, images: Sequence[Any], labels: Sequence[str] | None = None, title: str | None = None) -> Any:
        """One labelled sheet of the per-word maps (:func:`visattn.sheets.word_sheet`): a row per prompt, its
        image first, then each word's map over it.

        Args:
            images: one generated image per prompt, in order (for video, its frames: the first is shown).
            labels: a label per row (default: the prompts).
            title: a line above the sheet.

        Returns:
            A PIL image.
        """
        from ..sheets import word_sheet

        per_prompt = self._per_prompt()
        images = list(images)
        if len(images) != len(per_prompt):
            raise ValueError(f"images must hold one image per prompt ({len(per_prompt)}); got {len(images)}")
        if labels is None:
            labels = [str(getattr(prompt, "prompt", prompt)) for prompt in self.prompts]
        labels = list(labels)
        if len(labels) != len(per_prompt):
            raise ValueError(f"labels must hold one label per prompt ({len(per_prompt)}); got {len(labels)}")
        rows = [(label, _frames(image)[0], maps) for label, image, maps in zip(labels, images, per_prompt, strict=True)]
        return word_sheet(rows, title=title)


def _is_single(image: Any) -> bool:
    if isinstance(image, (list, tuple)):
        return False
    return np.asarray(image).ndim <= 3


def _frames(image: Any) -> list[Any]:
    """The frames of an image (one) or a video (a list, or an ``[F, H, W, C]`` array)."""
    if isinstance(image, (list, tuple)):
        if not image:
            raise ValueError("image must be an image or a non-empty list of video frames; got an empty list")
        return list(image)
    if hasattr(image, "convert"):  # a PIL image
        return [image]
    array = np.asarray(image)
    if array.ndim == 4:
        return list(array)
    return [array]


def _latent_frame(index: int, video_frames: int, latent_frames: int) -> int:
    """The latent frame that holds video frame ``index``: causal video VAEs keep frame 0 alone and pack each
    following group of ``(video - 1) / (latent - 1)`` frames into one latent frame."""
    if latent_frames == 1 or video_frames <= 1:
        return 0
    if video_frames == latent_frames:
        return index
    return min(latent_frames - 1, math.ceil(index * (latent_frames - 1) / (video_frames - 1)))
