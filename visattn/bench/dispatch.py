"""``visattn bench --dispatch``: what visattn's hooks cost per attention call on tiny denoisers (CPU).

On the tiny test denoisers the attention math is negligible and Python overhead dominates, so the time a forward
takes with visattn attached, over the stock forward, is the cost of visattn's dispatch: the denoiser hook (reading
the call's inputs), one layer hook per attention module, and, where an effect acts, the interception of
``scaled_dot_product_attention`` and the effect's own work. Per model this times:

* ``stock``: no visattn;
* ``no effect``: ``visattn.attach(model)`` (every hook registered, nothing acts);
* ``closed (effect steps)``: ``PerturbedAttentionGuidance(steps=(0.5, 1.0))`` attached to a stand-in pipeline
  whose scheduler puts every call at step 0 (the path of an effect outside its window);
* ``closed (attach steps)``: the same window given to ``attach(..., steps=(0.5, 1.0))`` instead;
* one row per effect that applies to the model (PAG, SEG, AttentionMaps where the model reads text,
  NeighborhoodAttention and ExtrapolationDecay where calls have a latent grid, RadialAttention on video), built
  as :func:`harness.coverage_checks.check` builds them.

A forward with an effect does more work than a stock forward (PAG's perturbed branch, AttentionMaps'
probabilities), so those rows are not what visattn costs. The fair comparison is per layer,
:mod:`visattn.bench.layers`: each effect on one attention layer against the same work without visattn
(diffusers' own PAG processor, SEG's blur and the maps written plainly), and a Prompt-to-Prompt edit against a
plain batch-2 generation (:data:`LAYER_VARIANTS`).

Each forward is timed with ``time.perf_counter`` (or, with ``clock="cpu"``, the timing thread's CPU time, which
leaves out waits for a core on a shared machine) under ``torch.no_grad`` in fp32, with the garbage collector
paused; the timed runs are split into rounds that interleave the variants, so drift on a shared machine spreads
over all of them. Times are reported per forward (median and min) and per attention call: the forward's time
divided by the number of ``scaled_dot_product_attention`` calls one stock forward makes.
"""

from __future__ import annotations

import functools
import gc
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from .layers import CLOCKS, LAYER_SHAPES, LAYER_VARIANTS, LayerComparison, LayerShape, layer_benchmark, layer_table

#: the models timed by default: a UNet, MM-DiTs (SD3, Flux, Qwen-Image) and video DiTs (Wan, LTX-2)
DEFAULT_CLASSES: tuple[str, ...] = (
    "UNet2DConditionModel",
    "SD3Transformer2DModel",
    "FluxTransformer2DModel",
    "WanTransformer3DModel",
    "QwenImageTransformer2DModel",
    "LTX2VideoTransformer3DModel",
)

#: every variant, in the order rows are reported; ``stock`` is always timed (it is the baseline)
VARIANTS: tuple[str, ...] = (
    "stock",
    "no effect",
    "closed (effect steps)",
    "closed (attach steps)",
    "PAG",
    "SEG",
    "AttentionMaps",
    "NeighborhoodAttention",
    "ExtrapolationDecay",
    "RadialAttention",
)

#: the batch of the coverage tables' inputs (a CFG-sized batch)
BATCH_SIZE = 2

#: why a variant costs more than dispatch alone, for the table's notes
_NOTES = {
    "closed (effect steps)": "PAG(steps=(0.5, 1.0)) at step 0 of a stand-in pipeline",
    "closed (attach steps)": "attach(PAG, steps=(0.5, 1.0)) at step 0 of a stand-in pipeline",
    "PAG": "runs a perturbed branch: the batch's rows twice",
    "SEG": "runs a perturbed branch: the batch's rows twice",
}


@dataclass
class VariantTiming:
    """One variant of one model: forward times in microseconds and what they are per attention call.

    Attributes:
        variant: a name from :data:`VARIANTS`.
        median_us, min_us: median and fastest forward over ``samples`` timed runs.
        per_call_us: ``median_us`` per attention call of a stock forward.
        ratio, ratio_min: median (min) over the stock forward's median (min); 1.0 for ``stock``.
        overhead_per_call_us: ``(median_us - stock median) / attention calls``: what the variant adds per call.
        note: why the variant does more work than dispatch (an extra branch, ...), if it does.
    """

    variant: str
    median_us: float
    min_us: float
    samples: int
    per_call_us: float = 0.0
    ratio: float = 1.0
    ratio_min: float = 1.0
    overhead_per_call_us: float = 0.0
    note: str = ""


