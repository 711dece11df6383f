"""The pipelines that ship inside visattn, by name, and the one ``visattn generate`` uses when no ``--model`` is given.

* ``visattn/toy-image`` (the default): the trained toy-world :class:`~diffusers.StableDiffusionPipeline` (64 x 64
  px shapes on plain backgrounds: "a small red circle at the top left on a blue background"), loaded from the
  weights in ``visattn/toy/weights/image`` by :func:`visattn.toy.load_toy_pipeline`.
* ``visattn/toy-video``: the trained toy-world :class:`~diffusers.WanPipeline` (9 frames of 32 x 32 px: "a red
  circle moving right on a black background").
* ``visattn/tiny-sd``: a tiny Stable Diffusion pipeline with random weights built in code by
  :func:`visattn.tiny.tiny_pipeline`; its images are structured noise. It is for tests and for checking that
  an effect runs at all, in a fraction of the toy model's time.

Nothing is downloaded for any of them. Everything that needs the default goes through
:func:`load_default_pipeline` or :func:`load_embedded_pipeline`.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

#: The name recorded as ``model`` in image metadata when the embedded default is used.
DEFAULT_MODEL = "visattn/toy-image"
TOY_VIDEO_MODEL = "visattn/toy-video"
RANDOM_TINY_MODEL = "visattn/tiny-sd"
#: Every pipeline shipped inside visattn, by the name ``--model`` accepts.
EMBEDDED_MODELS: tuple[str, ...] = (DEFAULT_MODEL, TOY_VIDEO_MODEL, RANDOM_TINY_MODEL)

#: What an embedded model was trained to make, for callers that would otherwise fall back to the pipeline class's
#: defaults (``WanPipeline``'s are 480 x 832 px and 81 frames: far outside the toy video model's training).
#: ``num_frames`` counts the frames of the clip (see :func:`visattn.frames.num_frames_argument`).
EMBEDDED_CALL_DEFAULTS: dict[str, dict[str, int]] = {
    TOY_VIDEO_MODEL: {"height": 32, "width": 32, "num_frames": 9},
}

#: Perturbation guidance that shows on an embedded model, per method (``"pag"``, ``"softpag"``, ``"seg"``), as effect
#: specs (:mod:`visattn.effect_specs`), chosen by the guidance sweep on the toy image model (``visattn eval --studies
#: guidance_sweep``, :mod:`visattn.eval.guidance_sweep_study`; its report in lab/results, the table in the README):
#: per method, the largest image change whose prompt accuracy stayed within 0.05 of the unguided images' in that run
#: and in a larger run over 8 other captions. The
#: effects' own defaults stay the authors' (PAG and SEG on the mid block of a Stable Diffusion UNet, the family
#: default of the toy model's class); on the toy UNet, whose mid block works on 4 x 4 latent pixels, they move
#: pixels by about 1e-4. The demo and the toy examples read these settings for the toy model.
EMBEDDED_GUIDANCE: dict[str, dict[str, dict[str, Any]]] = {
    DEFAULT_MODEL: {
        "pag": {"type": "PerturbedAttentionGuidance", "scale": 3.0, "layers": "self"},
        "softpag": {"type": "PerturbedAttentionGuidance", "scale": 3.0, "layers": "self", "strength": 0.5},
        "seg": {"type": "SmoothedEnergyGuidance", "scale": 3.0, "layers": "up"},
    },
}

#: Prompt-to-Prompt re-weighting that visibly changes the weighted word's region on an embedded model (the
#: re-weighting table of the guidance sweep): ``weight`` strengthens a word, ``weaken`` weakens it, both acting
#: during the authors' ``cross_steps``, 0.8. The toy model's cross-attention is spread over all 32 text positions
#: and its causal text encoder writes every word into the tokens after it, so the word's own column carries a
#: few percent of the attention: weights near 1 (``red=2``) barely show.
EMBEDDED_REWEIGHT: dict[str, dict[str, float]] = {
    DEFAULT_MODEL: {"weight": 5.0, "weaken": 0.0},
}

#: Weight seed of the random tiny pipeline: fixed so that a given generation seed always gives the same image.
_WEIGHT_SEED = 0


def load_embedded_pipeline(
    name: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> DiffusionPipeline:
    """The pipeline shipped inside visattn under ``name`` (one of :data:`EMBEDDED_MODELS`), on ``device`` in
    ``dtype``."""
    if name == RANDOM_TINY_MODEL:
        # Imported here: visattn.tiny builds tokenizers and configs that nothing else in the CLI needs.
        from visattn.tiny import tiny_pipeline

        return tiny_pipeline("unet", seed=_WEIGHT_SEED, dtype=dtype).to(device)
    if name in (DEFAULT_MODEL, TOY_VIDEO_MODEL):
        from visattn.toy.models import load_toy_pipeline

        return load_toy_pipeline("image" if name == DEFAULT_MODEL else "video", device=device, dtype=dtype)
    raise ValueError(f"model={name!r} is not an embedded pipeline; those are {', '.join(EMBEDDED_MODELS)}")


def embedded_call_defaults(model: str | None) -> dict[str, int]:
    """``height`` / ``width`` / ``num_frames`` the embedded ``model`` was trained at (a copy; empty for other models
    and for the image models, whose pipelines already default to their training size)."""
    return dict(EMBEDDED_CALL_DEFAULTS.get(model or DEFAULT_MODEL, {}))


def load_default_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> DiffusionPipeline:
    """The embedded default pipeline (:data:`DEFAULT_MODEL`, the trained toy image model) on ``device`` in
    ``dtype``; nothing is downloaded."""
    return load_embedded_pipeline(DEFAULT_MODEL, device, dtype)


def guidance_defaults(model: str | None) -> dict[str, dict[str, Any]]:
    """The guidance settings measured to show on the embedded ``model`` (``None``: the default model), as effect
    specs by method (``"pag"``, ``"softpag"``, ``"seg"``; see :data:`EMBEDDED_GUIDANCE`): a copy, empty for
    other models, where the effects' own defaults (the authors') apply.

    >>> from visattn.effect_specs import build_effect
    >>> pag = build_effect(guidance_defaults(None)["pag"])  # PAG where it shows on the toy model
    """
    return copy.deepcopy(EMBEDDED_GUIDANCE.get(model or DEFAULT_MODEL, {}))


def reweight_defaults(model: str | None) -> dict[str, float]:
    """Re-weighting scales measured to change the weighted word's region on the embedded ``model`` (``None``: the
    default model): ``{"weight": strengthen, "weaken": weaken}`` (see :data:`EMBEDDED_REWEIGHT`); empty for
    other models."""
    return dict(EMBEDDED_REWEIGHT.get(model or DEFAULT_MODEL, {}))


def with_guidance_defaults(spec: Any, model: str | None) -> Any:
    """``spec`` (an effect spec, :mod:`visattn.effect_specs`) with the embedded ``model``'s measured guidance
    settings (:func:`guidance_defaults`) filled in where it leaves them out: a PAG / SoftPAG / SEG spec without
    ``layers`` gets the layers (and, without ``scale``, the scale) that show on that model, instead of the
    effects' own defaults (the authors' mid block, a no-op on the toy UNet). Other specs and other models: as given.
    """
    measured = guidance_defaults(model) if model in EMBEDDED_GUIDANCE else {}
    if not measured or not isinstance(spec, dict) or "layers" in spec:
        return spec
    from .effect_specs import SpecError, resolve_type

    try:
        kind = resolve_type(spec.get("type")).__name__
    except SpecError:
        return spec  # build_effects reports it with the job's field name
    if kind == "PerturbedAttentionGuidance":
        method = "softpag" if spec.get("strength", 1.0) != 1.0 else "pag"
    elif kind == "SmoothedEnergyGuidance":
        method = "seg"
    else:
        return spec
    chosen = measured[method]
    filled = {**spec, "layers": chosen["layers"]}
    if "scale" not in spec:
        filled["scale"] = chosen["scale"]
    return filled
