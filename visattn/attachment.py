"""``visattn.attach``: swap :class:`VisAttnProcessor` into a pipeline's denoiser(s), and take it out again.

Attaching records every replaced processor object and restores exactly those objects on ``detach()`` (or when
the ``with`` block exits, also on an exception). Any error while attaching leaves the model as it was.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch

from .families import Family, family_of
from .layers import normalize_layers, select_layers
from .processors.effect import Effect
from .processors.processor import VisAttnProcessor
from .state import DenoiserHook, register_hook, remove_hook
from .steps import normalize_steps

_MARK = "_visattn_attachment"
DENOISER_ATTRIBUTES = ("unet", "transformer", "transformer_2")


def _denoisers(target: Any) -> tuple[list[tuple[str, torch.nn.Module]], Any]:
    """``[(attribute, model)]`` of a pipeline's denoisers, or of a denoiser given directly, and the pipeline."""
    if isinstance(target, torch.nn.Module):
        return [("model", target)], None
    found = [(name, getattr(target, name)) for name in DENOISER_ATTRIBUTES if getattr(target, name, None) is not None]
    if not found:
        raise TypeError(
            f"attach needs a diffusers pipeline with a unet or transformer, or a denoiser model; "
            f"got {type(target).__name__}, which has none of {DENOISER_ATTRIBUTES}"
        )
    return found, target


def attention_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Every attention module of a denoiser that carries a diffusers processor, by name, in model order."""
    model = getattr(model, "_orig_mod", model)
    return {
        name: module
        for name, module in model.named_modules()
        if hasattr(module, "processor") and hasattr(module, "set_processor")
    }


def layer_roles(model: torch.nn.Module, family: Family | None = None) -> dict[str, str]:
    """Attention layer names mapped to their static role (``self``/``cross``/``joint``/``text``)."""
    family = family or family_of(model)
    return {name: family.static_role(name, module) for name, module in attention_layers(model).items()}


class Attachment:
    """The handle :func:`attach` returns; also a context manager that detaches on exit.

    Attributes:
        effects: the effects, in the order they compose.
        layers: names of the attention layers whose processor was swapped, per denoiser attribute.
    """

    def __init__(self, target, effects: list[Effect], layers, steps, backend: str) -> None:
        self.target = target
        self.effects = effects
        self.backend = backend
        self._steps = steps
        self._originals: list[tuple[torch.nn.Module, Any]] = []
        self._models: list[torch.nn.Module] = []
        self._hooks: list[DenoiserHook] = []
        self.layers: dict[str, list[str]] = {}
        self.attached = False
        denoisers, pipeline = _denoisers(target)
        self._attach(denoisers, pipeline, layers)

    # --- attaching ---------------------------------------------------------------------------------------------
    def _attach(self, denoisers, pipeline, layers) -> None:
        plans = []
        for attribute, model in denoisers:
            base = getattr(model, "_orig_mod", model)
            existing = getattr(base, _MARK, None)
            if existing is not None and existing() is not None and existing().attached:
                raise RuntimeError(
                    f"{type(base).__name__} ({attribute}) already has visattn attached; "
                    "call detach() on the first attachment (or leave its with-block) before attaching again"
                )
            family = family_of(base)
            modules = attention_layers(base)
            roles = {name: family.static_role(name, module) for name, module in modules.items()}
            selected = select_layers(roles, layers)
            for name in selected:
                stock = type(modules[name].processor).__name__
                if stock not in family.processor_classes and not isinstance(modules[name].processor, VisAttnProcessor):
                    raise ValueError(
                        f"layer {name!r} of {type(base).__name__} uses {stock}, which visattn does not reproduce; "
                        f"supported processors for the {family.name} family: {', '.join(family.processor_classes)}"
                    )
            plans.append((attribute, base, family, modules, {name: roles[name] for name in selected}))
        needs_schedule = self._steps is not None or any(effect.steps is not None for effect in self.effects)
        if needs_schedule and pipeline is None:
            raise ValueError(
                "steps=... needs the pipeline (its scheduler defines the schedule); "
                "attach the pipeline, not its denoiser"
            )
        # Wan 2.2's two transformers share layer names, so effects bind once against the union.
        merged_roles = {name: role for *_, roles in plans for name, role in roles.items()}
        try:
            for effect in self.effects:
                effect.bind(merged_roles)
            for attribute, base, family, modules, roles in plans:
                self._swap(attribute, base, family, modules, list(roles), pipeline)
        except BaseException:
            self._restore()
            raise
        self.attached = True

    def _swap(self, attribute, model, family, modules, names, pipeline) -> None:
        hook = DenoiserHook(family, self.effects, pipeline)
        all_names = list(modules)
        self._models.append(model)
        setattr(model, _MARK, weakref.ref(self))
        for name in names:
            module = modules[name]
            original = module.processor
            processor = VisAttnProcessor(
                self.effects,
                backend=self.backend,
                layer_name=name,
                layer_index=all_names.index(name),
                adapter=family.adapter_for(name, module),
                state=hook.state,
                steps=self._steps,
            )
            processor._attention_backend = getattr(original, "_attention_backend", None)
            self._originals.append((module, original))
            module.set_processor(processor)
        register_hook(model, hook)
        self._hooks.append(hook)
        self.layers[attribute] = names

    # --- detaching ---------------------------------------------------------------------------------------------
    def _restore(self) -> None:
        for module, original in reversed(self._originals):
            module.set_processor(original)
        for model in self._models:
            remove_hook(model)
            if getattr(model, _MARK, None) is not None:
                delattr(model, _MARK)
        for effect in self.effects:
            effect.unbind()
        self._originals.clear()
        self._models.clear()
        self._hooks.clear()

    def detach(self) -> None:
        """Restore the exact original processor objects and remove visattn's model hook. Idempotent."""
        self._restore()
        self.attached = False

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, *exc_info) -> None:
        self.detach()

    @property
    def states(self):
        """The per-denoiser call states (grid, step, batch layout of the latest call)."""
        return [hook.state for hook in self._hooks]

    def __repr__(self) -> str:
        counts = {attribute: len(names) for attribute, names in self.layers.items()}
        return f"Attachment(effects={self.effects}, layers={counts}, attached={self.attached})"


