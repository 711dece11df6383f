"""Generation for the evaluation: one seeded call per batch of prompts, outputs as uint8 arrays, and the geometry
(training size and length, latent grid) each study derives its settings from.

Every sample has its own CPU :class:`torch.Generator` seeded with ``seed + i``, so a sample's noise does not depend
on the batch it is generated in, on the device, or on which studies ran before it.
"""

from __future__ import annotations

import inspect
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import visattn

from ..frames import frame_rounding_quieted, num_frames_argument
from .gallery import Gallery
from .metrics import to_uint8


def _generators(seeds: Sequence[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]


def _synchronize(pipe: Any) -> None:
    device = getattr(pipe, "device", torch.device("cpu"))
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pipeline_name(pipe: Any) -> str:
    """The folder or id a pipeline was loaded from, else its class name (a pipeline built in code)."""
    name = getattr(pipe, "name_or_path", None) or getattr(getattr(pipe, "config", None), "_name_or_path", None)
    return str(name) if name else type(pipe).__name__


def effective_guidance(pipe: Any, guidance: float | None) -> float | None:
    """``guidance``, or the pipeline's own default ``guidance_scale`` when it is ``None`` (what the call uses)."""
    if guidance is not None:
        return guidance
    parameter = inspect.signature(type(pipe).__call__).parameters.get("guidance_scale")
    default = None if parameter is None else parameter.default
    return float(default) if isinstance(default, (int, float)) else None


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1")


@dataclass
class ImageModel:
    """A UNet text-to-image pipeline (Stable Diffusion's classes, as the toy image model) and how to call it.

    Attributes:
        size: the training resolution in pixels (``unet.config.sample_size`` latent pixels times the VAE factor,
            unless ``size`` is given), where prompt accuracy, editing and guidance are measured.
        latent_side: latent pixels per side at ``size``: the UNet's top-level attention grid.
    """

    pipe: Any
    steps: int
    guidance: float | None = None
    batch_size: int = 8
    size: int | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        unet = getattr(self.pipe, "unet", None)
        factor = getattr(self.pipe, "vae_scale_factor", None)
        if unet is None or factor is None:
            raise ValueError(
                f"image_pipe must be a UNet text-to-image pipeline (StableDiffusionPipeline's layout, like the toy "
                f"image model); got {type(self.pipe).__name__}"
            )
        _check_positive("steps", self.steps)
        _check_positive("batch_size", self.batch_size)
        self.vae_factor = int(factor)
        if self.size is None:
            sample = unet.config.sample_size
            self.size = int(sample if isinstance(sample, int) else sample[0]) * self.vae_factor
        _check_positive("image size", self.size)
        if self.size % self.vae_factor:
            raise ValueError(f"image size={self.size} must be a multiple of the VAE factor {self.vae_factor}")
        self.latent_side = self.size // self.vae_factor

    def describe(self) -> dict[str, Any]:
        return {
            "model": pipeline_name(self.pipe),
            "pipeline": type(self.pipe).__name__,
            "size": self.size,
            "latent_grid": [self.latent_side, self.latent_side],
            "steps": self.steps,
            "guidance": effective_guidance(self.pipe, self.guidance),
            "device": str(self.pipe.device),
        }

    def _call(self, prompts: list[str], generators: list[torch.Generator], size: int) -> np.ndarray:
        kwargs: dict[str, Any] = {
            "prompt": prompts,
            "generator": generators,
            "height": size,
            "width": size,
            "num_inference_steps": self.steps,
            "output_type": "np",
        }
        if self.guidance is not None:
            kwargs["guidance_scale"] = self.guidance
        return to_uint8(self.pipe(**kwargs).images)

    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        size: int | None = None,
        effects: Sequence = (),
        cache: bool = True,
        done: Callable[[int], Any] | None = None,
    ) -> list[np.ndarray]:
        """One image per prompt (``[H, W, 3]`` uint8), prompt ``i`` from noise seed ``seeds[i]``, with ``effects``
        attached. Plain generations (no effects) are cached unless ``cache=False``: studies that share a baseline
        compute it once. ``done(n)`` is called after each batch of ``n`` samples (a progress bar's ``update``)."""
        if len(prompts) != len(seeds):
            raise ValueError(f"prompts and seeds must have the same length; got {len(prompts)} and {len(seeds)}")
        size = self.size if size is None else size
        keys = [(p, int(s), size) for p, s in zip(prompts, seeds)]
        cache = cache and not effects
        if cache and all(k in self._cache for k in keys):
            if done is not None:
                done(len(keys))
            return [self._cache[k] for k in keys]
        images: list[np.ndarray] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            generators = _generators(seeds[chunk])
            if effects:
                with visattn.attach(self.pipe, *effects):
                    images.extend(self._call(list(prompts[chunk]), generators, size))
            else:
                images.extend(self._call(list(prompts[chunk]), generators, size))
            if done is not None:
                done(len(generators))
        if cache:
            self._cache.update(zip(keys, images))
        return images

    def edit(self, p2p: Any, seed: int, *, effects: Sequence = ()) -> tuple[np.ndarray, np.ndarray]:
        """A Prompt-to-Prompt pair (source image, edited image) from noise ``seed``."""
        with visattn.attach(self.pipe, p2p, *effects):
            source, target = self._call(p2p.prompts, p2p.generator(int(seed)), self.size)
        return source, target

    def seconds(self, prompt: str, seed: int, effects: Sequence, repeats: int) -> float:
        """Median wall time of one generation with ``effects`` over ``repeats`` runs, after one warm-up run."""
        return _median_seconds(
            lambda: self.generate([prompt], [seed], effects=effects, cache=False), self.pipe, repeats
        )

    def self_attention_layers(self, min_side: int) -> list[str]:
        """Names of the UNet's self-attention layers whose grid is at least ``min_side`` latent pixels a side.

        A UNet halves the grid at each level: down block ``i`` sees ``latent_side / 2**i``, up block ``j`` the
        mirror level, the mid block the lowest one.
        """
        from ..attachment import layer_roles

        unet = self.pipe.unet
        levels = len(unet.config.block_out_channels)
        names = []
        for name, role in layer_roles(unet).items():
            if role != "self":
                continue
            match = re.match(r"(down|up)_blocks\.(\d+)\.", name)
            if match:
                index = int(match.group(2))
                level = index if match.group(1) == "down" else levels - 1 - index
            else:  # mid block
                level = levels - 1
            if self.latent_side >> level >= min_side:
                names.append(f"^{re.escape(name)}$")
        return names