@dataclass
class HookCost:
    """visattn's dispatch alone: the hooks timed around no-op forwards, free of the model's own (noisy) time.

    Attributes:
        variant: ``no effect`` or ``closed (effect steps)``.
        denoiser_us: the denoiser hook, per forward.
        layer_us: the layer hooks, per forward (summed over every attention-module call of one forward).
        layer_calls: attention-module calls per forward.
        per_forward_us, per_call_us: ``denoiser_us + layer_us``, and that per SDPA call of a stock forward.
        ratio: ``(stock median + per_forward_us) / stock median``: the ratio these hooks alone would give.
    """

    variant: str
    denoiser_us: float
    layer_us: float
    layer_calls: int
    per_forward_us: float
    per_call_us: float
    ratio: float


@dataclass
class ModelTiming:
    """Every variant timed on one tiny denoiser.

    Attributes:
        class_name: the diffusers class.
        source: where the tiny model and its inputs come from: ``coverage`` (the coverage table's entry), or
            ``pipeline:<key>`` (inputs of the first denoiser call of :func:`visattn.tiny.tiny_pipeline`).
        attention_calls: ``scaled_dot_product_attention`` calls in one stock forward.
        hooked_layers: attention modules ``visattn.attach`` hooks.
        variants: the timed variants, ``stock`` first.
        hook_costs: the no-effect and closed-schedule hooks timed alone (see :func:`hook_costs`).
        skipped: variants not timed, with the reason (does not apply, or failed).
    """

    class_name: str
    source: str
    batch_size: int
    attention_calls: int
    hooked_layers: int
    variants: list[VariantTiming] = field(default_factory=list)
    hook_costs: list[HookCost] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def variant(self, name: str) -> VariantTiming | None:
        """The timing of variant ``name``, or None when it was skipped."""
        return next((v for v in self.variants if v.variant == name), None)


@dataclass
class DispatchReport:
    """The whole dispatch benchmark: environment, settings and one :class:`ModelTiming` per model."""

    environment: dict[str, Any]
    settings: dict[str, Any]
    models: list[ModelTiming]
    #: the per-layer comparisons against the same work without visattn (:mod:`visattn.bench.layers`)
    layers: list[LayerComparison] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self) -> str:
        """The forward timings (one row per model and variant, skipped variants listed below), then the hooks
        timed alone."""
        parts = [markdown_table(self.models)] if self.models else []
        if any(model.hook_costs for model in self.models):
            parts.append("Hooks alone (model and attention forwards replaced by no-ops; best of 5 loops):\n")
            parts.append(hook_cost_table(self.models))
        if self.layers:
            parts.append("Per layer, against the same work without visattn (median per call; interleaved):\n")
            parts.append(layer_table(self.layers))
        return "\n".join(parts)


# --- the tiny models ---------------------------------------------------------------------------------------------
class _Captured(Exception):
    """Stops a pipeline at its first denoiser call, once the call's inputs are copied."""


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    return value


def _pipeline_model(key: str) -> tuple[torch.nn.Module, tuple, dict[str, Any]]:
    """The tiny pipeline's denoiser and the inputs of its first call in a two-step pipeline call."""
    from ..tiny import call_kwargs, denoiser_of, tiny_pipeline

    pipe = tiny_pipeline(key)
    model = denoiser_of(pipe)
    captured: dict[str, Any] = {}

    def capture(module, args, kwargs):
        captured["args"], captured["kwargs"] = _detached(args), _detached(kwargs)
        raise _Captured

    handle = model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        pipe(**call_kwargs(key))
    except _Captured:
        pass
    finally:
        handle.remove()
    if "args" not in captured:
        raise RuntimeError(f"the tiny {key} pipeline never called its denoiser")
    return model.eval(), captured["args"], captured["kwargs"]


@functools.cache
def _pipeline_classes() -> dict[str, str]:
    """Denoiser class name -> tiny pipeline key (the first pipeline of each class: ``unet`` is SD's UNet)."""
    from ..tiny import TINY_PIPELINES, tiny_denoiser

    classes: dict[str, str] = {}
    for key in TINY_PIPELINES:
        classes.setdefault(type(tiny_denoiser(key)).__name__, key)
    return classes


