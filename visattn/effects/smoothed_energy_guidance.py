"""Smoothed Energy Guidance (SEG), for any pipeline.

Hong 2024, "Smoothed Energy Guidance: Guiding Diffusion Models with Reduced Energy Curvature of Attention"
(NeurIPS 2024). The perturbed branch blurs the attention of selected self-attention layers with a 2-D Gaussian of
standard deviation ``sigma`` over the latent grid, which reduces the curvature of the attention's energy
landscape; guidance adds ``scale * (eps_cond - eps_perturbed)``. Blurring the attention logits along the query
axis equals blurring the queries, ``(G * Q) K^T = G * (Q K^T)``, so the authors (SusungHong/SEG-SDXL,
``pipeline_seg.py``) blur the queries and never form the map. This module does the same, with these choices:

* **What is blurred.** The queries exactly as they enter the softmax (after the family's q-norm and rotary
  embedding), per head and channel. The identity above then holds for every family; for SD/SDXL (no q-norm, no
  rotary) these are the authors' queries. ``blur="key"`` blurs the keys instead, i.e. each query's logits along
  the key grid.
* **Kernel.** The authors' truncation: size ``ceil(6 sigma) + 1`` made odd (radius about ``3 sigma``), clipped per
  axis to the grid (``n + 1`` for an even axis of ``n`` tokens, ``n`` for an odd one) and renormalized after
  clipping. Applied as two 1-D convolutions (height, then width; separable, the same kernel as the authors'
  outer product) with reflect padding, as the authors pad.
* **Infinite blur.** Any ``sigma > 9999`` (the authors' ``inf_blur_threshold``; ``float('inf')`` included)
  replaces every blurred token by the mean over the grid: with
  ``blur="query"`` all image queries become their mean ("uniform queries", the authors' and diffusers' infinite
  blur), so every image query attends with the same weights; with ``blur="key"`` all image keys become their
  mean, so each query attends uniformly over the image keys (its output over them is the mean of their values).
  The default ``sigma=9999999`` is the authors' and diffusers' (``SEGCFGSelfAttnProcessor`` in SEG-SDXL's
  ``pipeline_seg.py``; ``diffusers.guiders.SmoothedEnergyGuidance``), so the default is infinite blur.
* **Joint attention and video.** Only image tokens of the grid are blurred (text tokens of MM-DiT / joint
  attention are left as they are). Video grids ``(frames, height, width)`` are blurred spatially, each frame on
  its own, as the method is defined on 2-D attention maps. Layers without a latent grid are left unperturbed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from .. import validation
from ..context import CallContext, Span
from ..kernels.core import _stacked_rows
from ..layers import FAMILY_DEFAULT
from ..validation import check_choice, check_layer_roles, check_number, check_scale
from .base import UNCHANGED_QUERY_KEY, AttentionCall, QueryKeyTransform
from .perturbation_guidance import PerturbationGuidance

BLUR_TARGETS = ("query", "key")

#: The authors' default ``seg_blur_sigma`` (SusungHong/SEG-SDXL; diffusers' SEG guider): infinite blur.
AUTHORS_SIGMA = 9999999.0
#: ``sigma`` above this is infinite blur (SEG-SDXL ``SEGCFGSelfAttnProcessor(inf_blur_threshold=9999.0)``, strict
#: ``>``; diffusers' guider ``seg_blur_threshold_inf=9999.0``).
INF_BLUR_THRESHOLD = 9999.0


def is_infinite_blur(sigma: float, threshold: float = INF_BLUR_THRESHOLD) -> bool:
    """The authors' rule: ``sigma > threshold`` means the mean over the grid rather than a Gaussian."""
    return sigma > threshold


def gaussian_kernel_size(sigma: float) -> int:
    """The authors' kernel size for ``sigma``: ``ceil(6 sigma) + 1``, rounded down to an odd number."""
    six = math.ceil(6.0 * sigma)
    return six + 1 - six % 2


def axis_kernel_size(sigma: float, length: int) -> int:
    """The kernel size along an axis of ``length`` tokens (clipped as the authors clip it, reflect-safe)."""
    return min(gaussian_kernel_size(sigma), length - (length % 2 - 1))


@functools.lru_cache(maxsize=64)
def gaussian_kernel1d(size: int, sigma: float) -> torch.Tensor:
    """A normalized 1-D Gaussian of ``size`` taps (odd) and standard deviation ``sigma``, float64 (built once per
    size and sigma: the same kernel serves every call; callers must not write to it)."""
    half = (size - 1) / 2
    x = torch.linspace(-half, half, size, dtype=torch.float64)
    pdf = torch.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