@dataclass
class VideoModel:
    """A text-to-video DiT pipeline (Wan's classes, as the toy video model) and how to call it.

    Attributes:
        frames, size: the training clip length (frames) and side (pixels).
        latent_frames: temporal tokens at ``frames`` (after the VAE's temporal compression and the patchify).
        grid: the transformer's token grid ``(frames, height, width)`` at the training size.
    """

    pipe: Any
    steps: int
    frames: int
    size: int
    guidance: float | None = None
    text_tokens: int = 32
    batch_size: int = 8

    def __post_init__(self) -> None:
        transformer = getattr(self.pipe, "transformer", None)
        temporal = getattr(self.pipe, "vae_scale_factor_temporal", None)
        spatial = getattr(self.pipe, "vae_scale_factor_spatial", None)
        patch = getattr(getattr(transformer, "config", None), "patch_size", None)
        if transformer is None or temporal is None or spatial is None or patch is None:
            raise ValueError(
                f"video_pipe must be a text-to-video DiT pipeline (WanPipeline's layout, like the toy video model); "
                f"got {type(self.pipe).__name__}"
            )
        for name in ("steps", "frames", "size", "text_tokens", "batch_size"):
            _check_positive(name, getattr(self, name))
        self.temporal, self.spatial, self.patch = int(temporal), int(spatial), tuple(int(p) for p in patch)
        if (self.frames - 1) % self.temporal:
            raise ValueError(
                f"video frames={self.frames} must be 1 + a multiple of the VAE's temporal factor {self.temporal}"
            )
        if self.size % (self.spatial * self.patch[1]):
            raise ValueError(f"video size={self.size} must be a multiple of {self.spatial * self.patch[1]}")
        self.latent_frames = self.tokens_in_time(self.frames)
        side = self.size // self.spatial
        self.grid = (self.latent_frames, side // self.patch[1], side // self.patch[2])

    def tokens_in_time(self, frames: int) -> int:
        """Temporal tokens of a ``frames``-frame clip."""
        return ((frames - 1) // self.temporal + 1) // self.patch[0]

    def frames_for(self, factor: int) -> int:
        """The clip length (frames) whose temporal tokens are ``factor`` times the training length's."""
        latent = factor * self.latent_frames * self.patch[0]
        return (latent - 1) * self.temporal + 1

    def describe(self) -> dict[str, Any]:
        return {
            "model": pipeline_name(self.pipe),
            "pipeline": type(self.pipe).__name__,
            "frames": self.frames,
            "size": self.size,
            "token_grid": list(self.grid),
            "steps": self.steps,
            "guidance": effective_guidance(self.pipe, self.guidance),
            "device": str(self.pipe.device),
        }

    def _call(self, prompts: list[str], generators: list[torch.Generator], frames: int) -> np.ndarray:
        kwargs: dict[str, Any] = {
            "prompt": prompts,
            "generator": generators,
            "height": self.size,
            "width": self.size,
            "num_frames": num_frames_argument(self.pipe, frames),
            "num_inference_steps": self.steps,
            "max_sequence_length": self.text_tokens,
            "output_type": "np",
        }
        if self.guidance is not None:
            kwargs["guidance_scale"] = self.guidance
        with frame_rounding_quieted(self.pipe):
            return to_uint8(self.pipe(**kwargs).frames)

    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        frames: int | None = None,
        effects: Sequence = (),
        done: Callable[[int], Any] | None = None,
    ) -> list[np.ndarray]:
        """One ``[F, H, W, 3]`` uint8 clip per prompt, prompt ``i`` from noise seed ``seeds[i]``; ``done(n)`` is
        called after each batch of ``n`` samples."""
        if len(prompts) != len(seeds):
            raise ValueError(f"prompts and seeds must have the same length; got {len(prompts)} and {len(seeds)}")
        frames = self.frames if frames is None else frames
        clips: list[np.ndarray] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            generators = _generators(seeds[chunk])
            if effects:
                with visattn.attach(self.pipe, *effects):
                    clips.extend(self._call(list(prompts[chunk]), generators, frames))
            else:
                clips.extend(self._call(list(prompts[chunk]), generators, frames))
            if done is not None:
                done(len(generators))
        return clips

    def seconds(self, prompt: str, seed: int, effects: Sequence, repeats: int) -> float:
        """Median wall time of one generation with ``effects`` over ``repeats`` runs, after one warm-up run."""
        return _median_seconds(lambda: self.generate([prompt], [seed], effects=effects), self.pipe, repeats)


def _median_seconds(run: Callable[[], Any], pipe: Any, repeats: int) -> float:
    _check_positive("timing_repeats", repeats)
    run()  # warm-up: kernel selection, caches, lazy imports
    times = []
    for _ in range(repeats):
        _synchronize(pipe)
        start = time.perf_counter()
        run()
        _synchronize(pipe)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@dataclass
class EvalContext:
    """What every study gets: the settings, the models (``None`` when the run has none), progress bars and the
    gallery its example images go to (``None``: nobody looks, so nothing is kept)."""

    config: Any  # EvalConfig
    image: ImageModel | None = None
    video: VideoModel | None = None
    progress: bool = True
    gallery: Gallery | None = None

    def show(self, section: str, column: str, images: Sequence[np.ndarray], **labels: Any) -> None:
        """Add example images to the gallery: :meth:`Gallery.add`'s arguments (``rows``, ``notes``); a no-op
        without a gallery."""
        if self.gallery is not None:
            self.gallery.add(section, column, images, **labels)

    def bar(self, total: int, description: str) -> Any:
        """A tqdm bar on stderr (disabled when ``progress`` is off); studies update it per sample."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=description, unit="sample", disable=not self.progress, leave=False)

    def seeds(self, count: int) -> list[int]:
        """Noise seeds of samples ``0 .. count - 1``."""
        return [self.config.seed + i for i in range(count)]

    def need_image(self, study: str) -> ImageModel:
        if self.image is None:
            raise ValueError(f"the {study} study needs an image pipeline; pass image_pipe")
        return self.image

    def need_video(self, study: str) -> VideoModel:
        if self.video is None:
            raise ValueError(f"the {study} study needs a video pipeline; pass video_pipe")
        return self.video