def available_classes() -> tuple[str, ...]:
    """Every class name :func:`dispatch_benchmark` can time: the tiny pipelines' denoisers and the coverage table."""
    from ..tiny.denoisers import TINY_DENOISERS

    names = dict.fromkeys(_pipeline_classes())
    names.update(dict.fromkeys(entry.class_name for entry in TINY_DENOISERS))
    return tuple(names)


def tiny_model(class_name: str) -> tuple[torch.nn.Module, tuple, dict[str, Any], str]:
    """``(model, args, kwargs, source)``: a tiny ``class_name`` in eval mode and fp32, and one forward's inputs.

    Raises ValueError naming the allowed classes when ``class_name`` is not one of :func:`available_classes`.
    """
    key = _pipeline_classes().get(class_name)
    if key is not None:
        model, args, kwargs = _pipeline_model(key)
        return model, args, kwargs, f"pipeline:{key}"
    from ..tiny.denoisers import TINY_DENOISERS

    entry = next((e for e in TINY_DENOISERS if e.class_name == class_name), None)
    if entry is None:
        raise ValueError(
            f"classes: {class_name!r} is not a tiny denoiser class; allowed: {', '.join(available_classes())}"
        )
    return entry.build(), (), entry.inputs(BATCH_SIZE), "coverage"


# --- counting and effects ----------------------------------------------------------------------------------------
class _SDPACounter(torch.overrides.TorchFunctionMode):
    """Counts ``scaled_dot_product_attention`` calls (what visattn's interception answers)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            self.calls += 1
        return func(*args, **(kwargs or {}))


def attention_calls(model: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> int:
    """``scaled_dot_product_attention`` calls in one stock forward of ``model``."""
    counter = _SDPACounter()
    with torch.no_grad(), counter:
        model(*args, **kwargs)
    return counter.calls


class _StandInPipeline:
    """Just enough of a pipeline for ``attach(..., steps=...)``: the denoiser and a scheduler.

    Every scheduled timestep is equal, so the denoiser hook places every call at step 0 of 10 (fraction 0.0):
    an effect scheduled for ``(0.5, 1.0)`` is outside its window on every call.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.transformer = model
        self.scheduler = SimpleNamespace(timesteps=torch.zeros(10))


def effect_variants(
    model: torch.nn.Module, args: tuple, kwargs: dict[str, Any]
) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """``({variant: attach()}, {variant: why not})`` for every variant but ``stock``.

    ``attach()`` returns a fresh :class:`visattn.Attachment`. The effects follow the coverage checks: PAG and
    SEG on the self/joint roles the calls have, a window of 3 on every grid axis that allows it, AttentionMaps
    with one synthetic word per text token, RadialAttention where a grid has frames.
    """
    import math

    import visattn
    from visattn.tiny.probes import ContextRecorder, synthetic_prompt

    recorder = ContextRecorder()
    with visattn.attach(model, recorder), torch.no_grad():
        model(*args, **kwargs)
    contexts = recorder.contexts
    roles = {ctx.role for ctx in contexts}
    static_roles = set(visattn.layer_roles(model).values())
    perturbable = [role for role in ("self", "joint") if role in roles and role in static_roles]
    grids = [ctx.grid for ctx in contexts if ctx.grid is not None and ctx.role in perturbable]
    text = [ctx for ctx in contexts if ctx.role in ("cross", "joint") and ctx.text_span is not None]

    def attached(*effects, target=None, **options):
        return lambda: visattn.attach(target if target is not None else model, *effects, **options)

    variants: dict[str, Callable[[], Any]] = {"no effect": attached()}
    skipped: dict[str, str] = {}
    if perturbable:
        closed = visattn.PerturbedAttentionGuidance(scale=2.0, layers=perturbable, steps=(0.5, 1.0))
        variants["closed (effect steps)"] = attached(closed, target=_StandInPipeline(model))
        pag = visattn.PerturbedAttentionGuidance(scale=2.0, layers=perturbable)
        variants["closed (attach steps)"] = attached(pag, target=_StandInPipeline(model), steps=(0.5, 1.0))
        variants["PAG"] = attached(visattn.PerturbedAttentionGuidance(scale=2.0, layers=perturbable))
        variants["SEG"] = attached(visattn.SmoothedEnergyGuidance(scale=2.0, sigma=2.0, layers=perturbable))
    else:
        for name in ("closed (effect steps)", "closed (attach steps)", "PAG", "SEG"):
            skipped[name] = "no self or joint attention call"
    if text and grids:
        prompt = synthetic_prompt(text[0].text_span.length)
        variants["AttentionMaps"] = attached(visattn.AttentionMaps(prompt=prompt, drop_special=False))
    else:
        skipped["AttentionMaps"] = "no cross or joint call with text and a latent grid"
    if grids:
        # A window of 3 on every axis the grids allow (an axis of 1 or 2 frames gets a window of 1).
        kernel = tuple(3 if size >= 3 else 1 for size in min(grids, key=math.prod))
        variants["NeighborhoodAttention"] = attached(
            visattn.NeighborhoodAttention(kernel_size=kernel, layers=perturbable)
        )
        variants["ExtrapolationDecay"] = attached(
            visattn.ExtrapolationDecay(train_size=2, factor=0.5, layers=perturbable)
        )
        if any(grid[0] > 1 for grid in grids):
            radial = visattn.RadialAttention(dense_steps=None, block_size=4, decay_factor=0.2, layers=perturbable)
            variants["RadialAttention"] = attached(radial)
        else:
            skipped["RadialAttention"] = "image model (Radial Attention is for video)"
    else:
        for name in ("NeighborhoodAttention", "ExtrapolationDecay", "RadialAttention"):
            skipped[name] = "no self or joint call with a latent grid"
    return variants, skipped


