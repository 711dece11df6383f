"""The fair per-layer comparison of ``visattn bench --dispatch``: each effect against the same work done without it.

The model-level rows of :mod:`visattn.bench.dispatch` compare a forward with an effect to a stock forward of the
same batch, which is not the same work (PAG adds a perturbed branch, AttentionMaps computes probabilities). Here
each effect is timed on one attention layer against what the same result costs without visattn:

* ``PAG``: the layer with diffusers' own PAG processor (``PAGCFGIdentitySelfAttnProcessor2_0``) on the batch
  ``[uncond, cond, perturbed]``, against the stock processor with visattn's PAG acting on the perturbed rows;
* ``SEG``: a plain processor (:class:`PlainSEGProcessor`: the stock processor's lines plus the authors' Gaussian
  query blur of the perturbed rows, kernel built once), against the stock processor with visattn's SEG;
* ``AttentionMaps``: a plain processor (:class:`PlainMapsProcessor`: the stock attention, then the image-to-text
  probabilities of the conditional rows averaged over heads and summed per word), against the stock processor with
  visattn's ``AttentionMaps`` on a cross-attention layer;
* ``P2P (layer)``: a Prompt-to-Prompt word swap on a cross-attention layer, batch ``[uncond x2, cond x2]``, against
  the stock processor on the same rows unedited (what the layer costs in a plain generation of the two prompts);
  the edit materialized on the reference backend is timed alongside (:func:`compare_p2p`);
* ``P2P (joint call)``: Prompt-to-Prompt's joint-attention edit after its self-attention steps, as the attention
  core computes it (attention calls over block values), against the stock SDPA call of the same rows; the edit
  materialized on the reference backend is timed alongside (:func:`compare_p2p_joint`);
* ``P2P (generation)``: a Prompt-to-Prompt edit of a tiny pipeline (two prompts, word swap, every step) against a
  plain generation of the same two prompts as a batch of two (:func:`p2p_generation`).

The layer's visattn hook is the one ``attach`` registers (:class:`visattn.interception.AttentionLayerHook`),
driven by a :class:`visattn.state.DenoiserState` that says what a denoiser call would (the grid, the text length,
the batch layout with the effect's branch), so the timed call runs every line ``attach`` runs per layer call;
``F.scaled_dot_product_attention`` is routed as the attached denoiser routes it around all its layers (once per
denoiser call, so entered outside each timed layer call: :class:`_Routed`).
Layer shapes are SD 1.5's (:data:`LAYER_SHAPES`) and the tiny test UNet's, where Python overhead dominates.
Times are medians of calls alternated one by one between the two sides, one thread, fp32, ``no_grad``, garbage
collector paused, on the wall clock or (``clock="cpu"``) in the timing thread's CPU time (:data:`CLOCKS`).
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .work import count_work

#: the per-layer comparisons, in report order
LAYER_VARIANTS: tuple[str, ...] = (
    "PAG (layer)",
    "SEG (layer)",
    "AttentionMaps (layer)",
    "P2P (layer)",
    "P2P (joint call)",
    "P2P (generation)",
)

#: what each comparison's baseline is, for the table's notes
BASELINES = {
    "PAG (layer)": "diffusers' PAGCFGIdentitySelfAttnProcessor2_0, batch [uncond, cond, perturbed]",
    "SEG (layer)": "plain processor: stock attention, perturbed rows' queries blurred (sigma 2, kernel built once)",
    "AttentionMaps (layer)": "plain processor: stock attention + softmax of the cond rows, head mean, per-word sums",
    "P2P (layer)": "stock processor, rows [uncond x2, cond x2] unedited (the layer in a plain batch-2 generation)",
    "P2P (joint call)": "stock SDPA of the joint call [source, target] over text and image keys, unedited",
    "P2P (generation)": "the same two prompts as a plain batch-2 generation (edit attached once)",
}

#: the clocks a benchmark can read: ``"wall"`` (``time.perf_counter``: elapsed time, what a user waits) and ``"cpu"``
#: (``time.thread_time``: the CPU time of the timing thread, which runs every op with one torch thread; on a shared
#: machine it leaves out the time the thread waited for a core, which wall-clock samples are full of)
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}

#: SEG's sigma in the comparison (a finite Gaussian: the conv path, not the infinite blur's mean)
SEG_SIGMA = 2.0
#: the words AttentionMaps tracks: text positions 1..6 hold one word each, the rest are special tokens
MAP_WORDS = ("a", "red", "cat", "riding", "a", "bicycle")


@dataclass(frozen=True)
class LayerShape:
    """One attention layer's shape: a latent grid of ``height x width`` tokens, ``channels`` split into ``heads``,
    cross-attention to ``text_tokens`` text tokens of ``text_channels``."""

    name: str
    height: int
    width: int
    channels: int
    heads: int
    text_tokens: int = 77
    text_channels: int = 768

    @property
    def tokens(self) -> int:
        return self.height * self.width


#: SD 1.5's UNet: 8 heads per layer; 32x32 is down_blocks.0 at 256 px (the issue's layer), 8x8 the mid block at
#: 512 px (PAG's default layer, where the projections outweigh the attention); and one layer of the tiny test UNet.
LAYER_SHAPES: tuple[LayerShape, ...] = (
    LayerShape("SD 1.5 down_blocks.0 @256px (32x32, 320 ch)", 32, 32, 320, 8),
    LayerShape("SD 1.5 mid_block @512px (8x8, 1280 ch)", 8, 8, 1280, 8),
    LayerShape("tiny UNet down_blocks.0 (16x16, 32 ch)", 16, 16, 32, 2, 77, 32),
)
QUICK_SHAPES: tuple[LayerShape, ...] = (LAYER_SHAPES[-1],)


@dataclass
class LayerComparison:
    """One effect on one layer (or one generation) against the same work without visattn.

    Attributes:
        variant: a name from :data:`LAYER_VARIANTS`.
        layer: the layer shape's (or pipeline's) name.
        batch: rows of the layer call (or prompts of the generation).
        visattn_us, baseline_us: median microseconds per layer call (per generation for P2P).
        visattn_min_us, baseline_min_us: the fastest call of each.
        ratio: ``visattn_us / baseline_us``; ``ratio_min`` the same for the minima.
        paired_ratio: the median over the alternated pairs of ``visattn call / the baseline call next to it``:
            two calls made back to back share the machine's state, so this cancels drift a shared machine adds to
            both medians (the figure the budget is read from).
        max_abs_diff: largest difference between the two outputs (the comparison is only fair if they agree).
        samples: timed calls per side.
        baseline: what the baseline is.
    """

    variant: str
    layer: str
    batch: int
    visattn_us: float
    baseline_us: float
    visattn_min_us: float
    baseline_min_us: float
    ratio: float
    ratio_min: float
    paired_ratio: float
    max_abs_diff: float
    samples: int
    baseline: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --- the baselines, written plainly -------------------------------------------------------------------------------
def _gaussian_1d(sigma: float, length: int) -> torch.Tensor:
    """The authors' kernel along an axis of ``length`` tokens: ``ceil(6 sigma) + 1`` taps made odd, clipped to the
    axis, normalized (SusungHong/SEG-SDXL ``gaussian_blur_2d``)."""
    import math

    six = math.ceil(6.0 * sigma)
    size = min(six + 1 - six % 2, length - (length % 2 - 1))
    half = (size - 1) / 2
    x = torch.linspace(-half, half, size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return (pdf / pdf.sum()).float()


def _stock_output(attn: Any, out: torch.Tensor, residual: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The end of ``AttnProcessor2_0`` after its attention, line for line (cast, output projection, residual,
    ``rescale_output_factor``: a division over the whole output), so a plain processor does the stock work."""
    out = attn.to_out[1](attn.to_out[0](out.to(dtype)))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class PlainSEGProcessor:
    """``AttnProcessor2_0`` with SEG's query blur on the last third of the batch, written as a user would.

    The Gaussian is built once (per grid) and applied as two 1-D convolutions with reflect padding over the
    perturbed rows' queries, per head channel: what SEG-SDXL's ``SEGCFGSelfAttnProcessor`` does.
    """

    def __init__(self, height: int, width: int, sigma: float = SEG_SIGMA) -> None:
        self.height, self.width = height, width
        self.kernel_h = _gaussian_1d(sigma, height).view(1, 1, -1, 1)
        self.kernel_w = _gaussian_1d(sigma, width).view(1, 1, 1, -1)

    def blur(self, query: torch.Tensor) -> torch.Tensor:
        """``query`` ``[B, H, N, D]`` blurred over the grid."""
        b, h, n, d = query.shape
        x = query.permute(0, 1, 3, 2).reshape(-1, 1, self.height, self.width)
        rh, rw = self.kernel_h.shape[2] // 2, self.kernel_w.shape[3] // 2
        if rh:
            x = F.conv2d(F.pad(x, (0, 0, rh, rh), mode="reflect"), self.kernel_h)
        if rw:
            x = F.conv2d(F.pad(x, (rw, rw, 0, 0), mode="reflect"), self.kernel_w)
        return x.reshape(b, h, d, n).permute(0, 1, 3, 2)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        batch_size = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        perturbed = batch_size // 3 * 2
        query = torch.cat([query[:perturbed], self.blur(query[perturbed:])])
        out = F.scaled_dot_product_attention(query, key, value)
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        return _stock_output(attn, out, hidden_states, query.dtype)


