"""Argument checks shared by every effect and kernel entry point, and the documented limits they enforce.

Every check runs once, where a value enters visattn (an effect's constructor, :func:`visattn.attach`,
:func:`visattn.kernels.attention`, ``na1d/na2d/na3d``), and fails with a :class:`ValueError` or
:class:`TypeError` whose message names the parameter, quotes the value and says what is allowed; nothing is left
to fail later inside torch, at the first call, or silently.

Limits (module attributes, read at check time, so ``visattn.validation.MAX_SCALE = 1e6`` raises one; each can
also be set before import with the environment variable of the same name prefixed ``VISATTN_``):

* :data:`MAX_SCALE` (``1e4``): the largest magnitude of a guidance scale or a Prompt-to-Prompt weight. Guidance
  adds ``scale * (eps_c - eps_p)`` and re-weighting multiplies probabilities by the weight; with ``|x| <= 1e4``
  and noise predictions of order one, every float32 intermediate stays finite (and a guidance term stays inside
  float16's 65504 for differences up to about 6), while scales of ``1e30`` and more gave NaN images. Published
  settings stay below 20.
* :data:`MAX_MAP_PIXELS` (``2048 * 2048``): pixels per frame of an :class:`~visattn.AttentionMaps` resolution;
  the running sums hold ``words x frames x pixels`` float32 values (16 MiB per word and frame at the limit).
* :data:`MAX_BLEND_RADIUS` (``256``): a :class:`~visattn.LocalBlend` max-pooling radius, in latent cells (larger
  than any latent grid visattn's families produce; the pooling window is ``2 * radius + 1`` cells wide).
* :data:`MAX_BLUR_THRESHOLD` (``1e6``): SEG's ``inf_threshold``; a Gaussian kernel of up to ``6 * threshold``
  taps must stay a finite size (``sigma`` itself may be any positive number, ``inf`` included: above the
  threshold the blur is infinite).
"""

from __future__ import annotations

import math
import numbers
import os
import re
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch


def _limit(name: str, default: float) -> float:
    """A limit's default, overridden by the environment variable ``VISATTN_<name>`` when it is set."""
    text = os.environ.get(f"VISATTN_{name}")
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"environment variable VISATTN_{name}={text!r} must be a number") from None
    if not value > 0 or not math.isfinite(value):
        raise ValueError(f"environment variable VISATTN_{name}={text!r} must be a finite number > 0")
    return value


#: the largest ``|scale|`` of a guidance scale or Prompt-to-Prompt weight (see the module docstring)
MAX_SCALE: float = _limit("MAX_SCALE", 1e4)
#: the most pixels per frame of an AttentionMaps resolution
MAX_MAP_PIXELS: int = int(_limit("MAX_MAP_PIXELS", 2048 * 2048))
#: the largest LocalBlend radius, in latent cells
MAX_BLEND_RADIUS: int = int(_limit("MAX_BLEND_RADIUS", 256))
#: the largest SEG ``inf_threshold``
MAX_BLUR_THRESHOLD: float = _limit("MAX_BLUR_THRESHOLD", 1e6)

#: tensor dtypes attention computes in (integer, bool and complex tensors are refused)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class ParameterTypeError(TypeError, ValueError):
    """A parameter of the wrong type. A :class:`TypeError`, and a :class:`ValueError` too, because visattn raised
    ValueError for wrong types before: code that catches ValueError for any bad argument keeps working."""


def _is_number(value: Any) -> bool:
    # numbers.Real covers int, float and numpy scalars; bool is an int but never a number here.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_number(
    value: Any,
    parameter: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    allow_inf: bool = False,
) -> float:
    """``float(value)`` after checking it; ParameterTypeError/ValueError naming ``parameter`` otherwise.

    Args:
        minimum, maximum: inclusive bounds; ``above``: an exclusive lower bound.
        allow_inf: accept ``+inf`` (and integers beyond float's range, which become ``inf``) when no bound says
            otherwise; NaN is always refused.
    """
    allowed = _describe(minimum, maximum, above)
    if not _is_number(value):
        raise ParameterTypeError(f"{parameter} must be a number{allowed}; got {value!r} ({type(value).__name__})")
    # Compare before converting: an int such as 10**400 has no float, and float() would raise OverflowError.
    if isinstance(value, numbers.Integral) and abs(int(value)) > sys.float_info.max:
        number = math.inf if value > 0 else -math.inf
    else:
        number = float(value)
    if math.isinf(number) and not allow_inf:
        raise ValueError(f"{parameter} must be a finite number{allowed}; got {_quote(value)}")
    if (
        math.isnan(number)
        or (minimum is not None and number < minimum)
        or (maximum is not None and number > maximum)
        or (above is not None and not number > above)
    ):
        raise ValueError(f"{parameter} must be{allowed or ' a number'}; got {_quote(value)}")
    return number