def attach(
    pipe_or_model: Any,
    *effects: Effect,
    layers: str | Iterable[str] | None = None,
    steps=None,
    backend: str = "auto",
) -> Attachment:
    """Swap visattn's processor into a pipeline's ``unet`` / ``transformer`` (and ``transformer_2``).

    Args:
        pipe_or_model: a diffusers pipeline, or a denoiser model (``UNet2DConditionModel``, a transformer).
        *effects: effects, composed in the given order.
        layers: attention layers to swap, as diffusers' ``pag_applied_layers`` identifiers (regex searched in
            module names) plus ``"self"``, ``"cross"``, ``"joint"``; ``None`` swaps every attention layer.
        steps: fraction range of the denoising schedule in which effects act, e.g. ``(0.0, 0.3)``.
        backend: attention-core backend (``"auto"``, ``"sdpa"``, ``"reference"``, ``"flex"``).

    Returns:
        An :class:`Attachment`; ``detach()`` it or use it in a ``with`` block.

    Raises:
        TypeError: the target has no denoiser, or an effect is not a visattn effect.
        ValueError: an unsupported model family, bad ``layers``/``steps``, or an unsupported stock processor.
        RuntimeError: visattn is already attached to this model.
    """
    for effect in effects:
        if not isinstance(effect, Effect):
            raise TypeError(f"attach takes visattn effects after the pipeline; got {type(effect).__name__}")
    from .kernels import backend_names

    if backend not in backend_names():
        raise ValueError(f"backend={backend!r} is not one of {', '.join(backend_names())}")
    return Attachment(pipe_or_model, list(effects), normalize_layers(layers), normalize_steps(steps), backend)


def detach(handle: Attachment) -> None:
    """Same as ``handle.detach()``."""
    handle.detach()