class PlainMapsProcessor:
    """``AttnProcessor2_0`` that also sums per-word attention maps of the conditional rows, written plainly.

    The probabilities ``softmax(q k^T * scale)`` of the second half of the batch (the conditional rows), averaged
    over heads, summed per word (``word_matrix``: text positions x words) and renormalized over the kept positions
    (``kept``), added to ``sums`` (``[words, H, W]``): the maps ``AttentionMaps`` collects.
    """

    def __init__(self, positions: torch.Tensor, word_matrix: torch.Tensor, kept: torch.Tensor, grid: tuple[int, int]):
        self.positions, self.word_matrix, self.kept = positions, word_matrix, kept
        self.grid = grid
        self.sums = torch.zeros(word_matrix.shape[1], *grid)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        batch_size = hidden_states.shape[0]
        query = attn.to_q(hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(query, key, value)
        cond = slice(batch_size // 2, batch_size)
        probs = torch.softmax(query[cond] @ key[cond].transpose(-1, -2) * head_dim**-0.5, dim=-1)
        probs = probs[..., self.positions].mean(dim=1).mean(dim=0)  # [N, tracked]
        masses = (probs @ self.word_matrix) / (probs @ self.kept).unsqueeze(-1)
        self.sums += masses.transpose(0, 1).reshape(-1, *self.grid)
        out = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        return _stock_output(attn, out, hidden_states, query.dtype)


# --- the layer and its visattn hook --------------------------------------------------------------------------------
def _attention(shape: LayerShape, cross: bool) -> torch.nn.Module:
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    torch.manual_seed(0)
    module = Attention(
        query_dim=shape.channels,
        cross_attention_dim=shape.text_channels if cross else None,
        heads=shape.heads,
        dim_head=shape.channels // shape.heads,
        bias=False,
        out_bias=True,
        processor=AttnProcessor2_0(),
    )
    return module.eval()


def _hook(
    module: torch.nn.Module,
    effect: Any,
    shape: LayerShape,
    branches: Sequence[tuple[str, int]],
    role: str,
    backend: str = "auto",
):
    """Register visattn's layer hook for ``effect`` on ``module``, its denoiser state saying what a UNet call at
    this layer's grid would: ``branches`` as ``(name, rows)`` in batch order; ``backend`` as ``attach`` takes it.
    Returns a function removing it."""
    from ..context import BatchLayout, Branch, DenoiserCall, StepInfo
    from ..families import family_named
    from ..families.base import DenoiserInputs
    from ..interception import AttentionLayerHook, register_layer_hook, remove_layer_hook
    from ..state import _PLAN_EPOCHS, DenoiserState

    family = family_named("unet")
    rows, parts = 0, []
    for name, size in branches:
        parts.append(Branch(name, rows, rows + size))
        rows += size
    layout = BatchLayout(tuple(parts))
    inputs = DenoiserInputs(rows, (1, shape.height, shape.width), 999.0, shape.text_tokens)
    step = StepInfo(0, 10, 999.0)
    state = DenoiserState(family, inputs=inputs, step=step, batch=layout, runs={id(effect): effect.new_run()})
    state.call = DenoiserCall(family, inputs, layout, step, None)
    # A plan epoch, as the denoiser hook gives every call it reads: layers key their plans by it, and take their
    # planned forwards (interception._FastForward) only within one; without it the layer would take a path no
    # attached pipeline's calls take after their first.
    state.plan_epoch = next(_PLAN_EPOCHS)
    # The route held as an attached denoiser holds it for its whole call (see _Routed): entered once per denoiser
    # call in a generation, not per layer call.
    state.holds_route = True
    name = "mid_block.attentions.0.transformer_blocks.0." + ("attn2" if role == "cross" else "attn1")
    hook = AttentionLayerHook([effect], state, layer_name=name, layer_index=0, static_role=role, backend=backend)
    register_layer_hook(module, hook)
    return lambda: remove_layer_hook(module)


def _prompt_tokens(text_tokens: int):
    from ..words import PromptTokens

    words = MAP_WORDS
    special = (0, *range(len(words) + 1, text_tokens))
    return PromptTokens(" ".join(words), words, tuple((i + 1,) for i in range(len(words))), special, text_tokens)


def _plain_maps(effect: Any, shape: LayerShape) -> PlainMapsProcessor:
    """The plain processor collecting what ``effect`` (an :class:`~visattn.effects.AttentionMaps` over
    :data:`MAP_WORDS`) collects: its word matrix and kept positions, taken from the words by hand."""
    content = [(i, word) for i, word in enumerate(MAP_WORDS) if word not in effect.stop_words]
    names = list(dict.fromkeys(word for _, word in content))
    positions = torch.tensor([i + 1 for i, _ in content])
    matrix = torch.zeros(len(content), len(names))
    for row, (_, word) in enumerate(content):
        matrix[row, names.index(word)] = 1.0
    kept = torch.ones(len(content))
    return PlainMapsProcessor(positions, matrix, kept, (shape.height, shape.width))


# --- timing ----------------------------------------------------------------------------------------------------------
class _Routed:
    """A hooked layer's call (its state's ``holds_route`` set, see :func:`_hook`) with SDPA routed around it, as the
    attached denoiser routes it around all its layers once per call; :func:`_interleaved` enters the route before
    its timer starts and leaves it after it stops, so a layer's time is what the layer costs inside a generation."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn

    def __call__(self) -> Any:
        from ..interception import SDPA_ROUTE

        with SDPA_ROUTE:
            return self.fn()


def _interleaved(
    sides: dict[str, Callable[[], Any]], repeats: int, warmup: int, rounds: int, clock: str = "wall"
) -> dict[str, list]:
    """Seconds per call of each side: ``warmup`` untimed calls each, then the sides' calls alternated one by one
    (``rounds`` is kept for the signature: alternating single calls spreads a shared machine's drift best),
    garbage collector paused. A :class:`_Routed` side has the route entered outside its timed call."""
    from ..interception import SDPA_ROUTE

    now = CLOCKS[clock]
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for fn in sides.values():
        for _ in range(warmup):
            fn()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, fn in sides.items():
                if isinstance(fn, _Routed):
                    with SDPA_ROUTE:
                        begin = now()
                        fn.fn()
                        samples[name].append(now() - begin)
                    continue
                begin = now()
                fn()
                samples[name].append(now() - begin)
    finally:
        if enabled:
            gc.enable()
    return samples


def _comparison(
    variant: str, layer: str, batch: int, samples: dict[str, list], diff: float, **extra
) -> LayerComparison:
    ours, theirs = samples["visattn"], samples["baseline"]
    median, base = statistics.median(ours) * 1e6, statistics.median(theirs) * 1e6
    low, base_low = min(ours) * 1e6, min(theirs) * 1e6
    return LayerComparison(
        variant=variant,
        layer=layer,
        batch=batch,
        visattn_us=median,
        baseline_us=base,
        visattn_min_us=low,
        baseline_min_us=base_low,
        ratio=median / base,
        ratio_min=low / base_low,
        paired_ratio=statistics.median(a / b for a, b in zip(ours, theirs, strict=True)),
        max_abs_diff=diff,
        samples=len(ours),
        baseline=BASELINES[variant],
        extra=extra,
    )


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def compare_pag(shape: LayerShape, *, repeats: int, warmup: int, rounds: int, clock: str = "wall") -> LayerComparison:
    """PAG on a self-attention layer, batch ``[uncond, cond, perturbed]``, against diffusers' PAG processor."""
    from diffusers.models.attention_processor import PAGCFGIdentitySelfAttnProcessor2_0

    import visattn

    pag = visattn.PerturbedAttentionGuidance(scale=3.0, layers="self")
    plain = PAGCFGIdentitySelfAttnProcessor2_0()
    return _compare_perturbation("PAG (layer)", shape, pag, plain, repeats, warmup, rounds, clock)


def compare_seg(shape: LayerShape, *, repeats: int, warmup: int, rounds: int, clock: str = "wall") -> LayerComparison:
    """SEG (sigma 2) on a self-attention layer, batch ``[uncond, cond, perturbed]``, against a plain processor."""
    import visattn

    seg = visattn.SmoothedEnergyGuidance(scale=3.0, sigma=SEG_SIGMA, layers="self")
    plain = PlainSEGProcessor(shape.height, shape.width)
    return _compare_perturbation("SEG (layer)", shape, seg, plain, repeats, warmup, rounds, clock)


def _compare_perturbation(
    variant: str,
    shape: LayerShape,
    effect: Any,
    processor: Any,
    repeats: int,
    warmup: int,
    rounds: int,
    clock: str = "wall",
) -> LayerComparison:
    """A perturbation guidance on a self-attention layer, batch ``[uncond, cond, perturbed]`` (the perturbed row a
    copy of the conditional one), against ``processor`` doing the same work without visattn."""
    ours, theirs = _attention(shape, cross=False), _attention(shape, cross=False)
    theirs.set_processor(processor)
    remove = _hook(ours, effect, shape, [("uncond", 1), ("cond", 1), (effect.branch, 1)], "self")
    hidden = torch.randn(3, shape.tokens, shape.channels)
    hidden[2] = hidden[1]
    try:
        with torch.no_grad():
            sides = {"visattn": _Routed(lambda: ours(hidden)), "baseline": lambda: theirs(hidden)}
            diff = _max_diff(sides["visattn"](), sides["baseline"]())
            samples = _interleaved(sides, repeats, warmup, rounds, clock)
    finally:
        remove()
    return _comparison(variant, shape.name, 3, samples, diff)


def compare_maps(shape: LayerShape, *, repeats: int, warmup: int, rounds: int, clock: str = "wall") -> LayerComparison:
    """AttentionMaps on a cross-attention layer, batch ``[uncond, cond]``, against a plain processor."""
    import visattn

    ours, theirs = _attention(shape, cross=True), _attention(shape, cross=True)
    maps = visattn.AttentionMaps(prompt=_prompt_tokens(shape.text_tokens), layers="cross")
    plain = _plain_maps(maps, shape)
    theirs.set_processor(plain)
    remove = _hook(ours, maps, shape, [("uncond", 1), ("cond", 1)], "cross")
    hidden = torch.randn(2, shape.tokens, shape.channels)
    text = torch.randn(2, shape.text_tokens, shape.text_channels)
    try:
        with torch.no_grad():
            sides = {
                "visattn": _Routed(lambda: ours(hidden, encoder_hidden_states=text)),
                "baseline": lambda: theirs(hidden, encoder_hidden_states=text),
            }
            diff = _max_diff(sides["visattn"](), sides["baseline"]())
            collected = maps.maps()
            ours_maps = torch.stack([collected[w][0] for w in dict.fromkeys(MAP_WORDS) if w not in maps.stop_words])
            diff = max(diff, _max_diff(ours_maps, plain.sums))
            samples = _interleaved(sides, repeats, warmup, rounds, clock)
    finally:
        remove()
    return _comparison("AttentionMaps (layer)", shape.name, 2, samples, diff)


def compare_p2p(shape: LayerShape, *, repeats: int, warmup: int, rounds: int, clock: str = "wall") -> LayerComparison:
    """A Prompt-to-Prompt word swap (``cat`` -> ``dog``) on a cross-attention layer, batch ``[uncond x2, cond x2]``,
    against the stock processor on the same rows without the edit.

    The edited call runs as attention over mixed values (:class:`visattn.kernels.LinearEdit`); the same hook forced
    onto the reference backend, which materializes the probabilities and edits them, is timed in the same
    alternation (``extra``: ``materialized_us``, ``materialized_paired_ratio``, and ``edit_vs_materialized``, the
    largest difference of the two edited outputs). ``max_abs_diff`` compares the unedited rows with the stock ones.
    """
    import visattn

    source = _prompt_tokens(shape.text_tokens)
    words = tuple("dog" if word == "cat" else word for word in MAP_WORDS)
    target = type(source)(" ".join(words), words, source.word_tokens, source.special, source.length)
    p2p = visattn.PromptToPrompt.replace(source, target, cross_steps=1.0, self_steps=0)
    ours, materialized, theirs = (_attention(shape, cross=True) for _ in range(3))
    rows = [("uncond", 2), ("cond", 2)]
    removers = [_hook(ours, p2p, shape, rows, "cross"), _hook(materialized, p2p, shape, rows, "cross", "reference")]
    hidden = torch.randn(2, shape.tokens, shape.channels).repeat_interleave(2, dim=0)  # one noise per prompt pair
    text = torch.randn(4, shape.text_tokens, shape.text_channels)
    text[0] = text[1]  # the negative prompt, the same for both
    try:
        with torch.no_grad():
            sides = {
                "visattn": _Routed(lambda: ours(hidden, encoder_hidden_states=text)),
                "materialized": _Routed(lambda: materialized(hidden, encoder_hidden_states=text)),
                "baseline": lambda: theirs(hidden, encoder_hidden_states=text),
            }
            edited, oracle, stock = (side() for side in sides.values())
            diff = _max_diff(edited[:3], stock[:3])
            samples = _interleaved(sides, repeats, warmup, rounds, clock)
    finally:
        for remove in removers:
            remove()
    slow = samples.pop("materialized")
    return _comparison(
        "P2P (layer)",
        shape.name,
        4,
        samples,
        diff,
        materialized_us=statistics.median(slow) * 1e6,
        materialized_paired_ratio=statistics.median(a / b for a, b in zip(slow, samples["baseline"], strict=True)),
        edit_vs_materialized=_max_diff(edited, oracle),
    )


def joint_reweight_call(
    image: int, text: int, heads: int, dim: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """A joint call of ``image`` tokens after ``text`` tokens, batch ``[source, target]`` (seeded random queries, keys
    and values in the memory layout the processors hand SDPA: ``[B, N, H, D]`` seen as ``[B, H, N, D]``), and
    Prompt-to-Prompt's edit of it after the self-attention steps: six words re-weighted x2 in the target's image
    queries, its image keys its own (a :class:`~visattn.kernels.TextBlockEdit`)."""
    from visattn.kernels import TextBlockEdit

    tokens = image + text
    generator = torch.Generator(device=device).manual_seed(0)
    q, k, v = (
        torch.randn(2, tokens, heads, dim, generator=generator, device=device, dtype=dtype).transpose(1, 2)
        for _ in range(3)
    )
    equalizer = torch.ones(text, device=device)
    equalizer[1:7] = 2.0
    edit = TextBlockEdit(
        slice(0, 1),
        slice(1, 2),
        slice(0, text),
        torch.diag(equalizer),
        others_from_source=False,
        queries=slice(text, tokens),
        renormalize_source=True,
    )
    return q, k, v, edit


def compare_p2p_joint(
    shape: LayerShape, *, repeats: int, warmup: int, rounds: int, clock: str = "wall"
) -> LayerComparison:
    """Prompt-to-Prompt's joint-attention edit after its self-attention steps (SD3, Flux: the text block of the
    target's image queries re-weighted, the image keys the target's own, rescaled to what the text leaves), as the
    attention core runs it on a call of ``shape``'s image tokens after its text tokens, batch ``[source, target]``,
    against the stock SDPA call on the same rows.

    visattn's side is the core's fast form (:class:`~visattn.kernels.TextBlockEdit`: attention calls over block
    values and their sums); the same call on the reference backend, which materializes the probabilities and edits
    them (every joint edit but the identity injection before this form), is timed in the same alternation
    (``extra``: ``materialized_us``, ``materialized_paired_ratio`` and ``edit_vs_materialized``, the largest
    difference of the two edited outputs). ``max_abs_diff`` compares the source row with the stock one.
    """
    from visattn.kernels import attention

    text = shape.text_tokens
    q, k, v, edit = joint_reweight_call(shape.tokens, text, shape.heads, shape.channels // shape.heads)
    with torch.no_grad():
        sides = {
            "visattn": lambda: attention(q, k, v, editors=[edit]),
            "materialized": lambda: attention(q, k, v, editors=[edit], backend="reference"),
            "baseline": lambda: F.scaled_dot_product_attention(q, k, v),
        }
        edited, oracle, stock = (side() for side in sides.values())
        samples = _interleaved(sides, repeats, warmup, rounds, clock)
    slow = samples.pop("materialized")
    return _comparison(
        "P2P (joint call)",
        f"{shape.tokens} image + {text} text tokens, {shape.heads} heads",
        2,
        samples,
        _max_diff(edited[0], stock[0]),
        materialized_us=statistics.median(slow) * 1e6,
        materialized_paired_ratio=statistics.median(a / b for a, b in zip(slow, samples["baseline"], strict=True)),
        edit_vs_materialized=_max_diff(edited, oracle),
    )


#: the denoisers whose tiny pipelines P2P is timed on (as the model rows' image denoisers): SD's UNet (cross and self
#: attention) and two MM-DiTs (joint attention)
P2P_DENOISERS: tuple[str, ...] = ("UNet2DConditionModel", "SD3Transformer2DModel", "FluxTransformer2DModel")


def p2p_pipelines() -> tuple[str, ...]:
    """The tiny pipelines of :data:`P2P_DENOISERS` (the first tiny pipeline of each class)."""
    from .dispatch import _pipeline_classes

    classes = _pipeline_classes()
    return tuple(classes[name] for name in P2P_DENOISERS)


P2P_PROMPTS = ("a red cat", "a red dog")


def p2p_generation(key: str, *, repeats: int, warmup: int, rounds: int, clock: str = "wall") -> LayerComparison:
    """A Prompt-to-Prompt word swap (cross and self attention edited on every step) of tiny pipeline ``key``,
    against a plain generation of the same two prompts as one batch (same initial noise).

    Two copies of the pipeline (same seed, same weights) alternate: one with the edit attached once, as the model-level
    rows attach their effects, the other plain. The copies swap roles halfway (``repeats`` split in two, the edit
    attached to the other copy for the second half): two copies of the same model need not run at the same speed
    (their weights sit at other addresses; a plain copy against the other runs up to 1.6% slower on the tiny Flux,
    ``extra["plain_copies_ratio"]``), and swapping cancels that out of the paired ratios (each half's ratio in
    ``extra["halves_paired_ratio"]``, their geometric mean, which cancels a fixed bias exactly, in
    ``extra["halves_geometric_ratio"]``; the row's ratio pools the pairs of both halves). Timed apart, in ``extra``:
    ``attach_us``, what ``attach`` and ``detach`` cost together (median), and ``per_attach_ratio``, a generation that
    attaches and detaches the edit itself against the plain one (interleaved too): the first generation of an
    attachment also resolves the prompts' tokens. Counted apart (:func:`visattn.bench.work.count_work`, exact where
    the times drift by a percent or two between runs): ``extra["work_plain"]``, the ATen operators and Python
    instructions of the plain generation, and ``extra["work_added"]``, what the edited one does beyond it.
    """
    import visattn

    from ..tiny import call_kwargs, tiny_pipeline

    copies = (tiny_pipeline(key), tiny_pipeline(key))
    p2p = visattn.PromptToPrompt.replace(*P2P_PROMPTS, cross_steps=1.0, self_steps=1.0)

    def generate(pipeline, prompts):
        return pipeline(**call_kwargs(key, prompt=prompts, generator=p2p.generator(0, 1), output_type="latent"))[0]

    def timed_sides(edited_copy, plain_copy) -> dict[str, list]:
        sides = {
            "visattn": lambda: generate(edited_copy, p2p.prompts),
            "baseline": lambda: generate(plain_copy, plain),
        }
        with visattn.attach(edited_copy, p2p):
            return _interleaved(
                sides,
                max(1, repeats // 2),
                warmup,
                rounds,
                clock,
            )

    first, second = copies
    plain = list(P2P_PROMPTS)
    with torch.no_grad():
        reference = generate(second, plain)
        # What the copies cost against each other with nothing attached (the bias the role swap cancels).
        control = _interleaved(
            {"first": lambda: generate(first, plain), "second": lambda: generate(second, plain)},
            max(1, repeats // 2),
            warmup,
            rounds,
            clock,
        )

        def attach_detach():
            with visattn.attach(first, p2p):
                pass

        def attached_generation():
            with visattn.attach(first, p2p):
                return generate(first, p2p.prompts)

        attach = _interleaved({"attach": attach_detach}, repeats, warmup, rounds, clock)["attach"]
        per_attach = _interleaved(
            {"visattn": attached_generation, "baseline": lambda: generate(second, plain)},
            repeats,
            warmup,
            rounds,
            clock,
        )
        with visattn.attach(first, p2p):
            edited = generate(first, p2p.prompts)
            # Counted apart from the timing (counting slows the calls down): exact, where the times drift.
            work = count_work(lambda: generate(first, p2p.prompts))
        work_plain = count_work(lambda: generate(second, plain))
        halves = [timed_sides(first, second), timed_sides(second, first)]
    samples = {side: halves[0][side] + halves[1][side] for side in ("visattn", "baseline")}
    # The source rows are the plain generation's first prompt, bit for bit or nearly (the edit leaves them alone).
    diff = _max_diff(edited[0], reference[0])
    name = f"tiny {key} pipeline, {len(P2P_PROMPTS)} prompts"
    per_attach_ratio = statistics.median(per_attach["visattn"]) / statistics.median(per_attach["baseline"])
    halves_ratios = [
        statistics.median(a / b for a, b in zip(half["visattn"], half["baseline"], strict=True)) for half in halves
    ]
    return _comparison(
        "P2P (generation)",
        name,
        2,
        samples,
        diff,
        attach_us=statistics.median(attach) * 1e6,
        per_attach_ratio=per_attach_ratio,
        plain_copies_ratio=statistics.median(a / b for a, b in zip(control["first"], control["second"], strict=True)),
        halves_paired_ratio=halves_ratios,
        # A fixed speed difference between the copies multiplies one half's ratio and divides the other's: their
        # geometric mean cancels it (steadier than the pooled median where the halves differ much).
        halves_geometric_ratio=math.sqrt(halves_ratios[0] * halves_ratios[1]),
        work_added=work.minus(work_plain).as_dict(),
        work_plain=work_plain.as_dict(),
    )


_LAYER_RUNS = {
    "PAG (layer)": compare_pag,
    "SEG (layer)": compare_seg,
    "AttentionMaps (layer)": compare_maps,
    "P2P (layer)": compare_p2p,
    "P2P (joint call)": compare_p2p_joint,
}


def layer_benchmark(
    variants: Sequence[str] | None = None,
    shapes: Sequence[LayerShape] = LAYER_SHAPES,
    *,
    repeats: int = 20,
    warmup: int = 2,
    rounds: int = 5,
    pipelines: Sequence[str] | None = None,
    progress: bool = False,
    clock: str = "wall",
) -> list[LayerComparison]:
    """Every comparison in ``variants`` (default :data:`LAYER_VARIANTS`) on every shape (P2P on ``pipelines``,
    default :func:`p2p_pipelines`), timed with ``clock`` (a key of :data:`CLOCKS`)."""
    wanted = [v for v in LAYER_VARIANTS if variants is None or v in variants]
    results = []
    for variant in wanted:
        if variant == "P2P (generation)":
            for key in p2p_pipelines() if pipelines is None else pipelines:
                if progress:
                    import sys

                    print(f"dispatch: {variant} on {key}", file=sys.stderr, flush=True)
                results.append(p2p_generation(key, repeats=repeats, warmup=warmup, rounds=rounds, clock=clock))
            continue
        for shape in shapes:
            if progress:
                import sys

                print(f"dispatch: {variant} on {shape.name}", file=sys.stderr, flush=True)
            results.append(_LAYER_RUNS[variant](shape, repeats=repeats, warmup=warmup, rounds=rounds, clock=clock))
    return results


def layer_table(results: Sequence[LayerComparison]) -> str:
    """One row per comparison: visattn and the baseline per call, their ratio, and how far the outputs differ."""
    lines = [
        "| effect | layer | rows | visattn ms | baseline ms | x baseline (paired) | x baseline | x baseline (min) "
        "| max abs diff | baseline |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.variant} | {r.layer} | {r.batch} | {r.visattn_us / 1e3:.3f} | {r.baseline_us / 1e3:.3f} | "
            f"{r.paired_ratio:.3f} | {r.ratio:.3f} | {r.ratio_min:.3f} | {r.max_abs_diff:.1e} | {r.baseline} |"
        )
    notes = [
        f"- {r.variant}, {r.layer}: the edit materialized on the reference backend (before its fast form) "
        f"{r.extra['materialized_us'] / 1e3:.3f} ms, {r.extra['materialized_paired_ratio']:.3f} x baseline (paired); "
        f"the two edited outputs differ by {r.extra['edit_vs_materialized']:.1e}"
        for r in results
        if "materialized_us" in r.extra
    ]
    notes += [
        f"- {r.variant}, {r.layer}: the two halves (the pipeline copies swapping roles) "
        f"{' / '.join(f'{ratio:.3f}' for ratio in r.extra['halves_paired_ratio'])} x baseline (paired), their "
        f"geometric mean {r.extra['halves_geometric_ratio']:.3f}; the plain "
        f"copies against each other {r.extra['plain_copies_ratio']:.3f}; attach + detach "
        f"{r.extra['attach_us'] / 1e3:.2f} ms; a generation attaching the edit itself "
        f"{r.extra['per_attach_ratio']:.3f} x baseline; beyond the plain generation's "
        f"{r.extra['work_plain']['aten_ops']:.0f} ATen operators and "
        f"{sum(r.extra['work_plain']['opcodes'].values()):.0f} Python instructions, the edited one runs "
        f"{r.extra['work_added']['aten_ops']:+.0f} operators and "
        + ", ".join(
            f"{count:+.0f} instructions in {place}" for place, count in r.extra["work_added"]["opcodes"].items()
        )
        for r in results
        if "halves_paired_ratio" in r.extra
    ]
    return "\n".join(lines) + "\n" + ("\n" + "\n".join(notes) + "\n" if notes else "")
