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

Ring attention (``ring_degree > 1``) splits keys across ranks too, which per-token effects cannot see whole: it
is refused while effects act (see :func:`check_supported`).
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .context import TokenLayout


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


def ulysses_heads(view: ParallelView | None, layer_heads: int | None, call_heads: int) -> tuple[int, int] | None:
    """``(head_offset, total_heads)`` of a call that Ulysses' all-to-all made (a slice of the layer's heads over the
    whole sequence), or ``None`` for any other call."""
    if view is None or view.ulysses <= 1 or not layer_heads or call_heads * view.ulysses != layer_heads:
        return None
    return view.ulysses_rank * call_heads, layer_heads


def is_query_shard(view: ParallelView | None, layer_heads: int | None, call_heads: int) -> bool:
    """Whether a call of a parallelized layer runs on this rank's query shard with every head (no all-to-all)."""
    return view is not None and bool(layer_heads) and call_heads == layer_heads


def check_supported(view: ParallelView | None, layer_name: str) -> None:
    """Refuse ring attention while effects act on a layer: each rank holds only part of the keys, so patterns,
    score modifiers and edits over whole rows would be silently wrong.

    Raises:
        ValueError: ``ring_degree > 1``.
    """
    if view is not None and view.ring > 1:
        raise ValueError(
            f"visattn effects act on layer {layer_name!r}, which runs ring attention (ring_degree={view.ring}): each "
            "rank holds only part of the keys, so effects that need whole rows cannot run. Use Ulysses instead: "
            f"ContextParallelConfig(ulysses_degree={view.world})"
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
    (nothing interleaves) or a stream does not split evenly.
    """
    spans = sorted((span for span in (layout.text, layout.image) if span is not None), key=lambda span: span.start)
    if len(spans) < 2 or sum(span.length for span in spans) != layout.length:
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
    model: torch.nn.Module, grid: tuple[int, int, int] | None, text_length: int | None, text_names: tuple[str, ...]
) -> None:
    """Refuse, before any attention runs, a context-parallel split that visattn's effects cannot follow.

    Raises:
        ValueError: ring attention (``ring_degree > 1``); a Ulysses degree that does not divide the layers' head
            count; a latent grid, or a text the model's plan splits (``text_names``), that does not split evenly.
    """
    config = getattr(getattr(model, "_parallel_config", None), "context_parallel_config", None)
    if config is None:
        return
    ring, ulysses = int(config.ring_degree), int(config.ulysses_degree)
    name = type(model).__name__
    if ring > 1:
        raise ValueError(
            f"{name} runs ring attention (ring_degree={ring}): each rank holds only part of the keys, so visattn's "
            "effects cannot see whole attention rows. Use Ulysses: "
            f"ContextParallelConfig(ulysses_degree={ring * ulysses})"
        )
    heads = getattr(getattr(model, "config", None), "num_attention_heads", None)
    if isinstance(heads, int) and heads % ulysses:
        raise ValueError(
            f"ulysses_degree={ulysses} does not divide the {heads} attention heads of {name}; use a degree that "
            f"divides {heads}"
        )
    split = (context_parallel_plan(model) or {}).get("") or {}
    text = text_length if any(name in split for name in text_names) else None
    for what, count in (("latent grid", math.prod(grid) if grid else None), ("text", text)):
        if count is not None and count % ulysses:
            raise ValueError(
                f"the {what} of this call has {count} tokens, which ulysses_degree={ulysses} cannot split evenly; "
                f"use a size whose token count is a multiple of {ulysses}"
            )


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
        if plan_source(model) == "visattn" and family.cp_gather_inputs:
            cp_config = getattr(config, "context_parallel_config", config)
            for submodule, argument, dim in family.cp_gather_inputs:
                _gather_input(_unwrapped(model).get_submodule(submodule), argument, dim, cp_config)
    return models


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
