"""What the editing demo does, in plain Python: build the effects from the form, run the pipeline, collect maps.

The Gradio layer (:mod:`visattn.app.ui`) only turns widgets into a :class:`DemoRequest` and a
:class:`DemoResult` back into widgets; everything here runs and is tested without a browser::

    from visattn.app.handlers import DemoEngine, DemoRequest

    engine = DemoEngine()  # the embedded default model, loaded on first use
    result = engine.run(DemoRequest("a red circle", edit_mode="reweight", weights={"red": 3.0}, steps=4))
    result.source, result.edit, result.heatmaps  # PIL images, and (image, caption) pairs per word
    result.sheet, result.files  # one labelled sheet of per-word maps; PNGs that carry their parameters

One run is one pipeline call (two for ``edit_mode="none"`` with effects: the plain generation on the left, the
one with effects on the right):

* Prompt-to-Prompt edits (Hertz et al., 2022, "Prompt-to-Prompt Image Editing with Cross Attention Control") are
  built with :func:`visattn.effect_specs.build_edit` (word swap, refinement, re-weighting, local blending, the
  cross- and self-attention injection schedule, the blend threshold); the source and the edit are generated in one
  batch from the same noise.
* Perturbed-attention guidance (Ahn et al., 2024, "Self-Rectifying Diffusion Sampling with Perturbed-Attention
  Guidance"; SoftPAG below strength 1), optionally on a saved :class:`~visattn.guidance.HeadSet`
  (HeadHunter, "Fine-Grained Perturbation Guidance via Attention Head Selection"); neighborhood attention
  (Hassani et al., 2023, "Neighborhood Attention Transformer"); Radial Attention (Li et al., 2025, "Radial
  Attention: O(n log n) Sparse Attention with Energy Decay for Long Video Generation", video models only);
  extrapolation beyond the native size with UltraViCo's decay (:class:`~visattn.effects.ExtrapolationDecay`)
  and entropy scaling (Jin et al., 2023): all built from effect specs (:func:`visattn.effect_specs.build_effects`),
  which are echoed in the result so a run can be repeated in a batch job.
* Per-word attention maps come from :class:`~visattn.effects.AttentionMaps` attached to the same call, as
  small captioned pictures and as one labelled sheet (:meth:`~visattn.effects.AttentionMaps.sheet`).
* An uploaded image is inverted first (plain DDIM inversion, the default shared with ``visattn edit``; null-text
  inversion, Mokady et al., 2022; or negative-prompt inversion, Miyake et al., 2023; :mod:`visattn.inversion`)
  with the source prompt, and the edit starts from its noise.
* The images and the sheet are also written as PNGs carrying their parameters (:mod:`visattn.app.outputs`).

Every problem with a request raises :class:`DemoError` with a message for the person using the demo.
"""

from __future__ import annotations

import atexit
import inspect
import json
import logging
import math
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from ..defaults import DEFAULT_MODEL, embedded_call_defaults, guidance_defaults
from ..edit import DEFAULT_INVERSION, INVERSIONS
from ..families import GENERIC, VIDEO_FAMILIES, Family, declared_family, family_of
from ..frames import frame_rounding_quieted, makes_video, num_frames_argument
from .outputs import run_metadata, save_run
from .uploads import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, UploadError, fit_to_size, open_upload

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

logger = logging.getLogger(__name__)

#: Edit modes of the form: no edit, word swap, refinement (words added/removed), re-weighting.
EDIT_MODES: tuple[str, ...] = ("none", "replace", "refine", "reweight")
#: Inversion methods for an uploaded image, the default first: the CLI's (``visattn edit --inversion``) and the
#: demo's default is the same, plain DDIM inversion, the one that kept the background in the issue's tests.
INVERSION_METHODS: tuple[str, ...] = (DEFAULT_INVERSION, *(m for m in INVERSIONS if m != DEFAULT_INVERSION))
#: Prompt-to-Prompt's defaults (the authors'): cross- and self-attention injection fractions, LocalBlend threshold.
DEFAULT_CROSS_STEPS, DEFAULT_SELF_STEPS, DEFAULT_BLEND_THRESHOLD = 0.8, 0.4, 0.3
#: LocalBlend's default max-pooling radius (the authors'), the demo's largest, and its variants
DEFAULT_BLEND_RADIUS, MAX_DEMO_BLEND_RADIUS = 1, 8
BLEND_VARIANTS = ("authors", "prediction")
#: Largest re-weighting scale the form accepts. Negative scales are refused: they flip the word's attention and
#: blank the maps instead of weakening the word (0 removes it).
MAX_WEIGHT = 10.0
#: Largest size factor for extrapolation beyond the native size (the attention cost grows with its 4th power).
MAX_SIZE_FACTOR = 4.0
#: Runs a demo keeps in the temporary folder its downloads are served from; older runs are deleted.
KEPT_RUNS = 20
#: Largest step count the form accepts.
MAX_STEPS = 200
#: Null-text inversion's Adam iterations per step (the authors use 10).
NULL_TEXT_INNER_STEPS = 10

#: ``progress(fraction in [0, 1], description)``; gr.Progress instances fit this signature.
Progress = Callable[[float, str], Any]


class DemoError(ValueError):
    """A request the demo cannot run as asked; the message is shown to the user as it is."""


