"""Context parallelism: where one rank's part of an attention call sits when diffusers splits a model.

``model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=N))`` shards the token sequence across N
ranks (the model's ``_cp_plan``) and sets ``_parallel_config`` on every attention processor. visattn keeps that
path: the stock processor hands attention to diffusers' dispatcher, whose Ulysses template swaps the sequence
split for a head split (an all-to-all) and only then calls ``scaled_dot_product_attention``, the call visattn
answers. So visattn sees the whole sequence with a slice of the heads, which is what its patterns, score
modifiers and per-token effects need; this module says where that slice sits:

* **Ulysses calls**: the heads are ``[offset, offset + H / N)`` of the layer's ``H``; the sequence is the
  concatenation of every rank's local sequence. For joint attention that interleaves text and image per rank
  (``[text_0, image_0, text_1, image_1]`` for Flux), :func:`joint_order` gives the permutation to the layout
  effects expect and back.
* **Local calls**: a processor that passes no parallel config (Wan's cross-attention over replicated text) calls
  SDPA on this rank's query shard. Effects need the full query grid, so the queries are gathered from every rank,
  the call runs whole on each (every rank ends with the same maps and masks), and each keeps its own rows.
* **Ring calls** (``ring_degree > 1``): each rank keeps its query shard and the key/value shards rotate. visattn
  computes the ring itself for the layers its effects act on (:func:`ring_attention`, in place of diffusers'
  ``TemplatedRingAttention``): the effects contribute once per call against the whole sequence's context, each
  key shard's step evaluates their patterns and score modifiers at global token indices
  (:class:`PlacedPattern`), a key shard the pattern masks entirely is skipped, and the steps merge by log-sum-exp
  as diffusers' ring does. Effects that need whole rows or the whole query grid (probability edits and reads,
  changed queries, keys or values) are refused with a ValueError naming the Ulysses config (:func:`check_model`
  before any step, :func:`ring_attention` as a backstop).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import weakref
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .context import Span, TokenLayout
from .kernels.patterns import Pattern, ScoreModifier, all_of, chain


@dataclass(frozen=True)
class ParallelView:
    """This rank's place in a processor's context-parallel configuration.

    Attributes:
        ulysses, ring: the Ulysses and ring degrees.
        ulysses_rank: this rank's index in its Ulysses group (which head slice it holds inside Ulysses calls).
        rank, world: this rank's index in the flattened context-parallel mesh, and its size (how the model's
            inputs are split along the sequence).
        mesh: the flattened mesh (diffusers' ``_flattened_mesh``).
    """

    ulysses: int
    ring: int
    ulysses_rank: int
    rank: int
    world: int
    mesh: Any
    ulysses_group: Any = None


def parallel_view(processor: Any) -> ParallelView | None:
    """The context-parallel view of a processor diffusers parallelized, or ``None`` (not split, or one rank)."""
    config = getattr(getattr(processor, "_parallel_config", None), "context_parallel_config", None)
    mesh = getattr(config, "_flattened_mesh", None)
    if config is None or mesh is None:
        return None
    world = int(config.ring_degree) * int(config.ulysses_degree)
    if world <= 1:
        return None
    rank = torch.distributed.get_rank(mesh.get_group())
    ulysses_mesh = getattr(config, "_ulysses_mesh", None)
    group = ulysses_mesh.get_group() if ulysses_mesh is not None and config.ulysses_degree > 1 else None
    return ParallelView(
        int(config.ulysses_degree), int(config.ring_degree), config._ulysses_local_rank, rank, world, mesh, group
    )


def module_heads(module: torch.nn.Module) -> int | None:
    """The head count of an attention module: diffusers' ``Attention`` calls it ``heads``, other attention classes
    ``num_heads`` (Kandinsky 5 and 6)."""
    for name in ("heads", "num_heads"):
        value = getattr(module, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def ulysses_heads(view: ParallelView | None, call_heads: int) -> tuple[int, int] | None:
    """``(head_offset, total_heads)`` of a call that Ulysses' all-to-all made (a slice of the layer's heads over the
    whole sequence), or ``None`` for any other call.

    A Ulysses call is one made inside diffusers' context-parallel template (:func:`_context_parallel_through_visattn`
    marks it) with ``ulysses_degree > 1``: the template's all-to-all gave this rank ``call_heads`` of the layer's
    ``call_heads * ulysses_degree``. The template says so, not the layer's attributes, which name the head count
    differently per attention class (a call not recognized as a slice would average maps and select heads over this
    rank's slice only).
    """
    if view is None or view.ulysses <= 1 or _TEMPLATE_CONFIG.get() is None:
        return None
    return view.ulysses_rank * call_heads, call_heads * view.ulysses


def is_query_shard(view: ParallelView | None, heads: int | None, call_heads: int) -> bool:
    """Whether a call of a parallelized layer of ``heads`` heads (``None``: unknown) runs on this rank's query shard
    with every head: made outside diffusers' context-parallel template, so without an all-to-all."""
    return view is not None and _TEMPLATE_CONFIG.get() is None and heads in (None, call_heads)


def check_supported(view: ParallelView | None, layer_name: str, query_shard: bool = False) -> None:
    """Refuse an effect's call that holds part of the keys: patterns, score modifiers and edits over whole rows would
    be silently wrong. Ring calls never reach here (visattn computes them itself, :func:`ring_attention`); under ring
    only the local calls a processor makes on its query shard (``query_shard``, run on the gathered queries) do.

    Raises:
        ValueError: ``ring_degree > 1`` and the call is not a query shard.
    """
    if view is not None and view.ring > 1 and not query_shard:
        raise ValueError(
            f"visattn effects act on layer {layer_name!r}, which runs ring attention (ring_degree={view.ring}) in a "
            "call visattn cannot place in the whole sequence, so effects that need whole rows cannot run. Use "
            f"Ulysses instead: ContextParallelConfig(ulysses_degree={view.world})"
        )


def gather_queries(q: torch.Tensor, view: ParallelView) -> torch.Tensor:
    """Every rank's query shard, in sequence order (``[B, H, world * N_local, D]``), autograd-aware."""
    from diffusers.hooks.context_parallel import EquipartitionSharder

    return EquipartitionSharder.unshard(q, 2, view.mesh)


def own_rows(out: torch.Tensor, view: ParallelView, rows: int) -> torch.Tensor:
    """This rank's rows of a call computed on the gathered queries."""
    return out[:, :, view.rank * rows : (view.rank + 1) * rows]


def joint_order(layout: TokenLayout, world: int) -> torch.Tensor | None:
    """For a Ulysses call of joint attention: the gathered position of each position of ``layout``.

    Every rank concatenates its own shard of each stream (``[text_r, image_r]``), so the gathered sequence
    interleaves the streams rank by rank; ``q_layout = q_gathered[:, :, order]`` puts it in ``layout``'s order, and
    ``out_gathered[:, :, order] = out_layout`` puts the output back. ``None`` when the layout holds one stream
    (nothing interleaves) or a stream does not split evenly. The streams are the text and everything else: other
    tokens (:attr:`TokenLayout.other`, HiDream's padding, Framepack's history) travel with the grid, in the
    latent stream the model concatenates them into.
    """
    rest = layout.outside_text()
    if layout.text is None or layout.image is None or rest is None:
        return None
    spans = sorted((layout.text, Span(rest.start, rest.stop)), key=lambda span: span.start)
    if any(span.length == 0 for span in spans):
        return None
    if any(span.length % world for span in spans):
        return None
    local = [span.length // world for span in spans]
    block = sum(local)
    order = []
    for index, span in enumerate(spans):
        before = sum(local[:index])
        for position in range(span.length):
            rank, offset = divmod(position, local[index])
            order.append(rank * block + before + offset)
    return torch.tensor(order, dtype=torch.long)


def split_by_stream(ctx: Any) -> bool:
    """Whether a joint call's sequence was split stream by stream (``[text_r, image_r]`` per rank, the latent and
    text inputs split apart), not as one packed stream (:attr:`visattn.families.Family.joint_one_stream`)."""
    family = ctx.denoiser.family if ctx.denoiser is not None else None
    return not getattr(family, "joint_one_stream", False)


def unsplit_inputs(model: torch.nn.Module, hook_name: str, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The model's forward inputs as the pipeline passed them, for a hook that runs inside diffusers' input split.

    ``enable_parallelism`` registers a hook that splits the model's inputs along the sequence (the ``""`` entry of
    its ``_cp_plan``); a hook registered earlier (visattn attached first) runs inside it and sees shards, from which
    the latent grid and text length cannot be read. Those inputs are gathered back here (only to be read: the model
    still runs on its shards). Inputs a hook registered later sees are returned unchanged.
    """
    registry = getattr(model, "_diffusers_hook", None)
    config = getattr(getattr(model, "_parallel_config", None), "context_parallel_config", None)
    if registry is None or config is None:
        return args, kwargs  # the common case, first: a model that is not split (this runs on every call)
    plan = (context_parallel_plan(model) or {}).get("")
    if not plan or hook_name not in registry._hook_order:
        return args, kwargs
    outer = registry._hook_order[registry._hook_order.index(hook_name) + 1 :]
    if not any(name.startswith("cp_input---") for name in outer):
        return args, kwargs
    from diffusers.hooks.context_parallel import EquipartitionSharder

    def whole(value: Any, split: Any) -> Any:
        expected = getattr(split, "expected_dims", None)
        if not isinstance(value, torch.Tensor) or (expected is not None and value.ndim != expected):
            return value
        return EquipartitionSharder.unshard(value, split.split_dim, config._flattened_mesh)

    args = tuple(whole(value, plan[index]) if index in plan else value for index, value in enumerate(args))
    kwargs = {name: whole(value, plan[name]) if name in plan else value for name, value in kwargs.items()}
    return args, kwargs


def check_model(
    model: torch.nn.Module,
    grid: tuple[int, int, int] | None,
    text_length: int | None,
    text_names: tuple[str, ...],
    effects: Sequence[Any] = (),
    forward_inputs: tuple[tuple, dict] | None = None,
) -> None:
    """Refuse, before any attention runs, a context-parallel split that visattn's effects cannot follow.

    ``forward_inputs`` (the forward's whole ``args`` and ``kwargs``) are read where the family's plan splits token
    counts the grid and text do not give (``Family.cp_split_counts``, Framepack's packed history and condition).

    Raises:
        ValueError: ring attention on a plan that cuts a joint key mask per rank (``Family.cp_joint_masks``); ring
            attention combined with Ulysses (diffusers' unified attention) or ``ring_anything``, or
            with an effect that is not exact under ring (:func:`ring_refusal`); a Ulysses degree that does not
            divide the layers' head count; a latent grid, or a text the model's plan splits (``text_names``), that
            does not split evenly.
    """
    config = getattr(getattr(model, "_parallel_config", None), "context_parallel_config", None)
    if config is None:
        return
    from .families import declared_family

    ring, ulysses = int(config.ring_degree), int(config.ulysses_degree)
    name = type(model).__name__
    family = declared_family(_unwrapped(model))
    if ring > 1 and family is not None and family.cp_joint_masks and plan_source(model) == "visattn":
        raise ValueError(
            f"{name} runs ring attention (ring_degree={ring}) with visattn's plan, whose joint key mask each rank "
            f"cuts to its own keys: diffusers' ring applies that mask to every key shard. Use Ulysses: "
            f"ContextParallelConfig(ulysses_degree={ring * ulysses})"
        )
    if ring > 1 and effects:
        use = f"Use Ulysses: ContextParallelConfig(ulysses_degree={ring * ulysses})"
        if ulysses > 1 or getattr(config, "ring_anything", False):
            what = f"ulysses_degree={ulysses}" if ulysses > 1 else "ring_anything=True"
            raise ValueError(
                f"{name} runs ring attention (ring_degree={ring}) with {what}: visattn's effects run under ring "
                f"alone (ulysses_degree=1) or under Ulysses. {use}"
            )
        for effect in effects:
            reason = ring_refusal(effect, model=model)
            if reason is not None:  # some effects run on some layers only: ask again with the layers' roles
                reason = ring_refusal(effect, _static_roles(model, effect), model=model)
            if reason is not None:
                raise ValueError(
                    f"{type(effect).__name__} cannot run under ring attention (ring_degree={ring} on {name}): "
                    f"{reason}. {use}"
                )
    heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
    counts = {heads} if isinstance(heads, int) else _split_layer_heads(model)
    for count in sorted(counts):
        if count % ulysses:
            raise ValueError(
                f"ulysses_degree={ulysses} does not divide the {count} attention heads of {name}; use a degree that "
                f"divides {count}"
            )
    plan = context_parallel_plan(model) or {}
    split = plan.get("") or {}
    # Text is split where the plan names a text input of the forward or of a block (Kandinsky 5 splits each visual
    # block's ``text_embed``), or splits the output of a module that embeds the text (Motif-Video and HunyuanVideo
    # split at ``context_embedder``).
    text_split = any(name in split for name in text_names) or any(
        (key and any(word in key for word in _TEXT_MODULE_WORDS))
        or (key and isinstance(entry, dict) and any(_names_text(arg, text_names) for arg in entry))
        for key, entry in plan.items()
    )
    text = text_length if text_split else None
    degree = ring * ulysses
    axis = _split_grid_axis(model, split)
    if grid is not None and axis is not None:
        grid_count = (grid[axis], _GRID_AXES[axis])
    else:
        grid_count = (math.prod(grid) if grid else None, "tokens")
    counts = [("latent grid", grid_count), ("text", (text, "tokens"))]
    if family is not None and family.cp_split_counts and forward_inputs is not None and plan_source(model) == "visattn":
        from .families.readers import SPLIT_COUNTS

        read = SPLIT_COUNTS[family.cp_split_counts](_unwrapped(model), *forward_inputs)
        counts = [(what, (count, "tokens")) for what, count in read]
    for what, (count, unit) in counts:
        if count is not None and count % degree:
            raise ValueError(
                f"the {what} of this call has {count} {unit}, which a context-parallel degree of {degree} "
                f"(ulysses_degree={ulysses}, ring_degree={ring}) cannot split evenly; use a size whose number of "
                f"{unit} is a multiple of {degree}"
            )


#: the latent grid's axes, in the order of a grid ``(frames, height, width)``, and what one step along each is
_GRID_AXES = ("frames", "rows", "columns")


def _split_layer_heads(model: torch.nn.Module) -> set[int]:
    """The head counts of the attention modules of ``model`` that diffusers parallelized (its config names none)."""
    return {
        count
        for module in _unwrapped(model).modules()
        if getattr(getattr(module, "processor", None), "_parallel_config", None) is not None
        and (count := module_heads(module)) is not None
    }


def _names_text(argument: Any, text_names: tuple[str, ...]) -> bool:
    return isinstance(argument, str) and (argument in text_names or "text" in argument)


def _split_grid_axis(model: torch.nn.Module, split: dict) -> int | None:
    """The grid axis (0 frames, 1 rows, 2 columns) along which the plan splits the latents at the forward's input
    (Kandinsky 5's plan splits ``[B, F, H, W, C]`` by frames), read with the family's latent layout; ``None`` when
    the plan splits tokens (the whole grid's count must then divide)."""
    from .families import declared_family

    family = declared_family(_unwrapped(model))
    if family is None or not split:
        return None
    entry = next((split[name] for name in family.sample.names if name in split), None)
    dim = getattr(entry, "split_dim", None)
    if dim is None or dim >= len(family.layout):
        return None
    letter = family.layout[dim]
    return "FHW".index(letter) if letter in "FHW" else None


#: words in the names of modules whose output is the text sequence (a plan entry there splits the text)
_TEXT_MODULE_WORDS = ("context_embedder", "text_embedder", "caption_projection", "text_proj")


# --- plans for classes diffusers ships none for -------------------------------------------------------------------

#: where a class's context-parallel plan comes from (see :func:`plan_source`)
PLAN_SOURCES = ("diffusers", "visattn", "none")


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    # torch.compile wraps the module; the plan belongs to the original.
    return getattr(model, "_orig_mod", model)


def plan_source(model: torch.nn.Module) -> str:
    """Where :func:`context_parallel_plan` finds the model's plan: ``"diffusers"`` (the class's own
    ``_cp_plan``), ``"visattn"`` (its family's, :attr:`visattn.families.Family.cp_plan`), or ``"none"``."""
    from .families import declared_family

    model = _unwrapped(model)
    if getattr(model, "_cp_plan", None):
        return "diffusers"
    family = declared_family(model)
    return "visattn" if family is not None and family.cp_plan is not None else "none"


def context_parallel_plan(model: torch.nn.Module) -> dict[str, Any] | None:
    """The context-parallel plan to split ``model`` with: the class's own ``_cp_plan`` where diffusers ships one,
    else the one visattn ships for its family (HunyuanVideo, Wan-VACE), else ``None``.

    Call :func:`enable_context_parallelism` rather than passing it to ``model.enable_parallelism(cp_plan=...)``
    yourself: some of visattn's plans also need inputs gathered back for a submodule
    (:attr:`visattn.families.Family.cp_gather_inputs`), which only that function installs.
    """
    from .families import declared_family

    model = _unwrapped(model)
    own = getattr(model, "_cp_plan", None)
    if own:
        return own
    family = declared_family(model)
    return _built(family.cp_plan) if family is not None and family.cp_plan is not None else None


@functools.cache
def _built(builder: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    # Built once: visattn's denoiser hook reads the plan on every forward (unsplit_inputs, check_model).
    return builder()


def enable_context_parallelism(model_or_pipe: Any, config: Any) -> list[torch.nn.Module]:
    """Split the denoiser(s) of a pipeline, or a denoiser, with ``config`` (diffusers' ``ContextParallelConfig``
    or ``ParallelConfig``) and the plan :func:`context_parallel_plan` gives: diffusers' own, or visattn's for the
    families diffusers ships none for. Returns the models split.

    Every rank calls it after ``torch.distributed.init_process_group``, as with ``enable_parallelism``; attach
    visattn before or after.

    Raises:
        ValueError: no denoiser found, or a denoiser with no plan from diffusers or visattn (the message names its
            class); nothing is split then.
    """
    from .attachment import DENOISER_ATTRIBUTES
    from .families import declared_family

    if isinstance(model_or_pipe, torch.nn.Module):
        models = [model_or_pipe]
    else:
        models = [
            getattr(model_or_pipe, name)
            for name in DENOISER_ATTRIBUTES
            if isinstance(getattr(model_or_pipe, name, None), torch.nn.Module)
        ]
    if not models:
        raise ValueError(f"{type(model_or_pipe).__name__} is neither a denoiser nor a pipeline with one")
    plans = [context_parallel_plan(model) for model in models]
    for model, plan in zip(models, plans, strict=True):
        # Check every denoiser first, so that a pipeline is never left half split.
        if plan is None or not hasattr(model, "enable_parallelism"):
            raise ValueError(
                f"{type(_unwrapped(model)).__name__} has no context-parallel plan (diffusers ships no _cp_plan for it "
                "and visattn none for its family): run it on one device, or pass your own plan to "
                "model.enable_parallelism(config=..., cp_plan=...)"
            )
    for model, plan in zip(models, plans, strict=True):
        model.enable_parallelism(config=config, cp_plan=plan)
        family = declared_family(_unwrapped(model))
        if plan_source(model) == "visattn":
            cp_config = getattr(config, "context_parallel_config", config)
            for submodule, argument, dim in family.cp_gather_inputs:
                _gather_input(submodule_at(model, submodule), argument, dim, cp_config)
            for submodule, output, dim in family.cp_gather_outputs:
                _gather_output(submodule_at(model, submodule), output, dim, cp_config)
            for pattern, mask, streams in family.cp_joint_masks:
                for module in _submodules_matching(model, pattern):
                    _cut_joint_mask(module, mask, streams, cp_config)
    return models


def _submodules_matching(model: torch.nn.Module, pattern: str) -> list[torch.nn.Module]:
    """The submodules named by ``pattern``, where ``*`` stands for every module of a list (as in a plan's keys)."""
    if "*" not in pattern:
        return [submodule_at(model, pattern)]
    head, _, tail = pattern.partition("*")
    modules = submodule_at(model, head.rstrip("."))
    if not isinstance(modules, torch.nn.ModuleList):
        raise ValueError(f"{pattern!r}: '*' must follow a module list")
    return [found for module in modules for found in _submodules_matching(module, tail.lstrip("."))]


def _cut_joint_mask(module: torch.nn.Module, mask: str, streams: tuple[str, ...], config: Any) -> None:
    """Cut the key mask argument ``mask`` of ``module`` to this rank's keys before it runs (see
    :attr:`visattn.families.Family.cp_joint_masks`).

    The forward builds the mask over the whole joint sequence ``[stream_0, stream_1, ...]`` (the arguments
    ``streams``, in order), while this rank's joint keys are its share of each stream, ``[stream_0_r, stream_1_r,
    ...]``: each stream's part of the mask is cut into equal shares and this rank's are concatenated, which
    diffusers' Ulysses template then all-gathers in the layout of the gathered keys. The stream arguments give each
    stream's length: whole where the plan splits them inside this module's forward (the first block), else this
    rank's share.
    """
    import inspect

    # The class's forward: diffusers' hooks replace the instance's with a (*args, **kwargs) wrapper.
    names = list(inspect.signature(type(module).forward).parameters)[1:]
    world = config._flattened_mesh.size()
    rank = torch.distributed.get_rank(config._flattened_mesh.get_group())

    def argument(name: str, args: tuple, kwargs: dict) -> Any:
        if name in kwargs:
            return kwargs[name]
        position = names.index(name)
        return args[position] if len(args) > position else None

    def cut(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        whole = argument(mask, args, kwargs)
        if not isinstance(whole, torch.Tensor):
            return args, kwargs
        lengths = [argument(name, args, kwargs).shape[1] for name in streams]
        if sum(lengths) * world == whole.shape[-1]:
            lengths = [length * world for length in lengths]
        elif sum(lengths) != whole.shape[-1]:
            return args, kwargs  # already cut (a module called twice), or not this layout
        parts = whole.split(lengths, dim=-1)
        local = torch.cat([part.chunk(world, dim=-1)[rank] for part in parts], dim=-1)
        if mask in kwargs:
            return args, {**kwargs, mask: local}
        position = names.index(mask)
        return (*args[:position], local, *args[position + 1 :]), kwargs

    module.register_forward_pre_hook(cut, with_kwargs=True)


def submodule_at(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The submodule ``name`` of ``model``, where a negative index counts from the end of a module list
    (``"visual_transformer_blocks.-1"``: the last visual block, whatever the config's block count).

    Raises:
        ValueError: no such submodule (the message names the model's class and the missing part).
    """
    module = _unwrapped(model)
    for atom in name.split(".") if name else ():
        if isinstance(module, torch.nn.ModuleList) and atom.lstrip("-").isdigit():
            index = int(atom)
            if not -len(module) <= index < len(module):
                raise ValueError(f"{name!r}: index {index} is outside a list of {len(module)} modules")
            module = module[index]
        elif isinstance(getattr(module, atom, None), torch.nn.Module):
            module = getattr(module, atom)
        else:
            raise ValueError(f"{type(_unwrapped(model)).__name__} has no submodule {name!r} (no {atom!r})")
    return module


def _gather_output(module: torch.nn.Module, output: int, dim: int, config: Any) -> None:
    """Gather element ``output`` of what ``module`` returns (a tensor, or a tuple or list whose other elements, even
    ``None``, pass unchanged) along ``dim`` from every rank of ``config``'s mesh, once it has run (see
    :attr:`visattn.families.Family.cp_gather_outputs`)."""
    from diffusers.hooks.context_parallel import EquipartitionSharder

    def whole(module: torch.nn.Module, args: tuple, result: Any) -> Any:
        if isinstance(result, torch.Tensor):
            return EquipartitionSharder.unshard(result, dim, config._flattened_mesh) if output == 0 else result
        if not isinstance(result, (tuple, list)) or not isinstance(result[output], torch.Tensor):
            return result
        parts = list(result)
        parts[output] = EquipartitionSharder.unshard(parts[output], dim, config._flattened_mesh)
        return type(result)(parts)

    module.register_forward_hook(whole)


def _gather_input(module: torch.nn.Module, argument: str, dim: int, config: Any) -> None:
    """Gather ``argument`` of ``module`` whole (along ``dim``, from every rank of ``config``'s mesh) before it runs:
    the plan split it for the rest of the forward (see :attr:`visattn.families.Family.cp_gather_inputs`)."""
    import inspect

    from diffusers.hooks.context_parallel import EquipartitionSharder

    position = list(inspect.signature(module.forward).parameters).index(argument)

    def gathered(value: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        return EquipartitionSharder.unshard(value, dim, config._flattened_mesh)

    def whole(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if argument in kwargs:
            kwargs = {**kwargs, argument: gathered(kwargs[argument])}
        elif len(args) > position:
            args = (*args[:position], gathered(args[position]), *args[position + 1 :])
        return args, kwargs

    module.register_forward_pre_hook(whole, with_kwargs=True)


# --- gradients through Ulysses ----------------------------------------------------------------------------------

# diffusers' Ulysses template (TemplatedUlyssesAttention) computes its backward with an explicit backward op that
# recomputes the stock SDPA from the saved q, k, v (attention_dispatch._native_attention_backward_op), outside the
# layer's forward where visattn answers SDPA. So the gradient of a call an effect changed would be the stock
# attention's. visattn remembers, for each call it answers inside the template, the layer and the call context,
# and wraps the backward op to answer that recomputation the same way (a replay: same context; effects that collect
# maps or masks skip it, since they collected in the forward).

#: saved query storage -> (layer hook, call context) of calls visattn answered inside the Ulysses template
_ANSWERED: dict[int, tuple[Any, Any]] = {}
_STOCK_BACKWARD: list = []


def remember_for_backward(layer: Any, ctx: Any, q: torch.Tensor) -> None:
    """Remember the layer and context of a Ulysses call visattn answered, for its backward (if one comes: inside
    the template's forward, grad mode is off and the gathered q needs no grad, so every call is remembered)."""
    _install_backward()
    key = q.data_ptr()  # the saved query's (q is its permuted view)
    _ANSWERED[key] = (layer, ctx)
    # The saved query lives as long as the autograd graph: forget the call with its storage.
    base = q._base if q._base is not None else q
    weakref.finalize(base, _ANSWERED.pop, key, None)


def _install_backward() -> None:
    from diffusers.models import attention_dispatch

    if _STOCK_BACKWARD:
        return
    _STOCK_BACKWARD.append(attention_dispatch._native_attention_backward_op)
    attention_dispatch._native_attention_backward_op = _native_backward_through_visattn


def _native_backward_through_visattn(ctx: Any, grad_out: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """diffusers' native backward op, with the recomputed SDPA answered by visattn when visattn answered the
    forward (a call no visattn layer answered runs the stock op unchanged)."""
    query = ctx.saved_tensors[0]
    entry = _ANSWERED.get(query.data_ptr())
    if entry is None:
        return _STOCK_BACKWARD[0](ctx, grad_out, *args, **kwargs)
    layer, call_ctx = entry
    with layer.replaying(call_ctx):
        return _STOCK_BACKWARD[0](ctx, grad_out, *args, **kwargs)


# --- ring attention ---------------------------------------------------------------------------------------------

# Under ring, diffusers' template (TemplatedRingAttention, reached through _templated_context_parallel_attention)
# keeps each rank's query shard, all-gathers the key/value shards and loops over them, merging each step's output
# by log-sum-exp. visattn routes the calls of the layers its effects act on (the layer hook is active, see
# parallel_layer) to ring_attention instead, which does the same with visattn's attention core: each step knows where
# its key shard sits in the whole sequence. Other calls run diffusers' template unchanged.

_RING_LAYER: contextvars.ContextVar[Any] = contextvars.ContextVar("visattn_ring_layer", default=None)
_STOCK_TEMPLATE: list = []
#: the context-parallel config of the stock template call in progress (its SDPA calls are Ulysses calls)
_TEMPLATE_CONFIG: contextvars.ContextVar[Any] = contextvars.ContextVar("visattn_cp_template", default=None)


#: why the effects visattn ships that need whole rows or the whole grid cannot run under ring (by class name)
_RING_REFUSALS = {
    "PromptToPrompt": "it edits whole rows of attention probabilities (normalized over every key) and reads the "
    "whole query grid's maps",
    "AttentionMaps": "it reads whole rows of joint attention probabilities, normalized over every key (its maps of "
    "cross-attention over replicated text run under ring)",
    "SmoothedEnergyGuidance": "it blurs the queries (or keys) over the whole latent grid, of which each rank holds "
    "a shard",
    "SpatioTemporalSkipGuidance": "mode='skip' zeroes the values of the perturbed rows on every key shard (mode="
    "'identity' and mode='block' run under ring)",
    "CrossAttentionCache": "it reuses whole outputs of layers whose rows it has not seen whole",
}


def _static_roles(model: torch.nn.Module, effect: Any) -> frozenset[str]:
    """The static roles (``"self"``, ``"cross"``, ``"joint"``, ...) of the attention layers of ``model`` whose visattn
    hook carries ``effect``."""
    from .interception import layer_hook

    return frozenset(
        hook.static_role
        for module in _unwrapped(model).modules()
        if (hook := layer_hook(module)) is not None and any(carried is effect for carried in hook.effects)
    )


def ring_refusal(effect: Any, roles: frozenset[str] | None = None, model: torch.nn.Module | None = None) -> str | None:
    """Why ``effect`` cannot run exactly under ring attention, or ``None`` when it can (``roles``: the static roles
    of the layers it is attached to, when known; ``model``: the denoiser, whose family decides STG's default mode).

    Exact under ring: effects whose every contribution to a call is a pattern or score modifier of global token
    indices, or a per-row and per-head identity blend (each query's own value sits in the key shard its rank
    holds, for self and joint attention): NeighborhoodAttention, RadialAttention, ExtrapolationDecay (not
    UltraViCo's centered keys, a mean over the whole sequence), EntropyScaling, PerturbedAttentionGuidance (PAG and
    SoftPAG), SpatioTemporalSkipGuidance in modes ``"identity"`` and ``"block"``; AttentionMaps where none of its
    layers is joint attention (its maps then come from cross-attention, which a processor runs on its query shard
    over replicated text without the ring, as Wan does: visattn gathers the queries as under Ulysses; a ring call
    that still reads probabilities is refused by :func:`ring_attention`). The rest edit or read whole rows of
    probabilities (Prompt-to-Prompt, AttentionMaps on joint attention), change queries, keys or values over the
    whole grid (SEG's blur, STG's skip) or are not known to be exact (effects of your own).
    """
    from .effects.attention_maps import AttentionMaps
    from .effects.extrapolation import EntropyScaling, ExtrapolationDecay
    from .effects.neighborhood_attention import NeighborhoodAttention
    from .effects.perturbed_attention_guidance import PerturbedAttentionGuidance
    from .effects.radial_attention import RadialAttention
    from .effects.spatiotemporal_skip_guidance import SpatioTemporalSkipGuidance

    if isinstance(effect, ExtrapolationDecay):
        if getattr(effect, "mode", None) == "ultravico" and getattr(effect, "center_keys", False):
            return "center_keys subtracts the mean key of the whole sequence, which no rank holds"
        return None
    if isinstance(effect, SpatioTemporalSkipGuidance):
        if effect.mode is None and model is not None:
            from .families import family_of

            mode = effect.mode_for(family_of(model))  # the mode the family's default resolves to
        else:
            mode = effect.mode
        return None if mode in ("identity", "block") else _RING_REFUSALS["SpatioTemporalSkipGuidance"]
    if isinstance(effect, (NeighborhoodAttention, RadialAttention, EntropyScaling, PerturbedAttentionGuidance)):
        return None
    if isinstance(effect, AttentionMaps) and roles is not None and "joint" not in roles:
        return None
    known = next((why for cls in type(effect).__mro__ if (why := _RING_REFUSALS.get(cls.__name__))), None)
    return known or (
        "visattn does not know it to be exact under ring (only patterns, score modifiers and identity blends are: "
        "each rank holds its query shard and sees the keys one shard at a time)"
    )


@contextlib.contextmanager
def parallel_layer(layer: Any, view: ParallelView | None) -> Iterator[None]:
    """While a layer's forward runs under context parallelism: mark the calls made inside diffusers'
    context-parallel template (:func:`ulysses_heads`), and route ring calls (``view.ring > 1``) to
    :func:`ring_attention`."""
    if view is None:
        yield
        return
    _install_template()
    token = _RING_LAYER.set(layer if view.ring > 1 else None)
    try:
        yield
    finally:
        _RING_LAYER.reset(token)


def _install_template() -> None:
    from diffusers.models import attention_dispatch

    if _STOCK_TEMPLATE:
        return
    _STOCK_TEMPLATE.append(attention_dispatch._templated_context_parallel_attention)
    attention_dispatch._templated_context_parallel_attention = _context_parallel_through_visattn


def _context_parallel_through_visattn(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    return_lse: bool = False,
    *,
    forward_op,
    backward_op,
    _parallel_config: Any = None,
):
    """diffusers' context-parallel template, with the ring calls of a layer visattn's effects act on computed by
    :func:`ring_attention`; every other call runs the stock template, marked as made inside it (the SDPA call its
    Ulysses all-to-all leads to holds a slice of the heads, :func:`ulysses_heads`)."""
    layer = _RING_LAYER.get()
    config = getattr(_parallel_config, "context_parallel_config", None)
    if layer is None or config is None or config.ring_degree <= 1:
        token = _TEMPLATE_CONFIG.set(config)
        try:
            return _STOCK_TEMPLATE[0](
                query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa, return_lse,
                forward_op=forward_op, backward_op=backward_op, _parallel_config=_parallel_config,
            )  # fmt: skip
        finally:
            _TEMPLATE_CONFIG.reset(token)
    if config.ulysses_degree > 1 or getattr(config, "ring_anything", False) or is_causal or dropout_p or enable_gqa:
        raise ValueError(
            f"visattn effects act on layer {layer.layer_name!r}, whose ring attention (ring_degree="
            f"{config.ring_degree}, ulysses_degree={config.ulysses_degree}) visattn cannot compute (it runs ring "
            "alone, without causal masks, dropout or grouped heads). Use Ulysses: "
            f"ContextParallelConfig(ulysses_degree={config.ring_degree * config.ulysses_degree})"
        )
    out, lse = ring_attention(layer, query, key, value, attn_mask, scale, config)
    return (out, lse) if return_lse else out


@dataclass(frozen=True)
class _Placement:
    """Where one block of a whole sequence sits in it: query ``i`` of the block is token ``queries[i]`` of the
    whole sequence and key ``j`` is token ``keys[j]``, as runs ``((start, length), ...)``."""

    queries: tuple[tuple[int, int], ...]
    keys: tuple[tuple[int, int], ...]
    device: Any = field(default=None, compare=False)
    _tables: tuple[torch.Tensor | None, torch.Tensor | None] = field(
        default=(None, None), init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        # Position tables only for blocks of several runs (joint shards), made once here: FlexAttention traces
        # mask_mod, where building them would be traced too.
        tables = tuple(None if len(runs) == 1 else _positions(runs, self.device) for runs in (self.queries, self.keys))
        object.__setattr__(self, "_tables", tables)

    def place(self, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._lookup(0, q_idx), self._lookup(1, kv_idx)

    def _lookup(self, which: int, idx: torch.Tensor) -> torch.Tensor:
        table = self._tables[which]
        return idx + (self.queries, self.keys)[which][0][0] if table is None else table[idx]


@dataclass(frozen=True)
class PlacedPattern(Pattern):
    """A pattern of the whole sequence evaluated on one block of it (a ring step: this rank's query shard against
    one key shard), at the block's global token indices."""

    inner: Pattern
    at: _Placement

    def mask_mod(self, b, h, q_idx, kv_idx):
        return self.inner.mask_mod(b, h, *self.at.place(q_idx, kv_idx))

    def cache_key(self) -> Hashable:
        return ("placed", self.inner.cache_key(), self.at.queries, self.at.keys)

    @property
    def depends_on_batch_or_head(self) -> bool:
        return self.inner.depends_on_batch_or_head


@dataclass(frozen=True)
class PlacedScoreModifier(ScoreModifier):
    """A score modifier of the whole sequence evaluated on one block of it, at its global token indices."""

    inner: ScoreModifier
    at: _Placement

    def score_mod(self, score, b, h, q_idx, kv_idx):
        return self.inner.score_mod(score, b, h, *self.at.place(q_idx, kv_idx))

    def cache_key(self) -> Hashable:
        return ("placed", self.inner.cache_key(), self.at.queries, self.at.keys)


def _positions(runs: tuple[tuple[int, int], ...], device: Any) -> torch.Tensor:
    return torch.cat([torch.arange(start, start + length, device=device) for start, length in runs])


def _runs(positions: torch.Tensor) -> tuple[tuple[int, int], ...]:
    """``positions`` (integers) as runs of consecutive tokens ``((start, length), ...)``."""
    values = positions.tolist()
    runs: list[list[int]] = []
    for value in values:
        if runs and runs[-1][0] + runs[-1][1] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    return tuple((start, length) for start, length in runs)


def _shard_positions(layout: TokenLayout, role: str, world: int, streams: bool = True) -> torch.Tensor | None:
    """The whole-sequence position of every position of the gathered sequence (the shards in rank order), or
    ``None`` when a joint sequence does not split evenly per stream. ``streams=False``: the model split its joint
    sequences as one stream (:func:`split_by_stream`), so the shards are in sequence order."""
    if streams and role == "joint" and layout.text is not None and layout.image is not None:
        order = joint_order(layout, world)
        if order is None:
            return None
        positions = torch.empty_like(order)
        positions[order] = torch.arange(len(order))
        return positions
    return torch.arange(layout.length)


#: query-by-key pairs of a pattern evaluated at once while looking for an empty key shard
_EMPTY_CHECK_PAIRS = 1 << 24


def _any_pair(pattern: Pattern, batch: int, heads: int, n_q: int, n_k: int, device: Any) -> bool:
    """Whether ``pattern`` keeps any pair of an ``n_q`` by ``n_k`` block (in query chunks, to bound memory)."""
    per_batch_head = pattern.depends_on_batch_or_head
    b = torch.arange(batch if per_batch_head else 1, device=device).view(-1, 1, 1, 1)
    h = torch.arange(heads if per_batch_head else 1, device=device).view(1, -1, 1, 1)
    kv = torch.arange(n_k, device=device).view(1, 1, 1, -1)
    step = max(1, _EMPTY_CHECK_PAIRS // max(1, n_k * b.numel() * h.numel()))
    for start in range(0, n_q, step):
        q = torch.arange(start, min(n_q, start + step), device=device).view(1, 1, -1, 1)
        if bool(pattern.mask_mod(b, h, q, kv).any()):
            return True
    return False


def _merge(
    prev: tuple[torch.Tensor, torch.Tensor] | None, out: torch.Tensor, lse: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge one step's ``(out [B, H, N, D], lse [B, H, N])`` into the running pair as diffusers' ring does
    (``TemplatedRingAttention``), in fp32; rows a step leaves empty (``lse = -inf``) keep the other side."""
    out, lse = out.float(), lse.float().unsqueeze(-1)
    if prev is None:
        return out, lse
    prev_out, prev_lse = prev
    merged = prev_out - torch.sigmoid(lse - prev_lse) * (prev_out - out)
    merged_lse = prev_lse - torch.nn.functional.logsigmoid(prev_lse - lse)
    empty, prev_empty = torch.isneginf(lse), torch.isneginf(prev_lse)
    merged = torch.where(empty, prev_out, torch.where(prev_empty, out, merged))
    merged_lse = torch.where(empty, prev_lse, torch.where(prev_empty, lse, merged_lse))
    return merged, merged_lse


def attend_key_shards(
    q: torch.Tensor,
    shards: Iterable[tuple[torch.Tensor, torch.Tensor, tuple[tuple[int, int], ...]]],
    queries: tuple[tuple[int, int], ...],
    pattern: Pattern | None,
    score_mod: ScoreModifier | None,
    scale: float | None,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of queries ``q`` (``[B, H, N, D]``, at whole-sequence positions ``queries``, as runs ``((start,
    length), ...)``) over the keys of ``shards`` (``(k, v, key positions)`` each), one shard at a time: each step
    runs visattn's core with ``pattern`` and ``score_mod`` (of the whole sequence) placed at the shards' positions,
    a shard the pattern masks entirely is skipped, and the steps merge by log-sum-exp (:func:`_merge`). Returns
    ``(out, lse)`` in fp32, ``[B, H, N, D]`` and ``[B, H, N, 1]``; a row no shard reaches has lse ``-inf``.
    """
    from .kernels.core import run_request
    from .kernels.request import AttentionRequest

    batch, heads, n_q, _ = q.shape
    merged = None
    for k, v, keys in shards:
        at = _Placement(queries, keys, q.device)
        placed_pattern = None if pattern is None else PlacedPattern(pattern, at)
        placed_mod = None if score_mod is None else PlacedScoreModifier(score_mod, at)
        if placed_pattern is not None and not _any_pair(placed_pattern, batch, heads, n_q, k.shape[2], q.device):
            continue  # every pair of this shard is masked: it adds nothing (lse = -inf)
        request = AttentionRequest(q, k, v, pattern=placed_pattern, score_mod=placed_mod, scale=scale, return_lse=True)
        out, lse = run_request(request, backend)
        merged = _merge(merged, out, lse)
    if merged is None:
        empty = q.new_full((batch, heads, n_q, 1), float("-inf"), dtype=torch.float32)
        return torch.zeros_like(q, dtype=torch.float32), empty
    return merged


def ring_attention(
    layer: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None,
    scale: float | None,
    config: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ring call of a layer visattn's effects act on, as diffusers' ring computes it, with the effects.

    ``query``, ``key``, ``value`` are this rank's shards in diffusers' layout ``[B, N, H, D]``. The effects see the
    whole sequence's context once (as in one process); the key/value shards are all-gathered over the ring, and
    each step runs visattn's core on this rank's queries and one key shard with the patterns and score modifiers
    placed at both shards' global positions (:func:`attend_key_shards`), skipping a shard the patterns mask
    entirely; steps merge by log-sum-exp. An identity blend (PAG) then mixes in each query's own value, which this
    rank's own key shard holds. Returns ``(out [B, N, H, D], lse [B, N, H])``.

    Raises:
        ValueError: an effect that needs more than patterns, score modifiers and identity blends (the message
            names it and the Ulysses config); a model mask.
    """
    import torch.distributed._functional_collectives as funcol

    from .effects.base import AttentionCall

    ring, rank, mesh = int(config.ring_degree), int(config._ring_local_rank), config._ring_mesh
    use = f"Use Ulysses: ContextParallelConfig(ulysses_degree={ring})"
    if attn_mask is not None:
        raise ValueError(
            f"layer {layer.layer_name!r} passes an attention mask to ring attention, which diffusers applies to every "
            f"key shard alike; visattn does not place it in the whole sequence. {use}"
        )
    layer._intercepted += 1  # the layer's effects reached this call (see AttentionLayerHook's warning)
    q, k, v = (x.permute(0, 2, 1, 3) for x in (query, key, value))
    batch, heads, n_q, dim = q.shape
    n_k = k.shape[2]
    whole_keys = k[:, :, :1].expand(batch, heads, n_k * ring, dim)  # shapes only: the context reads them
    ctx, partial = layer._context(q, whole_keys, n_q=n_q * ring)
    acting = [effect for effect in layer.effects if effect.acts_on(ctx)]
    query_positions = _shard_positions(ctx.queries, ctx.role, ring, split_by_stream(ctx))
    if acting and (partial is not None or query_positions is None):
        raise ValueError(
            f"visattn cannot place the ring shards of layer {layer.layer_name!r} in its whole sequence "
            f"({ctx.role} attention over {ctx.queries.length} tokens). {use}"
        )
    if query_positions is None:
        query_positions = torch.arange(n_q * ring)  # nothing acts: positions place no pattern
    key_positions = query_positions if ctx.keys == ctx.queries else torch.arange(n_k * ring)
    call = AttentionCall(ctx, q, k, v, scale=scale, backend=layer.backend)
    for effect in acting:
        effect.apply(call)
    changed = [
        what
        for what, moved in (
            ("queries", call.q is not q),
            ("keys", call.k is not k),
            ("values", call.v is not v),
            ("the mask", call.attn_mask is not None),
            ("the scale", call.scale != scale),
            ("the output", call.output is not None),
            ("probabilities", bool(call.editors or call.reads or call.observers)),
        )
        if moved
    ]
    own = slice(rank * n_q, (rank + 1) * n_q)
    blend = call.identity_blend
    if blend is not None and (n_q != n_k or ctx.keys != ctx.queries):
        changed.append("an identity blend over keys that are not its queries")
    if changed:
        names = ", ".join(sorted({type(effect).__name__ for effect in acting}))
        raise ValueError(
            f"{names} changed {', '.join(changed)} of a ring call (layer {layer.layer_name!r}): under ring attention "
            f"each rank holds its query shard and sees the keys one shard at a time, so only patterns, score "
            f"modifiers and identity blends can run. {use}"
        )
    pattern, score_mod = all_of(call.patterns), chain(call.score_mods)
    queries = _runs(query_positions[own])
    flat = torch.cat([key.flatten(), value.flatten()]).contiguous()
    # diffusers' template gathers with all_gather_tensor, which newer torch renames all_gather_single. With
    # gradients the gather is autograd-aware (its backward reduce-scatters each shard's key/value gradient back to
    # the rank that holds it): the rest of the ring is plain autograd, so gradients through effects are exact.
    needs_grad = torch.is_grad_enabled() and (key.requires_grad or value.requires_grad)
    gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor
    if needs_grad:
        gather = funcol.all_gather_tensor_autograd
    shards = gather(flat, gather_dim=0, group=mesh.get_group()).chunk(ring)

    def shards_in_ring_order() -> Iterator[tuple[torch.Tensor, torch.Tensor, tuple[tuple[int, int], ...]]]:
        for step in range(ring):
            source = (rank + step) % ring  # diffusers' order: the local shard first, then the next ranks'
            keys = _runs(key_positions[source * n_k : (source + 1) * n_k])
            if step == 0:
                yield k, v, keys
                continue
            kv = shards[source]
            shard_k = kv[: key.numel()].reshape_as(key).permute(0, 2, 1, 3)
            yield shard_k, kv[key.numel() :].reshape_as(value).permute(0, 2, 1, 3), keys

    out, lse = attend_key_shards(q, shards_in_ring_order(), queries, pattern, score_mod, scale, layer.backend)
    if blend is not None:
        blend = blend.to(device=out.device, dtype=out.dtype)
        if blend.shape[2] > 1:
            blend = blend[:, :, query_positions[own].to(blend.device)]
        # As the core blends (lerp: exactly v where the weight is 1); each query's own value is in the local shard.
        out = torch.lerp(out, v.to(out.dtype), blend)
    return out.to(query.dtype).permute(0, 2, 1, 3), lse.squeeze(-1).permute(0, 2, 1)
