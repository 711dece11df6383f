"""The generation job behind ``visattn generate``: load a pipeline, run it with visattn attached, save the images.

Usable from Python::

    from visattn.generate import generate
    paths = generate("a red circle", steps=4, seed=1, out_dir="outputs")

Reproducibility: image ``i`` of a call with seed ``s`` is drawn from its own CPU generator seeded with ``s + i``
(recorded as ``image_seed``), so any single image can be regenerated with ``seed=s + i, num_images=1``, on any
device. The parameters of every image travel with it (see :mod:`visattn.images`).
"""

from __future__ import annotations

import inspect
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from . import __version__
from .defaults import (
    DEFAULT_MODEL,
    EMBEDDED_MODELS,
    TOY_VIDEO_MODEL,
    load_default_pipeline,
    load_embedded_pipeline,
)
from .diffusers_compat import dtype_kwargs
from .frames import makes_video
from .images import save_image, slugify

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from .effects.base import Effect

#: ``--dtype`` names and the torch dtypes they stand for.
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEVICES = ("auto", "cpu", "cuda")
#: Latent sizes are image sizes divided by the VAE factor (8 for most models), so pixels must be multiples of it.
SIZE_MULTIPLE = 8


class UsageError(ValueError):
    """A request that cannot run as asked (bad parameter, unavailable device, ...); the CLI reports it in one line."""


class ParameterError(UsageError):
    """A parameter value outside what is allowed; keeps the parts so the CLI can phrase it argparse-style."""

    def __init__(self, name: str, value: Any, allowed: str) -> None:
        self.name, self.value, self.allowed = name, value, allowed
        super().__init__(f"{name}={value!r} is not allowed: {allowed}")


class ModelLoadError(UsageError):
    """The model id or folder could not be found or loaded."""


# --- parameter checks (shared by the CLI's argument types and the Python API) -----------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive_int(name: str, value: int) -> int:
    """``value`` if it is an integer >= 1, else a :class:`ParameterError` naming ``name`` and the value."""
    if not _is_int(value) or value < 1:
        raise ParameterError(name, value, "must be a positive integer (1 or more)")
    return value


def check_seed(value: int) -> int:
    """``value`` if it is a non-negative integer (torch seeds are unsigned 64-bit)."""
    if not _is_int(value) or not 0 <= value < 2**64:
        raise ParameterError("seed", value, "must be an integer from 0 to 2**64-1")
    return value


def check_size(name: str, value: int | None) -> int | None:
    """``value`` if it is ``None`` (the pipeline's default) or a positive multiple of :data:`SIZE_MULTIPLE`."""
    if value is not None and (not _is_int(value) or value < SIZE_MULTIPLE or value % SIZE_MULTIPLE):
        raise ParameterError(name, value, f"must be a positive multiple of {SIZE_MULTIPLE} (e.g. 256, 512, 1024)")
    return value


def check_guidance(value: float | None) -> float | None:
    """``value`` as a float if it is ``None`` (the pipeline's default) or a finite number >= 0."""
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ParameterError("guidance", value, "must be a finite number >= 0 (e.g. 7.5)")
    return float(value)


def check_dtype(value: str) -> torch.dtype:
    """The torch dtype for a ``--dtype`` name."""
    if value not in DTYPES:
        raise ParameterError("dtype", value, f"choose from {', '.join(DTYPES)}")
    return DTYPES[value]


