"""The guidance arithmetic shared by perturbation-guidance effects.

Pipelines combine predictions themselves (``eps = eps_u + g * (eps_c - eps_u)`` with CFG). To add a
perturbation term ``s * (eps_c - eps_p)`` without changing the pipeline, the conditional prediction the
pipeline sees becomes ``eps_c + (s / g) * (eps_c - eps_p)``: the pipeline's own CFG then yields
``eps_cfg + s * (eps_c - eps_p)`` (Ahn et al. 2024, PAG, eq. for guidance with CFG), and without CFG
(``g = 1``) ``eps_c + s * (eps_c - eps_p)``.
"""

from __future__ import annotations

from typing import Any

import torch


def pipeline_guidance_scale(pipeline: Any, batch_names: tuple[str, ...]) -> float:
    """The CFG scale the pipeline applies to this call's conditional prediction (1 when it applies none)."""
    if pipeline is None:
        return 1.0
    cfg_in_batch = "uncond" in batch_names and "cond" in batch_names
    cfg_per_call = batch_names == ("cond",) and bool(getattr(pipeline, "do_classifier_free_guidance", False))
    if not (cfg_in_batch or cfg_per_call):
        return 1.0
    scale = getattr(pipeline, "_guidance_scale", None)
    if scale is None:
        scale = getattr(pipeline, "guidance_scale", 1.0)
    return float(scale)


def fold_perturbation(eps_cond: torch.Tensor, eps_perturbed: torch.Tensor, scale: float, cfg_scale: float):
    """The conditional prediction that makes the pipeline's CFG add ``scale * (eps_cond - eps_perturbed)``."""
    return eps_cond + (scale / cfg_scale) * (eps_cond - eps_perturbed)
