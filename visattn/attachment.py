"""``visattn.attach``: hook visattn into a pipeline's denoiser(s), and take it out again.

Attaching registers one diffusers hook on the denoiser (its call state) and one on each selected attention
module (:class:`visattn.interception.AttentionLayerHook`); the stock processors stay in place, untouched.
``detach()`` (or leaving the ``with`` block, also on an exception) removes exactly those hooks. Any error while
attaching leaves the model as it was.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch

from .effects.base import Effect, LayerRoles
from .families import Family, family_of
from .interception import AttentionLayerHook, can_intercept, register_layer_hook, remove_layer_hook
from .layers import ROLE_KEYWORDS, normalize_layers, select_layers
from .state import DenoiserHook, register_hook, remove_hook
from .steps import normalize_steps
from .validation import check_layer_roles

_MARK = "_visattn_attachment"
#: pipeline components that hold a denoiser (Stable Cascade's prior stage calls its UNet "prior"); a
#: ModularPipeline exposes its components as attributes too, and MiniMax-H3's ``ref2va`` workflow calls its
#: reference-conditioned transformer "transformer_ref"
DENOISER_ATTRIBUTES = ("unet", "transformer", "transformer_2", "transformer_ref", "prior")


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
    """Every attention module of a denoiser that carries a diffusers processor, by name, in model order.

    A module qualifies when its forward delegates to a callable ``processor`` (diffusers' convention; some, such
    as Mochi's, have no ``set_processor``: visattn never replaces processors, so it does not need one).
    """
    model = getattr(model, "_orig_mod", model)
    return {name: module for name, module in model.named_modules() if callable(getattr(module, "processor", None))}


def _interceptable(
    model: torch.nn.Module, modules: dict, layers: tuple[str, ...] | None, family: Family | None = None
) -> dict:
    """The modules visattn can take attention over; ValueError when ``layers`` names one it cannot."""
    if not modules:
        raise ValueError(
            f"{type(model).__name__} has no attention modules with a diffusers processor; visattn has nothing to hook"
        )
    blocked = {
        name: module
        for name, module in modules.items()
        if not can_intercept(module) or (family is not None and family.is_opaque(name))
    }
    if blocked and layers is not None:
        from .layers import matches

        for layer_id in layers:
            if layer_id in ROLE_KEYWORDS:
                continue
            hits = [name for name in modules if matches(layer_id, name)]
            if hits and all(name in blocked for name in hits):
                name = hits[0]
                raise ValueError(
                    f"layers={layer_id!r} selects {name!r} of {type(model).__name__}, whose processor "
                    f"{type(blocked[name].processor).__name__} computes attention without "
                    "scaled_dot_product_attention; visattn cannot take its attention over"
                )
    usable = {name: module for name, module in modules.items() if name not in blocked}
    if not usable:
        kinds = sorted({type(module.processor).__name__ for module in modules.values()})
        raise ValueError(
            f"no attention module of {type(model).__name__} can be hooked: its processors ({', '.join(kinds)}) "
            "compute attention without scaled_dot_product_attention"
        )
    return usable


_FACT_NAMES = {"grid": "the latent grid", "text": "text tokens", "words": "words mapped to text positions"}


def _check_needs(effects: list[Effect], model: torch.nn.Module, family: Family) -> None:
    """ValueError, before anything is hooked, when an effect needs a fact the model's family cannot provide."""
    for effect in effects:
        for fact in effect.needs():
            reason = family.missing(fact)
            if reason is not None:
                raise ValueError(
                    f"{type(effect).__name__} needs {_FACT_NAMES[fact]}, but {type(model).__name__} "
                    f"(family {family.name!r}) {reason}"
                )
            order = family.reordered_grid
            if fact == "grid" and order is not None and order.asked_by_config(model):
                raise ValueError(order.refusal(type(effect).__name__, model, family.name, by_config=True))


def _check_prompt_as_given(effects: list[Effect], pipeline: Any, family: Family) -> None:
    """ValueError, before anything is hooked (and before a generation runs its prompt rewriter, a 9B model for
    FLUX.3), when an effect needs words and the pipeline's blocks rewrite the prompt before encoding it."""
    needing = next((effect for effect in effects if "words" in effect.needs()), None)
    if pipeline is None or needing is None:
        return
    from .words import rewritten_prompt_reason

    reason = rewritten_prompt_reason(pipeline, family.prompt)
    if reason is not None:
        raise ValueError(f"{type(needing).__name__} needs {_FACT_NAMES['words']}, but {reason}")


#: the roles a layer's calls may have, by its static role: a module whose class does not say it attends over text
#: is declared "self" and can turn out cross or joint at run time (Lumina 2, LTX-2); the other roles are certain
_POSSIBLE_ROLES = {
    "self": ("self", "cross", "joint"),
    "cross": ("cross",),
    "joint": ("joint",),
    "text": ("text",),
    "stream": ("stream",),
}


def _check_selection(effect: Effect, layers, selected: frozenset[str], roles: dict[str, str]) -> None:
    """ValueError naming ``layers`` when an effect's layers are all of roles it never acts on (PAG on
    ``layers="attn2"``, cross-attention only): attached, it would silently do nothing."""
    if not selected or not effect.roles:
        return  # nothing selected (all layers dense, say), or an effect on the denoiser call alone (roles = ())
    acting = [name for name in selected if set(_POSSIBLE_ROLES.get(roles[name], effect.roles)) & set(effect.roles)]
    if not acting:
        found = sorted({roles[name] for name in selected})
        raise ValueError(
            f"{type(effect).__name__}(layers={layers}) selects only {' and '.join(found)} attention layers "
            f"({', '.join(sorted(selected))}); {type(effect).__name__} acts on {' and '.join(effect.roles)} attention "
            "and would do nothing there"
        )


def _check_modules(effects: list[Effect], selections: list[frozenset[str]], plans: list) -> None:
    """Let each effect check its parameters against the modules it will act on, before anything is hooked.

    An effect opts in with ``check_modules(modules)``: ``{name: attention module}`` of its selected layers whose
    static role is one it acts on (a module's static role can say "self" for a call that turns out to be cross
    attention, never the reverse, so no layer it may act on is left out). PAG checks its ``heads`` there, against
    each layer's head count (the module's ``heads`` attribute).
    """
    by_name = {name: module for *_, modules, _ in plans for name, module in modules.items()}
    roles = {name: role for *_, plan_roles in plans for name, role in plan_roles.items()}
    for effect, selected in zip(effects, selections, strict=True):
        check = getattr(effect, "check_modules", None)
        if check is not None:
            acting = {name for name in selected if roles.get(name) in effect.roles}
            check({name: module for name, module in by_name.items() if name in acting})


def layer_roles(model: torch.nn.Module, family: Family | None = None) -> dict[str, str]:
    """Attention layer names mapped to their static role (``self``/``cross``/``joint``/``text``/``stream``)."""
    family = family or family_of(model)
    return {name: family.static_role(name, module) for name, module in attention_layers(model).items()}


class Attachment:
    """The handle :func:`attach` returns; also a context manager that detaches on exit.

    Attributes:
        effects: the effects, in the order they compose.
        layers: names of the hooked attention layers, per denoiser attribute.
    """

    def __init__(self, target, effects: list[Effect], layers, steps, backend: str) -> None:
        self.target = target
        self.effects = effects
        self.backend = backend
        self._steps = steps
        self._layer_modules: list[torch.nn.Module] = []
        self._models: list[torch.nn.Module] = []
        self._hooks: list[DenoiserHook] = []
        self._pipeline_undo: list = []
        #: per effect (in order), the attention layers it acts on in this attachment
        self._selections: list[frozenset[str]] = []
        #: what each effect keeps while attached (Effect.new_run), by id(effect): each attachment its own
        self.runs: dict[int, Any] = {}
        #: per effect, by id(effect): its layer identifiers resolved for this model (FAMILY_DEFAULT resolved)
        self._layer_ids: dict[int, tuple[str, ...] | None] = {}
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
            all_modules = attention_layers(base)
            family = family_of(base)
            modules = _interceptable(base, all_modules, layers, family)
            roles = {name: family.static_role(name, module) for name, module in modules.items()}
            selected = select_layers(roles, layers)
            plans.append((attribute, base, family, all_modules, {name: roles[name] for name in selected}))
        for _, base, family, *_ in plans:
            _check_needs(self.effects, base, family)
            _check_prompt_as_given(self.effects, pipeline, family)
        needs_schedule = self._steps is not None or any(effect.steps is not None for effect in self.effects)
        if needs_schedule and pipeline is None:
            raise ValueError(
                "steps=... needs the pipeline (its scheduler defines the schedule); "
                "attach the pipeline, not its denoiser"
            )
        # Wan 2.2's two transformers share layer names, so effects bind once against the union.
        merged_roles = {name: role for *_, roles in plans for name, role in roles.items()}
        # What effects see of the model; what they learn from it goes to this attachment's run states, never on
        # the effect, so one effect attached to several pipelines acts on each one's own layers.
        model = LayerRoles(merged_roles, plans[0][2], self.runs)
        try:
            for effect in self.effects:
                self.runs[id(effect)] = effect.new_run()
            for effect in self.effects:
                effect.use_family_defaults(model.family, model)
                layer_ids = effect.layers_for(model)
                check_layer_roles(layer_ids, effect.roles, type(effect).__name__)
                self._layer_ids[id(effect)] = layer_ids
                self._selections.append(effect.bind(model))
                # Against what ``layers`` selects, before the effect's own choices (RadialAttention's dense layers).
                _check_selection(effect, layer_ids, frozenset(select_layers(merged_roles, layer_ids)), merged_roles)
            _check_modules(self.effects, self._selections, plans)
            for attribute, base, family, modules, roles in plans:
                self._swap(attribute, base, family, modules, roles, pipeline)
            for effect in self.effects:
                undo = effect.attached(self.runs[id(effect)], model, pipeline)
                if undo is not None:
                    self._pipeline_undo.append(undo)
        except BaseException:
            self._restore()
            raise
        self.attached = True

    def _swap(self, attribute, model, family, modules, roles, pipeline) -> None:
        hook = DenoiserHook(family, self.effects, pipeline, steps=self._steps, runs=self.runs)
        all_names = list(modules)
        hooked = 0
        self._models.append(model)
        setattr(model, _MARK, weakref.ref(self))
        register_hook(model, hook)
        self._hooks.append(hook)
        for name, role in roles.items():
            # An effect acts on the layers it selects whose calls may have one of its roles (a selection of every
            # layer holds video/audio stream layers that no shipped effect acts on).
            possible = set(_POSSIBLE_ROLES.get(role, ()))
            acting = [
                effect
                for effect, layers in zip(self.effects, self._selections, strict=True)
                if name in layers and (not effect.roles or possible & set(effect.roles))
            ]
            if self.effects and not acting:
                continue  # no effect can act here: the stock forward runs without even a hook call
            module = modules[name]
            layer = AttentionLayerHook(
                acting,
                hook.state,
                layer_name=name,
                layer_index=all_names.index(name),
                static_role=role,
                steps=self._steps,
                backend=self.backend,
            )
            register_layer_hook(module, layer)
            self._layer_modules.append(module)
            hooked += 1
        # Where most attention modules carry a hook, routing SDPA once per denoiser call costs less than once per
        # layer call (the modules without one pay a pass-through per SDPA call instead).
        hook.holds_route = 2 * hooked >= len(modules)
        _invalidate_hook_cache(model)
        self.layers[attribute] = list(roles)

    # --- detaching ---------------------------------------------------------------------------------------------
    def _restore(self) -> None:
        while self._pipeline_undo:
            self._pipeline_undo.pop()()
        for module in reversed(self._layer_modules):
            remove_layer_hook(module)
        for model in self._models:
            remove_hook(model)
            _invalidate_hook_cache(model)
            if getattr(model, _MARK, None) is not None:
                delattr(model, _MARK)
        for effect in self.effects:
            if id(effect) in self.runs:
                effect.detached(self.runs[id(effect)])
        self._layer_modules.clear()
        self._models.clear()
        self._hooks.clear()

    def detach(self) -> None:
        """Remove every hook visattn registered (the processors were never replaced). Idempotent."""
        self._restore()
        self.attached = False

    def __enter__(self) -> Attachment:
        return self

    def __exit__(self, *exc_info) -> None:
        self.detach()

    def run_of(self, effect: Effect) -> Any:
        """What ``effect`` learned and kept in this attachment (:meth:`Effect.new_run`): its collected maps, caches,
        per-generation masks. Raises KeyError for an effect that is not part of this attachment."""
        try:
            return self.runs[id(effect)]
        except KeyError:
            raise KeyError(f"{effect!r} is not one of this attachment's effects") from None

    def layers_of(self, effect: Effect) -> tuple[str, ...] | None:
        """The layer identifiers ``effect`` acts on in this attachment: its ``layers``, with ``FAMILY_DEFAULT``
        resolved against this model's family (``None``: every layer of its roles). Raises KeyError for an effect
        that is not part of this attachment."""
        try:
            return self._layer_ids[id(effect)]
        except KeyError:
            raise KeyError(f"{effect!r} is not one of this attachment's effects") from None

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
    """Hook visattn into a pipeline's ``unet`` / ``transformer`` (and ``transformer_2``).

    Args:
        pipe_or_model: a diffusers pipeline, or a denoiser model (``UNet2DConditionModel``, a transformer).
        *effects: effects, composed in the given order.
        layers: attention layers to hook, as diffusers' ``pag_applied_layers`` identifiers (regex searched in
            module names) plus ``"self"``, ``"cross"``, ``"joint"``; ``None`` swaps every attention layer.
        steps: fraction range of the denoising schedule in which effects act, e.g. ``(0.0, 0.3)``.
        backend: attention-core backend (``"auto"``, ``"sdpa"``, ``"reference"``, ``"flex"``, ...). A backend
            other than ``"auto"`` (or ``VISATTN_BACKEND``) computes every call an effect changes, none answered by
            the stock SDPA call: ``backend="reference"`` makes a whole edited generation the materialized oracle.

    Returns:
        An :class:`Attachment`; ``detach()`` it or use it in a ``with`` block.

    Raises:
        TypeError: the target has no denoiser, or an effect is not a visattn effect.
        ValueError: bad ``layers``/``steps``; the same effect passed twice; a model without attention modules;
            ``layers`` naming a module whose processor computes attention without ``scaled_dot_product_attention``;
            an effect that needs a fact (the latent grid, text tokens, words) the model's family does not provide.
        RuntimeError: visattn is already attached to this model.
    """
    for effect in effects:
        if not isinstance(effect, Effect):
            raise TypeError(f"attach takes visattn effects after the pipeline; got {type(effect).__name__}")
    for index, effect in enumerate(effects):
        if any(other is effect for other in effects[:index]):
            raise ValueError(
                f"effects: {effect!r} is passed twice; an effect composes once per attachment (build a second one "
                "to apply it twice)"
            )
    from .kernels import backend_names

    if backend not in backend_names():
        raise ValueError(f"backend={backend!r} is not one of {', '.join(backend_names())}")
    return Attachment(pipe_or_model, list(effects), normalize_layers(layers), normalize_steps(steps), backend)


def detach(handle: Attachment) -> None:
    """Same as ``handle.detach()``."""
    handle.detach()


def _invalidate_hook_cache(model: torch.nn.Module) -> None:
    registry = getattr(model, "_diffusers_hook", None)
    if registry is not None and hasattr(registry, "invalidate_child_registries_cache"):
        # Newer diffusers caches which children carry hooks; adding or removing one must invalidate it.
        registry.invalidate_child_registries_cache()
