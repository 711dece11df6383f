"""``VisAttnProcessor``: the diffusers attention processor that routes every call through the attention core.

It is a real diffusers processor (``model.set_attn_processor(VisAttnProcessor())`` works on every supported
family); :func:`visattn.attach` installs one per selected layer, wired to the denoiser's call state and the
effects. With no effect active it computes exactly what the stock processor computes, through the same
SDPA or diffusers-dispatcher call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..context import BatchLayout, Branch, CallContext, StepInfo
from ..families import Family, guess_adapter
from ..kernels import run_request
from ..kernels.request import AttentionRequest
from ..steps import in_steps, normalize_steps
from .effect import AttentionCall, Effect

if TYPE_CHECKING:
    from ..state import DenoiserState


class VisAttnProcessor:
    """A diffusers attention processor for every supported family, with visattn effects.

    Args:
        effects: effects applied in order to each call this processor handles (when used without
            :func:`visattn.attach`; an attachment passes its effects itself).
        backend: attention-core backend, ``"auto"`` or a name from :func:`visattn.kernels.available_backends`.
        layer_name, layer_index: the attention module's name and position in the denoiser.
        adapter: the family adapter; recognized from the module when ``None``.
        state: the denoiser's call state (grid, step, batch layout) kept by the attachment's model hook.
        steps: fraction range of the schedule in which effects run at all (``attach(..., steps=...)``).

    An effect that defines ``wrap_attention(call, hidden_states, layer_name, state)`` wraps each whole layer call
    (``call()`` computes it) before any projection, and may return an output without calling it (a cache).
    """

    # diffusers' ``set_attention_backend`` writes here; the dense path then runs through its dispatcher.
    _attention_backend = None
    _parallel_config = None

    def __init__(
        self,
        effects: Sequence[Effect] = (),
        *,
        backend: str = "auto",
        layer_name: str = "",
        layer_index: int = -1,
        adapter: Family | None = None,
        state: DenoiserState | None = None,
        steps=None,
    ) -> None:
        from ..kernels import backend_names

        if backend not in backend_names():
            raise ValueError(f"backend={backend!r} is not one of {', '.join(backend_names())}")
        for effect in effects:
            if not isinstance(effect, Effect):
                raise TypeError(f"effects must be visattn effects; got {type(effect).__name__}")
        self.effects = list(effects)
        self.backend = backend
        self.layer_name = layer_name
        self.layer_index = layer_index
        self.adapter = adapter
        self.state = state
        self.steps = normalize_steps(steps)

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary: Any = None,
        *,
        temb: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
        rotary_emb: Any = None,
        **unused: Any,
    ) -> Any:
        args = (attn, hidden_states, encoder_hidden_states, attention_mask, rotary, temb, image_rotary_emb, rotary_emb)
        if self.effects and (self.steps is None or self._in_steps()):
            # Effects that may answer for a whole layer call (CrossAttentionCache reuses a finished output) wrap
            # it before anything is projected, so that a reused call skips the q/k/v and output projections too.
            wrappers = [effect.wrap_attention for effect in self.effects if hasattr(effect, "wrap_attention")]
            if wrappers:
                call = functools.partial(self._attend, *args)
                for wrap in reversed(wrappers):
                    call = functools.partial(wrap, call, hidden_states, self.layer_name, self.state)
                return call()
        return self._attend(*args)

    def _attend(
        self, attn, hidden_states, encoder_hidden_states, attention_mask, rotary, temb, image_rotary_emb, rotary_emb
    ) -> Any:
        # The new-style attention modules pass rotary embeddings as a fifth positional argument.
        extras = {
            "temb": temb,
            "image_rotary_emb": image_rotary_emb if image_rotary_emb is not None else rotary,
            "rotary_emb": rotary_emb if rotary_emb is not None else rotary,
        }
        adapter = self.adapter or guess_adapter(attn, encoder_hidden_states, extras)
        state = self.state
        text_length = state.inputs.text_length if state is not None and state.inputs is not None else None
        projection = adapter.project(attn, hidden_states, encoder_hidden_states, attention_mask, extras, text_length)
        use_dispatcher = projection.uses_dispatcher or self._attention_backend is not None

        if not self.effects or (self.steps is not None and not self._in_steps()):
            request = AttentionRequest(
                projection.q,
                projection.k,
                projection.v,
                attn_mask=projection.attn_mask,
                use_dispatcher=use_dispatcher,
                dispatcher_backend=self._attention_backend,
            )
            out, _ = run_request(request, self.backend)
            return projection.finish(out)

        ctx = self.context(attn, adapter, projection)
        call = AttentionCall(
            ctx,
            projection.q,
            projection.k,
            projection.v,
            attn_mask=projection.attn_mask,
            backend=self.backend,
            use_dispatcher=use_dispatcher,
            dispatcher_backend=self._attention_backend,
        )
        for effect in self.effects:
            if effect.acts_on(ctx):
                effect.apply(call)
        return projection.finish(call.run())

    def _in_steps(self) -> bool:
        step = self.state.step if self.state is not None else None
        return in_steps(self.steps, step.fraction if step is not None else None)

    def context(self, attn: torch.nn.Module, adapter: Family, projection) -> CallContext:
        """The :class:`CallContext` of this call (derived once; only built when effects are present)."""
        state = self.state
        inputs = state.inputs if state is not None else None
        image = projection.queries.image
        grid = adapter.layer_grid(inputs.grid if inputs else None, image.length if image else 0)
        batch_size = projection.q.shape[0]
        batch = state.batch if state is not None and state.batch is not None else None
        if batch is None or batch.batch_size != batch_size:
            batch = BatchLayout((Branch("cond", 0, batch_size),))
        return CallContext(
            role=projection.role,
            layer_name=self.layer_name,
            layer_index=self.layer_index,
            family=adapter.name,
            heads=projection.q.shape[1],
            head_dim=projection.q.shape[3],
            queries=projection.queries,
            keys=projection.keys,
            batch=batch,
            step=state.step if state is not None else StepInfo(),
            grid=grid,
        )

    def __repr__(self) -> str:
        return f"VisAttnProcessor(layer={self.layer_name!r}, effects={self.effects}, backend={self.backend!r})"