@functools.lru_cache(maxsize=64)
def _blur_passes(
    height: int, width: int, sigma: float, device: torch.device, dtype: torch.dtype
) -> tuple[tuple[tuple[int, int, int, int], torch.Tensor], ...]:
    """The 1-D passes of a blur of ``height x width`` images: each pass's reflect padding (``F.pad`` order) and its
    kernel shaped for ``conv2d``, on ``device`` in ``dtype``; worked out once per grid, sigma, device and dtype (the
    kernels are read-only)."""
    passes = []
    for axis, length in ((2, height), (3, width)):
        size = axis_kernel_size(sigma, length)
        if size <= 1:
            continue
        radius = size // 2
        kernel = gaussian_kernel1d(size, sigma).to(device=device, dtype=dtype)
        if axis == 2:
            passes.append(((0, 0, radius, radius), kernel.view(1, 1, size, 1)))
        else:
            passes.append(((radius, radius, 0, 0), kernel.view(1, 1, 1, size)))
    return tuple(passes)


#: the dtype a blur computes in, by the tokens' dtype (float32 at least)
_BLUR_DTYPES = {torch.float32: torch.float32, torch.float16: torch.float32, torch.bfloat16: torch.float32}


def blurs(grid: tuple[int, int, int], sigma: float, threshold: float = INF_BLUR_THRESHOLD) -> bool:
    """Whether :func:`blur_grid` changes tokens on ``grid`` (a kernel of one tap is the identity)."""
    _, height, width = grid
    if is_infinite_blur(sigma, threshold):
        return height * width > 1
    return axis_kernel_size(sigma, height) > 1 or axis_kernel_size(sigma, width) > 1


def blur_grid(
    tokens: torch.Tensor, grid: tuple[int, int, int], sigma: float, threshold: float = INF_BLUR_THRESHOLD
) -> torch.Tensor:
    """Gaussian-blur grid tokens over height and width, each frame on its own.

    Args:
        tokens: ``[..., frames * height * width, channels]``, tokens in row-major ``(frame, height, width)`` order.
        grid: ``(frames, height, width)``.
        sigma: standard deviation in tokens; above ``threshold`` (the authors' 9999) the per-frame mean.
        threshold: the infinite-blur threshold (strict ``>``, as the authors compare).

    Returns:
        The blurred tokens, same shape and dtype (computed in float32 at least).
    """
    frames, height, width = grid
    *_, length, channels = tokens.shape
    if length != frames * height * width:
        raise ValueError(f"blur_grid: {length} tokens do not fill the grid {grid}")
    dtype = _BLUR_DTYPES.get(tokens.dtype) or torch.promote_types(tokens.dtype, torch.float32)
    if is_infinite_blur(sigma, threshold):
        x = tokens.to(dtype).reshape(-1, frames, height, width, channels)
        return x.mean(dim=(2, 3), keepdim=True).expand_as(x).reshape(tokens.shape).to(tokens.dtype)
    # One image per (sample, frame, channel): a depthwise blur is a plain conv with a single filter. The images are
    # gathered with one copy whatever the tokens' memory layout (attention's queries are often a transposed view),
    # and a single frame's blurred images go back as a view (the caller stacks them with its other rows anyway).
    lead = tokens.shape[:-2]
    per_channel = (tokens if tokens.dtype == dtype else tokens.to(dtype)).transpose(-1, -2)  # [..., channels, tokens]
    if frames == 1:
        x = per_channel.reshape(-1, 1, height, width)
    else:
        x = per_channel.reshape(*lead, channels, frames, height * width).transpose(-3, -2).reshape(-1, 1, height, width)
    for padding, kernel in _blur_passes(height, width, sigma, x.device, dtype):
        x = F.conv2d(F.pad(x, padding, mode="reflect"), kernel)
    if frames == 1:
        x = x.reshape(*lead, channels, length).transpose(-1, -2)
    else:
        x = x.reshape(*lead, frames, channels, height * width).transpose(-2, -1).reshape(tokens.shape)
    return x if x.dtype == tokens.dtype else x.to(tokens.dtype)