@dataclass
class DemoRequest:
    """One run of the demo, as the form describes it.

    Args:
        prompt: the source prompt (for an uploaded image: a description of the image).
        seed: noise seed (source and edit share the noise).
        steps: denoising steps.
        guidance: classifier-free guidance scale; ``None`` keeps the pipeline's default.
        edit_mode: one of :data:`EDIT_MODES`.
        target: the edited prompt, for ``"replace"`` (same word count) and ``"refine"``.
        weights: ``{word: scale}``: re-weighting scales (``"reweight"``), or extra scales on words of the target
            (``"replace"``/``"refine"``); 1 leaves a word alone.
        local_blend: words (comma separated) whose region may change; everything else keeps the source
            (``""``: no local blending).
        cross_steps: fraction of the schedule during which the edit's cross-attention is the source's (the
            Prompt-to-Prompt authors' 0.8); in ``[0, 1]``.
        self_steps: fraction during which its self-attention is the source's (0.4); in ``[0, 1]``.
        blend_threshold: LocalBlend's threshold in ``(0, 1)`` on the words' normalized maps (the authors' 0.3):
            lower grows the region that may change.
        blend_subtract: words (comma separated) whose region is taken out of the local blend's region, so that it
            keeps the source (LocalBlend's ``subtract``, the authors' ``substruct_words``); needs ``local_blend``.
        blend_subtract_threshold: the threshold in ``(0, 1)`` on ``blend_subtract``'s maps (the authors' 0.3).
        blend_radius: LocalBlend's max-pooling radius (the authors' 1; larger: wider margins around the region).
        blend_variant: one of :data:`BLEND_VARIANTS`: ``"authors"`` (the latents blended after each step, as
            their notebooks) or ``"prediction"`` (visattn's: nothing outside the region changes at all). The blend's
            threshold, radius and variant shape nothing without ``local_blend`` (as the form shows them anyway), nor
            ``blend_subtract_threshold`` without ``blend_subtract``; they are still checked.
        pag_scale: perturbed-attention guidance scale; 0 turns it off.
        pag_strength: in ``[0, 1]``: 1 is PAG, lower is SoftPAG.
        pag_layers: where PAG perturbs: values of :func:`pag_layer_choices` (``None`` or empty: the model's
            default, :func:`default_pag_layers`).
        head_set: path of a saved :class:`~visattn.guidance.HeadSet` JSON; PAG then perturbs these heads only
            (not together with ``pag_layers``).
        kernel_size: neighborhood-attention window (odd, in latent tokens); 0 turns it off.
        radial: Radial Attention (video models only).
        size_factor: image size as a multiple of the model's native size (>= 1; 1 is the native size).
        decay: ExtrapolationDecay factor in ``[0, 1]`` for keys outside the native window; 1 turns it off.
        entropy_scaling: EntropyScaling of the logits when generating beyond the native size.
        image: path of an uploaded image to invert and edit, or ``None``.
        inversion: one of :data:`INVERSION_METHODS` (default: DDIM, as ``visattn edit``).
        frames: number of frames for video models (``None``: the engine's default).
    """

    prompt: str
    seed: int = 0
    steps: int = 20
    guidance: float | None = 7.5
    edit_mode: str = "none"
    target: str = ""
    weights: Mapping[str, float] = field(default_factory=dict)
    local_blend: str = ""
    cross_steps: float = DEFAULT_CROSS_STEPS
    self_steps: float = DEFAULT_SELF_STEPS
    blend_threshold: float = DEFAULT_BLEND_THRESHOLD
    blend_subtract: str = ""
    blend_subtract_threshold: float = DEFAULT_BLEND_THRESHOLD
    blend_radius: int = DEFAULT_BLEND_RADIUS
    blend_variant: str = "authors"
    pag_scale: float = 0.0
    pag_strength: float = 1.0
    pag_layers: Sequence[str] | None = None
    head_set: str | None = None
    kernel_size: int = 0
    radial: bool = False
    size_factor: float = 1.0
    decay: float = 1.0
    entropy_scaling: bool = False
    image: str | None = None
    inversion: str = DEFAULT_INVERSION
    frames: int | None = None


@dataclass
class DemoResult:
    """What one run shows.

    Attributes:
        source: the source image (for an uploaded image: its reconstruction; with ``edit_mode="none"`` and
            effects: the generation without them). A PIL image, or the path of an animated WebP for video.
        edit: the edited image (or the generation with effects), ``None`` when there is nothing to compare.
        heatmaps: ``(image, caption)`` per word and prompt; the caption names the word (``"edit: dog"``).
        effects: the effect specs that ran (JSON-able, :mod:`visattn.effect_specs` format).
        edit_spec: the Prompt-to-Prompt spec that ran, or ``None``.
        seconds: wall time of the run (inversion included).
        size: ``(width, height)`` generated.
        labels: what the two panels show: ``("source", "edit")`` for an edit, ``("without effects", "with
            effects")`` for effects alone, ``("generated", "")`` for a plain generation.
        sheet: one labelled sheet of per-word maps over their images (PIL), or ``None`` when the model has no
            cross/joint attention to map.
        files: PNGs (and, for videos, animated WebPs) to download: each PNG carries its parameters in text chunks
            and a JSON sidecar (:func:`visattn.images.save_image`).
    """

    source: Any
    edit: Any
    heatmaps: list[tuple[Any, str]]
    effects: list[dict[str, Any]]
    edit_spec: dict[str, Any] | None
    seconds: float
    size: tuple[int, int]
    labels: tuple[str, str] = ("source", "edit")
    sheet: Any = None
    files: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """A few lines for the status box: size, time, and the specs (paste-able into a batch job)."""
        lines = [f"{self.size[0]}x{self.size[1]} in {self.seconds:.1f} s"]
        if self.edit_spec is not None:
            lines.append(f"edit: {json.dumps(self.edit_spec)}")
        lines.append(f"effects: {json.dumps(self.effects)}")
        return "\n".join(lines)


