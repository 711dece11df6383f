"""Spatiotemporal Skip Guidance (STG), for any pipeline (made for video models).

Hyung et al. 2024, "Spatiotemporal Skip Guidance for Enhanced Video Diffusion Sampling". The perturbed branch is
the model with selected spatiotemporal layers skipped, an implicitly weak model obtained without training;
guidance adds ``scale * (eps_cond - eps_perturbed)``. Three perturbations:

* ``mode="block"`` (the authors' current code, STG-R; the default on video families): the perturbed rows skip
  whole transformer blocks. As junhahyung/STGuidance's pipelines do (``forward_with_stg`` in
  ``Mochi/pipeline_stg_mochi.py``, ``CogVideoX/...``, ``LTXVideo/...``; ``HunyuanVideo/...`` and ``Wan2.1/...``
  return the block's inputs for a separate perturbed pass), the block runs on every row and the perturbed rows'
  outputs are replaced by the block's inputs (``hidden_states`` and, for blocks that return it,
  ``encoder_hidden_states``). Blocks are found and read the way diffusers' own block skipping does
  (``hooks/layer_skip.py``, ``TransformerBlockSkipHook``): the block around each selected attention layer whose
  class diffusers' ``TransformerBlockRegistry`` knows, with its metadata for where the hidden states are in the
  arguments and outputs; one diffusers hook per block, removed on detach.
* ``mode="skip"`` (visattn's; the default on image families): the selected layers' attention contributes
  nothing: for the perturbed rows the attention output *before the layer's output projection* is exactly zero
  (values zeroed). diffusers' ``LayerSkipConfig(skip_attention=True, skip_ff=False)`` instead returns the
  attention module's input; a visattn attention effect acts between the projections, so it cannot.
* ``mode="identity"``: the selected layers' attention map is the identity (the authors' earlier STG-A; the
  same perturbation as PAG, so it equals :class:`~visattn.effects.PerturbedAttentionGuidance`).

Guidance formulas (``guidance``): ``"cond"`` (Mochi, CogVideoX, LTX-Video and HunyuanVideo pipelines):
``eps_cfg + s (eps_c - eps_p)``, the perturbed pass on the prompt; ``"cfg"`` (``Wan2.1/pipeline.py``,
``WanSTGPipeline.__call__``): ``eps_cfg + s (eps_cfg - eps_p)``, the perturbed pass on the negative prompt.
``rescale=0.7`` is the authors' ``do_rescaling=True`` (off by default there too).

Image families are allowed: on a single-frame grid ``"skip"`` is attention-level skip-layer guidance (as
Stability AI's SLG for SD3.5) and ``"identity"`` is PAG. ``layers`` is required, since which spatiotemporal
layers to skip is model-specific (the authors pick them per model; their default is block 2).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks._helpers import TransformerBlockMetadata, TransformerBlockRegistry

from ..context import BatchLayout, Branch, CallContext
from ..denoiser_batch import prediction_of, take_input_rows, with_prediction, without_extra_rows
from ..guidance.arithmetic import cond_for, stg_target, uncond_for
from ..steps import in_steps
from .base import AttentionCall
from .perturbation_guidance import PerturbationGuidance, identity_rows

MODES = ("block", "skip", "identity")
GUIDANCE = ("cond", "cfg")
#: prefix of the name of the block hooks in each block's diffusers ``HookRegistry``
BLOCK_HOOK = "visattn.stg_block"


def _block_metadata(module: torch.nn.Module) -> TransformerBlockMetadata | None:
    try:
        return TransformerBlockRegistry.get(type(module))
    except ValueError:
        return None


def _rows_of(tensor: torch.Tensor, rows: slice, batch_size: int) -> slice:
    """``rows`` of the denoiser batch in a block's tensor, which may fold more per row (frames of video UNets)."""
    if tensor.shape[0] == batch_size:
        return rows
    per, rest = divmod(tensor.shape[0], batch_size)
    if rest:
        raise RuntimeError(f"a block tensor of {tensor.shape[0]} rows does not fold a batch of {batch_size}")
    return slice(rows.start * per, rows.stop * per)


class _Run:
    """What one STG effect learns and keeps in one attachment (:meth:`SpatioTemporalSkipGuidance.new_run`)."""

    def __init__(self) -> None:
        #: the perturbation on this model: ``mode``, or the family's (``"block"`` on video, ``"skip"`` on images)
        self.mode = "skip"
        #: ``mode="block"``: the attention layers whose blocks are skipped (the attention layers stay bare)
        self.selected: frozenset[str] = frozenset()
        #: transformer blocks hooked on the attached pipeline
        self.hooked_blocks = 0
        #: the denoiser call states of the running calls (innermost last), read by the block hooks
        self.states: list[Any] = []
        #: separate-CFG pipelines: the conditional call's (timestep, eps_c, eps_p, g), per denoiser state
        self.pending: dict[int, tuple] = {}


