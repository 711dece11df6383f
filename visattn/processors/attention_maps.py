"""``AttentionMaps``: per-word cross-attention maps of any family, collected on the fly without changing the output.

Prompt-to-Prompt (Hertz et al., 2022, "Prompt-to-Prompt Image Editing with Cross Attention Control") showed that
the image-to-text attention of a word is a map of where that word is drawn; DAAM and RefAM ("Attention Magnets
for Zero-Shot Referral Segmentation") aggregate these maps over layers, heads and steps. For UNets, PixArt and
Wan the maps are cross-attention probabilities (image queries, text keys); for MM-DiTs (SD3, Flux, CogVideoX,
HunyuanVideo) they are the image-query/text-key block of the joint softmax.

How the probabilities are obtained, cheapest first:

* an effect that materialized the probabilities (Prompt-to-Prompt edits them) leaves them in
  :attr:`AttentionCall.probs`, and they are read from there;
* otherwise only the needed block is computed, ``exp(q k_text^T * scale (+ score_mod, masks) - lse)``, for the
  rows of one batch branch, the image queries and the text keys of the tracked words, using the log-sum-exp
  the attention core returned. A call whose core returned no log-sum-exp (the dense SDPA path cannot) gets it
  recomputed here for those rows and queries, in chunks, without keeping the scores. Either way the full map is
  never stored.

RefAM's observation drives the ``drop_special`` default: start/end tokens, padding and stop words soak up most
of the text attention ("attention magnets"), so the maps are renormalized over the remaining words.

The maps are summed on the fly (over heads, layers and steps, resized to one resolution per frame), so memory
does not grow with the number of steps or layers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .. import heatmaps as rendering
from ..context import CallContext, DenoiserCall
from ..words import STOP_WORDS, PromptTokens, prompt_family, prompt_recipe, prompt_tokens, split_words
from .effect import AttentionCall, Effect

# Queries per chunk when the log-sum-exp has to be recomputed: bounds the transient scores at
# rows x heads x chunk x keys floats.
LSE_QUERY_CHUNK = 1024


# --- probabilities of one call ---------------------------------------------------------------------------------


def _as_index(index: slice | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(index, slice):
        return torch.arange(index.start, index.stop, device=device)
    return index.to(device=device, dtype=torch.long)


def _mask_block(mask: torch.Tensor, rows: slice, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
    """The part of a mask broadcastable to ``[B, H, Nq, Nk]`` that the selected rows/queries/keys see."""
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    # Index only the axes the mask really has, so a key-padding mask [B, 1, 1, Nk] stays small.
    if mask.shape[0] > 1:
        mask = mask[rows]
    if mask.shape[2] > 1:
        mask = mask.index_select(2, q_idx)
    if mask.shape[3] > 1:
        mask = mask.index_select(3, kv_idx)
    return mask


def attention_logits(
    call: AttentionCall, rows: slice, queries: slice | torch.Tensor, keys: slice | torch.Tensor
) -> torch.Tensor:
    """Scaled, modified and masked fp32 logits of one call for a block of rows, queries and keys.

    The same arithmetic as the reference backend (:func:`visattn.kernels.backends.reference.masked_logits`):
    ``q k^T * scale``, then the score modifier, the model's mask and the pattern (masked pairs are ``-inf``),
    with absolute batch, head, query and key indices so that modifiers and patterns see the pairs they would
    see in the full call. Returns ``[rows, heads, len(queries), len(keys)]``.
    """
    request = call.request()
    device = call.q.device
    q_idx, kv_idx = _as_index(queries, device), _as_index(keys, device)
    q = call.q[rows].index_select(2, q_idx).float()
    k = call.k[rows].index_select(2, kv_idx).float()
    logits = torch.matmul(q, k.transpose(-1, -2)) * request.effective_scale
    b = torch.arange(rows.start, rows.stop, device=device).view(-1, 1, 1, 1)
    h = torch.arange(q.shape[1], device=device).view(1, -1, 1, 1)
    qi, ki = q_idx.view(1, 1, -1, 1), kv_idx.view(1, 1, 1, -1)
    if request.score_mod is not None:
        logits = request.score_mod.score_mod(logits, b, h, qi, ki)
    if request.attn_mask is not None:
        mask = _mask_block(request.attn_mask, rows, q_idx, kv_idx)
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.float()
    if request.pattern is not None:
        logits = logits.masked_fill(~request.pattern.mask_mod(b, h, qi, ki), float("-inf"))
    return logits


def attention_lse(call: AttentionCall, rows: slice, queries: slice | torch.Tensor) -> torch.Tensor:
    """Natural-log log-sum-exp over all keys for a block of rows and queries: ``[rows, heads, len(queries)]``.

    Read from :attr:`AttentionCall.lse` when the core returned it, else recomputed in chunks of queries.
    """
    q_idx = _as_index(queries, call.q.device)
    if call.lse is not None:
        return call.lse[rows].index_select(2, q_idx.to(call.lse.device)).float()
    all_keys = slice(0, call.k.shape[2])
    parts = [
        torch.logsumexp(attention_logits(call, rows, chunk, all_keys), dim=-1) for chunk in q_idx.split(LSE_QUERY_CHUNK)
    ]
    return torch.cat(parts, dim=2)


def attention_probabilities(
    call: AttentionCall, rows: slice, queries: slice | torch.Tensor, keys: slice | torch.Tensor
) -> torch.Tensor:
    """The final attention probabilities of one call for a block of rows, queries and keys (fp32).

    ``[rows, heads, len(queries), len(keys)]``: taken from :attr:`AttentionCall.probs` when an effect set
    them, otherwise ``exp(logits - lse)`` for just this block. An identity blend (SoftPAG) scales each row by
    ``1 - s``, the weight left to the softmax map, when the keys are not the queries themselves.
    """
    device = call.q.device
    q_idx, kv_idx = _as_index(queries, device), _as_index(keys, device)
    if call.probs is not None:
        probs = call.probs[rows].index_select(2, q_idx.to(call.probs.device))
        return probs.index_select(3, kv_idx.to(call.probs.device)).float()
    logits = attention_logits(call, rows, q_idx, kv_idx)
    lse = attention_lse(call, rows, q_idx).to(logits.device)
    # A query with every key masked has lse = -inf; its probabilities are zero, as the backends return.
    probs = torch.exp(logits - lse.masked_fill(torch.isinf(lse), 0.0).unsqueeze(-1))
    if call.identity_blend is not None:
        blend = call.identity_blend.float().to(device)
        while blend.dim() < 4:
            blend = blend.unsqueeze(0)
        blend = blend.expand(call.q.shape[0], call.q.shape[1], call.q.shape[2], 1)[rows].index_select(2, q_idx)
        # The identity's own column is the query's index: zero on every other key.
        diagonal = (q_idx.view(-1, 1) == kv_idx.view(1, -1)).float()
        probs = probs * (1.0 - blend) + blend * diagonal
    return probs


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
    if resolution is None:
        return None
    if isinstance(resolution, int) and not isinstance(resolution, bool) and resolution > 0:
        return resolution, resolution
    if (
        isinstance(resolution, Sequence)
        and len(resolution) == 2
        and all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in resolution)
    ):
        return int(resolution[0]), int(resolution[1])
    raise ValueError(f"resolution must be None, a positive int or a (height, width) pair; got {resolution!r}")


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
    reads the probabilities after the core ran (see the module docstring for how). Maps accumulate over
    pipeline runs until :meth:`reset`.

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
        if not isinstance(drop_special, bool):
            raise ValueError(f"drop_special must be True or False; got {drop_special!r}")
        self.drop_special = drop_special
        # Without a prompt, the prompt is read from the running pipeline call (CallContext.denoiser.prompt).
        self._prompt_from_call = prompt is None
        self.prompts = None if prompt is None else _check_prompt(prompt)
        if not isinstance(branch, str) or not branch:
            raise ValueError(f"branch must be a batch-branch name such as 'cond'; got {branch!r}")
        self.branch = branch
        self.stop_words = frozenset(str(w).lower() for w in stop_words)
        #: the denoiser call whose prompt was last read (the prompt is read once per denoiser call)
        self._prompt_read_in: Any = None
        self.reset()

    # --- state ------------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every collected map (the prompt and the settings stay)."""
        self._plans: dict[int, _Plan] = {}
        self._sums: list[torch.Tensor] | None = None
        self._names: tuple[tuple[str, ...], ...] | None = None
        self._size: tuple[int, int, int] | None = None
        self.contributions = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the running sums (independent of the number of steps and layers aggregated)."""
        return sum(t.numel() * t.element_size() for t in self._sums or ())

    # --- call time -----------------------------------------------------------------------------------------------
    def _read_prompt_of_call(self, denoiser: DenoiserCall) -> None:
        """Take the prompt (and a custom HunyuanVideo template) from the pipeline's running ``__call__``."""
        pipeline, call = denoiser.pipeline, denoiser.prompt
        if pipeline is None:
            return
        prompt = call.prompt
        if prompt is None:
            return  # called with prompt_embeds: _plan asks for prompt= explicitly
        if call.prompt_template is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt = [
                prompt_tokens(
                    pipeline, p, prompt_template=call.prompt_template, max_sequence_length=call.max_sequence_length
                )
                for p in prompts
            ]
        prompts = _check_prompt(prompt)
        if prompts == self.prompts:
            return
        if self._sums is not None:
            raise ValueError(
                f"AttentionMaps holds maps of the prompt(s) {self.prompts!r}; call reset() before a call with "
                f"another prompt ({prompts!r}), or use one AttentionMaps per prompt"
            )
        self.prompts, self._plans = prompts, {}

    def apply(self, call: AttentionCall) -> None:
        ctx = call.ctx
        if ctx.grid is None or ctx.queries.image is None or ctx.keys.text is None or ctx.keys.text.length == 0:
            return
        if self.branch not in ctx.batch.names:
            return  # e.g. the unconditional call of a pipeline that runs its branches one by one
        call.observers.append(self._observe)

    def _observe(self, call: AttentionCall) -> None:
        if call.replay:
            return  # a backward recomputation: this call's maps were collected in the forward
        ctx = call.ctx
        if self._prompt_from_call and ctx.denoiser is not None and ctx.denoiser is not self._prompt_read_in:
            self._prompt_read_in = ctx.denoiser
            self._read_prompt_of_call(ctx.denoiser)
        text, image = ctx.keys.text, ctx.queries.image
        plan = self._plan(text.length, ctx)
        rows = ctx.batch.rows(self.branch)
        n_rows, n_prompts = rows.stop - rows.start, len(plan.prompts)
        if n_rows % n_prompts:
            raise ValueError(
                f"AttentionMaps got {n_prompts} prompts but the {self.branch!r} branch has {n_rows} rows; "
                "pass every prompt of the call (in order)"
            )
        keys = plan.positions.to(call.q.device) + text.start
        probs = ctx.mean_over_heads(attention_probabilities(call, rows, image.as_slice(), keys))  # [rows, Nimg, K]
        # Pipelines repeat each prompt num_images_per_prompt times in a row: average each prompt's images.
        probs = probs.view(n_prompts, n_rows // n_prompts, *probs.shape[1:]).mean(dim=1)
        frames, height, width = ctx.grid
        for index, prompt_plan in enumerate(plan.prompts):
            p = probs[index]
            masses = p @ prompt_plan.word_matrix.to(p.device)  # [Nimg, words]
            if prompt_plan.kept is not None:
                total = p @ prompt_plan.kept.to(p.device)
                masses = masses / total.clamp_min(torch.finfo(total.dtype).tiny).unsqueeze(-1)
            maps = masses.transpose(0, 1).reshape(-1, frames, height, width)
            self._accumulate(index, maps, plan, ctx.input_grid)
        self.contributions += 1

    def _accumulate(self, index: int, maps: torch.Tensor, plan: _Plan, input_grid: tuple[int, int, int]) -> None:
        if self._sums is None:
            size = self.resolution or input_grid[1:]
            self._size = (maps.shape[1], int(size[0]), int(size[1]))
            self._sums = [
                torch.zeros(len(p.names), *self._size, device=maps.device, dtype=torch.float32) for p in plan.prompts
            ]
            self._names = tuple(p.names for p in plan.prompts)
        frames, height, width = self._size
        if maps.shape[1:] != self._size:
            if maps.shape[1] == frames:
                downsampling = maps.shape[-2] > height or maps.shape[-1] > width
                maps = F.interpolate(maps, size=(height, width), mode="bilinear", antialias=downsampling)
            else:
                maps = F.interpolate(maps.unsqueeze(1), size=self._size, mode="trilinear").squeeze(1)
        self._sums[index] += maps.to(self._sums[index].device)

    def _plan(self, text_length: int, ctx: CallContext) -> _Plan:
        if self.prompts is None:
            raise ValueError(
                "AttentionMaps needs the prompt to know which text positions hold which word: the pipeline was "
                "called without one (prompt_embeds?); pass AttentionMaps(prompt=...)"
            )
        plan = self._plans.get(text_length)
        if plan is None:
            plan = self._plans[text_length] = self._build_plan(text_length, ctx)
        return plan

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
            length = prompt_recipe(prompt_family(pipeline)).sequence_length_of(text_length)
            prompt = prompt_tokens(pipeline, prompt, max_sequence_length=length)
        if prompt.length != text_length:
            raise ValueError(
                f"the prompt tokens describe a text sequence of {prompt.length} positions but layer {layer!r} sees "
                f"{text_length} text tokens; build them with the call's max_sequence_length"
            )
        return prompt

    def _build_plan(self, text_length: int, ctx: CallContext) -> _Plan:
        tokens = [self._tokens(prompt, text_length, ctx) for prompt in self.prompts]
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

    # --- results -------------------------------------------------------------------------------------------------
    def _per_prompt(self) -> list[dict[str, torch.Tensor]]:
        if self._sums is None or self.contributions == 0:
            raise RuntimeError(
                "AttentionMaps has no maps yet: run the pipeline with it attached (it observes cross/joint "
                "attention layers of the chosen branch and steps)"
            )
        return [
            {name: (sums[i] / self.contributions).cpu() for i, name in enumerate(names)}
            for sums, names in zip(self._sums, self._names, strict=True)
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
                images[name] = frames[0] if self._size[0] == 1 else frames
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
        latent_frames = self._size[0]
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

    def __repr__(self) -> str:
        return (
            f"AttentionMaps(words={self.words}, layers={self.layers}, steps={self.steps}, "
            f"resolution={self.resolution}, drop_special={self.drop_special}, branch={self.branch!r})"
        )


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
