"""Head-level perturbed-attention guidance as a diffusers guider, for modular pipelines.

diffusers' modular pipelines run one denoiser pass per prediction a guider asks for (``pred_cond``,
``pred_uncond``, ``pred_cond_skip``), calling ``guider.prepare_models(denoiser)`` before and
``guider.cleanup_models(denoiser)`` after each, then ``guider(batches)`` to combine them.
:class:`HeadPerturbationGuidance` follows diffusers' own ``PerturbedAttentionGuidance`` guider (same constructor
conventions and arithmetic) but perturbs through visattn processors, so it can perturb single heads and softly:

* PAG (Ahn et al., 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention Guidance"): the perturbed
  pass replaces the self-attention map of the selected layers by the identity, so every token outputs its value.
* SoftPAG / HeadHunter ("Fine-Grained Perturbation Guidance via Attention Head Selection"): perturb chosen heads
  only, and interpolate toward the identity, ``A' = (1 - a) A + a I``, i.e. ``(1 - a) softmax(QK^T) V + a V``.

The perturbation is installed only for the perturbed pass and the model's processors are restored exactly (the
same objects) afterwards.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.guiders.guider_utils import BaseGuidance, GuiderOutput, rescale_noise_cfg

from ..attachment import Attachment, attach, attention_layers
from ..effects.base import AttentionCall, Effect
from ..families import family_of
from ..interception import AttentionLayerHook, layer_hook, register_layer_hook, remove_layer_hook
from ..layers import matches, normalize_layers, select_layers
from ..parallel import module_heads
from ..state import HOOK_NAME
from .head_sets import HeadSet, layer_pattern

if TYPE_CHECKING:
    from diffusers.modular_pipelines.modular_pipeline import BlockState

#: block stacks searched, in this order, for integer ``perturbed_guidance_layers`` with ``fqn="auto"``. diffusers
#: derives its order from a set (so it varies between runs for models with two stacks, such as FLUX); a fixed
#: order keeps the selection reproducible.
BLOCK_STACKS = (
    "transformer_blocks",
    "blocks",
    "layers",
    "single_transformer_blocks",
    "visual_transformer_blocks",
    "temporal_transformer_blocks",
)
#: the roles perturbation guidance acts on (diffusers skips cross-attention: its queries and keys differ in length)
PERTURBED_ROLES = ("self", "joint")


class IdentityPerturbation(Effect):
    """Blend chosen heads of every batch row toward the identity attention map (PAG at ``strength=1``).

    Unlike :class:`visattn.effects.PerturbedAttentionGuidance`, which adds a perturbed branch to the batch,
    this effect perturbs whole calls: a guider installs it only for the pass that computes the perturbed
    prediction. Output per selected head: ``(1 - strength) * softmax(QK^T) V + strength * V`` (SoftPAG).

    Args:
        heads: exact attention-layer names mapped to the head indices to perturb, or ``None`` for every head.
        strength: in ``[0, 1]``; 0 changes nothing (bit-exact), 1 is PAG's identity map.
    """

    roles = PERTURBED_ROLES
    frozen_parameters = True

    def __init__(self, heads: Mapping[str, Sequence[int] | None], strength: float = 1.0) -> None:
        if not isinstance(heads, Mapping) or not heads:
            raise ValueError(f"heads must be a non-empty dict {{layer name: [head indices] or None}}; got {heads!r}")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1]; got {strength}")
        checked: dict[str, tuple[int, ...] | None] = {}
        for layer, indices in heads.items():
            if indices is not None:
                indices = tuple(indices)
                if not indices or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices):
                    raise ValueError(f"heads[{layer!r}] must be non-negative head indices or None; got {indices!r}")
            checked[layer] = indices
        super().__init__(layers=[layer_pattern(layer) for layer in checked])
        self.heads = MappingProxyType(checked)  # read-only: the effect's parameters are fixed once it is built
        self.strength = float(strength)

    def apply(self, call: AttentionCall) -> None:
        ctx = call.ctx
        if self.strength == 0.0 or ctx.layer_name not in self.heads:
            return  # nothing to blend: leave the call untouched so the output stays bit-identical
        selected = self.heads[ctx.layer_name]
        # One weight per head, broadcast over every row: the whole pass is the perturbed prediction.
        blend = torch.zeros(1, ctx.heads, 1, 1, device=call.q.device, dtype=torch.float32)
        if selected is None:
            blend.fill_(self.strength)
        else:
            too_large = [i for i in selected if i >= ctx.layer_heads]
            if too_large:
                raise ValueError(
                    f"heads: index {too_large[0]} is out of range for layer {ctx.layer_name!r}, "
                    f"which has {ctx.layer_heads} heads"
                )
            # Global head indices: under context parallelism (Ulysses) this call holds a slice of the heads.
            weights = torch.zeros(ctx.layer_heads)
            weights[list(selected)] = self.strength
            blend[0, :, 0, 0] = ctx.local_heads(weights).to(blend)
        if call.identity_blend is not None:
            # Another effect already blends toward the identity: keep the stronger weight per head.
            blend = torch.maximum(call.identity_blend.to(blend), blend)
        call.identity_blend = blend

    def __repr__(self) -> str:
        return f"IdentityPerturbation(heads={dict(self.heads)}, strength={self.strength})"


def _normalize_layer_selection(layers: Any) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Split ``perturbed_guidance_layers`` into regex/role identifiers and block indices."""
    if layers is None:
        return (), ()
    if isinstance(layers, (str, int)):
        layers = [layers]
    if not isinstance(layers, Iterable):
        raise ValueError(
            f"perturbed_guidance_layers must be pag_applied_layers identifiers (str), block indices (int) or a "
            f"list of them; got {layers!r}"
        )
    layers = list(layers)
    indices = []
    for layer in layers:
        if isinstance(layer, bool) or (not isinstance(layer, (str, int))):
            raise ValueError(f"perturbed_guidance_layers entries must be str or int; got {layer!r}")
        if isinstance(layer, int) and layer < 0:
            raise ValueError(f"perturbed_guidance_layers block indices must be >= 0; got {layer}")
        if isinstance(layer, int):
            indices.append(layer)
    names = [layer for layer in layers if isinstance(layer, str)]
    identifiers = normalize_layers(names, "perturbed_guidance_layers") if names else ()
    if not identifiers and not indices:
        raise ValueError("perturbed_guidance_layers is empty; name at least one layer")
    return tuple(identifiers), tuple(indices)


