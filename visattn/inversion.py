"""Real-image inversion for Stable Diffusion pipelines: DDIM, null-text and negative-prompt inversion.

Editing a real image with attention control (Prompt-to-Prompt and friends) needs the noise that regenerates it:

* **DDIM inversion** (Song et al., 2021, "Denoising Diffusion Implicit Models"; Dhariwal & Nichol, 2021, "Diffusion
  Models Beat GANs on Image Synthesis"): run the deterministic DDIM update backwards from the VAE latent ``z_0``
  to ``z_T``, evaluating the model at each step's target timestep (the standard approximation
  ``eps(z_{t-1}, t) ~ eps(z_t, t)``). Regenerating from ``z_T`` with the same prompt and no guidance nearly
  reproduces the image; with classifier-free guidance the error grows with the guidance scale.
* **Null-text inversion** (Mokady, Hertz et al., 2022, "Null-text Inversion for Editing Real Images using Guided
  Diffusion Models"): keep the guidance-free DDIM trajectory as a pivot and, step by step, optimize the
  unconditional ("null-text") embedding with Adam so that the guided DDIM step from the current latent lands on
  the pivot's next latent. Generation then uses the per-step optimized embeddings in place of the empty prompt's.
* **Negative-prompt inversion** (Miyake et al., 2023, "Negative-prompt Inversion: Fast Image Inversion for Editing
  with Text-guided Diffusion Models"): no optimization; the source prompt's own embedding replaces the
  unconditional one at every step, so the guided prediction equals the conditional one on the source branch and
  regeneration follows the guidance-free DDIM trajectory.

Every inversion returns an :class:`Inversion`; ``pipe(prompt, **inversion.pipeline_kwargs())`` with
``inversion.effect()`` attached (``visattn.attach(pipe, inversion.effect(), other_effects...)``) regenerates or
edits the image, and :func:`reconstruct` does the plain regeneration in one call. Regeneration must sample with
DDIM over the same schedule: :meth:`Inversion.scheduler` returns that scheduler (built from the pipeline's own
scheduler config), and the effect refuses to run under any other scheduler or step count.

Supported: ``StableDiffusionPipeline``-like pipelines (SD 1.x/2.x, epsilon or v-prediction) and
``StableDiffusionXLPipeline``-like ones (SDXL: the pooled text embedding and size conditioning are handled too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler

from .effects.base import Effect

METHODS = ("ddim", "null-text", "negative-prompt")


# --- the result ----------------------------------------------------------------------------------------------------
@dataclass
class Inversion:
    """The result of an inversion: the latent trajectory, the prompt embeddings, and how to regenerate.

    Attributes:
        method: ``"ddim"``, ``"null-text"`` or ``"negative-prompt"``.
        prompt: the source prompt the image was inverted with.
        latents: the trajectory ``z_0 .. z_T`` (``num_inference_steps + 1`` tensors ``[1, C, h, w]``): ``z_0`` is the
            VAE latent of the image, ``z_T`` the noise to generate from.
        prompt_embeds: the source prompt's text embedding ``[1, L, D]``.
        uncond_embeds: per sampling step ``i`` (``i = 0`` denoises ``z_T``), the unconditional embedding
            ``[1, L, D]`` to use in place of the empty prompt's; ``None`` for plain DDIM inversion.
        uncond_pooled: SDXL only: the pooled embedding for the unconditional rows (negative-prompt inversion), or
            ``None`` to keep the pipeline's.
        num_inference_steps, guidance_scale: the schedule length and the guidance scale it was inverted for.
        height, width: the image size in pixels.
        scheduler_config: config of the DDIM scheduler the trajectory belongs to.
        losses: null-text inversion only: the last reconstruction loss of each step's optimization.
    """

    method: str
    prompt: str
    latents: tuple[torch.Tensor, ...]
    prompt_embeds: torch.Tensor
    uncond_embeds: tuple[torch.Tensor, ...] | None
    num_inference_steps: int
    guidance_scale: float
    height: int
    width: int
    scheduler_config: dict[str, Any] = field(repr=False)
    uncond_pooled: torch.Tensor | None = None
    losses: tuple[float, ...] = ()

    @property
    def noise(self) -> torch.Tensor:
        """``z_T``: the latents to pass as ``latents=`` to the pipeline."""
        return self.latents[-1]

    @property
    def image_latents(self) -> torch.Tensor:
        """``z_0``: the VAE latent of the inverted image (scaled like the pipeline's latents)."""
        return self.latents[0]

    def scheduler(self) -> DDIMScheduler:
        """A fresh DDIM scheduler for regeneration (``pipe.scheduler = inversion.scheduler()``)."""
        return DDIMScheduler.from_config(self.scheduler_config)

    def pipeline_kwargs(self) -> dict[str, Any]:
        """``latents``, ``num_inference_steps``, ``guidance_scale``, ``height`` and ``width`` for the pipeline call.

        The latents are a copy, so the pipeline can never modify the stored trajectory.
        """
        return {
            "latents": self.noise.clone(),
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "height": self.height,
            "width": self.width,
        }

    def effect(self) -> UnconditionalEmbeddings:
        """The effect that feeds the inverted unconditional embeddings to the denoiser (attach it with others).

        Raises:
            ValueError: plain DDIM inversion has no unconditional embeddings to swap in.
        """
        if self.uncond_embeds is None:
            raise ValueError(
                "a plain DDIM inversion has no per-step unconditional embeddings; regenerate with "
                "pipeline_kwargs() alone, or use null_text_inversion / negative_prompt_inversion"
            )
        return UnconditionalEmbeddings(self.uncond_embeds, pooled=self.uncond_pooled)

    def __repr__(self) -> str:
        shape = tuple(self.noise.shape)
        return (
            f"Inversion(method={self.method!r}, prompt={self.prompt!r}, steps={self.num_inference_steps}, "
            f"guidance_scale={self.guidance_scale}, size={self.width}x{self.height}, latents={shape})"
        )


# --- the effect ----------------------------------------------------------------------------------------------------
class UnconditionalEmbeddings(Effect):
    """Replace the unconditional rows of the denoiser's text input by per-step embeddings (null-text inversion).

    Mokady et al., 2022 (null-text inversion) and Miyake et al., 2023 (negative-prompt inversion) both regenerate
    with a replaced unconditional embedding. At denoising step ``i`` (``state.step.index``) every batch row of the
    pipeline's ``"uncond"`` branch gets ``embeddings[i]``, whatever the number of prompts (a Prompt-to-Prompt edit
    with prompts ``[source, target]`` has two unconditional rows); conditional rows and rows other effects add
    are left alone. It acts on no attention call, so it composes with every other effect.

    Args:
        embeddings: one ``[1, L, D]`` (or ``[L, D]``) tensor per denoising step.
        pooled: SDXL: a ``[1, P]`` pooled embedding for the unconditional rows of ``added_cond_kwargs``, or ``None``.

    Raises (at call time):
        ValueError: the pipeline does not sample with DDIM, runs another number of steps, or its text
            embeddings have another shape.
    """

    roles = ()
    frozen_parameters = True

    def __init__(self, embeddings: Sequence[torch.Tensor], pooled: torch.Tensor | None = None) -> None:
        super().__init__()
        embeddings = tuple(embeddings)
        if not embeddings:
            raise ValueError("embeddings must hold one tensor per denoising step; got none")
        for i, embedding in enumerate(embeddings):
            if not isinstance(embedding, torch.Tensor) or embedding.dim() not in (2, 3):
                raise ValueError(f"embeddings[{i}] must be a [1, L, D] or [L, D] tensor; got {_describe(embedding)}")
            if embedding.dim() == 3 and embedding.shape[0] != 1:
                raise ValueError(f"embeddings[{i}] must hold one embedding ([1, L, D]); got {tuple(embedding.shape)}")
        self.embeddings = tuple(e.reshape(1, *e.shape[-2:]).detach() for e in embeddings)
        self.pooled = None if pooled is None else pooled.reshape(1, -1).detach()

    def wrap_denoiser(self, forward, args, kwargs, state):
        layout = state.batch
        if layout is None or "uncond" not in layout.names:
            return forward(*args, **kwargs)
        step = state.step
        pipeline = state.pipeline
        if pipeline is not None and not isinstance(getattr(pipeline, "scheduler", None), DDIMScheduler):
            raise ValueError(
                f"the inverted embeddings belong to a DDIM trajectory, but the pipeline samples with "
                f"{type(pipeline.scheduler).__name__}; set pipe.scheduler = inversion.scheduler() first"
            )
        if step.index is None:
            raise ValueError(
                "UnconditionalEmbeddings needs the denoising step index: attach the pipeline, not its unet"
            )
        if step.total != len(self.embeddings):
            raise ValueError(
                f"num_inference_steps={step.total} does not match the inversion, which has {len(self.embeddings)} "
                "steps; pass num_inference_steps from inversion.pipeline_kwargs()"
            )
        rows = torch.cat([torch.arange(b.start, b.stop) for b in layout.branches if b.name == "uncond"])
        args, kwargs = list(args), dict(kwargs)
        text = _get_argument(args, kwargs, "encoder_hidden_states", 2)
        embedding = self.embeddings[step.index]
        if text is None or text.shape[0] != layout.batch_size or text.shape[1:] != embedding.shape[1:]:
            raise ValueError(
                f"the denoiser's encoder_hidden_states {_describe(text)} do not fit the inverted embeddings "
                f"{tuple(embedding.shape[1:])} for a batch of {layout.batch_size}"
            )
        text = text.clone()
        text[rows.to(text.device)] = embedding.to(text).expand(len(rows), -1, -1)
        _set_argument(args, kwargs, "encoder_hidden_states", 2, text)
        added = kwargs.get("added_cond_kwargs")
        if self.pooled is not None and isinstance(added, dict) and "text_embeds" in added:
            pooled = added["text_embeds"].clone()
            pooled[rows.to(pooled.device)] = self.pooled.to(pooled).expand(len(rows), -1)
            kwargs["added_cond_kwargs"] = {**added, "text_embeds": pooled}
        return forward(*args, **kwargs)

    def __repr__(self) -> str:
        return f"UnconditionalEmbeddings(steps={len(self.embeddings)}, pooled={self.pooled is not None})"


def _get_argument(args: list, kwargs: dict, name: str, position: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[position] if len(args) > position else None


def _set_argument(args: list, kwargs: dict, name: str, position: int, value: Any) -> None:
    if name in kwargs or len(args) <= position:
        kwargs[name] = value
    else:
        args[position] = value


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    return repr(value) if value is None else type(value).__name__


# --- inputs --------------------------------------------------------------------------------------------------------
def _check_pipeline(pipe: Any) -> bool:
    """Validate an SD-family pipeline; returns whether it is SDXL-like (pooled text and size conditioning)."""
    unet = getattr(pipe, "unet", None)
    missing = [name for name in ("unet", "vae", "scheduler", "encode_prompt") if getattr(pipe, name, None) is None]
    if missing or type(unet).__name__ != "UNet2DConditionModel":
        raise TypeError(
            "inversion supports Stable Diffusion 1.x/2.x and SDXL pipelines (a UNet2DConditionModel with a VAE, "
            f"a scheduler and encode_prompt); got {type(pipe).__name__}"
        )
    if getattr(unet.config, "time_cond_proj_dim", None) is not None:
        raise TypeError("inversion does not support guidance-embedded (LCM-style) UNets with time_cond_proj_dim")
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    if prediction not in ("epsilon", "v_prediction"):
        raise ValueError(f"scheduler prediction_type={prediction!r} is not supported; use epsilon or v_prediction")
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


def _check_arguments(prompt: Any, num_inference_steps: Any, guidance_scale: Any) -> None:
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be one string (the image's source prompt); got {type(prompt).__name__}")
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be an int >= 1; got {num_inference_steps!r}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not guidance_scale >= 1:
        raise ValueError(f"guidance_scale must be a number >= 1 (1 turns guidance off); got {guidance_scale!r}")


def image_to_tensor(image: Any, multiple: int = 8) -> torch.Tensor:
    """An RGB image as a ``[1, 3, H, W]`` float tensor in ``[-1, 1]``, the VAE's input range.

    Args:
        image: a ``PIL.Image``; a numpy array ``[H, W, 3]`` (``uint8``, or float in ``[0, 1]``); or a tensor
            ``[3, H, W]`` / ``[1, 3, H, W]`` (``uint8``, or float in ``[0, 1]``).
        multiple: height and width must be multiples of this (the VAE's scale factor).

    Raises:
        TypeError: ``image`` is not an image.
        ValueError: wrong shape, value range, or size.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)
    elif isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image: a numpy image must be [H, W, 3]; got shape {image.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        tensor = image.detach()
        if tensor.dim() == 4:
            if tensor.shape[0] != 1:
                raise ValueError(f"image: invert one image at a time; got a batch of {tensor.shape[0]}")
            tensor = tensor[0]
        if tensor.dim() != 3 or tensor.shape[0] != 3:
            raise ValueError(f"image: a tensor image must be [3, H, W] or [1, 3, H, W]; got shape {tuple(image.shape)}")
    else:
        raise TypeError(f"image must be a PIL.Image, a numpy array or a torch tensor; got {type(image).__name__}")
    if tensor.dtype == torch.uint8:
        tensor = tensor.float() / 255.0
    elif not tensor.is_floating_point():
        raise ValueError(f"image: values must be uint8 or floats in [0, 1]; got dtype {tensor.dtype}")
    tensor = tensor.float()
    low, high = float(tensor.min()), float(tensor.max())
    if low < 0.0 or high > 1.0 or not math.isfinite(low + high):
        raise ValueError(f"image: float values must lie in [0, 1]; got the range [{low:.3g}, {high:.3g}]")
    height, width = tensor.shape[-2:]
    if height % multiple or width % multiple or height == 0 or width == 0:
        raise ValueError(
            f"image: height and width must be positive multiples of {multiple} (the VAE's scale factor); "
            f"got {width}x{height} (width x height)"
        )
    return (tensor * 2.0 - 1.0).unsqueeze(0)


@dataclass
class _Prompt:
    """The text conditioning of one prompt, as the pipeline would build it (unconditional first)."""

    cond: torch.Tensor
    uncond: torch.Tensor
    cond_added: dict[str, torch.Tensor] | None = None
    uncond_added: dict[str, torch.Tensor] | None = None

    def pair(self, uncond: torch.Tensor | None = None) -> tuple[torch.Tensor, dict | None]:
        text = torch.cat([self.uncond if uncond is None else uncond, self.cond])
        if self.cond_added is None:
            return text, None
        added = {key: torch.cat([self.uncond_added[key], self.cond_added[key]]) for key in self.cond_added}
        return text, added


def _encode_prompt(pipe: Any, prompt: str, sdxl: bool, height: int, width: int) -> _Prompt:
    device = pipe._execution_device
    with torch.no_grad():
        if not sdxl:
            cond, uncond = pipe.encode_prompt(prompt, device, 1, True)
            return _Prompt(cond, uncond)
        cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
            prompt, device=device, do_classifier_free_guidance=True
        )
        encoder_2 = getattr(pipe, "text_encoder_2", None)
        projection_dim = int(pooled.shape[-1]) if encoder_2 is None else encoder_2.config.projection_dim
        time_ids = pipe._get_add_time_ids(
            (height, width), (0, 0), (height, width), dtype=cond.dtype, text_encoder_projection_dim=projection_dim
        ).to(device)
        return _Prompt(
            cond,
            uncond,
            {"text_embeds": pooled, "time_ids": time_ids},
            {"text_embeds": uncond_pooled, "time_ids": time_ids},
        )


def _encode_image(pipe: Any, image: Any, generator: torch.Generator | None) -> tuple[torch.Tensor, int, int]:
    """``z_0`` scaled like the pipeline's latents, and the image height and width."""
    vae = pipe.vae
    pixels = image_to_tensor(image, int(getattr(pipe, "vae_scale_factor", 8)))
    height, width = pixels.shape[-2:]
    with torch.no_grad():
        posterior = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
        # The mean is deterministic (the null-text authors' choice); a generator samples the posterior instead.
        latents = posterior.mean if generator is None else posterior.sample(generator)
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None and hasattr(pipe, "text_encoder_2"):
        # SDXL pipelines decode with latents * std / scaling + mean when the VAE defines them; invert that.
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(std).view(1, -1, 1, 1).to(latents)
        latents = (latents - mean) * config.scaling_factor / std
    else:
        latents = latents * config.scaling_factor
    return latents.to(pipe.unet.dtype), int(height), int(width)


# --- DDIM arithmetic -----------------------------------------------------------------------------------------------
class _Schedule:
    """The DDIM schedule of a pipeline: timesteps and the ``(alpha_t, alpha_prev)`` pair of each forward step.

    The pairs are exactly the ones ``DDIMScheduler.step`` uses (``prev = t - num_train_timesteps // steps``, and
    ``final_alpha_cumprod`` below zero), so the inverse steps retrace the sampler's own forward steps.
    """

    def __init__(self, pipe: Any, num_inference_steps: int) -> None:
        self.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        self.scheduler.set_timesteps(num_inference_steps, device=pipe._execution_device)
        self.timesteps = self.scheduler.timesteps
        self.prediction_type = self.scheduler.config.prediction_type
        stride = self.scheduler.config.num_train_timesteps // num_inference_steps
        alphas = self.scheduler.alphas_cumprod
        self.pairs = []
        for t in self.timesteps.tolist():
            prev = t - stride
            alpha_prev = alphas[prev] if prev >= 0 else self.scheduler.final_alpha_cumprod
            self.pairs.append((float(alphas[t]), float(alpha_prev)))

    def epsilon(self, output: torch.Tensor, sample: torch.Tensor, alpha: float) -> torch.Tensor:
        if self.prediction_type == "v_prediction":
            return alpha**0.5 * output + (1 - alpha) ** 0.5 * sample
        return output

    def invert_step(self, output: torch.Tensor, sample: torch.Tensor, index: int) -> torch.Tensor:
        """Undo forward step ``index``: from the latent at ``alpha_prev`` to the latent at ``alpha_t``."""
        alpha, alpha_prev = self.pairs[index]
        eps = self.epsilon(output, sample, alpha)
        original = (sample - (1 - alpha_prev) ** 0.5 * eps) / alpha_prev**0.5
        return alpha**0.5 * original + (1 - alpha) ** 0.5 * eps

    def step(self, output: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
        """The sampler's forward step (``DDIMScheduler.step``, eta 0; differentiable)."""
        return self.scheduler.step(output, self.timesteps[index], sample, return_dict=False)[0]


def _predict(pipe: Any, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, added: dict | None):
    batch = text.shape[0]
    sample = latents.expand(batch, *latents.shape[1:]) if latents.shape[0] != batch else latents
    return pipe.unet(sample, t, encoder_hidden_states=text, added_cond_kwargs=added, return_dict=False)[0]


def _guided(pipe: Any, latents, t, prompt: _Prompt, scale: float, uncond: torch.Tensor | None = None):
    """The guidance-combined prediction with the pipeline's batch order ``[uncond, cond]``."""
    if scale == 1.0:
        return _predict(pipe, latents, t, prompt.cond, prompt.cond_added)
    text, added = prompt.pair(uncond)
    out_uncond, out_cond = _predict(pipe, latents, t, text, added).chunk(2)
    return out_uncond + scale * (out_cond - out_uncond)


def _ddim_trajectory(pipe, latents, prompt: _Prompt, schedule: _Schedule, scale: float) -> list[torch.Tensor]:
    trajectory = [latents]
    steps = len(schedule.timesteps)
    with torch.no_grad():
        for j in range(steps):
            index = steps - 1 - j  # the forward step this inverse step undoes
            output = _guided(pipe, latents, schedule.timesteps[index], prompt, scale)
            latents = schedule.invert_step(output, latents, index)
            trajectory.append(latents)
    return trajectory


def _prepare(pipe, image, prompt, num_inference_steps, guidance_scale, generator):
    sdxl = _check_pipeline(pipe)
    _check_arguments(prompt, num_inference_steps, guidance_scale)
    latents, height, width = _encode_image(pipe, image, generator)
    encoded = _encode_prompt(pipe, prompt, sdxl, height, width)
    schedule = _Schedule(pipe, num_inference_steps)
    return latents, height, width, encoded, schedule


def _result(method, prompt, trajectory, encoded, uncond, schedule, scale, height, width, pooled=None, losses=()):
    return Inversion(
        method=method,
        prompt=prompt,
        latents=tuple(trajectory),
        prompt_embeds=encoded.cond,
        uncond_embeds=None if uncond is None else tuple(uncond),
        num_inference_steps=len(schedule.timesteps),
        guidance_scale=float(scale),
        height=height,
        width=width,
        scheduler_config=dict(schedule.scheduler.config),
        uncond_pooled=pooled,
        losses=tuple(losses),
    )


# --- public functions ----------------------------------------------------------------------------------------------
def ddim_inversion(
    pipe: Any,
    image: Any,
    prompt: str,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> Inversion:
    """DDIM inversion (Song et al., 2021; Dhariwal & Nichol, 2021): deterministic noise that regenerates ``image``.

    Args:
        pipe: a Stable Diffusion (1.x/2.x) or SDXL pipeline; its scheduler's config defines the DDIM schedule.
        image: a ``PIL.Image``, a numpy ``[H, W, 3]`` array or a ``[3, H, W]`` tensor in ``[0, 1]``; height and
            width must be multiples of the VAE's scale factor (8 for the released models).
        prompt: the source prompt describing the image.
        num_inference_steps: DDIM steps (regenerate with the same number).
        guidance_scale: classifier-free guidance used while inverting (with the empty prompt as unconditional
            input), and recorded for regeneration. 1 (no guidance) inverts best; larger values drift.
        generator: samples the VAE posterior; ``None`` uses its mean.

    Returns:
        An :class:`Inversion` with ``method="ddim"``.

    Raises:
        TypeError: ``pipe`` is not an SD-family pipeline, or ``image`` is not an image.
        ValueError: bad image size or values, prompt, step count or guidance scale.
    """
    latents, height, width, encoded, schedule = _prepare(
        pipe, image, prompt, num_inference_steps, guidance_scale, generator
    )
    trajectory = _ddim_trajectory(pipe, latents, encoded, schedule, float(guidance_scale))
    return _result("ddim", prompt, trajectory, encoded, None, schedule, guidance_scale, height, width)


def negative_prompt_inversion(
    pipe: Any,
    image: Any,
    prompt: str,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    generator: torch.Generator | None = None,
) -> Inversion:
    """Negative-prompt inversion (Miyake et al., 2023): null-text inversion's result without the optimization.

    Inverts with DDIM and no guidance, and uses the source prompt's embedding as the unconditional embedding at
    every step (``inversion.effect()``), so the guided prediction of the source branch equals its conditional
    prediction. Edits with other prompts keep ``guidance_scale`` toward the target prompt and away from the source.

    Args: as :func:`ddim_inversion`; ``guidance_scale`` is the scale of the later regeneration or edit.

    Returns:
        An :class:`Inversion` with ``method="negative-prompt"``.
    """
    latents, height, width, encoded, schedule = _prepare(
        pipe, image, prompt, num_inference_steps, guidance_scale, generator
    )
    trajectory = _ddim_trajectory(pipe, latents, encoded, schedule, 1.0)
    uncond = [encoded.cond] * len(schedule.timesteps)
    pooled = None if encoded.cond_added is None else encoded.cond_added["text_embeds"]
    return _result(
        "negative-prompt", prompt, trajectory, encoded, uncond, schedule, guidance_scale, height, width, pooled
    )


def null_text_inversion(
    pipe: Any,
    image: Any,
    prompt: str,
    num_inference_steps: int = 50,
    guidance_scale: float = 7.5,
    inner_steps: int = 10,
    lr: float = 1e-2,
    early_stop: float = 1e-5,
    progress: bool = True,
    generator: torch.Generator | None = None,
) -> Inversion:
    """Null-text inversion (Mokady, Hertz et al., 2022): optimize the unconditional embedding per step.

    The guidance-free DDIM trajectory ``z_0 .. z_T`` is the pivot. Starting from ``z_T``, at each sampling step
    ``i`` the unconditional embedding (initialized from the previous step's result, the empty prompt's at first)
    is optimized with Adam for up to ``inner_steps`` iterations so that the guided DDIM step lands on the pivot's
    next latent (MSE loss); the step is then taken with the optimized embedding. As in the authors' code, the
    learning rate decays linearly over the schedule (``lr * (1 - i / (2 * steps))``, their ``1 - i / 100`` for 50
    steps) and a step stops early once the loss drops below ``early_stop + 2e-5 * i``.

    Args:
        pipe, image, prompt, num_inference_steps, generator: as :func:`ddim_inversion`.
        guidance_scale: the guidance scale of the regeneration the embeddings are optimized for.
        inner_steps: Adam iterations per step (0 keeps the empty prompt's embedding: plain DDIM with guidance).
        lr: Adam's learning rate at the first step.
        early_stop: loss below which a step's optimization stops.
        progress: show a progress bar.

    Returns:
        An :class:`Inversion` with ``method="null-text"``, the per-step embeddings and the final losses.
    """
    if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 0:
        raise ValueError(f"inner_steps must be an int >= 0; got {inner_steps!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a number > 0; got {lr!r}")
    if not (isinstance(early_stop, (int, float)) and early_stop >= 0):
        raise ValueError(f"early_stop must be a number >= 0; got {early_stop!r}")
    latents, height, width, encoded, schedule = _prepare(
        pipe, image, prompt, num_inference_steps, guidance_scale, generator
    )
    trajectory = _ddim_trajectory(pipe, latents, encoded, schedule, 1.0)
    scale = float(guidance_scale)
    steps = len(schedule.timesteps)
    from tqdm.auto import tqdm

    uncond = encoded.uncond.detach().float()
    current = trajectory[-1]
    embeddings, losses = [], []
    for i in tqdm(range(steps), desc="null-text inversion", disable=not progress):
        t = schedule.timesteps[i]
        target = trajectory[steps - 1 - i]
        with torch.no_grad():
            out_cond = _predict(pipe, current, t, encoded.cond, encoded.cond_added)
        # Optimized in float32 whatever the pipeline's dtype; the UNet sees it in its own dtype.
        uncond = uncond.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([uncond], lr=lr * (1.0 - i / (2.0 * steps)))
        loss_value = float("nan")
        for _ in range(inner_steps if scale != 1.0 else 0):
            out_uncond = _predict(pipe, current, t, uncond.to(encoded.uncond.dtype), encoded.uncond_added)
            guided = out_uncond + scale * (out_cond - out_uncond)
            loss = torch.nn.functional.mse_loss(schedule.step(guided, i, current).float(), target.float())
            # Only the embedding needs a gradient: the UNet's parameters get none and are not touched.
            (uncond.grad,) = torch.autograd.grad(loss, [uncond])
            optimizer.step()
            loss_value = float(loss.detach())
            if loss_value < early_stop + 2e-5 * i:
                break
        losses.append(loss_value)
        uncond = uncond.detach()
        embedding = uncond.to(encoded.uncond.dtype)
        embeddings.append(embedding)
        with torch.no_grad():
            current = schedule.step(_guided(pipe, current, t, encoded, scale, embedding), i, current)
    return _result("null-text", prompt, trajectory, encoded, embeddings, schedule, scale, height, width, losses=losses)


def reconstruct(pipe: Any, inversion: Inversion, prompt: str | None = None, **call_kwargs: Any) -> Any:
    """Regenerate an inverted image: run ``pipe`` with the inversion's latents, schedule and embeddings.

    Samples with the inversion's DDIM scheduler (the pipeline's own scheduler is restored afterwards) and, for
    null-text and negative-prompt inversions, with :meth:`Inversion.effect` attached. To combine the inversion
    with other effects (an edit), attach ``inversion.effect()`` together with them yourself.

    Args:
        pipe: the pipeline the image was inverted with, without visattn attached.
        inversion: the result of one of the inversion functions.
        prompt: the prompt to generate with (default: the source prompt).
        **call_kwargs: further pipeline arguments (``output_type="latent"`` returns the latents).

    Returns:
        The first image of the pipeline's output (in ``output_type``; PIL by default).
    """
    if not isinstance(inversion, Inversion):
        raise TypeError(f"inversion must be an Inversion; got {type(inversion).__name__}")
    from .attachment import attach

    kwargs = {**inversion.pipeline_kwargs(), "prompt": inversion.prompt if prompt is None else prompt}
    kwargs.update(call_kwargs)
    original = pipe.scheduler
    pipe.scheduler = inversion.scheduler()
    try:
        if inversion.uncond_embeds is None:
            return pipe(**kwargs).images[0]
        with attach(pipe, inversion.effect()):
            return pipe(**kwargs).images[0]
    finally:
        pipe.scheduler = original


__all__ = [
    "METHODS",
    "Inversion",
    "UnconditionalEmbeddings",
    "ddim_inversion",
    "image_to_tensor",
    "negative_prompt_inversion",
    "null_text_inversion",
    "reconstruct",
]
