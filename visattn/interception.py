"""How visattn takes over attention inside diffusers' own processors.

diffusers' stock processor stays in place and computes everything it always does (projections, norms, rotary
embeddings, output path); visattn replaces only the attention computation itself. One diffusers hook per
selected attention module (:class:`AttentionLayerHook`, registered in the module's ``HookRegistry``) runs the
module's forward inside a :class:`torch.overrides.TorchFunctionMode` that answers its calls of
``torch.nn.functional.scaled_dot_product_attention``: old-style processors call it directly, new-style ones
through diffusers' dispatcher, whose native backend calls it. diffusers' own model-agnostic layer skipping
(``hooks/layer_skip.py``) intercepts attention the same way. Each intercepted call becomes an
:class:`~visattn.processors.effect.AttentionCall` with its :class:`~visattn.context.CallContext` (role, latent
grid, text span, batch layout, step) derived from the call's shapes and the denoiser state; effects contribute
to it and the attention core computes it. A call no effect acts on runs the original function untouched, and a
layer no effect can act on is not intercepted at all, so the identity is exact by construction.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook

from .context import BatchLayout, Branch, CallContext, Span, StepInfo, TokenLayout
from .kernels import backend_names
from .processors.effect import AttentionCall, Effect
from .steps import in_steps

if TYPE_CHECKING:
    from .state import DenoiserState

HOOK_NAME = "visattn.attention"

#: stock processors that compute attention without ``scaled_dot_product_attention`` (linear attention, explicit
#: ``baddbmm`` softmax, external kernels): visattn cannot take their attention over.
UNINTERCEPTABLE_PROCESSORS = frozenset(
    {
        "AttnProcessor",
        "SlicedAttnProcessor",
        "XFormersAttnProcessor",
        "AttnProcessorNPU",
        "XLAFlashAttnProcessor2_0",
        "SanaLinearAttnProcessor2_0",
        "PAGCFGSanaLinearAttnProcessor2_0",
        "PAGIdentitySanaLinearAttnProcessor2_0",
        "SanaMultiscaleAttnProcessor2_0",
        "LinearAttnProcessor",
    }
)


def can_intercept(module: torch.nn.Module) -> bool:
    """Whether a module's processor computes its attention through ``scaled_dot_product_attention``."""
    return type(getattr(module, "processor", None)).__name__ not in UNINTERCEPTABLE_PROCESSORS


def _sdpa_arguments(args: tuple, kwargs: dict) -> dict[str, Any]:
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
    values = {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False}
    values.update(zip(names, args))
    values.update(kwargs)
    return values


class _Interceptor(torch.overrides.TorchFunctionMode):
    """Answers ``scaled_dot_product_attention`` calls with the layer's effects; passes everything else through."""

    def __init__(self, layer: AttentionLayerHook) -> None:
        super().__init__()
        self.layer = layer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return self.layer.attend(func, args, kwargs)
        return func(*args, **kwargs)


def _unchanged(call: AttentionCall, q, k, v, sdpa: dict) -> bool:
    """Whether the effects left a call exactly as the stock processor made it (they may still observe it)."""
    return (
        not call.patterns
        and not call.score_mods
        and call.identity_blend is None
        and call.q is q
        and call.k is k
        and call.v is v
        and call.attn_mask is sdpa["attn_mask"]
        and call.scale == sdpa["scale"]
    )


def _rows_of(layout: BatchLayout | None, batch_size: int) -> BatchLayout | None:
    """The denoiser's batch layout for a call of ``batch_size`` rows.

    Video UNets fold frames (or, in temporal layers, pixels) into the batch, sample-major as ``(b f)``: a call
    with ``m`` times the denoiser's rows holds ``m`` consecutive rows per sample, so each branch widens by ``m``.
    """
    if layout is None or layout.batch_size == 0:
        return None
    if layout.batch_size == batch_size:
        return layout
    if batch_size % layout.batch_size:
        return None
    m = batch_size // layout.batch_size
    return BatchLayout(tuple(Branch(b.name, b.start * m, b.stop * m) for b in layout.branches))