def _normalize_heads(heads: Any) -> dict[str, list[int]] | None:
    if heads is None:
        return None
    if isinstance(heads, HeadSet):
        heads = heads.to_heads()
    if not isinstance(heads, Mapping) or not heads:
        raise ValueError(
            f"heads must be a non-empty dict {{layer identifier: [head indices]}} or a HeadSet; got {heads!r}"
        )
    checked = {}
    for layer, indices in heads.items():
        if not isinstance(layer, str):
            raise ValueError(f"heads keys must be layer identifiers (str); got {layer!r}")
        indices = [indices] if isinstance(indices, int) else list(indices)
        if not indices or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices):
            raise ValueError(f"heads[{layer!r}] must be non-negative head indices; got {indices!r}")
        normalize_layers(layer, "heads")  # a key is an identifier: it must compile as a regex
        checked[layer] = indices
    return checked


class HeadPerturbationGuidance(BaseGuidance):
    """Perturbed-attention guidance on layers or single heads (PAG / SoftPAG) as a diffusers guider.

    A drop-in for diffusers' ``PerturbedAttentionGuidance`` guider in modular pipelines
    (``pipe.update_components(guider=HeadPerturbationGuidance(...))``). With CFG and perturbation both active it
    asks for three predictions and returns
    ``pred = pred_uncond + guidance_scale * (pred_cond - pred_uncond) + perturbed_guidance_scale * (pred_cond -
    pred_cond_skip)``, i.e. ``pred_cfg + s * (pred_cond - pred_perturbed)``.

    Perturbation follows PAG (Ahn et al., 2024) at layer level, and "Fine-Grained Perturbation Guidance via
    Attention Head Selection" (SoftPAG) with ``heads`` and ``strength < 1``.

    Args:
        guidance_scale (float, default 7.5): classifier-free guidance scale; 1 (0 with the original formulation)
            disables CFG.
        perturbed_guidance_scale (float, default 2.8): scale ``s`` of the perturbation term; 0 disables it.
        perturbed_guidance_start (float, default 0.01), perturbed_guidance_stop (float, default 0.2): the fraction
            of the schedule in which the perturbed pass runs (as diffusers: steps ``int(start * n) < i <
            int(stop * n)``).
        perturbed_guidance_layers (str | int | list, optional): layers to perturb: diffusers' ``pag_applied_layers``
            identifiers (regex searched in attention-layer names, e.g. ``"mid"``, ``"transformer_blocks.3"``) and
            role keywords, and/or block indices as in diffusers' guider (attention inside block ``i`` of the stack
            named by ``perturbed_guidance_fqn``). Only self and joint attention is perturbed. Defaults to the layers
            named in ``heads``.
        perturbed_guidance_fqn (str, default "auto"): the block stack integer indices refer to; ``"auto"`` takes
            the first of :data:`BLOCK_STACKS` the denoiser has.
        heads (dict | HeadSet, optional): ``{layer identifier: [head indices]}`` (or a
            :class:`~visattn.guidance.HeadSet`) to perturb single heads; ``None`` perturbs every head of the
            selected layers.
        strength (float, default 1.0): in ``[0, 1]``; 1 is PAG's identity map, lower values SoftPAG's
            interpolation toward it.
        guidance_rescale (float, default 0.0): rescale factor against over-exposure ("Common Diffusion Noise
            Schedules and Sample Steps are Flawed", Sec. 3.4).
        use_original_formulation (bool, default False): CFG as in its paper (``cond + g * (cond - uncond)``).
        start (float, default 0.0), stop (float, default 1.0): the fraction of the schedule in which CFG runs.
        enabled (bool, default True): whether any guidance runs.

    Differences from diffusers 0.42.1's guider: with CFG disabled, diffusers computes ``pred_cond_skip`` from the
    negative inputs and without perturbation (its ``is_conditional`` counts passes); here the perturbed pass uses
    the conditional inputs and is perturbed. UNets work with identifiers (diffusers' guider needs a block stack).
    """

    _input_predictions = ["pred_cond", "pred_uncond", "pred_cond_skip"]

    @register_to_config
    def __init__(
        self,
        guidance_scale: float = 7.5,
        perturbed_guidance_scale: float = 2.8,
        perturbed_guidance_start: float = 0.01,
        perturbed_guidance_stop: float = 0.2,
        perturbed_guidance_layers: str | int | list[str | int] | None = None,
        perturbed_guidance_fqn: str = "auto",
        heads: Mapping[str, Iterable[int]] | HeadSet | None = None,
        strength: float = 1.0,
        guidance_rescale: float = 0.0,
        use_original_formulation: bool = False,
        start: float = 0.0,
        stop: float = 1.0,
        enabled: bool = True,
    ) -> None:
        super().__init__(start, stop, enabled)
        for name, value in (("guidance_scale", guidance_scale), ("perturbed_guidance_scale", perturbed_guidance_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number; got {value!r}")
        if not 0.0 <= perturbed_guidance_start <= perturbed_guidance_stop <= 1.0:
            raise ValueError(
                "perturbed_guidance_start and perturbed_guidance_stop must satisfy 0 <= start <= stop <= 1; got "
                f"{perturbed_guidance_start} and {perturbed_guidance_stop}"
            )
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1]; got {strength}")
        if not 0.0 <= guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale must be in [0, 1]; got {guidance_rescale}")
        if not isinstance(perturbed_guidance_fqn, str) or not perturbed_guidance_fqn:
            raise ValueError(f"perturbed_guidance_fqn must be a module name or 'auto'; got {perturbed_guidance_fqn!r}")
        checked_heads = _normalize_heads(heads)
        if perturbed_guidance_layers is None and checked_heads is None:
            raise ValueError("HeadPerturbationGuidance needs perturbed_guidance_layers or heads (or both)")
        if perturbed_guidance_layers is None:
            perturbed_guidance_layers = list(checked_heads)
        self.layer_identifiers, self.block_indices = _normalize_layer_selection(perturbed_guidance_layers)
        self.guidance_scale = float(guidance_scale)
        self.perturbed_guidance_scale = float(perturbed_guidance_scale)
        self.perturbed_guidance_start = float(perturbed_guidance_start)
        self.perturbed_guidance_stop = float(perturbed_guidance_stop)
        self.perturbed_guidance_fqn = perturbed_guidance_fqn
        self.perturbed_heads = checked_heads
        self.strength = float(strength)
        self.guidance_rescale = float(guidance_rescale)
        self.use_original_formulation = bool(use_original_formulation)
        # The config must stay JSON (save_pretrained / new()): a HeadSet is stored as its dict.
        self.register_to_config(heads=checked_heads, perturbed_guidance_layers=perturbed_guidance_layers)
        # Keyed weakly by the denoiser: a guider outliving a model must not keep it alive or reuse its id.
        self._plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._attachment: Attachment | None = None
        self._extended: list[tuple[AttentionLayerHook, Any]] = []
        self._added: list[torch.nn.Module] = []

    # --- which layers and heads, resolved once per denoiser ---------------------------------------------------------
    def perturbed_heads_of(self, denoiser: torch.nn.Module) -> dict[str, tuple[int, ...] | None]:
        """Exact attention-layer names this guider perturbs in ``denoiser``, with their heads (``None`` = all).

        Raises:
            ValueError: an identifier or block index selects no self/joint attention layer, a ``heads`` key matches
                no selected layer, or a head index is >= the layer's head count.
        """
        base = getattr(denoiser, "_orig_mod", denoiser)
        plan = self._plans.get(base)
        if plan is None:
            plan = self._resolve(base)
            self._plans[base] = plan
        return plan

    def _resolve(self, model: torch.nn.Module) -> dict[str, tuple[int, ...] | None]:
        family = family_of(model)
        modules = attention_layers(model)
        roles = {name: family.static_role(name, module) for name, module in modules.items()}
        perturbable = {name: role for name, role in roles.items() if role in PERTURBED_ROLES}
        if not perturbable:
            raise ValueError(f"{type(model).__name__} has no self or joint attention layers to perturb")
        chosen: set[str] = set()
        if self.layer_identifiers:
            chosen.update(select_layers(perturbable, self.layer_identifiers, "perturbed_guidance_layers"))
        if self.block_indices:
            chosen.update(self._layers_in_blocks(model, perturbable))
        names = [name for name in perturbable if name in chosen]  # model order
        if self.perturbed_heads is None:
            return {name: None for name in names}
        plan: dict[str, tuple[int, ...] | None] = {}
        for key, indices in self.perturbed_heads.items():
            hits = [name for name in names if matches(key, name)]
            if not hits:
                raise ValueError(
                    f"heads key {key!r} matches none of the perturbed layers; perturbed layers: {', '.join(names)}"
                )
            for name in hits:
                count = module_heads(modules[name])
                too_large = [i for i in indices if count is not None and i >= count]
                if too_large:
                    raise ValueError(
                        f"heads[{key!r}]: head {too_large[0]} is out of range for layer {name!r}, which has "
                        f"{count} heads"
                    )
                plan[name] = tuple(dict.fromkeys((*(plan.get(name) or ()), *indices)))
        return {name: plan[name] for name in names if name in plan}

    def _layers_in_blocks(self, model: torch.nn.Module, perturbable: Mapping[str, str]) -> list[str]:
        fqn = self.perturbed_guidance_fqn
        if fqn == "auto":
            fqn = next((s for s in BLOCK_STACKS if isinstance(getattr(model, s, None), torch.nn.ModuleList)), None)
            if fqn is None:
                raise ValueError(
                    f"integer perturbed_guidance_layers need a block stack, and {type(model).__name__} has none of "
                    f"{', '.join(BLOCK_STACKS)}; pass pag_applied_layers identifiers (e.g. 'mid') instead"
                )
        try:
            blocks = model.get_submodule(fqn)
        except AttributeError:
            raise ValueError(f"perturbed_guidance_fqn={fqn!r} is not a submodule of {type(model).__name__}") from None
        if not isinstance(blocks, torch.nn.ModuleList):
            raise ValueError(f"perturbed_guidance_fqn={fqn!r} is a {type(blocks).__name__}, not a block list")
        names = []
        for index in self.block_indices:
            if index >= len(blocks):
                raise ValueError(
                    f"perturbed_guidance_layers index {index} is out of range: {fqn} has {len(blocks)} blocks"
                )
            inside = [name for name in perturbable if name.startswith(f"{fqn}.{index}.")]
            if not inside:
                raise ValueError(f"block {fqn}.{index} has no self or joint attention layer to perturb")
            names.extend(inside)
        return names

    # --- installing the perturbation for the perturbed pass only -----------------------------------------------------
    def _batch_plan(self) -> list[tuple[int, str]]:
        """``(tuple index into the (cond, uncond) inputs, prediction name)`` of each pass, in order."""
        cfg, perturbed = self._is_cfg_enabled(), self._is_slg_enabled()
        plan = [(0, "pred_cond")]
        if cfg:
            plan.append((1, "pred_uncond"))
        if perturbed:
            plan.append((0, "pred_cond_skip"))  # the perturbed twin of the conditional pass
        return plan

    def _current_prediction(self) -> str | None:
        plan = self._batch_plan()
        index = self._count_prepared - 1
        return plan[index][1] if 0 <= index < len(plan) else None

    def prepare_models(self, denoiser: torch.nn.Module) -> None:
        # A pass that raised never reached cleanup_models: never let its perturbation leak into this pass.
        self._restore()
        self._count_prepared += 1
        if self._current_prediction() == "pred_cond_skip":
            self._install(denoiser)

    def cleanup_models(self, denoiser: torch.nn.Module) -> None:
        self._restore()

    def _install(self, denoiser: torch.nn.Module) -> None:
        base = getattr(denoiser, "_orig_mod", denoiser)
        plan = self.perturbed_heads_of(base)
        effect = IdentityPerturbation(plan, self.strength)
        modules = attention_layers(base)
        hooks = {name: layer_hook(module) for name, module in modules.items()}
        existing = [hook for hook in hooks.values() if hook is not None]
        state = existing[0].state if existing else _denoiser_state(base)
        if state is None:
            self._attachment = attach(denoiser, effect, layers=[layer_pattern(name) for name in plan])
            return
        # visattn is already attached (other effects): add this effect to those layers' hooks instead of a second
        # attachment, and give the other layers a hook that shares the attachment's call state.
        family = family_of(base)
        names = list(modules)
        try:
            for name in plan:
                hook = hooks[name]
                if hook is not None:
                    hook.add_effect(effect)
                    self._extended.append((hook, effect))
                    continue
                hook = AttentionLayerHook(
                    [effect],
                    state,
                    layer_name=name,
                    layer_index=names.index(name),
                    static_role=family.static_role(name, modules[name]),
                )
                register_layer_hook(modules[name], hook)
                self._added.append(modules[name])
        except BaseException:
            self._restore()
            raise

    def _restore(self) -> None:
        if self._attachment is not None:
            self._attachment.detach()
            self._attachment = None
        for hook, effect in reversed(self._extended):
            hook.remove_effect(effect)
        for module in reversed(self._added):
            remove_layer_hook(module)
        self._extended.clear()
        self._added.clear()

    # --- inputs and the guidance arithmetic ---------------------------------------------------------------------
    def prepare_inputs(self, data: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[BlockState]:
        return [self._prepare_batch(data, index, name) for index, name in self._batch_plan()]

    def prepare_inputs_from_block_state(
        self, data: BlockState, input_fields: dict[str, str | tuple[str, str]]
    ) -> list[BlockState]:
        return [self._prepare_batch_from_block_state(input_fields, data, i, name) for i, name in self._batch_plan()]

    def forward(
        self,
        pred_cond: torch.Tensor,
        pred_uncond: torch.Tensor | None = None,
        pred_cond_skip: torch.Tensor | None = None,
    ) -> GuiderOutput:
        cfg, perturbed = self._is_cfg_enabled(), self._is_slg_enabled()
        # The same arithmetic as diffusers' guider, so a configuration gives the same prediction with either.
        if cfg:
            pred = pred_cond if self.use_original_formulation else pred_uncond
            pred = pred + self.guidance_scale * (pred_cond - pred_uncond)
            if perturbed:
                pred = pred + self.perturbed_guidance_scale * (pred_cond - pred_cond_skip)
        elif perturbed:
            # Without CFG diffusers treats the perturbed prediction like an unconditional one.
            pred = pred_cond if self.use_original_formulation else pred_cond_skip
            pred = pred + self.perturbed_guidance_scale * (pred_cond - pred_cond_skip)
        else:
            pred = pred_cond
        if self.guidance_rescale > 0.0:
            pred = rescale_noise_cfg(pred, pred_cond, self.guidance_rescale)
        return GuiderOutput(pred=pred, pred_cond=pred_cond, pred_uncond=pred_uncond)

    @property
    def is_conditional(self) -> bool:
        """Whether the pass being prepared uses the conditional inputs (False before the first pass, as diffusers)."""
        prediction = self._current_prediction()
        return prediction is not None and prediction != "pred_uncond"

    @property
    def num_conditions(self) -> int:
        return len(self._batch_plan())

    def _is_cfg_enabled(self) -> bool:
        if not self._enabled:
            return False
        in_range = True
        if self._num_inference_steps is not None:
            in_range = (
                int(self._start * self._num_inference_steps) <= self._step < int(self._stop * self._num_inference_steps)
            )
        neutral = 0.0 if self.use_original_formulation else 1.0
        return in_range and not math.isclose(self.guidance_scale, neutral)

    def _is_slg_enabled(self) -> bool:
        if not self._enabled:
            return False
        in_range = True
        if self._num_inference_steps is not None:
            # diffusers' guider excludes the start step itself; kept so configurations transfer unchanged.
            start = int(self.perturbed_guidance_start * self._num_inference_steps)
            stop = int(self.perturbed_guidance_stop * self._num_inference_steps)
            in_range = start < self._step < stop
        if self.strength == 0.0:
            return False  # the perturbed pass would equal the conditional one: skip it
        return in_range and not math.isclose(self.perturbed_guidance_scale, 0.0)


def _denoiser_state(model: torch.nn.Module):
    """The call state of visattn's denoiser hook on ``model`` (an attachment whose effects hook no layer), or
    ``None`` when visattn is not attached."""
    registry = getattr(model, "_diffusers_hook", None)
    hook = registry.get_hook(HOOK_NAME) if registry is not None else None
    return getattr(hook, "state", None)