class _BlockSkipHook(ModelHook):
    """STG-R on one transformer block: the perturbed rows leave the block as they entered it."""

    def __init__(self, effect: SpatioTemporalSkipGuidance, run: _Run, metadata: TransformerBlockMetadata) -> None:
        super().__init__()
        self.effect = effect
        self.run = run
        self.metadata = metadata

    def _restore(self, output: torch.Tensor, given: torch.Tensor, rows: slice, batch_size: int) -> torch.Tensor:
        if output.shape != given.shape:
            raise RuntimeError(f"STG block skip: block output {tuple(output.shape)} != input {tuple(given.shape)}")
        rows = _rows_of(output, rows, batch_size)
        output = output.clone()
        output[rows] = given[rows].to(output.dtype)
        return output

    def new_forward(self, module: torch.nn.Module, *args, **kwargs) -> Any:
        output = self.fn_ref.original_forward(*args, **kwargs)
        found = self.effect.block_rows(self.run)
        if found is None:
            return output
        rows, batch_size = found
        meta = self.metadata
        hidden = meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args, kwargs)
        if isinstance(output, torch.Tensor):
            return self._restore(output, hidden, rows, batch_size)
        items = list(output)
        index = meta.return_hidden_states_index or 0
        items[index] = self._restore(items[index], hidden, rows, batch_size)
        if meta.return_encoder_hidden_states_index is not None:
            name = meta.encoder_hidden_states_argument_name
            encoder = meta._get_parameter_from_args_kwargs(name, args, kwargs)
            position = meta.return_encoder_hidden_states_index
            items[position] = self._restore(items[position], encoder, rows, batch_size)
        return type(output)(items)


