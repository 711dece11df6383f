"""What every effect knows about the attention call it is in, derived once per call.

The user never passes grid sizes: the denoiser's forward hook reads the latent shape, the timestep and the
pipeline's batch layout (:mod:`visattn.state`), the family adapter knows where text and image tokens sit in
each sequence (:mod:`visattn.families`), and :class:`CallContext` joins the two.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class Span:
    """A half-open token range ``[start, stop)`` inside a sequence."""

    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start

    def as_slice(self) -> slice:
        return slice(self.start, self.stop)


@dataclass(frozen=True)
class TokenLayout:
    """Where the latent-grid tokens and the text tokens sit in one sequence (queries or keys).

    Attributes:
        length: tokens of the sequence.
        image: the latent grid's tokens (``None``: the sequence holds no grid visattn can place).
        text: the text tokens (``None``: no text).
        other: tokens that are neither, in sequence order: the family's
            :attr:`~visattn.families.Family.other_tokens` (HiDream's pad tokens of a non-square image, Bria FIBO
            2's gist tokens, Framepack's history latents, MiniMax-H3's audio rows) and the context latents of
            ``context_before_grid`` (Helios's history). Effects treat them as context the model keeps: grid
            patterns (neighborhood, radial, extrapolation) keep them visible to every grid query and give their
            own queries the rule of text queries; SEG blurs the grid only, so they stay unblurred; PAG's and STG's
            identity acts on every query row of the perturbed branch, as on text rows; Prompt-to-Prompt and
            attention maps read text only, and a joint edit lets the keys outside the text (grid and these) share
            the mass the text block leaves.
    """

    length: int
    image: Span | None = None
    text: Span | None = None
    other: tuple[Span, ...] = ()

    def grid_context(self) -> tuple[int, bool]:
        """``(extra_keys, prefix_keys)`` of a grid pattern over this layout: every key outside the grid stays
        visible to grid queries (text and other tokens alike), so the keys after the grid and, when the grid does
        not lead, every key before it (see :func:`visattn.kernels.patterns.grid_sequence_mask`)."""
        if self.image is None:
            return 0, False
        return self.length - self.image.stop, self.image.start > 0

    def outside_text(self) -> slice | None:
        """The keys outside the text when they are contiguous (text first or last), else ``None``."""
        if self.text is None:
            return slice(0, self.length)
        if self.text.stop == self.length:
            return slice(0, self.text.start)
        if self.text.start == 0:
            return slice(self.text.stop, self.length)
        return None


@dataclass(frozen=True)
class Branch:
    """One named group of batch rows, e.g. the classifier-free-guidance ``"uncond"`` half."""

    name: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class BatchLayout:
    """How the batch of one denoiser call splits into branches.

    The pipeline's own layout comes first (``("uncond", "cond")`` halves when it batches classifier-free guidance,
    or one branch when it calls the denoiser per branch); effects that add branches (a perturbed twin for PAG,
    the target of a prompt-to-prompt edit) extend it.
    """

    branches: tuple[Branch, ...]

    @classmethod
    def split(cls, batch_size: int, names: tuple[str, ...]) -> BatchLayout:
        """Equal consecutive chunks named ``names`` (the order the pipeline concatenates them in)."""
        if batch_size % len(names):
            return cls((Branch("cond", 0, batch_size),))
        size = batch_size // len(names)
        return cls(tuple(Branch(name, i * size, (i + 1) * size) for i, name in enumerate(names)))

    @property
    def batch_size(self) -> int:
        return self.branches[-1].stop if self.branches else 0

    @functools.cached_property
    def key(self) -> tuple[tuple[str, int, int], ...]:
        """The branches as plain tuples: a dict key that hashes and compares without Python-level dataclass methods
        (layer hooks key their plans by it at every call)."""
        return tuple((branch.name, branch.start, branch.stop) for branch in self.branches)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(branch.name for branch in self.branches)

    def rows(self, name: str) -> slice:
        """Rows of the first branch called ``name``; KeyError listing the branches if there is none."""
        for branch in self.branches:
            if branch.name == name:
                return slice(branch.start, branch.stop)
        raise KeyError(f"no branch {name!r} in batch layout {self.names}")


@dataclass(frozen=True)
class StepInfo:
    """Where the sampler is: ``index`` of ``total`` denoising steps, and the raw ``timestep``."""

    index: int | None = None
    total: int | None = None
    timestep: float | None = None

    @property
    def fraction(self) -> float | None:
        """``index / total`` in ``[0, 1)``, or ``None`` when the schedule is unknown."""
        if self.index is None or not self.total:
            return None
        return self.index / self.total


class DenoiserCall:
    """What one denoiser call tells every attention call inside it, read at most once per call by the family layer
    (:mod:`visattn.state`: when the call's first context is made, see :attr:`visattn.state.DenoiserState.call`), so
    that no effect captures denoiser-level facts itself.

    Attributes:
        family: the denoiser's family record (:class:`visattn.families.Family`).
        grid: ``(frames, height, width)`` of the denoiser's input latents after patchify (the top UNet level);
            a layer's own grid (:attr:`CallContext.grid`) may be smaller.
        text_length: text tokens of the call's text sequence (``None``: no text input).
        batch: the batch layout the pipeline made (before effects add branches of their own).
        step: where the sampler is.
        prompt: the prompt arguments of the running pipeline call (:class:`visattn.families.pipelines.CallPrompt`;
            empty without a pipeline, or when it was called with ``prompt_embeds``).
        guidance_scale: the CFG scale the pipeline applies to this call's conditional prediction (1 when it
            applies none).
    """

    def __init__(self, family: Any, inputs: Any, batch: BatchLayout, step: StepInfo, pipeline_ref: Any) -> None:
        from .families.pipelines import CallPrompt, pipeline_call_prompt, pipeline_guidance_scale

        self.family = family
        self.grid: tuple[int, int, int] | None = inputs.grid if inputs is not None else None
        self.text_length: int | None = inputs.text_length if inputs is not None else None
        self.batch = batch
        self.step = step
        self._pipeline_ref = pipeline_ref
        # Read now, while the pipeline's __call__ is on the stack (a context kept past the call keeps them).
        pipeline = self.pipeline
        self.prompt = pipeline_call_prompt(pipeline) if pipeline is not None else CallPrompt()
        timestep = family.scheduler_timestep(step.timestep)
        self.guidance_scale: float = pipeline_guidance_scale(pipeline, batch.names, timestep, family.cfg_formula)

    @property
    def pipeline(self) -> Any:
        """The attached pipeline (``None`` when a bare denoiser was attached, or once it is gone)."""
        return self._pipeline_ref() if self._pipeline_ref is not None else None


@dataclass(frozen=True)
class CallContext:
    """Everything an effect may ask about one attention call.

    Attributes:
        role: ``"self"`` (latent tokens attend to latent tokens), ``"cross"`` (latent queries, text keys),
            ``"joint"`` (one sequence of text and latent tokens, MM-DiT), ``"text"`` (text-only refiners) or
            ``"stream"`` (the video over another generated stream such as audio, or that stream over the video).
        layer_name: the attention module's name inside the denoiser (as in ``named_modules``).
        layer_index: position of this layer among the denoiser's attention layers.
        family: family key (``"unet"``, ``"pixart"``, ``"sd3"``, ``"flux"``, ``"wan"``, ``"cogvideox"``,
            ``"hunyuan_video"``).
        heads, head_dim: attention heads of this call and their width.
        head_offset, total_heads: where this call's heads sit among the layer's (context parallelism with
            Ulysses gives each rank a slice of the heads: global head ``head_offset + h``); ``total_heads`` is
            ``None`` when the call holds every head.
        head_group: the process group holding the layer's other heads (Ulysses), for :meth:`mean_over_heads`.
        grid: ``(frames, height, width)`` of this call's latent tokens after patchify (``frames == 1`` for
            images); ``None`` if the layer has no latent grid. Tokens are in row-major ``token_order``.
        token_order: axis order of the flattened grid, ``"fhw"``.
        queries, keys: token layouts (latent and text spans) of the query and key sequences.
        batch: the batch layout (which rows are which branch).
        step: step index, total steps and timestep of the current denoiser call.
        denoiser: the facts of the denoiser call this attention call runs in (:class:`DenoiserCall`: its input
            grid, the pipeline, its prompt and guidance scale); ``None`` for a layer called outside an attached
            denoiser.
        runs: what each effect of the attachment keeps while attached, by ``id(effect)``
            (:meth:`visattn.effects.Effect.run_of` reads it).
    """

    role: str
    layer_name: str
    layer_index: int
    family: str
    heads: int
    head_dim: int
    queries: TokenLayout
    keys: TokenLayout
    batch: BatchLayout
    step: StepInfo = field(default_factory=StepInfo)
    grid: tuple[int, int, int] | None = None
    token_order: str = "fhw"
    head_offset: int = 0
    total_heads: int | None = None
    head_group: Any = field(default=None, compare=False, repr=False)
    denoiser: DenoiserCall | None = field(default=None, compare=False, repr=False)
    runs: Mapping[int, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def input_grid(self) -> tuple[int, int, int] | None:
        """The denoiser input's grid (the top UNet level), or this layer's grid without a denoiser call."""
        if self.denoiser is not None and self.denoiser.grid is not None:
            return self.denoiser.grid
        return self.grid

    @property
    def layer_heads(self) -> int:
        """The layer's head count (more than :attr:`heads` when this rank holds a slice of them)."""
        return self.total_heads or self.heads

    def mean_over_heads(self, values: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The mean of a per-head tensor over the layer's heads (``dim``); under context parallelism (Ulysses) the
        other heads are on the other ranks of ``head_group``, whose sums are added in, so every rank gets the mean
        one process computes."""
        if self.head_group is None:
            return values.mean(dim)
        from torch.distributed import _functional_collectives as funcol  # autograd-aware, as diffusers' CP uses

        return funcol.all_reduce(values.sum(dim), "sum", self.head_group) / self.layer_heads

    def local_heads(self, mask: torch.Tensor) -> torch.Tensor:
        """The entries of a per-head ``[layer_heads]`` mask that belong to this call's heads."""
        return mask[self.head_offset : self.head_offset + self.heads]

    @property
    def text_span(self) -> Span | None:
        """The text tokens inside the key sequence (the query sequence's for joint attention)."""
        return self.keys.text

    @property
    def num_grid_tokens(self) -> int:
        return math.prod(self.grid) if self.grid else 0
