"""The guidance arithmetic shared by perturbation-guidance effects.

Pipelines combine predictions themselves (``eps = eps_u + g * (eps_c - eps_u)`` with CFG). To add perturbation
terms ``s_i * (eps_c - eps_p_i)`` without changing the pipeline, the conditional prediction the pipeline sees
becomes ``eps_c + sum_i (s_i / g) * (eps_c - eps_p_i)``: the pipeline's own CFG then yields
``eps_cfg + sum_i s_i * (eps_c - eps_p_i)`` (Ahn et al. 2024, PAG, guidance combined with CFG), and without CFG
(``g = 1``) ``eps_c + sum_i s_i * (eps_c - eps_p_i)``. ``g`` is a per-pipeline fact:
:func:`visattn.families.pipelines.pipeline_guidance_scale` reads it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def fold_perturbations(
    eps_cond: torch.Tensor,
    perturbed: Sequence[tuple[torch.Tensor, float]],
    cfg_scale: float,
) -> torch.Tensor:
    """The conditional prediction that makes the pipeline's CFG add ``sum_i s_i * (eps_cond - eps_perturbed_i)``.

    Args:
        eps_cond: the conditional prediction of the pipeline's own rows.
        perturbed: ``(eps_perturbed_i, s_i)`` pairs, one per perturbation branch; every term uses the same raw
            ``eps_cond`` (terms add, they do not compound).
        cfg_scale: the pipeline's CFG scale ``g`` for this call
            (:func:`visattn.families.pipelines.pipeline_guidance_scale`).

    Raises:
        ValueError: ``cfg_scale == 0``: the pipeline then ignores the conditional prediction, so no term can be
            folded into it.
    """
    if cfg_scale == 0:
        raise ValueError(
            "cfg_scale=0: the pipeline ignores the conditional prediction (guidance scale 0), so perturbation "
            "guidance cannot be folded into it; use a guidance scale != 0 or no perturbation guidance"
        )
    # The arithmetic runs in float32 at least: (s / g) * (eps_c - eps_p) is a small difference of large terms.
    dtype = torch.promote_types(eps_cond.dtype, torch.float32)
    cond = eps_cond.to(dtype)
    folded = cond
    for eps_perturbed, scale in perturbed:
        folded = folded + (scale / cfg_scale) * (cond - eps_perturbed.to(dtype))
    return folded.to(eps_cond.dtype)


def fold_perturbation(eps_cond: torch.Tensor, eps_perturbed: torch.Tensor, scale: float, cfg_scale: float):
    """The conditional prediction that makes the pipeline's CFG add ``scale * (eps_cond - eps_perturbed)``."""
    return fold_perturbations(eps_cond, [(eps_perturbed, scale)], cfg_scale)


def rescaled(guided: torch.Tensor, eps_cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """STG's standard-deviation rescaling (junhahyung/STGuidance, ``pipeline_stg_mochi.py`` and the other STG
    pipelines, ``do_rescaling``): ``guided * (r * std(eps_cond) / std(guided) + 1 - r)``, stds over the whole
    tensors (every row and element), ``r = rescale`` (the authors' ``rescaling_scale = 0.7``)."""
    factor = eps_cond.std() / guided.std()
    return guided * (rescale * factor + (1.0 - rescale))


def stg_target(
    eps_uncond: torch.Tensor | None,
    eps_cond: torch.Tensor,
    eps_perturbed: torch.Tensor,
    cfg_scale: float,
    scale: float,
    formula: str,
    rescale: float | None,
) -> torch.Tensor:
    """The guided prediction of STG's authors' pipelines (junhahyung/STGuidance), in float32 at least.

    ``eps_cfg = eps_u + g (eps_c - eps_u)`` (``eps_c`` without CFG, ``eps_uncond=None``); then ``formula="cond"``
    (Mochi, CogVideoX, LTX-Video, HunyuanVideo pipelines): ``eps_cfg + s (eps_c - eps_p)``, ``eps_p`` perturbed on
    the prompt; ``formula="cfg"`` (``Wan2.1/pipeline.py``, ``WanSTGPipeline.__call__``): ``eps_cfg + s (eps_cfg -
    eps_p)``, ``eps_p`` perturbed on the negative prompt. ``rescale``: :func:`rescaled` against ``eps_c``.
    """
    dtype = torch.promote_types(eps_cond.dtype, torch.float32)
    cond, perturbed = eps_cond.to(dtype), eps_perturbed.to(dtype)
    guided = cond if eps_uncond is None else eps_uncond.to(dtype) + cfg_scale * (cond - eps_uncond.to(dtype))
    guided = guided + scale * ((guided if formula == "cfg" else cond) - perturbed)
    return guided if rescale is None else rescaled(guided, cond, rescale)


def cond_for(target: torch.Tensor, eps_uncond: torch.Tensor | None, cfg_scale: float) -> torch.Tensor:
    """The conditional prediction for which the pipeline's ``u + g (c - u)`` (``c`` without CFG) is ``target``."""
    if eps_uncond is None:
        return target
    uncond = eps_uncond.to(target.dtype)
    return uncond + (target - uncond) / cfg_scale


def uncond_for(target: torch.Tensor, eps_cond: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """The unconditional prediction for which the pipeline's ``u + g (c - u)`` is ``target`` (``g != 1``): used
    when the unconditional call comes last (pipelines that run one call per branch, conditional first)."""
    if cfg_scale == 1:
        raise ValueError(
            "cfg_scale=1: the pipeline ignores the unconditional prediction; nothing can be folded into it"
        )
    return (target - cfg_scale * eps_cond.to(target.dtype)) / (1.0 - cfg_scale)
