"""Shims for the diffusers releases visattn supports, for the library and the apps alike."""

from __future__ import annotations

import re

import torch

#: the first diffusers release whose ``from_pretrained`` takes ``dtype=`` (0.40.0: ``torch_dtype`` then warns that
#: it is deprecated; releases before it know only ``torch_dtype``)
DTYPE_KEYWORD_SINCE = (0, 40)


def dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``{"dtype": dtype}`` for diffusers' ``from_pretrained`` on diffusers 0.40 and later, ``{"torch_dtype":
    dtype}`` before: ``from_pretrained(model_id, **dtype_kwargs(torch.float16))`` works, without a deprecation
    warning, on every diffusers visattn supports."""
    import diffusers

    major, minor = (int(part) for part in re.findall(r"\d+", diffusers.__version__)[:2])  # "0.40.0.dev0" -> 0, 40
    new = (major, minor) >= DTYPE_KEYWORD_SINCE
    return {"dtype": dtype} if new else {"torch_dtype": dtype}