def _quote(value: Any) -> str:
    """A value as an error message shows it (huge integers abbreviated)."""
    if isinstance(value, numbers.Integral) and abs(int(value)) > 10**20:
        return f"an integer of {len(str(abs(int(value))))} digits"
    return repr(value)


def _bound(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"  # integer bounds in full, not 2.14748e+09


def _describe(minimum: float | None, maximum: float | None, above: float | None) -> str:
    if minimum is not None and maximum is not None and above is None:
        return f" in [{_bound(minimum)}, {_bound(maximum)}]"
    parts = []
    if above is not None:
        parts.append(f"> {_bound(above)}")
    if minimum is not None:
        parts.append(f">= {_bound(minimum)}")
    if maximum is not None:
        parts.append(f"<= {_bound(maximum)}")
    return f" {' and '.join(parts)}" if parts else ""


def check_scale(value: Any, parameter: str = "scale") -> float:
    """A guidance scale: a number in ``[0, MAX_SCALE]`` (see :data:`MAX_SCALE` for why it is bounded)."""
    try:
        return check_number(value, parameter, minimum=0.0, maximum=MAX_SCALE)
    except ValueError as error:
        raise type(error)(f"{error} (raise visattn.validation.MAX_SCALE for larger scales)") from None


def check_weight(value: Any, parameter: str) -> float:
    """A multiplicative weight of either sign: a number with ``|value| <= MAX_SCALE``."""
    try:
        return check_number(value, parameter, minimum=-MAX_SCALE, maximum=MAX_SCALE)
    except ValueError as error:
        raise type(error)(f"{error} (raise visattn.validation.MAX_SCALE for larger weights)") from None


def check_fraction(value: Any, parameter: str) -> float:
    """A number in ``[0, 1]``."""
    return check_number(value, parameter, minimum=0.0, maximum=1.0)


def check_int(value: Any, parameter: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (not a bool) within inclusive bounds; ParameterTypeError/ValueError naming ``parameter``."""
    allowed = _describe(minimum, maximum, None)
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ParameterTypeError(f"{parameter} must be an integer{allowed}; got {value!r} ({type(value).__name__})")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{parameter} must be an integer{allowed}; got {_quote(value)}")
    return value


def check_bool(value: Any, parameter: str) -> bool:
    """``True`` or ``False`` (numpy bools too); ParameterTypeError naming ``parameter`` otherwise."""
    if not isinstance(value, (bool, np.bool_)):
        raise ParameterTypeError(f"{parameter} must be True or False; got {value!r} ({type(value).__name__})")
    return bool(value)


def check_choice(value: Any, parameter: str, choices: Iterable[str]) -> str:
    """One of ``choices``; ValueError (ParameterTypeError for a non-string) listing them otherwise."""
    choices = tuple(choices)
    if not isinstance(value, str):
        raise ParameterTypeError(f"{parameter} must be one of {choices}; got {value!r} ({type(value).__name__})")
    if value not in choices:
        raise ValueError(f"{parameter} must be one of {choices}; got {value!r}")
    return value


def check_regex(pattern: Any, parameter: str) -> re.Pattern:
    """A compiled regular expression; ValueError naming ``parameter`` when it does not compile."""
    if not isinstance(pattern, str):
        raise ParameterTypeError(
            f"{parameter} must be a layer identifier (a regular expression string); got {pattern!r} "
            f"({type(pattern).__name__})"
        )
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ValueError(f"{parameter}={pattern!r} is not a valid regular expression: {error}") from None


def check_tensor(value: Any, parameter: str, *, dims: int | None = None) -> torch.Tensor:
    """A floating-point tensor (fp16, bf16, fp32, fp64) of ``dims`` dimensions with no empty axis.

    Reads shapes and dtypes only, never values, so it costs no device synchronization.
    """
    if not isinstance(value, torch.Tensor):
        raise ParameterTypeError(f"{parameter} must be a torch.Tensor; got {type(value).__name__}")
    if value.dtype not in FLOAT_DTYPES:
        raise ParameterTypeError(
            f"{parameter} must be a floating-point tensor ({', '.join(str(d) for d in FLOAT_DTYPES)}); "
            f"got {value.dtype}"
        )
    if dims is not None and value.dim() != dims:
        raise ValueError(f"{parameter} must have {dims} dimensions; got shape {tuple(value.shape)}")
    if value.numel() == 0:
        raise ValueError(f"{parameter} has an empty axis (shape {tuple(value.shape)}); every axis needs size >= 1")
    return value


def check_same_device(tensors: dict[str, torch.Tensor | None]) -> None:
    """ValueError naming the tensors when they are not all on one device (``None`` entries are skipped)."""
    devices = {name: tensor.device for name, tensor in tensors.items() if tensor is not None}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"tensors must be on one device; got {listing}")


def check_layer_roles(layers: tuple[str, ...] | None, roles: tuple[str, ...], owner: str) -> None:
    """ValueError when ``layers`` names a role keyword the effect cannot act on (``layers="cross"`` for PAG).

    Without this the effect would be attached to layers it never acts on, doing nothing, or fail at the first call.
    """
    from .layers import ROLE_KEYWORDS

    if not isinstance(layers, tuple):
        return  # None (every layer) or FAMILY_DEFAULT (resolved at attach, never a role keyword)
    wrong = [layer for layer in layers if layer in ROLE_KEYWORDS and layer not in roles]
    if wrong:
        raise ValueError(
            f"{owner}(layers=...) names {wrong[0]!r} attention, which {owner} does not act on; it acts on "
            f"{' and '.join(roles)} attention"
        )


def check_attention_inputs(
    q: Any,
    k: Any,
    v: Any,
    *,
    pattern: Any = None,
    score_mod: Any = None,
    attn_mask: Any = None,
    scale: Any = None,
    identity_blend: Any = None,
) -> None:
    """The checks of :func:`visattn.kernels.attention`'s inputs: ``[B, H, N, D]`` floating tensors of one dtype
    and device whose batch, heads, key/value lengths and query/key head sizes agree, a finite ``scale``, masks and
    blends that broadcast to the call, and grid patterns that fit its token counts.

    Shapes, dtypes and devices only: no tensor value is read, so the check never synchronizes a device.
    """
    from .kernels.patterns import Pattern, ScoreModifier, check_tokens

    for name, tensor in (("q", q), ("k", k), ("v", v)):
        check_tensor(tensor, name, dims=4)
    if not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"q, k and v must have one dtype; got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    check_same_device({"q": q, "k": k, "v": v, "attn_mask": attn_mask, "identity_blend": identity_blend})
    (batch, heads, n_q, dim), n_k = q.shape, v.shape[2]
    if k.shape[:2] != (batch, heads) or v.shape[:2] != (batch, heads):
        raise ValueError(
            f"q, k and v must share batch and heads ([B, H, N, D]); got q {tuple(q.shape)}, k {tuple(k.shape)}, "
            f"v {tuple(v.shape)}"
        )
    if k.shape[2] != n_k:
        raise ValueError(f"k and v must have as many tokens; got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if k.shape[3] != dim:
        raise ValueError(f"q and k must have one head_dim; got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if scale is not None:
        check_number(scale, "scale")
    call_shape = (batch, heads, n_q, n_k)
    for name, tensor, shape, dtypes in (
        ("attn_mask", attn_mask, call_shape, (torch.bool, *FLOAT_DTYPES)),
        ("identity_blend", identity_blend, (batch, heads, n_q, 1), FLOAT_DTYPES),
    ):
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise ParameterTypeError(f"{name} must be a torch.Tensor or None; got {type(tensor).__name__}")
        if tensor.dtype not in dtypes:
            raise ParameterTypeError(
                f"{name} must have one of the dtypes {', '.join(map(str, dtypes))}; got {tensor.dtype}"
            )
        try:
            broadcast = torch.broadcast_shapes(tensor.shape, shape)
        except RuntimeError:
            broadcast = None
        if broadcast != torch.Size(shape):
            raise ValueError(f"{name} of shape {tuple(tensor.shape)} does not broadcast to {shape}")
    if identity_blend is not None and n_q != n_k:
        raise ValueError(
            "identity_blend needs as many queries as keys (each query's identity is its own value); "
            f"got {n_q} queries and {n_k} keys"
        )
    for name, part, kind in (("pattern", pattern, Pattern), ("score_mod", score_mod, ScoreModifier)):
        if part is not None and not isinstance(part, kind):
            raise ParameterTypeError(f"{name} must be a {kind.__name__} or None; got {type(part).__name__}")
        check_tokens(part, n_q, n_k, name)