class AttentionLayerHook(ModelHook):
    """The visattn hook of one attention module: runs its forward with attention routed through the effects.

    Args:
        effects: the attachment's effects, in composition order (only those bound to this layer are used).
        state: the denoiser's call state (grid, step, batch layout), kept by the denoiser hook.
        layer_name, layer_index: the module's name and position among the denoiser's attention modules.
        static_role: the module's role known before any call (``"text"`` marks text-only refiners).
        steps: fraction range of the schedule in which effects run at all (``attach(..., steps=...)``).
        backend: attention-core backend for calls that effects change.
    """

    def __init__(
        self,
        effects: Sequence[Effect],
        state: DenoiserState,
        *,
        layer_name: str,
        layer_index: int,
        static_role: str,
        steps=None,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if backend not in backend_names():
            raise ValueError(f"backend={backend!r} is not one of {', '.join(backend_names())}")
        self.effects = [effect for effect in effects if effect.may_act_on_layer(layer_name)]
        self.wrappers = [effect for effect in self.effects if hasattr(effect, "wrap_attention")]
        self.state = state
        self.layer_name = layer_name
        self.layer_index = layer_index
        self.static_role = static_role
        self.steps = steps
        self.backend = backend
        self._intercepted = 0
        self._warned = False

    # --- the module's forward ------------------------------------------------------------------------------
    def new_forward(self, module: torch.nn.Module, *args, **kwargs) -> Any:
        original = self.fn_ref.original_forward
        if not self.effects or not self._in_steps():
            return original(*args, **kwargs)
        call = functools.partial(self._intercepted_forward, module, original, args, kwargs)
        if self.wrappers:
            # Effects that may answer for a whole layer call (CrossAttentionCache reuses a finished output) wrap it
            # before anything is projected, so that a reused call skips the stock processor's projections too.
            hidden_states = args[0] if args else kwargs.get("hidden_states")
            for effect in reversed(self.wrappers):
                call = functools.partial(effect.wrap_attention, call, hidden_states, self.layer_name, self.state)
        return call()

    def _intercepted_forward(self, module, original, args, kwargs) -> Any:
        step = self.state.step
        fraction = step.fraction if step is not None else None
        if not any(in_steps(effect.steps, fraction) for effect in self.effects):
            # No effect acts at this step (a P2P self-attention window that has closed): skip the interception.
            return original(*args, **kwargs)
        processor = getattr(module, "processor", None)
        restore = _force_native_dispatch(processor)
        before = self._intercepted
        try:
            with _Interceptor(self):
                out = original(*args, **kwargs)
        finally:
            if restore is not _UNCHANGED:
                processor._attention_backend = restore
        if self._intercepted == before and not self._warned:
            self._warned = True
            warnings.warn(
                f"visattn: attention layer {self.layer_name!r} ({type(processor).__name__}) computed its attention "
                "without scaled_dot_product_attention, so visattn's effects did nothing there",
                stacklevel=2,
            )
        return out

    def _in_steps(self) -> bool:
        if self.steps is None:
            return True
        step = self.state.step
        return in_steps(self.steps, step.fraction if step is not None else None)

    # --- one attention computation -------------------------------------------------------------------------
    def attend(self, func, args: tuple, kwargs: dict) -> torch.Tensor:
        """Answer one ``scaled_dot_product_attention`` call of this layer."""
        self._intercepted += 1
        sdpa = _sdpa_arguments(args, kwargs)
        q, k, v = sdpa["query"], sdpa["key"], sdpa["value"]
        if q.ndim != 4 or sdpa["is_causal"] or sdpa["dropout_p"]:
            return func(*args, **kwargs)
        ctx = self.context(q, k)
        acting = [effect for effect in self.effects if effect.acts_on(ctx)]
        if not acting:
            return func(*args, **kwargs)
        if k.shape[1] != q.shape[1]:
            # Grouped-query attention: give every query head its own key/value head, as SDPA's enable_gqa does.
            repeat = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        call = AttentionCall(ctx, q, k, v, attn_mask=sdpa["attn_mask"], scale=sdpa["scale"], backend=self.backend)
        for effect in acting:
            effect.apply(call)
        if call.output is None and _unchanged(call, q, k, v, sdpa):
            # Only observers acted: the stock computation answers, so observing never changes a bit.
            call.output = func(*args, **kwargs)
        return call.run().to(q.dtype)

    def context(self, q: torch.Tensor, k: torch.Tensor) -> CallContext:
        """The :class:`CallContext` of one call, from its shapes, the layer and the denoiser state."""
        state = self.state
        batch_size = q.shape[0]
        batch = _rows_of(state.batch, batch_size)
        role, queries, keys, grid = self._layout(q.shape[2], k.shape[2])
        return CallContext(
            role=role,
            layer_name=self.layer_name,
            layer_index=self.layer_index,
            family=state.family.name,
            heads=q.shape[1],
            head_dim=q.shape[3],
            queries=queries,
            keys=keys,
            batch=batch or BatchLayout((Branch("cond", 0, batch_size),)),
            step=state.step if state.step is not None else StepInfo(),
            grid=grid,
        )

    def _layout(self, n_q: int, n_k: int):
        """Role, query and key layouts, and latent grid of a call with ``n_q`` queries and ``n_k`` keys."""
        family, inputs = self.state.family, self.state.inputs
        grids = family.level_grids(inputs.grid if inputs is not None else None)
        text_length = inputs.text_length if inputs is not None else None

        def grid_of(n: int):
            return next((g for g in grids if math.prod(g) == n), None)

        if self.static_role == "text":
            text = TokenLayout(n_q, text=Span(0, n_q))
            return "text", text, (text if n_k == n_q else TokenLayout(n_k, text=Span(0, n_k))), None
        grid = grid_of(n_q)
        if n_q != n_k:
            queries = TokenLayout(n_q, image=Span(0, n_q)) if grid else TokenLayout(n_q)
            is_text = text_length is None or n_k == text_length
            keys = TokenLayout(n_k, text=Span(0, n_k)) if is_text else TokenLayout(n_k)
            return "cross", queries, keys, grid
        if grid is not None:
            layout = TokenLayout(n_q, image=Span(0, n_q))
            return "self", layout, layout, grid
        if grids and family.text_position is not None:
            image_tokens = math.prod(grids[0])
            n_text = n_q - image_tokens
            if 0 < n_text and (text_length is None or n_text <= text_length):
                if family.text_position == "first":
                    layout = TokenLayout(n_q, image=Span(n_text, n_q), text=Span(0, n_text))
                else:
                    layout = TokenLayout(n_q, image=Span(0, image_tokens), text=Span(image_tokens, n_q))
                return "joint", layout, layout, grids[0]
        # Tokens visattn cannot place (a grid it cannot read, extra tokens): effects see no grid and no text.
        layout = TokenLayout(n_q)
        return ("joint" if self.static_role == "joint" else "self"), layout, layout, None


_UNCHANGED = object()


def _force_native_dispatch(processor: Any) -> Any:
    """Route a dispatcher processor through the native backend (which calls SDPA) for this call.

    Returns the backend to restore, or ``_UNCHANGED``. Effects need the call to reach
    ``scaled_dot_product_attention``; a processor set to another diffusers backend (flash, sage, ...) would
    call its kernel directly and escape interception.
    """
    if not hasattr(processor, "_attention_backend"):
        return _UNCHANGED
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    backend = processor._attention_backend
    chosen = backend if backend is not None else _AttentionBackendRegistry._active_backend
    if getattr(chosen, "value", chosen) == "native":
        return _UNCHANGED
    processor._attention_backend = AttentionBackendName.NATIVE
    return backend


def register_layer_hook(module: torch.nn.Module, hook: AttentionLayerHook) -> None:
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(hook, HOOK_NAME)


def remove_layer_hook(module: torch.nn.Module) -> None:
    registry = getattr(module, "_diffusers_hook", None)
    if registry is not None and registry.get_hook(HOOK_NAME) is not None:
        registry.remove_hook(HOOK_NAME, recurse=False)


def layer_hook(module: torch.nn.Module) -> AttentionLayerHook | None:
    """The visattn hook of an attention module, if one is registered."""
    registry = getattr(module, "_diffusers_hook", None)
    return registry.get_hook(HOOK_NAME) if registry is not None else None