class SpatioTemporalSkipGuidance(PerturbationGuidance):
    """STG as a visattn effect: skipped blocks (STG-R), skipped or identity attention in a perturbed branch.

    Args:
        scale: guidance scale ``s >= 0`` (``stg_scale``).
        layers: where to perturb (diffusers' ``pag_applied_layers`` identifiers or ``"self"``/``"joint"``); self
            and joint attention layers; with ``mode="block"``, the transformer blocks holding them are skipped
            (``"blocks.2"``: Wan's block 2, the authors' default ``skip_guidance_block_idxs=[2]``).
        mode: ``"block"`` (STG-R: whole blocks skipped for the perturbed rows), ``"skip"`` (attention output zero
            before the output projection) or ``"identity"`` (output = V); ``None``: ``"block"`` on video
            families, ``"skip"`` on image families. ``"block"`` needs the pipeline attached (not a bare denoiser).
        steps: fraction range of the schedule in which guidance is applied.
        guidance: ``"cond"`` (``eps_cfg + s (eps_c - eps_p)``) or ``"cfg"`` (the authors' Wan 2.1 formula,
            ``eps_cfg + s (eps_cfg - eps_p)`` with ``eps_p`` on the negative prompt; needs CFG).
        rescale: ``None`` or a number in ``[0, 1]``: the authors' std rescaling
            ``eps *= r * std(eps_c) / std(eps) + 1 - r`` (their ``rescaling_scale = 0.7``).
    """

    branch_prefix = "stg"

    def __init__(
        self,
        scale: float,
        layers: str | Iterable[str],
        mode: str | None = None,
        steps=None,
        *,
        guidance: str = "cond",
        rescale: float | None = None,
    ) -> None:
        if layers is None:
            raise ValueError("layers=None: STG needs the layers to skip (e.g. 'blocks.10' or 'transformer_blocks.3')")
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        if guidance not in GUIDANCE:
            raise ValueError(f"guidance must be one of {GUIDANCE}; got {guidance!r}")
        if rescale is not None and (
            isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or not 0.0 <= rescale <= 1.0
        ):
            raise ValueError(f"rescale={rescale!r} must be None or a number in the range [0, 1]")
        super().__init__(scale, layers=layers, steps=steps)
        self.mode = mode
        self.guidance = guidance
        self.rescale = None if rescale is None else float(rescale)

    # --- attach time -------------------------------------------------------------------------------------------
    def new_run(self) -> _Run:
        return _Run()

    def mode_for(self, family: Any) -> str:
        """The perturbation on a model of ``family``: ``mode``, else ``"block"`` on video and ``"skip"`` on images."""
        return self.mode or ("block" if getattr(family, "video", False) else "skip")

    def bind(self, roles) -> frozenset[str]:
        selected = super().bind(roles)
        run = self.run_of(roles)
        run.mode = self.mode_for(roles.family)
        if run.mode != "block":
            return selected
        # Block mode perturbs no attention call: the blocks are hooked in attached(), the layers stay bare.
        run.selected = selected
        return frozenset()

    def attached(self, run: _Run, roles, pipeline: Any):
        if run.mode != "block" or pipeline is None:
            return None
        from ..attachment import DENOISER_ATTRIBUTES  # the attachment imports the processors: import late

        hooked: list[tuple[torch.nn.Module, torch.nn.Module]] = []
        name = f"{BLOCK_HOOK}.{self.branch}"
        for attribute in DENOISER_ATTRIBUTES:
            model = getattr(pipeline, attribute, None)
            if not isinstance(model, torch.nn.Module):
                continue
            base = getattr(model, "_orig_mod", model)
            modules = dict(base.named_modules())
            blocks: dict[int, tuple[torch.nn.Module, TransformerBlockMetadata]] = {}
            for layer in sorted(run.selected):
                if layer not in modules:
                    continue
                parts = layer.split(".")
                for end in range(len(parts) - 1, 0, -1):
                    block = modules[".".join(parts[:end])]
                    metadata = _block_metadata(block)
                    if metadata is not None:
                        blocks[id(block)] = (block, metadata)
                        break
                else:
                    raise ValueError(
                        f"STG mode='block': no transformer block around {layer!r} that diffusers' "
                        "TransformerBlockRegistry knows; use mode='skip' or 'identity' for this model"
                    )
            for block, metadata in blocks.values():
                HookRegistry.check_if_exists_or_initialize(block).register_hook(
                    _BlockSkipHook(self, run, metadata), name
                )
                hooked.append((base, block))
            _invalidate(base)
        run.hooked_blocks += len(hooked)

        def undo() -> None:
            for _base, block in hooked:
                registry = getattr(block, "_diffusers_hook", None)
                if registry is not None and registry.get_hook(name) is not None:
                    registry.remove_hook(name, recurse=False)
            for base in {id(base): base for base, _ in hooked}.values():
                _invalidate(base)
            run.hooked_blocks -= len(hooked)

        return undo

    def detached(self, run: _Run) -> None:
        run.pending.clear()

    # --- call time ---------------------------------------------------------------------------------------------
    def block_rows(self, run: _Run) -> tuple[slice, int] | None:
        """The perturbed rows and batch size of the running denoiser call of the attachment ``run`` belongs to
        (``None`` outside this effect's call)."""
        if not run.states or run.mode != "block":
            return None
        batch = run.states[-1].batch
        if batch is None or self.branch not in batch.names:
            return None
        return batch.rows(self.branch), batch.batch_size

    def wrap_denoiser(self, forward, args, kwargs, state):
        run = self.run_of(state)
        if run.mode == "block" and not run.hooked_blocks and self.scale_at(None) != 0:
            raise ValueError(
                "SpatioTemporalSkipGuidance(mode='block') skips transformer blocks, which it finds through the "
                "pipeline: attach the pipeline, not a bare denoiser (or use mode='skip' or 'identity')"
            )
        run.states.append(state)
        try:
            if self.guidance == "cond" and self.rescale is None:
                return super().wrap_denoiser(forward, args, kwargs, state)
            return self._guided(forward, args, kwargs, state)
        finally:
            run.states.pop()

    def _with_branch(self, forward, args, kwargs, state, source: slice):
        """Run the denoiser with a copy of ``source`` rows as this effect's branch: (output, main, perturbed)."""
        layout = state.batch
        batch_size = layout.batch_size
        index = torch.cat([torch.arange(batch_size), torch.arange(source.start, source.stop)])
        args, kwargs = take_input_rows(args, kwargs, index, batch_size, state.family.batch_inputs)
        state.batch = BatchLayout(layout.branches + (Branch(self.branch, batch_size, len(index)),))
        try:
            output = forward(*args, **kwargs)
        finally:
            state.batch = layout
        prediction = prediction_of(output)
        if isinstance(prediction, list):
            raise ValueError("STG guidance='cfg' or rescale: per-sample prediction lists are not supported")
        output = without_extra_rows(output, len(index), batch_size)
        return output, prediction[:batch_size], prediction[batch_size:]

    def _guided(self, forward, args, kwargs, state):
        """The authors' whole guided prediction (``guidance="cfg"`` or ``rescale``), folded into the pipeline's
        CFG: into the conditional rows of a batched call, or into the unconditional call that follows."""
        layout = state.batch
        timestep = state.family.scheduler_timestep(state.step.timestep)
        if layout is None or not in_steps(self.steps, state.step.fraction) or self.scale_at(timestep) == 0:
            return forward(*args, **kwargs)
        if state.guidance_terms is not None or state.family.one_sample_per_call:
            raise ValueError(
                "STG with guidance='cfg' or rescale computes the whole guided prediction: it cannot be composed "
                "with other perturbation guidances, nor run on one-sample-per-call denoisers"
            )
        if state.family.cfg_formula != "uncond_plus":
            raise ValueError(f"STG guidance='cfg'/rescale needs u + g (c - u) CFG; {state.family.name} differs")
        scale, names, wan = self.scale_at(timestep), layout.names, self.guidance == "cfg"
        state.guidance_terms = []  # inner perturbation effects must not fold themselves meanwhile
        try:
            if "uncond" in names and "cond" in names:
                uncond, cond = layout.rows("uncond"), layout.rows("cond")
                output, main, perturbed = self._with_branch(forward, args, kwargs, state, uncond if wan else cond)
                g = state.call.guidance_scale
                target = stg_target(main[uncond], main[cond], perturbed, g, scale, self.guidance, self.rescale)
                main = main.clone()
                main[cond] = cond_for(target, main[uncond], g).to(main.dtype)
                return with_prediction(output, main)
            if names == ("cond",):
                g = state.call.guidance_scale
                if g == 1.0:
                    if wan:
                        raise ValueError(
                            "STG guidance='cfg' perturbs the negative prompt, and this pipeline runs without CFG"
                        )
                    output, main, perturbed = self._with_branch(forward, args, kwargs, state, layout.rows("cond"))
                    target = stg_target(None, main, perturbed, 1.0, scale, self.guidance, self.rescale)
                    return with_prediction(output, target.to(main.dtype))
                # One call per branch, the conditional first: keep eps_c (and eps_p on the prompt) for the
                # unconditional call, which then carries the whole guided prediction.
                if wan:
                    output = forward(*args, **kwargs)
                    main, perturbed = prediction_of(output), None
                else:
                    output, main, perturbed = self._with_branch(forward, args, kwargs, state, layout.rows("cond"))
                self.run_of(state).pending[id(state)] = (state.step.timestep, main.detach(), perturbed, g)
                return output
            pending = self.run_of(state).pending
            if names == ("uncond",) and id(state) in pending:
                seen, cond, perturbed, g = pending.pop(id(state))
                if seen != state.step.timestep:
                    return forward(*args, **kwargs)
                if wan:
                    output, main, perturbed = self._with_branch(forward, args, kwargs, state, layout.rows("uncond"))
                else:
                    output = forward(*args, **kwargs)
                    main = prediction_of(output)
                target = stg_target(main, cond, perturbed, g, scale, self.guidance, self.rescale)
                return with_prediction(output, uncond_for(target, cond, g).to(main.dtype))
            return forward(*args, **kwargs)
        finally:
            inner, state.guidance_terms = state.guidance_terms, None
            if inner:
                raise ValueError(
                    "STG with guidance='cfg' or rescale cannot be composed with other perturbation guidances"
                )

    def perturb(self, call: AttentionCall, rows: slice) -> None:
        """Zero the perturbed rows' values (``"skip"``) or make their attention the identity (``"identity"``)."""
        run = call.ctx.runs.get(id(self))
        # Outside an attachment (a call context built by hand) the family is unknown: ``mode``, else "skip".
        mode = run.mode if run is not None else self.mode or "skip"
        if mode == "identity":
            identity_rows(call, rows, 1.0)
            return
        if mode == "block":
            return  # the blocks are skipped by their own hooks
        # With zero values every weighted sum is exactly zero, whatever pattern, modifier or blend other effects
        # add to the call, so the attention contributes nothing for these rows and the rest run unchanged.
        values = call.v.clone()
        values[rows] = 0
        call.v = values

    def identity_only_rows(self, ctx: CallContext) -> slice | None:
        """The perturbed rows in ``"identity"`` mode (their attention output is their values, as PAG's), nothing in
        ``"block"`` mode (the blocks are skipped by their own hooks), ``None`` in ``"skip"`` mode (it zeroes
        values)."""
        run = ctx.runs.get(id(self))
        mode = run.mode if run is not None else self.mode or "skip"
        if mode == "block":
            return slice(0, 0)
        if mode != "identity":
            return None
        rows = self.perturbed_rows(ctx)
        return rows if rows is not None else slice(0, 0)

    def __repr__(self) -> str:
        return (
            f"SpatioTemporalSkipGuidance(scale={self.scale}, layers={self.layers}, mode={self.mode!r}, "
            f"steps={self.steps}, guidance={self.guidance!r}, rescale={self.rescale})"
        )


def _invalidate(model: torch.nn.Module) -> None:
    """Newer diffusers caches which children carry hooks; hooks added or removed below a model must invalidate it."""
    registry = getattr(model, "_diffusers_hook", None)
    if registry is not None and hasattr(registry, "invalidate_child_registries_cache"):
        registry.invalidate_child_registries_cache()