class SmoothedEnergyGuidance(PerturbationGuidance):
    """SEG as a visattn effect: blurred self/joint attention in a perturbed branch.

    Args:
        scale: guidance scale ``s >= 0`` (``seg_scale``; the authors fix it at 3 and vary ``sigma``).
        sigma: Gaussian standard deviation in latent tokens, ``> 0``. Default ``9999999``, the authors' and
            diffusers' default; any ``sigma > inf_threshold`` (9999) is infinite blur, as in the authors' code
            (``float('inf')`` too). The authors suggest varying it exponentially (1, 4, 16, ...). Tiny values
            (kernel of one tap) do not blur, so the guidance term is zero.
        layers: layers to perturb (diffusers' ``pag_applied_layers`` identifiers; the authors use ``"mid"`` on
            SDXL). Self and joint attention only. By default the family's (``"mid"`` on UNets; see
            :data:`visattn.layers.FAMILY_DEFAULT`).
        steps: fraction range of the schedule in which guidance is applied.
        blur: ``"query"`` (the authors' query blur) or ``"key"`` (blur the keys: each query's logits are smoothed
            along the key grid; infinite blur gives uniform attention over the image keys).
        inf_threshold: ``sigma`` above which the blur is infinite, ``> 0``; the authors' ``inf_blur_threshold``
            (9999.0, also diffusers' guider's ``seg_blur_threshold_inf``).
    """

    branch_prefix = "seg"

    def needs(self) -> tuple[str, ...]:
        # The blur runs over the latent grid: without one, the perturbed branch equals the conditional one.
        return ("grid",)

    def __init__(
        self,
        scale: float = 3.0,
        sigma: float = AUTHORS_SIGMA,
        layers: str | Iterable[str] | None = FAMILY_DEFAULT,
        steps=None,
        blur: str = "query",
        inf_threshold: float = INF_BLUR_THRESHOLD,
    ) -> None:
        # Checked here first: the base class's own check predates the MAX_SCALE bound.
        scale = check_scale(scale)
        super().__init__(scale, layers=layers, steps=steps)
        check_layer_roles(self.layers, self.roles, type(self).__name__)
        # The threshold is bounded so that every finite Gaussian (sigma <= threshold) has a finite kernel size;
        # sigma itself may be anything positive, inf included: above the threshold the blur is the grid mean.
        self.inf_threshold = check_number(
            inf_threshold, "inf_threshold", above=0.0, maximum=validation.MAX_BLUR_THRESHOLD
        )
        try:
            self.sigma = check_number(sigma, "sigma", above=0.0, allow_inf=True)
        except ValueError as error:
            hint = f"any sigma > inf_threshold ({self.inf_threshold:g}) is infinite blur"
            raise type(error)(f"{error} ({hint})") from None
        self.blur = check_choice(blur, "blur", BLUR_TARGETS)

    def perturb(self, call: AttentionCall, rows: slice) -> None:
        """Blur the perturbed rows' image queries (or keys) over the latent grid."""
        transform = self._blur_of(call.ctx, rows)
        if transform is not None:
            call.q, call.k = transform(call.q, call.k)

    def query_key_transform(self, ctx: CallContext) -> QueryKeyTransform | None:
        """All SEG does in a call is blur its rows' queries (or keys): that function of them, planned once per call
        shape by the layer's hook (see :meth:`visattn.effects.Effect.query_key_transform`)."""
        rows = self.perturbed_rows(ctx)
        if rows is None or rows.start == rows.stop:
            return UNCHANGED_QUERY_KEY
        return self._blur_of(ctx, rows)

    def _blur_of(self, ctx: CallContext, rows: slice) -> QueryKeyTransform | None:
        """The blur of ``rows`` in a call with context ``ctx`` as a function of its queries and keys;
        :data:`UNCHANGED_QUERY_KEY` where a kernel of one tap blurs nothing, ``None`` where the tokens do not fill
        the grid (the full path takes such a call, and warns where a grid effect finds no grid)."""
        layout = ctx.queries if self.blur == "query" else ctx.keys
        span, grid = layout.image, ctx.grid
        if grid is None or span is None or span.length != ctx.num_grid_tokens:
            return None
        if not blurs(grid, self.sigma, self.inf_threshold):
            return UNCHANGED_QUERY_KEY
        if self.blur == "query":
            return lambda q, k: (self._blurred_rows(q, rows, span, grid), k)
        return lambda q, k: (q, self._blurred_rows(k, rows, span, grid))

    def _blurred_rows(self, tensor: torch.Tensor, rows: slice, span: Span, grid: tuple[int, int, int]) -> torch.Tensor:
        """``tensor`` (``[B, H, N, D]``, never written to) with ``rows`` blurred over ``grid`` at ``span``."""
        batch = tensor.shape[0]
        if span.start == 0 and span.stop == tensor.shape[2]:
            # Every token of the rows is a grid token (UNet self-attention): the other rows and the blurred ones
            # stacked, in the tensor's memory layout (one copy, not a clone and a write). Only the rows there are
            # sliced: on small layers every tensor op costs about as much as the blur's arithmetic.
            part = blur_grid(tensor[rows], grid, self.sigma, self.inf_threshold)
            parts = [tensor[: rows.start]] if rows.start else []
            parts.append(part)
            if rows.stop < batch:
                parts.append(tensor[rows.stop :])
            return _stacked_rows(parts, tensor, tensor.dtype)
        part = blur_grid(tensor[rows, :, span.as_slice()], grid, self.sigma, self.inf_threshold)
        blurred = tensor.clone()
        blurred[rows, :, span.as_slice()] = part
        return blurred

    def __repr__(self) -> str:
        return (
            f"SmoothedEnergyGuidance(scale={self.scale}, sigma={self.sigma}, layers={self.layers}, "
            f"steps={self.steps}, blur={self.blur!r}, inf_threshold={self.inf_threshold})"
        )