def resolve_device(value: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` fails clearly when there is no CUDA device."""
    if value not in DEVICES:
        raise ParameterError("device", value, f"choose from {', '.join(DEVICES)}")
    if value == "auto":
        value = "cuda" if torch.cuda.is_available() else "cpu"
    if value == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device='cuda' is not available: torch {torch.__version__} sees no CUDA device; use cpu")
    return torch.device(value)


# --- loading ------------------------------------------------------------------------------------------------------
@contextmanager
def _quiet_library_logs() -> Iterator[None]:
    """Silence diffusers/transformers/hub warnings while loading.

    Why: a failed load logs several multi-line warnings before raising ("Couldn't connect to the Hub", "Will try
    the local cache", ...); the exception we re-raise already says what went wrong, in one line.
    """
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers", "huggingface_hub")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _reason(exc: BaseException, model: str) -> str:
    """One line saying why ``exc`` happened: its type and first line, minus what our own message already says
    (the model name) and pointers to a stack trace we do not show."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    text = text.removeprefix(f"Cannot load model {model}: ")
    text = text.replace(" Please check out the root cause in the stacktrace above.", "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: weight files that are Python pickles: loading one runs whatever code its author put in it
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: ``--allow-pickle`` help of every command that loads a pipeline
ALLOW_PICKLE_HELP = (
    "also load pickle weights (.bin, .pt, ...) of a model without safetensors; loading a pickle can run code, so "
    "only for models you trust (default: safetensors only)"
)


def pickle_only_components(folder: str | Path) -> dict[str, list[str]]:
    """The components of a local pipeline folder whose weights are pickles only (no ``.safetensors`` file next to
    them), with those file names; ``{}`` when every component with weights has safetensors."""
    found: dict[str, list[str]] = {}
    folder = Path(folder)
    for component in sorted(path for path in folder.iterdir() if path.is_dir()):
        files = [path for path in component.rglob("*") if path.is_file()]
        pickles = sorted(path.name for path in files if path.suffix.lower() in PICKLE_SUFFIXES)
        if pickles and not any(path.suffix.lower() == ".safetensors" for path in files):
            found[component.name] = pickles
    return found


# --- load options: variant, scheduler, LoRA weights, CPU offload ------------------------------------------------
@dataclass(frozen=True)
class LoraWeights:
    """One LoRA to load into a pipeline.

    Args:
        source (str): a local file or folder, or a Hugging Face repository id, as diffusers'
            ``load_lora_weights`` takes it.
        scale (float): the adapter's weight, applied with diffusers' ``set_adapters`` (default 1.0).
    """

    source: str
    scale: float = 1.0

    def record(self) -> dict[str, Any]:
        return {"source": self.source, "scale": self.scale}


def parse_lora(text: str) -> LoraWeights:
    """``PATH_OR_ID[:SCALE]`` as a :class:`LoraWeights`, e.g. ``owner/style-lora:0.8`` or ``./my-lora``.

    The scale is split at the last ``:`` only when what follows is a number, so ``C:\\loras\\x`` and ids without
    a scale stay whole.
    """
    if not isinstance(text, str) or not text.strip():
        raise ParameterError("lora", text, "must be a LoRA file, folder or hub id, optionally with :SCALE")
    source, sep, tail = text.rpartition(":")
    if sep and source:
        try:
            scale = float(tail)
        except ValueError:
            return LoraWeights(text)
        if not math.isfinite(scale):
            raise ParameterError("lora", text, "the scale after ':' must be a finite number (e.g. :0.8)")
        return LoraWeights(source, scale)
    return LoraWeights(text)


@dataclass(frozen=True)
class LoadOptions:
    """How :func:`load_pipeline` sets up a pipeline beyond its model, device and dtype (the CLI's ``--variant``,
    ``--scheduler``, ``--lora`` and ``--offload``).

    Args:
        variant (str | None): the weights variant ``from_pretrained`` loads (``"fp16"`` reads
            ``diffusion_pytorch_model.fp16.safetensors``); ``None``: the default weights. Hub ids and folders only.
        scheduler (str | None): a diffusers scheduler class name (``"EulerDiscreteScheduler"``), built with
            ``from_config(pipe.scheduler.config)`` so the model's own schedule settings are kept; ``None``: the
            pipeline's scheduler.
        loras (tuple[LoraWeights, ...]): LoRAs loaded with ``load_lora_weights`` and weighted with
            ``set_adapters`` (default: none).
        offload (bool): ``enable_model_cpu_offload`` instead of moving the pipeline to the device: each component
            moves to the GPU only while it runs (default False). Needs a CUDA device.
    """

    variant: str | None = None
    scheduler: str | None = None
    loras: tuple[LoraWeights, ...] = field(default_factory=tuple)
    offload: bool = False

    def record(self) -> dict[str, Any]:
        """What goes into every output's parameters (the scheduler is recorded as the class that ran)."""
        return {"variant": self.variant, "offload": self.offload, "loras": [lora.record() for lora in self.loras]}


def add_load_arguments(parser: Any) -> None:
    """``--variant``, ``--scheduler``, ``--lora`` and ``--offload`` on an argparse parser (generate, batch)."""
    import argparse

    def lora_type(text: str) -> LoraWeights:
        try:
            return parse_lora(text)
        except ParameterError as exc:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: {exc.allowed}") from None

    parser.add_argument(
        "--variant", metavar="NAME", help="weights variant of a hub or folder model, e.g. fp16 (default: the main one)"
    )
    parser.add_argument(
        "--scheduler",
        metavar="CLASS",
        help="a diffusers scheduler class, e.g. EulerDiscreteScheduler, built from the model's scheduler config "
        "(default: the model's own; a wrong name lists the ones that fit)",
    )
    parser.add_argument(
        "--lora",
        action="append",
        type=lora_type,
        default=[],
        metavar="PATH_OR_ID[:SCALE]",
        help="load a LoRA (file, folder or hub id) with diffusers' load_lora_weights, weighted SCALE (default 1) "
        "with set_adapters; repeat for several",
    )
    parser.add_argument(
        "--offload",
        action="store_true",
        help="diffusers' enable_model_cpu_offload: weights wait on the CPU, each component moves to the GPU while "
        "it runs (less GPU memory, a little slower; needs a GPU)",
    )


def load_options_from(args: Any) -> LoadOptions:
    """The :class:`LoadOptions` of arguments parsed with :func:`add_load_arguments`."""
    return LoadOptions(variant=args.variant, scheduler=args.scheduler, loras=tuple(args.lora), offload=args.offload)


def set_scheduler(pipe: DiffusionPipeline, name: str) -> None:
    """Replace ``pipe.scheduler`` with the diffusers scheduler class ``name``, from the current one's config.

    Raises:
        UsageError: ``name`` is not a scheduler the current one declares compatible (the message lists them).
    """
    import diffusers
    from diffusers import SchedulerMixin

    current = getattr(pipe, "scheduler", None)
    if current is None:
        raise UsageError(f"{type(pipe).__name__} has no scheduler to replace; leave --scheduler unset")
    # diffusers' own list of the schedulers that can take this one's config; for a scheduler without one (some
    # flow-matching schedulers), any diffusers scheduler class is tried.
    compatible = sorted({cls.__name__ for cls in current.compatibles} | {type(current).__name__})
    by_lower = {known.lower(): known for known in compatible}
    name = by_lower.get(name.lower(), name) if isinstance(name, str) else name
    cls = getattr(diffusers, name, None) if isinstance(name, str) and name.isidentifier() else None
    is_scheduler = isinstance(cls, type) and issubclass(cls, SchedulerMixin)
    if not is_scheduler or (len(compatible) > 1 and name not in compatible):
        raise UsageError(
            f"scheduler {name!r} is not a diffusers scheduler {type(pipe).__name__} can use; "
            f"choose from {', '.join(compatible)} (current: {type(current).__name__})"
        )
    pipe.scheduler = cls.from_config(current.config)


def load_loras(pipe: DiffusionPipeline, loras: Sequence[LoraWeights], *, allow_pickle: bool = False) -> None:
    """Load ``loras`` as named adapters (``lora0``, ``lora1``, ...) and weight them with ``set_adapters``.

    ``set_adapters`` rather than ``fuse_lora``: the weights stay separate, so several LoRAs combine with their own
    scales and ``pipe.unload_lora_weights()`` restores the model exactly (fusing changes the base weights).

    Raises:
        UsageError: the pipeline cannot load LoRAs.
        ModelLoadError: a LoRA cannot be found or does not fit the model.
    """
    if not loras:
        return
    if not hasattr(pipe, "load_lora_weights"):
        raise UsageError(f"{type(pipe).__name__} cannot load LoRA weights (diffusers has no LoRA loader for it)")
    names = []
    for index, lora in enumerate(loras):
        name = f"lora{index}"
        try:
            with _quiet_library_logs():
                # use_safetensors=True refuses pickle files; None lets diffusers fall back to them.
                pipe.load_lora_weights(lora.source, adapter_name=name, use_safetensors=None if allow_pickle else True)
        except Exception as exc:  # any failure inside the loader means "this LoRA cannot be used here"
            raise ModelLoadError(f"cannot load LoRA {lora.source!r}: {_reason(exc, lora.source)}") from exc
        names.append(name)
    pipe.set_adapters(names, adapter_weights=[lora.scale for lora in loras])


def check_offload(device: torch.device, offload: bool) -> None:
    """Refuse CPU offload onto the CPU, before any weights are loaded."""
    if offload and device.type == "cpu":
        raise UsageError(
            "--offload needs a GPU: it keeps the weights on the CPU and moves each component to the GPU while it "
            "runs; on the CPU, leave it unset"
        )


def place_pipeline(pipe: DiffusionPipeline, device: torch.device, offload: bool = False) -> DiffusionPipeline:
    """``pipe`` on ``device``, or with diffusers' model CPU offload onto it (``offload``; GPU only)."""
    check_offload(device, offload)
    if not offload:
        return pipe.to(device)
    pipe.enable_model_cpu_offload(device=device)
    return pipe


def load_pipeline(
    model: str | None,
    device: torch.device,
    dtype: torch.dtype,
    *,
    allow_pickle: bool = False,
    options: LoadOptions | None = None,
) -> DiffusionPipeline:
    """The embedded default (``model`` None), a pipeline shipped with visattn (:data:`EMBEDDED_MODELS`), or a
    diffusers model id / local folder.

    Weights load from safetensors only unless ``allow_pickle``: pickle files (``.bin``, ``.pt``, ...) can run
    arbitrary code when loaded, so a folder or hub repository that has only those is refused by name. The
    pipelines shipped with visattn are its own files and are loaded either way. ``options`` (a :class:`LoadOptions`)
    picks a weights variant, swaps the scheduler, loads LoRAs and offloads to the CPU; the scheduler and LoRAs are
    set before the pipeline is placed on ``device``.

    Raises:
        UsageError: an option the model cannot take (a variant for an embedded pipeline, an unknown scheduler,
            offload without a GPU, LoRAs for a pipeline without a LoRA loader).
        ModelLoadError: the folder does not exist, is not a diffusers pipeline, or has pickle weights only (without
            ``allow_pickle``), or the id cannot be loaded (unknown, offline and not cached, no safetensors weights,
            missing component library, ...).
    """
    options = options or LoadOptions()
    check_offload(device, options.offload)
    if model is None or model in EMBEDDED_MODELS:
        if options.variant is not None:
            raise UsageError(
                f"--variant {options.variant!r} selects weight files of a hub or folder model; "
                f"{model or DEFAULT_MODEL} is shipped with visattn and has one set of weights"
            )
        # Loaded on the CPU: LoRAs and the scheduler are set there, then the pipeline is placed (or offloaded).
        pipe = load_default_pipeline("cpu", dtype) if model is None else load_embedded_pipeline(model, "cpu", dtype)
        return _finish(pipe, device, options, allow_pickle)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(
                f"cannot load model {model!r}: the folder has no model_index.json, so it is not a diffusers pipeline"
            )
        pickles = {} if allow_pickle else pickle_only_components(path)
        if pickles:
            listed = "; ".join(f"{name}/: {', '.join(files)}" for name, files in pickles.items())
            raise ModelLoadError(
                f"cannot load model {model!r}: weights in pickle files only ({listed}), which can run code when "
                "loaded; convert them to safetensors, or pass --allow-pickle (allow_pickle=True) if you trust them"
            )
        source = str(path)
    elif path.exists():
        raise ModelLoadError(f"cannot load model {model!r}: it is a file; pass a diffusers pipeline folder or id")
    else:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(model)
        except HFValidationError:
            # Checked before diffusers so a mistyped path gets a plain answer instead of a hub lookup.
            raise ModelLoadError(
                f"cannot load model {model!r}: no such folder, and not a valid Hugging Face model id (owner/name)"
            ) from None
        source = model
    from diffusers import DiffusionPipeline
    from huggingface_hub import constants

    # use_safetensors=True: diffusers and transformers refuse a component without safetensors weights instead of
    # falling back to torch.load on a pickle; None is their default (safetensors first, pickles as a fallback).
    safetensors = None if allow_pickle else True
    try:
        with _quiet_library_logs():
            pipe = DiffusionPipeline.from_pretrained(
                source, use_safetensors=safetensors, variant=options.variant, **dtype_kwargs(dtype)
            )
    except Exception as exc:  # any failure inside from_pretrained means "this model cannot be loaded here"
        hint = " (HF_HUB_OFFLINE is set: only the local cache was searched)" if constants.HF_HUB_OFFLINE else ""
        if not allow_pickle and "safetensors" in str(exc):
            hint += (
                " (visattn loads safetensors weights only; pass --allow-pickle (allow_pickle=True) to also load "
                "pickle weights, if you trust this model)"
            )
        raise ModelLoadError(f"cannot load model {model!r}: {_reason(exc, model)}{hint}") from exc
    return _finish(pipe, device, options, allow_pickle)


def _finish(
    pipe: DiffusionPipeline, device: torch.device, options: LoadOptions, allow_pickle: bool
) -> DiffusionPipeline:
    """Scheduler, LoRAs, then placement: what :func:`load_pipeline` does after the weights are loaded."""
    if options.scheduler is not None:
        set_scheduler(pipe, options.scheduler)
    load_loras(pipe, options.loras, allow_pickle=allow_pickle)
    return place_pipeline(pipe, device, options.offload)


# --- running ------------------------------------------------------------------------------------------------------
@contextmanager
def _progress_to_stderr(pipe: DiffusionPipeline, enabled: bool) -> Iterator[None]:
    """Send the pipeline's tqdm bar to the *current* stderr (stdout is kept for the written paths); restore after."""
    previous = dict(getattr(pipe, "_progress_bar_config", None) or {})
    pipe.set_progress_bar_config(**{**previous, "file": sys.stderr, "disable": not enabled})
    try:
        yield
    finally:
        pipe.set_progress_bar_config(**previous)


def call_arguments(pipe: DiffusionPipeline, requested: dict[str, Any]) -> dict[str, Any]:
    """``requested`` (None = "pipeline default") checked against the pipeline's ``__call__`` signature.

    Returns the arguments to pass; raises :class:`UsageError` when a value was given for a parameter the pipeline
    does not take, rather than silently ignoring it.
    """
    parameters = inspect.signature(pipe.__call__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    call = {}
    for name, value in requested.items():
        if value is None:
            continue
        if name not in parameters and not takes_any:
            raise UsageError(f"{type(pipe).__name__} does not take {name}; leave it unset for this model")
        call[name] = value
    return call


def signature_default(pipe: DiffusionPipeline, name: str) -> Any:
    """The default of ``name`` in the pipeline's ``__call__`` (to record the value that was actually used)."""
    parameter = inspect.signature(pipe.__call__).parameters.get(name)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        return None
    return parameter.default


def pipeline_name(pipe: DiffusionPipeline) -> str:
    """What a ready pipeline was loaded from, or its class name when it was built in code."""
    return getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path") or type(pipe).__name__


def weights_of(pipe: DiffusionPipeline) -> tuple[str | None, str | None]:
    """``(device, dtype name)`` of the denoiser's weights: what the call really ran on, whoever loaded it."""
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    first = next(denoiser.parameters(), None) if denoiser is not None else None
    if first is None:
        return None, None
    name = next((key for key, dtype in DTYPES.items() if dtype == first.dtype), str(first.dtype).removeprefix("torch."))
    return str(first.device), name


def _warn_unknown_toy_words(model: str, prompt: str) -> None:
    """Say which words of ``prompt`` the toy model does not know (it draws arbitrary shapes for them)."""
    from .toy.vocab import unknown_words

    unknown = unknown_words(prompt)
    if unknown:
        print(
            f"visattn: {model} knows only the words of its training captions; unknown here: {', '.join(unknown)} "
            "(its grammar: visattn generate --help)",
            file=sys.stderr,
        )


def generate(
    prompt: str,
    *,
    pipeline: DiffusionPipeline | None = None,
    model: str | None = None,
    negative_prompt: str | None = None,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    height: int | None = None,
    width: int | None = None,
    num_images: int = 1,
    out_dir: str | Path = "outputs",
    effects: Sequence[Effect] = (),
    device: str = "auto",
    dtype: str = "fp32",
    progress: bool = True,
    allow_pickle: bool = False,
    variant: str | None = None,
    scheduler: str | None = None,
    loras: Sequence[str | LoraWeights] = (),
    offload: bool = False,
) -> list[Path]:
    """Generate ``num_images`` images for ``prompt``, save them with their parameters, and return the PNG paths.

    Args:
        prompt: the text prompt.
        pipeline: a ready pipeline, used as-is (``device``/``dtype`` are not applied to it).
        model: a diffusers model id or local folder to load; with neither ``pipeline`` nor ``model``, the embedded
            default (:data:`visattn.defaults.DEFAULT_MODEL`). With ``pipeline``, only the name recorded.
        negative_prompt: for pipelines that take one.
        seed: base seed; image ``i`` uses ``seed + i``.
        steps: denoising steps; ``None`` = the pipeline's default.
        guidance: classifier-free guidance scale; ``None`` = the pipeline's default.
        height, width: image size in pixels, multiples of 8; ``None`` = the pipeline's default.
        num_images: how many images (one batch).
        out_dir: folder for ``{slug(prompt)}-seed{seed}-{i}.png`` and ``.json``; created if missing.
        effects: visattn effects, attached for the call with :func:`visattn.attach`.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``, for a pipeline this function loads.
        dtype: ``"fp32"``, ``"fp16"`` or ``"bf16"``, for a pipeline this function loads.
        progress: show the pipeline's progress bar (on stderr).
        allow_pickle: also load pickle weights of a ``model`` without safetensors (see :func:`load_pipeline`).
        variant, scheduler, loras, offload: for a pipeline this function loads (see :class:`LoadOptions`); a LoRA
            is a :class:`LoraWeights` or ``"PATH_OR_ID[:SCALE]"``. Recorded in every image's parameters.

    Raises:
        UsageError: a parameter is out of range, the device is unavailable, or the pipeline has no image output.
        ModelLoadError: ``model`` cannot be found or loaded.
    """
    check_seed(seed)
    check_positive_int("num_images", num_images)
    if seed + num_images > 2**64:  # image i uses seed + i, which must still be a valid torch seed
        raise ParameterError("seed", seed, f"must leave room for {num_images} consecutive seeds below 2**64")
    if steps is not None:
        check_positive_int("steps", steps)
    guidance = check_guidance(guidance)
    check_size("height", height)
    check_size("width", width)
    torch_dtype = check_dtype(dtype)
    if isinstance(loras, (str, LoraWeights)):
        loras = (loras,)  # one LoRA given as such, not a sequence of characters
    options = LoadOptions(
        variant=variant,
        scheduler=scheduler,
        loras=tuple(lora if isinstance(lora, LoraWeights) else parse_lora(lora) for lora in loras),
        offload=offload,
    )

    load_seconds = None
    if pipeline is not None and options != LoadOptions():
        raise UsageError("variant, scheduler, loras and offload apply to a pipeline generate loads; set them on yours")
    if pipeline is None:
        started = time.perf_counter()
        pipeline = load_pipeline(model, resolve_device(device), torch_dtype, allow_pickle=allow_pickle, options=options)
        load_seconds = time.perf_counter() - started
        model_name = model or DEFAULT_MODEL
    else:
        model_name = model or pipeline_name(pipeline)

    if model_name in (DEFAULT_MODEL, TOY_VIDEO_MODEL):
        _warn_unknown_toy_words(model_name, prompt)
    if makes_video(pipeline):
        # Checked before the call: a video pipeline would run to the end before showing it has no images.
        raise UsageError(
            f"{type(pipeline).__name__} makes videos and generate saves images; generate videos with `visattn batch` "
            '(a job with "frames") or `visattn demo`'
        )
    call = call_arguments(
        pipeline,
        {
            "negative_prompt": negative_prompt,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "height": height,
            "width": width,
        },
    )
    # CPU generators: the same seed gives the same starting noise on every device.
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(num_images)]

    started = time.perf_counter()
    from .attachment import attach  # diffusers loads here, not when the CLI parses arguments

    with _progress_to_stderr(pipeline, progress), attach(pipeline, *effects):
        result = pipeline(prompt, num_images_per_prompt=num_images, generator=generators, output_type="pil", **call)
    generate_seconds = time.perf_counter() - started
    images = getattr(result, "images", None)
    if images is None:
        raise UsageError(f"{type(pipeline).__name__} returns no images (a video pipeline?); generate saves images only")

    weights_device, weights_dtype = weights_of(pipeline)
    base = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "seed": seed,
        "num_images": num_images,
        "steps": steps if steps is not None else signature_default(pipeline, "num_inference_steps"),
        "guidance": guidance if guidance is not None else signature_default(pipeline, "guidance_scale"),
        "model": model_name,
        "pipeline": type(pipeline).__name__,
        "scheduler": type(pipeline.scheduler).__name__ if getattr(pipeline, "scheduler", None) else None,
        **options.record(),
        "device": weights_device,
        "dtype": weights_dtype,
        "effects": [repr(effect) for effect in effects],
        "visattn_version": __version__,
        "torch_version": torch.__version__,
        "diffusers_version": _diffusers_version(),
    }
    timing = {
        "load_seconds": load_seconds,
        "generate_seconds": generate_seconds,
        "seconds_per_image": generate_seconds / len(images),
    }
    stem = f"{slugify(prompt)}-seed{seed}"
    paths = []
    for i, image in enumerate(images):
        # The size recorded is the size written, which is the pipeline default when height/width were not given.
        metadata = {**base, "image_index": i, "image_seed": seed + i, "width": image.width, "height": image.height}
        paths.append(save_image(image, out_dir, f"{stem}-{i}", metadata, extra={"timing": timing}))
    return paths


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__