# --- the model -----------------------------------------------------------------------------------------------------
def load_model(model: str | None, device: str = "auto", dtype: str = "fp32") -> DiffusionPipeline:
    """The demo's pipeline: the embedded default (``model`` None) or a diffusers model id / folder.

    The one place the demo loads a model, so swapping the embedded default needs no change here.

    Raises:
        visattn.generate.ModelLoadError: unknown id, missing folder, not a pipeline, ... (one line, no traceback).
        visattn.generate.UsageError: an unavailable device or unknown dtype.
    """
    from ..generate import check_dtype, load_pipeline, resolve_device

    return load_pipeline(model, resolve_device(device), check_dtype(dtype))


def _denoiser(pipe: Any) -> Any:
    return getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)


def _family(pipe: Any) -> Family | None:
    """The declared family of the pipeline's denoiser (``None`` for a class visattn has no facts for)."""
    denoiser = _denoiser(pipe)
    return declared_family(denoiser) if denoiser is not None else None


def _parameters(pipe: Any) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(pipe.__call__).parameters


def _signature_size(pipe: Any) -> tuple[int, int] | None:
    parameters = _parameters(pipe)
    height, width = (parameters.get(n) for n in ("height", "width"))
    if height is not None and width is not None and isinstance(height.default, int) and isinstance(width.default, int):
        return height.default, width.default
    return None


def native_size(pipe: Any) -> tuple[int, int]:
    """``(height, width)`` in pixels the pipeline generates by default: its training size.

    From the ``__call__`` defaults when they are numbers (video pipelines), else from the denoiser's
    ``sample_size`` (or the pipeline's ``default_sample_size``) times the VAE factor, as the pipelines do.
    """
    fixed = _signature_size(pipe)
    if fixed is not None:
        return fixed
    factor = int(getattr(pipe, "vae_scale_factor", 8))
    sample = getattr(pipe, "default_sample_size", None)
    if sample is None:
        sample = getattr(getattr(_denoiser(pipe), "config", None), "sample_size", None)
    if sample is None:
        raise DemoError(f"cannot tell the native image size of {type(pipe).__name__}")
    if isinstance(sample, int):
        return sample * factor, sample * factor
    return int(sample[0]) * factor, int(sample[1]) * factor


def token_stride(pipe: Any) -> int:
    """Pixels per latent token of the denoiser's input grid: the VAE factor times the family's token stride (the
    spatial patch size, or the pipeline's packing for packed latents)."""
    factor = int(getattr(pipe, "vae_scale_factor", None) or getattr(pipe, "vae_scale_factor_spatial", 8))
    family = _family(pipe) or GENERIC
    return factor * family.token_stride(_denoiser(pipe))


def default_pag_layers(pipe: Any, model: str | None = None) -> str | list[str]:
    """Where PAG perturbs by default: for an embedded model with measured guidance settings (``model``, the name
    it was loaded by; :func:`visattn.defaults.guidance_defaults`), the layers measured to show the effect (the toy
    model's full-resolution up block, not its 4 x 4 mid block); else the family's default (diffusers' PAG pipeline
    default, e.g. a UNet's mid block, the PAG paper's choice for Stable Diffusion), else the transformer's middle
    self/joint layer. Measured layers that select nothing in ``pipe`` (a pipeline passed in under the default's
    name) fall back to the family's default."""
    from ..attachment import layer_roles
    from ..layers import normalize_layers, select_layers

    denoiser = _denoiser(pipe)
    family = _family(pipe) or GENERIC
    measured = guidance_defaults(model).get("pag") if model is not None else None
    if measured is not None:
        layers = list(normalize_layers(measured["layers"]))
        roles = {name: role for name, role in layer_roles(denoiser, family).items() if role in ("self", "joint")}
        try:
            select_layers(roles, tuple(layers))
            return layers
        except ValueError:
            pass
    try:
        return list(family.default_pag_layers(layer_roles(denoiser, family)))
    except ValueError:
        raise DemoError(f"{type(pipe).__name__} has no self or joint attention layer for PAG to perturb") from None


def _pag_value(name: str) -> str:
    """The layer identifier that selects exactly the block ``name`` (``transformer_blocks.1`` must not also pick
    ``single_transformer_blocks.1`` or ``transformer_blocks.10``, as a plain ``re.search`` would)."""
    return "^" + re.escape(name) + r"\."


