"""What an evaluation run measures and how: one frozen dataclass, checked once, recorded in the report."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .prompts import HELD_OUT_SEED

#: The studies, in report order. ``*_image`` studies need the image pipeline, ``*_video`` ones the video pipeline.
STUDIES: tuple[str, ...] = (
    "prompt_accuracy",
    "prompt_to_prompt",
    "perturbation_guidance",
    "guidance_sweep",
    "sparse_image",
    "sparse_video",
    "extrapolation_image",
    "extrapolation_video",
)
VIDEO_STUDIES: frozenset[str] = frozenset({"sparse_video", "extrapolation_video"})


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")


def _numbers(name: str, values: Any, minimum: float, *, at_most: float | None = None, count: int = 1) -> None:
    if not isinstance(values, tuple) or len(values) < count:
        raise ValueError(f"{name}={values!r} must be a tuple of at least {count} number(s)")
    for value in values:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not ok or value < minimum or (at_most is not None and value > at_most):
            bound = f"in [{minimum}, {at_most}]" if at_most is not None else f">= {minimum}"
            raise ValueError(f"{name}={values!r}: every value must be a finite number {bound}; got {value!r}")


@dataclass(frozen=True)
class EvalConfig:
    """Settings of an evaluation run (:func:`visattn.eval.evaluate`); every one is written to the report.

    Args:
        samples: held-out prompts per prompt set (single-object, multi-object, each word swap, clips); sample
            ``i`` uses noise seed ``seed + i``.
        seed: base noise seed.
        data_seed: data seed of the prompts (:data:`visattn.eval.prompts.HELD_OUT_SEED`; training uses 0).
        image_steps, video_steps: denoising steps.
        image_guidance, video_guidance: classifier-free guidance scale; ``None`` keeps the pipeline's default.
        image_size: training resolution of the image model in pixels; ``None`` reads it from the UNet config.
        video_frames, video_size: training clip length and side of the video model; ``None`` uses the toy video
            model's (:data:`visattn.toy.models.VIDEO_FRAMES`, :data:`~visattn.toy.models.VIDEO_SIZE`).
        video_text_tokens: text length the video pipeline pads prompts to (``max_sequence_length``).
        batch_size: prompts per pipeline call.
        cross_steps, self_steps: Prompt-to-Prompt's injection windows (the authors' 0.8 and 0.4).
        reweight_scales: weights given to the colour word in the re-weighting study, strictly increasing (1.0 is
            the unedited source image).
        pag_scales, pag_strengths: the perturbation-guidance grid; strength 1 is PAG, below 1 SoftPAG. Scale 0 is
            the unguided baseline.
        pag_layers: the layers the guidance perturbs (a :class:`~visattn.effects.PerturbedAttentionGuidance`
            ``layers`` value). Not PAG's usual mid block: the toy UNet's mid block works on 4 x 4 latent pixels,
            where replacing self-attention by the identity moves pixels by 0.6% at scale 3; the up blocks decide
            the shapes.
        sweep_layers, sweep_scales: the guidance sweep's candidates (:mod:`visattn.eval.guidance_sweep_study`): layer
            selections and scales of PAG, SoftPAG and SEG.
        sweep_softpag_strength: SoftPAG's strength in the sweep (below 1).
        sweep_max_accuracy_drop: the sweep picks, per method, the largest change whose attribute accuracy is at
            most this much below the unguided images'.
        sweep_reweight_scales, sweep_reweight_cross_steps: the re-weighting sweep: weights given to the colour
            word, and the ``cross_steps`` they act during (the authors' 0.8, and 1.0: every step).
        resolution_factor: image extrapolation: side multiple of the training resolution.
        length_factors: video extrapolation: multiples of the training length (in temporal tokens).
        decay_factor: :class:`~visattn.effects.ExtrapolationDecay`'s weight for out-of-window keys.
        timing_repeats: timed runs per method in the sparse-attention studies (median, after one warm-up).
        bar_only: measure only what the quality bar checks (:func:`visattn.eval.quality.quality_checks`): the
            Prompt-to-Prompt study then runs its colour word swap alone (no shape swap, local blend,
            re-weighting, word maps or upload edit), prompt accuracy its single-object captions alone, image
            extrapolation the larger size alone (no 1x row); the other studies run as they are. For checking
            the bar quickly (``visattn eval --bar-only``; the test suite does);
            :func:`visattn.eval.report.write_report` writes only the JSON of such results.
    """

    samples: int = 16
    seed: int = 0
    data_seed: int = HELD_OUT_SEED
    image_steps: int = 25
    video_steps: int = 25
    image_guidance: float | None = None
    video_guidance: float | None = None
    image_size: int | None = None
    video_frames: int | None = None
    video_size: int | None = None
    video_text_tokens: int = 32
    batch_size: int = 8
    cross_steps: float = 0.8
    self_steps: float = 0.4
    reweight_scales: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    pag_scales: tuple[float, ...] = (0.0, 1.0, 3.0)
    pag_strengths: tuple[float, ...] = (0.25, 0.5, 1.0)
    pag_layers: str = "up"
    sweep_layers: tuple[str, ...] = ("mid", "down", "up", "up_blocks.2", "self")
    sweep_scales: tuple[float, ...] = (1.0, 3.0, 5.0, 8.0)
    sweep_softpag_strength: float = 0.5
    sweep_max_accuracy_drop: float = 0.05
    sweep_reweight_scales: tuple[float, ...] = (0.0, 0.2, 2.0, 5.0, 10.0)
    sweep_reweight_cross_steps: tuple[float, ...] = (0.8, 1.0)
    resolution_factor: int = 2
    length_factors: tuple[int, ...] = (2, 4)
    decay_factor: float = 0.5
    timing_repeats: int = 3
    bar_only: bool = False

    def __post_init__(self) -> None:
        for name in ("samples", "image_steps", "video_steps", "video_text_tokens", "batch_size", "timing_repeats"):
            _positive_int(name, getattr(self, name))
        if not isinstance(self.bar_only, bool):
            raise ValueError(f"bar_only={self.bar_only!r} must be True or False")
        for name in ("seed", "data_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be an integer >= 0")
        for name in ("image_size", "video_frames", "video_size"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        for name in ("image_guidance", "video_guidance"):
            value = getattr(self, name)
            if value is not None:
                _numbers(name, (value,), 0.0)
        _numbers("cross_steps", (self.cross_steps,), 0.0, at_most=1.0)
        _numbers("self_steps", (self.self_steps,), 0.0, at_most=1.0)
        _numbers("reweight_scales", self.reweight_scales, 0.0, count=2)
        if list(self.reweight_scales) != sorted(set(self.reweight_scales)):
            raise ValueError(f"reweight_scales={self.reweight_scales!r} must be strictly increasing")
        _numbers("pag_scales", self.pag_scales, 0.0)
        _numbers("pag_strengths", self.pag_strengths, 0.0, at_most=1.0)
        if not isinstance(self.pag_layers, str) or not self.pag_layers:
            raise ValueError(f"pag_layers={self.pag_layers!r} must be a non-empty layer selection such as 'up'")
        if not isinstance(self.sweep_layers, tuple) or not self.sweep_layers:
            raise ValueError(f"sweep_layers={self.sweep_layers!r} must be a non-empty tuple of layer selections")
        for layers in self.sweep_layers:
            if not isinstance(layers, str) or not layers:
                raise ValueError(f"sweep_layers={self.sweep_layers!r}: each must be a layer selection such as 'up'")
        _numbers("sweep_scales", self.sweep_scales, 0.0)
        if 0.0 in self.sweep_scales:
            raise ValueError(f"sweep_scales={self.sweep_scales!r} must be > 0 (the unguided image is the reference)")
        _numbers("sweep_softpag_strength", (self.sweep_softpag_strength,), 0.0, at_most=1.0)
        if not 0.0 < self.sweep_softpag_strength < 1.0:
            raise ValueError(f"sweep_softpag_strength={self.sweep_softpag_strength!r} must be in (0, 1)")
        _numbers("sweep_max_accuracy_drop", (self.sweep_max_accuracy_drop,), 0.0, at_most=1.0)
        _numbers("sweep_reweight_scales", self.sweep_reweight_scales, 0.0)
        _numbers("sweep_reweight_cross_steps", self.sweep_reweight_cross_steps, 0.0, at_most=1.0)
        if 0.0 in self.pag_strengths:
            raise ValueError(f"pag_strengths={self.pag_strengths!r} must be > 0 (strength 0 perturbs nothing)")
        if isinstance(self.resolution_factor, bool) or not isinstance(self.resolution_factor, int):
            raise ValueError(f"resolution_factor={self.resolution_factor!r} must be an integer >= 2")
        if self.resolution_factor < 2:
            raise ValueError(f"resolution_factor={self.resolution_factor!r} must be an integer >= 2")
        if not isinstance(self.length_factors, tuple) or not self.length_factors:
            raise ValueError(f"length_factors={self.length_factors!r} must be a non-empty tuple of integers >= 2")
        for factor in self.length_factors:
            if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
                raise ValueError(f"length_factors={self.length_factors!r}: every factor must be an integer >= 2")
        _numbers("decay_factor", (self.decay_factor,), 0.0, at_most=1.0)
        if self.decay_factor == 1.0:
            raise ValueError("decay_factor=1.0 is a no-op; use a value in [0, 1)")

    @classmethod
    def quick(cls, **overrides: Any) -> EvalConfig:
        """The small subset ``visattn eval --quick`` runs (for CI): two samples per prompt set, 4 steps, a
        reduced guidance grid and one timed run; ``overrides`` replace fields. Its numbers check that every
        study runs end to end; the quality bar needs the full settings' steps and samples."""
        settings: dict[str, Any] = {
            "samples": 2,
            "image_steps": 4,
            "video_steps": 4,
            "pag_scales": (0.0, 3.0),
            "pag_strengths": (0.5, 1.0),
            "sweep_layers": ("mid", "up"),
            "sweep_scales": (5.0,),
            "sweep_reweight_scales": (0.0, 5.0),
            "sweep_reweight_cross_steps": (1.0,),
            "timing_repeats": 1,
        }
        settings.update(overrides)
        return cls(**settings)

    def as_dict(self) -> dict[str, Any]:
        return {key: list(v) if isinstance(v, tuple) else v for key, v in dataclasses.asdict(self).items()}