# --- timing --------------------------------------------------------------------------------------------------------
def _chunks(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` near-equal positive sizes (fewer parts when ``total`` is smaller)."""
    parts = max(1, min(parts, total))
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _timed_forwards(forward: Callable[[], Any], count: int, warmup: int, clock: str = "wall") -> list[float]:
    """Seconds of ``count`` forwards after ``warmup`` untimed ones on ``clock`` (:data:`CLOCKS`), the garbage
    collector paused."""
    now = CLOCKS[clock]
    for _ in range(warmup):
        forward()
    samples = []
    enabled = gc.isenabled()
    gc.disable()  # a collection landing in one run would be a 10x outlier on a 2 ms forward
    try:
        for _ in range(count):
            begin = now()
            forward()
            samples.append(now() - begin)
    finally:
        if enabled:
            gc.enable()
    return samples


def time_model(
    class_name: str,
    *,
    variants: Sequence[str] | None = None,
    repeats: int = 200,
    warmup: int = 5,
    rounds: int = 5,
    clock: str = "wall",
) -> ModelTiming:
    """Time every applicable variant of one tiny denoiser (see the module docstring); problems become ``skipped``.

    Args:
        class_name: one of :func:`available_classes`.
        variants: names from :data:`VARIANTS` (``stock`` is always timed); ``None`` times every one that applies.
        repeats: timed forwards per variant, split into ``rounds`` interleaved blocks.
        warmup: untimed forwards before each block (after attaching).
        clock: ``"wall"`` or ``"cpu"`` (:data:`CLOCKS`).
    """
    import visattn

    _check_counts(repeats, warmup, rounds)
    wanted = _check_variants(variants)
    model, args, kwargs, source = tiny_model(class_name)
    calls = attention_calls(model, args, kwargs)
    setups, skipped = effect_variants(model, args, kwargs)
    setups = {name: setup for name, setup in setups.items() if name in wanted}
    skipped = {name: why for name, why in skipped.items() if name in wanted}
    with visattn.attach(model) as handle:
        hooked = sum(len(names) for names in handle.layers.values())

    def forward() -> Any:
        return model(*args, **kwargs)

    samples: dict[str, list[float]] = {"stock": []}
    samples.update({name: [] for name in setups})
    with torch.no_grad():
        for count in _chunks(repeats, rounds):
            for name in list(samples):
                if name in skipped:
                    continue
                try:
                    if name == "stock":
                        samples[name] += _timed_forwards(forward, count, warmup, clock)
                    else:
                        with setups[name]():
                            samples[name] += _timed_forwards(forward, count, warmup, clock)
                except Exception as error:  # noqa: BLE001 - the row records what failed and the others go on
                    skipped[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
    timing = ModelTiming(class_name, source, _batch_size(args, kwargs), calls, hooked, skipped=skipped)
    for name in VARIANTS:
        if name in samples and name not in skipped:
            timing.variants.append(_summary(name, samples[name], samples["stock"], calls))
    # Only variants whose forward is the stock forward plus hooks: attach-level steps may still add a branch.
    dispatch_only = {name: setups[name] for name in ("no effect", "closed (effect steps)") if name in samples}
    dispatch_only = {name: setup for name, setup in dispatch_only.items() if name not in skipped}
    if dispatch_only:
        stock_us = statistics.median(samples["stock"]) * 1e6
        timing.hook_costs = hook_costs(model, args, kwargs, dispatch_only, stock_us=stock_us, calls=calls)
    return timing


def _batch_size(args: tuple, kwargs: dict[str, Any]) -> int:
    """The batch of the denoiser's first tensor input (the latents)."""
    first = next((v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.ndim > 1), None)
    return int(first.shape[0]) if first is not None else 0


def _summary(name: str, samples: list[float], stock: list[float], calls: int) -> VariantTiming:
    median, fastest = statistics.median(samples) * 1e6, min(samples) * 1e6
    stock_median, stock_min = statistics.median(stock) * 1e6, min(stock) * 1e6
    per_call = calls or 1  # a model without SDPA calls (never hooked) still gets a per-forward figure
    return VariantTiming(
        variant=name,
        median_us=median,
        min_us=fastest,
        samples=len(samples),
        per_call_us=median / per_call,
        ratio=median / stock_median,
        ratio_min=fastest / stock_min,
        overhead_per_call_us=(median - stock_median) / per_call,
        note=_NOTES.get(name, ""),
    )


_MISSING = object()


class _NoOpForwards:
    """Replaces the forwards of ``modules`` by functions that return fixed outputs, and restores them on exit.

    Hooks registered while it is active wrap the no-op, so timing a call times the hooks and nothing else.
    """

    def __init__(self, outputs: dict[torch.nn.Module, Any]) -> None:
        self.outputs = outputs
        self.saved: dict[torch.nn.Module, Any] = {}

    def __enter__(self) -> _NoOpForwards:
        for module, output in self.outputs.items():
            self.saved[module] = module.__dict__.get("forward", _MISSING)
            module.forward = lambda *args, _output=output, **kwargs: _output
        return self

    def __exit__(self, *exc_info) -> None:
        for module, previous in self.saved.items():
            if previous is _MISSING:
                module.__dict__.pop("forward", None)
            else:
                module.forward = previous


def _call_cost_us(fn: Callable[[], Any], number: int, repeat: int = 5) -> float:
    """Microseconds per ``fn()``: the best of ``repeat`` loops of ``number`` calls (timeit's convention: the
    fastest loop is the one least disturbed by other processes)."""
    import timeit

    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def hook_costs(
    model: torch.nn.Module,
    args: tuple,
    kwargs: dict[str, Any],
    setups: dict[str, Callable[[], Any]],
    *,
    stock_us: float,
    calls: int,
    number: int = 500,
) -> list[HookCost]:
    """Time the hooks of each ``setups`` variant alone, around no-op forwards of the model and its attention modules.

    The denoiser's and every hooked attention module's forward are replaced by functions returning a stock
    forward's outputs, so a call costs only the hooks wrapped around it: the denoiser hook is timed on the
    model's real inputs, each layer hook on its module's real inputs (recorded from a stock forward), and the
    layer costs are summed with each module's number of calls per forward.
    """
    import visattn

    with visattn.attach(model) as handle:
        names = set(handle.layers["model"])
    modules = {module: name for name, module in visattn.attention_layers(model).items() if name in names}
    seen: dict[torch.nn.Module, list] = {}

    def record(module, module_args, module_kwargs):
        entry = seen.setdefault(module, [0, module_args, module_kwargs, None])
        entry[0] += 1

    def record_output(module, module_args, module_kwargs, output):
        if seen[module][3] is None:
            seen[module][3] = output

    handles = [module.register_forward_pre_hook(record, with_kwargs=True) for module in modules]
    handles += [module.register_forward_hook(record_output, with_kwargs=True) for module in modules]
    try:
        with torch.no_grad():
            output = model(*args, **kwargs)
    finally:
        for hook in handles:
            hook.remove()
    layer_calls = sum(entry[0] for entry in seen.values())

    def costs() -> tuple[float, float]:
        denoiser = _call_cost_us(lambda: model(*args, **kwargs), number)
        layers = sum(
            count * _call_cost_us(lambda m=module, a=a, k=k: m(*a, **k), number)
            for module, (count, a, k, _) in seen.items()
        )
        return denoiser, layers

    outputs = {model: output, **{module: entry[3] for module, entry in seen.items()}}
    results = []
    with torch.no_grad(), _NoOpForwards(outputs):
        stock_denoiser, stock_layers = costs()
        for name, setup in setups.items():
            with setup():
                denoiser, layers = costs()
            denoiser, layers = max(denoiser - stock_denoiser, 0.0), max(layers - stock_layers, 0.0)
            per_forward = denoiser + layers
            results.append(
                HookCost(
                    variant=name,
                    denoiser_us=denoiser,
                    layer_us=layers,
                    layer_calls=layer_calls,
                    per_forward_us=per_forward,
                    per_call_us=per_forward / (calls or 1),
                    ratio=(stock_us + per_forward) / stock_us,
                )
            )
    return results


# --- the benchmark -------------------------------------------------------------------------------------------------
def dispatch_benchmark(
    classes: Sequence[str] | None = None,
    *,
    variants: Sequence[str] | None = None,
    repeats: int = 200,
    warmup: int = 5,
    rounds: int = 5,
    threads: int | None = 1,
    progress: bool = False,
    layer_shapes: Sequence[LayerShape] = LAYER_SHAPES,
    layer_repeats: int | None = None,
    clock: str = "wall",
) -> DispatchReport:
    """Time stock vs attached forwards of tiny denoisers; see the module docstring for what each variant is.

    Args:
        classes: diffusers class names from :func:`available_classes`; default :data:`DEFAULT_CLASSES`.
        variants: names from :data:`VARIANTS` and :data:`LAYER_VARIANTS`; default every one that applies.
        repeats: timed forwards per variant and model (median and min are reported).
        warmup: untimed forwards before each of the ``rounds`` interleaved blocks.
        rounds: blocks the timed forwards are split into, variants interleaved.
        threads: ``torch.set_num_threads`` for the run (restored after); ``None`` keeps torch's setting.
        progress: print one line per model to stderr.
        layer_shapes: the layers of the per-layer comparisons (:data:`visattn.bench.layers.LAYER_SHAPES`).
        layer_repeats: timed calls per side of each per-layer comparison; default ``min(repeats, 60)``.
        clock: ``"wall"`` (elapsed time) or ``"cpu"`` (the timing thread's CPU time, which leaves out waits for a
            core on a shared machine): :data:`visattn.bench.layers.CLOCKS`.

    Raises:
        ValueError: an unknown class or variant, ``repeats < 1``, ``warmup < 0``, ``rounds < 1``, ``threads < 1``.
    """
    from .report import environment

    classes = tuple(DEFAULT_CLASSES if classes is None else classes)
    if not classes:
        raise ValueError("classes: got an empty list; name at least one of " + ", ".join(available_classes()))
    allowed = available_classes()
    unknown = [name for name in classes if name not in allowed]
    if unknown:
        raise ValueError(f"classes: {unknown} not tiny denoiser classes; allowed: {', '.join(allowed)}")
    _check_counts(repeats, warmup, rounds)
    _check_variants(variants)
    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r}: must be one of {', '.join(map(repr, CLOCKS))}")
    if layer_repeats is not None:
        _check_counts(layer_repeats, warmup, rounds)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads={threads!r}: must be a positive integer or None (keep torch's setting)")
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        models = []
        # A run of per-layer comparisons alone times no model.
        model_variants = variants is None or any(name in VARIANTS for name in variants)
        for class_name in classes if model_variants else ():
            if progress:
                import sys

                print(f"dispatch: {class_name}", file=sys.stderr, flush=True)
            models.append(
                time_model(class_name, variants=variants, repeats=repeats, warmup=warmup, rounds=rounds, clock=clock)
            )
        wanted = [name for name in LAYER_VARIANTS if variants is None or name in variants]
        layer_repeats = min(repeats, 60) if layer_repeats is None else layer_repeats
        layers = []
        if wanted:
            layers = layer_benchmark(
                wanted,
                layer_shapes,
                repeats=layer_repeats,
                warmup=min(warmup, 2),
                rounds=rounds,
                progress=progress,
                clock=clock,
            )
        env = environment()
        settings = {
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "repeats": repeats,
            "warmup": warmup,
            "rounds": rounds,
            "layer_repeats": layer_repeats,
            "dtype": "float32",
            "grad": "torch.no_grad",
            "clock": clock,
        }
    finally:
        torch.set_num_threads(previous)
    return DispatchReport(env, settings, models, layers)


def _check_counts(repeats: int, warmup: int, rounds: int) -> None:
    for name, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0), ("rounds", rounds, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r}: must be an integer >= {low}")


def _check_variants(variants: Sequence[str] | None) -> set[str]:
    if variants is None:
        return set(VARIANTS)
    unknown = [name for name in variants if name not in VARIANTS and name not in LAYER_VARIANTS]
    if unknown:
        raise ValueError(f"variants: {unknown} not known; allowed: {', '.join(VARIANTS + LAYER_VARIANTS)}")
    return {"stock", *variants}


# --- output --------------------------------------------------------------------------------------------------------
def markdown_table(models: Sequence[ModelTiming]) -> str:
    """One row per (model, variant); ``x stock`` is the median forward over the stock median (min over min)."""
    lines = [
        "| model | SDPA calls | variant | ms / forward (median) | ms (min) | µs / call | + µs / call | x stock "
        "| x stock (min) | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    skipped = []
    for model in models:
        for v in model.variants:
            lines.append(
                f"| {model.class_name} | {model.attention_calls} | {v.variant} | {v.median_us / 1e3:.3f} | "
                f"{v.min_us / 1e3:.3f} | {v.per_call_us:.1f} | {v.overhead_per_call_us:+.1f} | {v.ratio:.3f} | "
                f"{v.ratio_min:.3f} | {v.note} |"
            )
        skipped += [f"- {model.class_name} / {name}: {why}" for name, why in model.skipped.items()]
    if skipped:
        lines += ["", "Not timed:", *skipped]
    return "\n".join(lines) + "\n"


def hook_cost_table(models: Sequence[ModelTiming]) -> str:
    """The hooks timed alone (no-op forwards): one row per model and dispatch-only variant."""
    lines = [
        "| model | SDPA calls | module calls | variant | denoiser hook µs | layer hooks µs | µs / forward "
        "| µs / SDPA call | x stock |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for model in models:
        for cost in model.hook_costs:
            lines.append(
                f"| {model.class_name} | {model.attention_calls} | {cost.layer_calls} | {cost.variant} | "
                f"{cost.denoiser_us:.1f} | {cost.layer_us:.1f} | {cost.per_forward_us:.1f} | {cost.per_call_us:.1f} | "
                f"{cost.ratio:.3f} |"
            )
    return "\n".join(lines) + "\n"


def header(report: DispatchReport, command: str = "") -> str:
    """Machine, date, versions and settings of a report, as markdown lines above its table."""
    env, settings = report.environment, report.settings
    cpu = next((d for d in env["devices"] if d["type"] == "cpu"), {"name": "unknown CPU"})
    packages = env["packages"]
    lines = [
        f"Measured {env['date']} on {cpu['name']} ({settings.get('cpus')} CPUs), {settings['threads']} torch "
        f"thread(s); visattn {env['visattn']}, "
        f"torch {packages['torch']}, diffusers {packages['diffusers']}, python {env['python']}. "
        f"fp32, {settings['grad']}"
        + (", timed in the timing thread's CPU time" if settings.get("clock") == "cpu" else "")
        + (
            f", median of {settings['repeats']} forwards per variant in {settings['rounds']} interleaved rounds, "
            f"each after {settings['warmup']} untimed forward(s)"
            if report.models
            else ""
        )
        + (
            f"; per layer: {settings['layer_repeats']} calls per side, alternated one by one, after "
            f"{min(settings['warmup'], 2)} untimed"
            if report.layers
            else ""
        )
        + ".",
    ]
    if command:
        lines += ["", f"`{command}`"]
    return "\n".join(lines)


def write_dispatch_report(
    report: DispatchReport, out_dir: str | Path, *, command: str = "", name: str | None = None
) -> dict[str, Path]:
    """Write ``<name>.json`` and ``<name>.md`` (default name ``dispatch-<date>``) to ``out_dir``; returns the paths."""
    import json

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = name or f"dispatch-{report.environment['date'][:10]}"
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    payload = {"command": command, **report.as_dict()}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(f"{header(report, command)}\n\n{report.markdown()}", encoding="utf-8")
    return paths