def pag_layer_choices(pipe: Any, model: str | None = None) -> list[tuple[str, str]]:
    """``(label, layer identifier)`` pairs the demo offers for PAG's layers, from the loaded model itself.

    First the model's default (:func:`default_pag_layers` of ``pipe`` loaded as ``model``, labelled "default"),
    then the blocks that hold self or
    joint attention (the layers PAG perturbs): a UNet's ``down`` / ``mid`` / ``up`` levels in diffusers'
    ``pag_applied_layers`` naming, a transformer's blocks one by one (anchored, so ``transformer_blocks.1`` is
    that block only).
    """
    from ..attachment import layer_roles

    denoiser = _denoiser(pipe)
    family = _family(pipe) or GENERIC
    choices = [(f"{layer} (default)", layer) for layer in default_pag_layers(pipe, model)]
    unet_levels = {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}
    for name, role in layer_roles(denoiser, family).items():
        if role not in ("self", "joint"):
            continue
        parts = name.split(".")
        if parts[0] in unet_levels:
            choice = (f"{unet_levels[parts[0]]} blocks", unet_levels[parts[0]])
        elif len(parts) > 2 and parts[1].isdigit():
            choice = (f"{parts[0]}.{parts[1]}", _pag_value(f"{parts[0]}.{parts[1]}"))
        else:  # a layer outside numbered blocks: itself, anchored at both ends
            choice = (name, "^" + re.escape(name) + "$")
        if all(value != choice[1] for _, value in choices):
            choices.append(choice)
    return choices


def prompt_words(prompt: str, limit: int | None = None) -> list[str]:
    """The distinct content words of ``prompt`` in order (no stop words or punctuation): the words the demo offers
    a weight slider for. ``limit`` keeps the first ``limit``."""
    from ..words import STOP_WORDS, split_words

    words: list[str] = []
    for word, _, _ in split_words(prompt or ""):
        if word.lower() not in STOP_WORDS and word not in words:
            words.append(word)
    return words if limit is None else words[:limit]


def _blend_words(text: str) -> list[str]:
    return [part for chunk in (text or "").split(",") for part in [chunk.strip()] if part]


# --- checks --------------------------------------------------------------------------------------------------------
def _number(name: str, value: Any, low: float, high: float, *, integer: bool = False) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value).is_integer()
    if not ok or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise DemoError(f"{name}={value!r} is not allowed: must be {kind} from {low:g} to {high:g}")
    return int(value) if integer else float(value)


#: the seeds the form accepts (the range of a 32-bit unsigned seed, which every frontend can type)
MAX_SEED = 2**32 - 1


def integer_input(name: str, value: Any, low: int, high: int) -> int:
    """A form's integer field (``seed``, ``steps``) as an ``int``, or a :class:`DemoError` naming the field, the
    value and the range.

    Gradio's API passes what the client sent: ``7``, ``7.0`` and ``"7"`` are 7; ``1.5``, ``"1.5"``, ``"abc"``,
    ``None``, booleans and non-finite numbers are refused rather than truncated or failing later inside ``int()``.
    """
    number: Any = value
    if isinstance(value, str):
        try:
            number = int(value) if len(value) <= 30 else None  # the length bounds int()'s work on long text
        except ValueError:
            number = None
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise DemoError(f"{name}={shown} is not allowed: must be an integer from {low} to {high}")
    return number


def _check(request: DemoRequest) -> None:
    if not isinstance(request.prompt, str) or not request.prompt.strip():
        raise DemoError("prompt is empty: describe the image to generate (or the uploaded image)")
    integer_input("seed", request.seed, 0, MAX_SEED)
    integer_input("steps", request.steps, 1, MAX_STEPS)
    if request.guidance is not None:
        _number("guidance", request.guidance, 0, 100)
    if request.edit_mode not in EDIT_MODES:
        raise DemoError(f"edit_mode={request.edit_mode!r} is not allowed: choose from {', '.join(EDIT_MODES)}")
    if request.edit_mode in ("replace", "refine") and not (request.target or "").strip():
        raise DemoError(f"edit mode {request.edit_mode!r} needs the edited prompt")
    for word, scale in dict(request.weights or {}).items():
        ok = isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale)
        if not ok or not 0 <= scale <= MAX_WEIGHT:
            # A negative scale flips the word's attention and blanks every map instead of weakening the word.
            raise DemoError(
                f"weight of {word!r}={scale!r} is not allowed: must be a number from 0 (the word removed) to "
                f"{MAX_WEIGHT:g}; 1 leaves the word alone, below 1 weakens it"
            )
    _number("cross_steps", request.cross_steps, 0, 1)
    _number("self_steps", request.self_steps, 0, 1)
    for name in ("blend_threshold", "blend_subtract_threshold"):
        threshold = getattr(request, name)
        if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and 0 < threshold < 1):
            raise DemoError(f"{name}={threshold!r} is not allowed: must be a number between 0 and 1 (exclusive)")
    _number("blend_radius", request.blend_radius, 0, MAX_DEMO_BLEND_RADIUS, integer=True)
    if request.blend_variant not in BLEND_VARIANTS:
        raise DemoError(f"blend_variant={request.blend_variant!r} is not allowed: must be one of {BLEND_VARIANTS}")
    _number("pag_scale", request.pag_scale, 0, 100)
    _number("pag_strength", request.pag_strength, 0, 1)
    _number("kernel_size", request.kernel_size, 0, 10_000, integer=True)
    _number("size_factor", request.size_factor, 1, MAX_SIZE_FACTOR)
    _number("decay", request.decay, 0, 1)
    if request.inversion not in INVERSION_METHODS:
        raise DemoError(f"inversion={request.inversion!r} is not allowed: choose from {', '.join(INVERSION_METHODS)}")
    if request.frames is not None:
        _number("frames", request.frames, 1, 10_000, integer=True)


# --- the engine ----------------------------------------------------------------------------------------------------
class DemoEngine:
    """Runs demo requests on one pipeline, one at a time.

    Attaching effects swaps the pipeline's attention processors, so two runs must never overlap on one
    pipeline: a lock serializes them (the Gradio queue's concurrency limit decides how many wait in line, and
    lighter events such as upload checks run beside a generation).

    Args:
        model: diffusers model id or folder; ``None`` is the embedded default. Loaded on first use unless
            ``pipeline`` is given.
        pipeline: a ready pipeline to use as-is.
        device, dtype: for loading (``"auto"``/``"cpu"``/``"cuda"``, ``"fp32"``/``"fp16"``/``"bf16"``).
        native_size: ``(height, width)`` to treat as the native size instead of :func:`native_size`'s answer
            (tests use it to run video models at a tiny size; an embedded model's training size by default).
        frames: default frame count for video models (``None``: the pipeline's default, or the training length of
            an embedded model such as ``visattn/toy-video``).
        max_pixels, max_bytes: upload limits (see :func:`visattn.app.uploads.open_upload`).
        output_dir: where animated WebPs of video results are written (default: a temporary folder).
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        pipeline: DiffusionPipeline | None = None,
        device: str = "auto",
        dtype: str = "fp32",
        native_size: tuple[int, int] | None = None,
        frames: int | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        output_dir: str | Path | None = None,
    ) -> None:
        self.model = model
        self.device, self.dtype = device, dtype
        self._pipeline = pipeline
        self._caller_pipeline = pipeline is not None  # named by its name_or_path; a loaded default by DEFAULT_MODEL
        trained = embedded_call_defaults(model)  # the toy video model's 32 px and 9 frames, not WanPipeline's
        if native_size is None and "height" in trained:
            native_size = (trained["height"], trained["width"])
        self._native_size = native_size
        self.frames = frames if frames is not None else trained.get("num_frames")
        self.max_pixels, self.max_bytes = max_pixels, max_bytes
        self._output_dir = Path(output_dir) if output_dir is not None else None
        self._owns_output_dir = False  # a temporary folder made on first use (see _outputs) is the demo's to prune
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    # --- the pipeline ----------------------------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        """The model as the user named it (the default's name when none was given)."""
        if self.model is not None:
            return self.model
        if self._caller_pipeline and getattr(self._pipeline, "name_or_path", None):
            return self._pipeline.name_or_path
        return DEFAULT_MODEL

    @property
    def _loaded_as(self) -> str | None:
        """The name the pipeline was loaded by, for the embedded models' measured settings
        (:func:`visattn.defaults.guidance_defaults`): ``None`` for a pipeline passed in without a model name."""
        if self.model is not None:
            return self.model
        return None if self._caller_pipeline else DEFAULT_MODEL

    def pipeline(self) -> DiffusionPipeline:
        """The pipeline, loaded on first use.

        Raises:
            DemoError: the model cannot be loaded (the message says why, in one line).
        """
        from ..generate import UsageError

        with self._load_lock:
            if self._pipeline is None:
                try:
                    self._pipeline = load_model(self.model, self.device, self.dtype)
                except UsageError as exc:  # ModelLoadError included: a message, never a traceback
                    raise DemoError(str(exc)) from None
            return self._pipeline

    def is_video(self) -> bool:
        """Whether the pipeline makes videos (it takes ``num_frames``)."""
        return makes_video(self.pipeline())

    def is_video_family(self) -> bool:
        """Whether the denoiser belongs to a video family (:data:`visattn.families.VIDEO_FAMILIES`): the models
        Radial Attention acts on, so the form offers it for these only."""
        denoiser = _denoiser(self.pipeline())
        return denoiser is not None and family_of(denoiser).name in VIDEO_FAMILIES

    def pag_layer_choices(self) -> list[tuple[str, str]]:
        """:func:`pag_layer_choices` of the loaded model (the form's PAG layer selector)."""
        return pag_layer_choices(self.pipeline(), self._loaded_as)

    def native_size(self) -> tuple[int, int]:
        """``(height, width)`` the model was trained at (or the engine's override)."""
        return self._native_size if self._native_size is not None else native_size(self.pipeline())

    # --- uploads ----------------------------------------------------------------------------------------------------
    def check_upload(self, path: str | Path | None) -> Image.Image | None:
        """The upload at ``path`` fitted to the native size (what will be inverted), or ``None`` for no upload.

        Raises:
            DemoError: the file is refused (not an image, too many pixels, a decompression bomb, damaged).
        """
        if path is None or path == "":
            return None
        try:
            image = open_upload(path, max_pixels=self.max_pixels, max_bytes=self.max_bytes)
        except UploadError as exc:
            raise DemoError(str(exc)) from None
        height, width = self.native_size()
        return fit_to_size(image, width, height)

    # --- a run -------------------------------------------------------------------------------------------------------
    def run(self, request: DemoRequest, progress: Progress | None = None) -> DemoResult:
        """Run one request; see the module docstring.

        Raises:
            DemoError: a bad request, an upload that is refused, a model that cannot be loaded, or settings the
                model cannot run (the message says which).
        """
        _check(request)
        started = time.perf_counter()
        pipe = self.pipeline()
        report = progress or (lambda fraction, description: None)
        image = self.check_upload(request.image)
        height, width = self._size(pipe, request.size_factor)
        edit = self._edit(request)
        specs = self._effect_specs(pipe, request)
        from ..effect_specs import SpecError, build_effects, describe_edit

        try:
            effects = build_effects(specs)
        except SpecError as exc:
            raise DemoError(f"cannot build the effects: {exc}") from None
        prompts = edit.prompts if edit is not None else [request.prompt]
        seed = int(request.seed)
        with self._lock:
            inversion = None
            if image is not None:
                inversion = self._invert(pipe, image, request, report)
            call = self._call_arguments(pipe, request, height, width, inversion, len(prompts))
            baseline = None
            if edit is None and effects:
                # Without an edit the left image is the same seed without effects: what the effects changed.
                baseline = self._generate(pipe, [request.prompt], [], inversion, call, seed, report, "without effects")
            from ..effects import AttentionMaps

            maps = AttentionMaps(prompt=prompts)
            attached = [*([edit] if edit is not None else []), *effects, maps]
            outputs = self._generate(pipe, prompts, attached, inversion, call, seed, report, "generating")
        if baseline is not None:
            source, target = baseline[0], outputs[0]
            labels = ("without effects", "with effects")
        elif edit is not None:
            source, target = outputs
            labels = ("source" if image is None else "source (from the inverted upload)", "edit")
        else:
            source, target = outputs[0], None
            labels = ("generated", "")
        heatmaps = self._heatmaps(maps, prompts, edit is not None, request, (width, height))
        sheet = self._sheet(maps, outputs, prompts, request, labels)
        edit_spec = None if edit is None else describe_edit(edit)
        shown_source = self._displayable(source)
        shown_edit = None if target is None else self._displayable(target)
        metadata = run_metadata(
            model=self.model_name,
            pipeline=type(pipe).__name__,
            seed=seed,
            steps=int(call["num_inference_steps"]),
            guidance=call.get("guidance_scale", request.guidance),
            size=(width, height),
            effects=specs,
            edit=edit_spec,
            inversion=request.inversion if image is not None else None,
        )
        pictures = [(labels[0], source, prompts[0])]
        if target is not None:
            pictures.append((labels[1], target, prompts[-1]))
        # A video's panels are animated WebPs already written for display: offered as they are.
        pictures = [
            (role, picture if isinstance(picture, Image.Image) else shown, prompt)
            for (role, picture, prompt), shown in zip(pictures, (shown_source, shown_edit))
        ]
        files = save_run(Path(tempfile.mkdtemp(prefix="run-", dir=self._outputs())), pictures, sheet, metadata)
        self._prune_outputs()
        report(1.0, "done")
        return DemoResult(
            source=shown_source,
            edit=shown_edit,
            heatmaps=heatmaps,
            effects=specs,
            edit_spec=edit_spec,
            seconds=time.perf_counter() - started,
            size=(width, height),
            labels=labels,
            sheet=sheet,
            files=files,
        )

    # --- pieces of a run -------------------------------------------------------------------------------------------
    def _size(self, pipe: Any, factor: float) -> tuple[int, int]:
        height, width = self.native_size()
        if factor == 1.0:
            return height, width
        stride = token_stride(pipe)
        return (
            max(stride, round(height * factor / stride) * stride),
            max(stride, round(width * factor / stride) * stride),
        )

    def _edit(self, request: DemoRequest) -> Any:
        """The Prompt-to-Prompt edit of the request (built from its spec), or ``None``."""
        if request.edit_mode == "none":
            return None
        from ..effect_specs import SpecError, build_edit

        weights = {word: float(scale) for word, scale in (request.weights or {}).items() if float(scale) != 1.0}
        blend = _blend_words(request.local_blend)
        if request.edit_mode == "reweight":
            if not weights:
                raise DemoError("reweight: move at least one word's weight away from 1")
            spec: dict[str, Any] = {"prompt": request.prompt, "reweight": weights}
        else:
            spec = {"source": request.prompt, "target": request.target, "mode": request.edit_mode}
            if weights:
                spec["weights"] = weights
        # Options at the authors' defaults stay out of the spec, so the echoed spec shows what the user changed.
        if request.cross_steps != DEFAULT_CROSS_STEPS:
            spec["cross_steps"] = float(request.cross_steps)
        if request.self_steps != DEFAULT_SELF_STEPS:
            spec["self_steps"] = float(request.self_steps)
        subtract = _blend_words(request.blend_subtract)
        if subtract and not blend:
            raise DemoError(
                f"blend_subtract={request.blend_subtract!r} needs local-blend words: it takes its words' region out "
                "of theirs"
            )
        blend_options: dict[str, Any] = {}
        if request.blend_threshold != DEFAULT_BLEND_THRESHOLD:
            blend_options["threshold"] = float(request.blend_threshold)
        if subtract:
            blend_options["subtract"] = subtract
        if subtract and request.blend_subtract_threshold != DEFAULT_BLEND_THRESHOLD:
            blend_options["subtract_threshold"] = float(request.blend_subtract_threshold)
        if request.blend_radius != DEFAULT_BLEND_RADIUS:
            blend_options["radius"] = int(request.blend_radius)
        if request.blend_variant != "authors":
            blend_options["variant"] = request.blend_variant
        # Without local-blend words the blend's sliders shape nothing (the form shows them whatever the words).
        if blend:
            spec["local_blend"] = {"words": blend, **blend_options} if blend_options else blend
        try:
            return build_edit(spec)
        except SpecError as exc:
            raise DemoError(f"cannot build the edit: {exc.reason}" if exc.field == "edit" else str(exc)) from None

    def _effect_specs(self, pipe: Any, request: DemoRequest) -> list[dict[str, Any]]:
        specs: list[dict[str, Any]] = []
        if request.pag_scale > 0:
            pag: dict[str, Any] = {"type": "PerturbedAttentionGuidance", "scale": float(request.pag_scale)}
            pag["strength"] = float(request.pag_strength)
            if request.head_set:
                if request.pag_layers:
                    raise DemoError("choose PAG layers or a saved head set, not both: the head set names its layers")
                pag.update(self._head_set(pipe, request.head_set))
            else:
                pag["layers"] = self._pag_layers(pipe, request.pag_layers)
            specs.append(pag)
        elif request.head_set:
            raise DemoError("a head set was uploaded but the PAG scale is 0: raise the scale to use it")
        if request.kernel_size:
            specs.append({"type": "NeighborhoodAttention", "kernel_size": int(request.kernel_size)})
        if request.radial:
            family = _family(pipe)
            if family is None or not family.video:
                raise DemoError(
                    f"radial attention acts on video models ({', '.join(VIDEO_FAMILIES)}); "
                    f"{self.model_name} is {'an image model' if family else 'not a model visattn knows'}: "
                    "turn it off"
                )
            specs.append({"type": "RadialAttention"})
        if request.size_factor > 1.0:
            height, width = self.native_size()
            stride = token_stride(pipe)
            train = [max(1, height // stride), max(1, width // stride)]
            if request.decay < 1.0:
                specs.append({"type": "ExtrapolationDecay", "train_size": train, "factor": float(request.decay)})
            if request.entropy_scaling:
                specs.append({"type": "EntropyScaling", "train_tokens": max(2, train[0] * train[1])})
        return specs

    def _pag_layers(self, pipe: Any, chosen: Sequence[str] | None) -> list[str]:
        """The chosen PAG layers, each one of :func:`pag_layer_choices` (an API client may send anything); the
        model's default when none is chosen."""
        if not chosen:
            return list(default_pag_layers(pipe, self._loaded_as))
        if isinstance(chosen, str):
            chosen = [chosen]
        offered = [value for _, value in pag_layer_choices(pipe, self._loaded_as)]
        unknown = [layer for layer in chosen if layer not in offered]
        if unknown:
            raise DemoError(
                f"pag_layers={unknown!r} is not allowed: choose from the layers of {self.model_name}: "
                + ", ".join(repr(value) for value in offered)
            )
        return list(dict.fromkeys(chosen))

    def _head_set(self, pipe: Any, path: str) -> dict[str, Any]:
        from ..guidance import HeadSet

        try:
            heads = HeadSet.load(path).validate(pipe)
        except (OSError, ValueError) as exc:
            raise DemoError(f"the head set file cannot be used: {exc}") from None
        if not heads:
            raise DemoError("the head set file selects no head")
        by_layer = heads.to_heads()
        return {"layers": list(by_layer), "heads": by_layer}

    def _invert(self, pipe: Any, image: Image.Image, request: DemoRequest, report: Progress) -> Any:
        from ..inversion import ddim_inversion, negative_prompt_inversion, null_text_inversion

        guidance = 7.5 if request.guidance is None else float(request.guidance)
        if guidance < 1.0:
            raise DemoError("inverting an upload needs guidance >= 1 (1 turns guidance off)")
        report(0.0, f"inverting the image ({request.inversion} inversion)")
        try:
            if request.inversion == "ddim":  # as visattn edit: the VAE posterior sampled with the run's seed
                generator = torch.Generator("cpu").manual_seed(int(request.seed))
                return ddim_inversion(
                    pipe,
                    image,
                    request.prompt,
                    num_inference_steps=request.steps,
                    guidance_scale=guidance,
                    generator=generator,
                )
            if request.inversion == "null-text":
                return null_text_inversion(
                    pipe,
                    image,
                    request.prompt,
                    num_inference_steps=request.steps,
                    guidance_scale=guidance,
                    inner_steps=NULL_TEXT_INNER_STEPS,
                    progress=False,
                )
            return negative_prompt_inversion(
                pipe, image, request.prompt, num_inference_steps=request.steps, guidance_scale=guidance
            )
        except TypeError as exc:  # not an SD/SDXL pipeline
            raise DemoError(
                f"uploaded images can be edited with Stable Diffusion 1.x/2.x/SDXL models only: {exc}"
            ) from None
        except ValueError as exc:
            raise DemoError(f"the image cannot be inverted: {exc}") from None

    def _call_arguments(
        self, pipe: Any, request: DemoRequest, height: int, width: int, inversion: Any, rows: int
    ) -> dict[str, Any]:
        parameters = _parameters(pipe)
        call: dict[str, Any] = {"num_inference_steps": int(request.steps), "height": height, "width": width}
        if request.guidance is not None and "guidance_scale" in parameters:
            call["guidance_scale"] = float(request.guidance)
        if "use_resolution_binning" in parameters:
            # PixArt would otherwise snap the size to a trained aspect-ratio bin and resize the result: the size
            # asked for (beyond the native one, for extrapolation) must be the size generated.
            call["use_resolution_binning"] = False
        frames = request.frames if request.frames is not None else self.frames
        if frames is not None and "num_frames" in parameters:
            try:
                call["num_frames"] = num_frames_argument(pipe, int(frames))
            except ValueError as exc:  # one frame from a pipeline that always adds one
                raise DemoError(str(exc)) from None
        if inversion is not None:
            call.update(inversion.pipeline_kwargs())
            call["latents"] = inversion.noise.expand(rows, *inversion.noise.shape[1:]).clone()
        return call

    def _generate(
        self,
        pipe: Any,
        prompts: Sequence[str],
        effects: Sequence[Any],
        inversion: Any,
        call: dict[str, Any],
        seed: int,
        report: Progress,
        description: str,
    ) -> list[Any]:
        """One pipeline call with ``effects`` attached; returns one image (or frame list) per prompt."""
        from .. import attach

        call = dict(call)
        if inversion is not None:
            call["latents"] = call["latents"][: len(prompts)].clone()
            if inversion.uncond_embeds is not None:  # plain DDIM regenerates from its noise alone
                effects = [*effects, inversion.effect()]
        total = int(call["num_inference_steps"])
        if "callback_on_step_end" in _parameters(pipe):

            def on_step_end(pipeline: Any, step: int, timestep: Any, kwargs: dict) -> dict:
                report((step + 1) / total, f"{description}: step {step + 1}/{total}")
                return kwargs

            call["callback_on_step_end"] = on_step_end
        generators = [torch.Generator("cpu").manual_seed(seed) for _ in prompts]
        original_scheduler = pipe.scheduler
        if inversion is not None:
            pipe.scheduler = inversion.scheduler()
        report(0.0, description)
        try:
            with attach(pipe, *effects), frame_rounding_quieted(pipe):
                result = pipe(prompt=list(prompts), generator=generators, output_type="pil", **call)
        except ValueError as exc:
            # Settings the model cannot run (a window larger than a layer's grid, a size it refuses, ...).
            raise DemoError(f"the model cannot run these settings: {exc}") from None
        finally:
            pipe.scheduler = original_scheduler
        images = getattr(result, "images", None)
        if images is None:
            images = getattr(result, "frames", None)
        if images is None:
            raise DemoError(f"{type(pipe).__name__} returned neither images nor frames")
        return list(images)

    def _heatmaps(
        self, maps: Any, prompts: Sequence[str], edited: bool, request: DemoRequest, size: tuple[int, int]
    ) -> list[tuple[Any, str]]:
        try:
            per_prompt = maps.heatmaps(size=size)
        except RuntimeError:  # the model has no cross/joint attention the maps could observe
            return []
        if len(prompts) == 1:
            per_prompt = [per_prompt]
        labels = ["source", "edit"] if edited else [""]
        weights = request.weights if request.edit_mode != "none" else {}
        gallery = []
        for label, words in zip(labels, per_prompt):
            for word, picture in words.items():
                caption = f"{label}: {word}" if label else word
                scale = weights.get(word, 1.0) if label == "edit" else 1.0
                if scale != 1.0:
                    caption += f" (x{scale:g})"
                gallery.append((self._displayable(picture), caption))
        return gallery

    def _sheet(
        self, maps: Any, images: Sequence[Any], prompts: Sequence[str], request: DemoRequest, labels: tuple[str, str]
    ) -> Image.Image | None:
        """One labelled sheet of every prompt's per-word maps over its image (the P2P notebooks'
        ``show_cross_attention``), or ``None`` when the model has no cross/joint attention to map."""
        if len(prompts) == 2:
            rows = [f"source: {prompts[0]}", f"edit: {prompts[1]}"]
            title = f"{request.edit_mode} edit: per-word attention maps"
        else:
            rows = [f"{labels[1] if labels[1] else labels[0]}: {prompts[0]}"]
            title = "per-word attention maps"
        try:
            return maps.sheet(images, labels=rows, title=title)
        except RuntimeError:  # nothing was recorded
            return None

    def _outputs(self) -> Path:
        """The folder for files the page serves (videos, downloads): the engine's, or a temporary one, which the
        demo removes when it exits and in which it keeps only the latest :data:`KEPT_RUNS` runs."""
        if self._output_dir is None:
            self._output_dir = Path(tempfile.mkdtemp(prefix="visattn-demo-"))
            self._owns_output_dir = True
            atexit.register(shutil.rmtree, self._output_dir, ignore_errors=True)
        self._output_dir.mkdir(parents=True, exist_ok=True)
        return self._output_dir

    def _prune_outputs(self) -> None:
        """In a temporary output folder, delete the runs (and displayed videos) older than the latest
        :data:`KEPT_RUNS`: a long-running demo would otherwise fill the disk. A folder the user named is kept whole."""
        if not self._owns_output_dir:
            return
        entries = sorted(self._output_dir.iterdir(), key=lambda path: path.stat().st_mtime, reverse=True)
        runs = [path for path in entries if path.is_dir() and path.name.startswith("run-")]
        videos = [path for path in entries if path.suffix == ".webp"]
        for old in runs[KEPT_RUNS:]:
            shutil.rmtree(old, ignore_errors=True)
        for old in videos[2 * KEPT_RUNS :]:
            old.unlink(missing_ok=True)

    def _displayable(self, picture: Any) -> Any:
        """A PIL image as it is; a video (a list of frames) as the path of an animated WebP."""
        if isinstance(picture, Image.Image):
            return picture
        frames = [frame if isinstance(frame, Image.Image) else Image.fromarray(frame) for frame in picture]
        if len(frames) == 1:
            return frames[0]
        path = Path(tempfile.mkstemp(suffix=".webp", dir=self._outputs())[1])
        frames[0].save(path, save_all=True, append_images=frames[1:], duration=125, loop=0, lossless=True)
        return str(path)
