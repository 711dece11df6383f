"""NATTEN backend: plain neighborhood-attention calls run on NATTEN's fused kernels (``pip install natten``).

NATTEN (Hassani et al.; Neighborhood Attention Transformer, CVPR 2023; Generalized Neighborhood Attention, 2025)
ships fused neighborhood-attention kernels (CUTLASS on Ampere, Hopper and Blackwell FNA, and a FlexAttention
fallback) behind a functional API on ``[batch, *grid, heads, head_dim]`` tensors: ``natten.functional.na1d``,
``na2d``, ``na3d`` with ``kernel_size``, ``stride``, ``dilation``, ``is_causal``, ``scale``,
``additional_keys``/``additional_values`` and ``return_lse``, and ``natten.functional.attention`` for dense
attention on ``[batch, tokens, heads, head_dim]``. visattn's :class:`~visattn.kernels.neighborhood.NeighborhoodPattern`
follows NATTEN's window, stride and causal conventions, so a request whose only customization is such a pattern
maps onto those calls:

* the grid tokens ``[offset, offset + prod(grid))`` of q/k/v are reshaped from ``[B, H, N, D]`` to
  ``[B, *grid, H, D]`` and run through ``na{1,2,3}d``;
* the keys grid queries also see (``prefix_keys``: every key before the grid, ``extra_keys``: that many keys
  after it) become NATTEN's ``additional_keys``/``additional_values``, which NATTEN merges into the same
  softmax;
* queries outside the grid (text queries in joint attention) attend densely, through
  ``natten.functional.attention``, to every key (``text_queries="full"``) or to the keys outside the grid
  (``"text"``).

Anything else (score modifiers, model masks, intersections of patterns) goes to the other backends. NATTEN
0.20 or newer is required (strided NA, ``additional_keys``, ``return_lse``).
"""

from __future__ import annotations

import re
import sys
from types import ModuleType

import torch

from ..neighborhood import NeighborhoodPattern
from ..request import AttentionRequest

NAME = "natten"

#: oldest NATTEN release with the API used here (``stride``, ``additional_keys``, ``return_lse`` in ``na*d``)
MIN_VERSION = (0, 20)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_FUNCTIONS = ("na1d", "na2d", "na3d", "attention")


# Why the last import failed; a failed import is not retried (it costs ~0.1 ms per call, and a package installed
# while the process runs is not picked up by Python's import system reliably either).
_IMPORT_FAILURE: str | None = None


def _natten() -> ModuleType | str:
    """The ``natten`` package (with its ``functional`` API loaded), or why it cannot be imported."""
    global _IMPORT_FAILURE
    module = sys.modules.get("natten")
    if module is not None and hasattr(module, "functional"):
        return module
    if module is None and _IMPORT_FAILURE is not None:
        return _IMPORT_FAILURE
    try:
        import natten
        import natten.functional  # noqa: F401 - the functional API is a submodule
    except ImportError:
        _IMPORT_FAILURE = "natten is not installed (pip install visattn[natten])"
        return _IMPORT_FAILURE
    except (OSError, RuntimeError) as error:  # a broken build (missing libnatten, CUDA mismatch)
        _IMPORT_FAILURE = f"natten is installed but cannot be imported: {error}"
        return _IMPORT_FAILURE
    return natten


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def availability() -> tuple[bool, str]:
    module = _natten()
    if isinstance(module, str):
        return False, module
    version = str(getattr(module, "__version__", "0"))
    if _version(version) < MIN_VERSION:
        return False, f"natten {version} is too old; visattn needs natten >= {'.'.join(map(str, MIN_VERSION))}"
    missing = [name for name in _FUNCTIONS if not callable(getattr(module.functional, name, None))]
    if missing:
        return False, f"natten {version} has no natten.functional.{', '.join(missing)}"
    return True, f"NATTEN {version} fused neighborhood attention (plain NeighborhoodPattern calls only)"


def supports(request: AttentionRequest) -> bool:
    """Plain neighborhood attention: a :class:`NeighborhoodPattern` and nothing else that changes scores."""
    pattern = request.pattern
    if not isinstance(pattern, NeighborhoodPattern) or request.score_mod is not None or request.attn_mask is not None:
        return False
    q, k, v = request.q, request.k, request.v
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return False
    if q.shape[:2] != k.shape[:2] or k.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        return False
    if q.dtype not in _DTYPES or not (q.dtype == k.dtype == v.dtype):
        return False
    n_q, n_k = q.shape[2], k.shape[2]
    end = pattern.offset + pattern.num_tokens
    if end > min(n_q, n_k):
        return False  # the grid must sit whole in both sequences
    # Text-only queries with no text keys would have no key at all; the reference returns zeros for them.
    if n_q > pattern.num_tokens and pattern.text_queries == "text" and n_k == pattern.num_tokens:
        return False
    # NATTEN rejects windows of one token on an axis (a per-frame window (1, 3, 3) on video) and grid axes of one.
    if min(pattern.kernel_size) < 2 or min(pattern.grid) < 2:
        return False
    return natten_accepts(request)


def _grid_major(x: torch.Tensor, grid: tuple[int, ...]) -> torch.Tensor:
    """``[B, H, n, D] -> [B, *grid, H, D]`` (row-major grid: the flat index is the grid's C order), contiguous.

    NATTEN's kernels take contiguous tensors (its attention merge rejects strided outputs, which its FlexAttention
    path returns for strided inputs); diffusers' projections usually are ``[B, N, H, D]`` already, so this is
    then a free view.
    """
    batch, heads, _, dim = x.shape
    return x.transpose(1, 2).reshape(batch, *grid, heads, dim).contiguous()


def _token_major(x: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, D] -> [B, N, H, D]``, contiguous (see :func:`_grid_major`)."""
    return x.transpose(1, 2).contiguous()


def _rows(x: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
    """The tokens of ``x`` (``[B, H, N, D]``) in the given ``[start, stop)`` spans, in order."""
    parts = [x[:, :, start:stop] for start, stop in spans if stop > start]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)


def run(request: AttentionRequest) -> tuple[torch.Tensor, torch.Tensor | None]:
    module = _natten()
    if isinstance(module, str):
        raise RuntimeError(module)
    functional = module.functional
    pattern: NeighborhoodPattern = request.pattern  # type: ignore[assignment]
    q, k, v = request.q, request.k, request.v
    n_q, n_k = q.shape[2], k.shape[2]
    grid, start = pattern.grid, pattern.offset
    stop = start + pattern.num_tokens
    scale = request.effective_scale
    want_lse = request.return_lse

    # Grid queries: neighborhood attention over grid keys, plus the keys NATTEN calls "additional".
    extra_spans = [(0, start)] if pattern.prefix_keys else []
    extra_spans.append((stop, min(n_k, stop + pattern.extra_keys)))
    extra_spans = [(a, b) for a, b in extra_spans if b > a]
    additional = {}
    if extra_spans:
        additional = {
            "additional_keys": _token_major(_rows(k, extra_spans)),
            "additional_values": _token_major(_rows(v, extra_spans)),
        }
    na = getattr(functional, f"na{len(grid)}d")
    result = na(
        _grid_major(q[:, :, start:stop], grid),
        _grid_major(k[:, :, start:stop], grid),
        _grid_major(v[:, :, start:stop], grid),
        kernel_size=pattern.kernel_size,
        stride=pattern.stride,
        dilation=pattern.dilation,
        is_causal=pattern.is_causal,
        scale=scale,
        return_lse=want_lse,
        **additional,
    )
    grid_out, grid_lse = result if want_lse else (result, None)
    batch, heads = q.shape[0], q.shape[1]
    grid_out = grid_out.reshape(batch, -1, heads, grid_out.shape[-1]).transpose(1, 2)
    if grid_lse is not None:
        grid_lse = grid_lse.reshape(batch, -1, heads).transpose(1, 2)
    if n_q == pattern.num_tokens:
        return grid_out, grid_lse

    # Queries outside the grid (text in joint attention) attend densely, as the pattern defines for them.
    other_queries = [(0, start), (stop, n_q)]
    if pattern.text_queries == "full":
        keys, values = k, v
    else:
        key_spans = [(0, start), (stop, n_k)]
        keys, values = _rows(k, key_spans), _rows(v, key_spans)
    result = functional.attention(
        _token_major(_rows(q, other_queries)),
        _token_major(keys),
        _token_major(values),
        scale=scale,
        return_lse=want_lse,
    )
    text_out, text_lse = result if want_lse else (result, None)
    text_out = text_out.transpose(1, 2)
    # Reassemble in sequence order: queries before the grid, grid queries, queries after it.
    out = torch.cat([text_out[:, :, :start], grid_out, text_out[:, :, start:]], dim=2)
    lse = None
    if want_lse:
        text_lse = text_lse.transpose(1, 2)
        lse = torch.cat([text_lse[:, :, :start], grid_lse, text_lse[:, :, start:]], dim=2)
    return out, lse


# --- what NATTEN itself can run (used by supports(); added for backend="auto") --------------------------------------
#: exceptions NATTEN raises for calls it has no kernel for ("could not find a suitable backend": NotImplementedError)
#: or whose arguments its checks reject (ValueError); ``backend="auto"`` then runs the next candidate
CAPABILITY_ERRORS: tuple[type[BaseException], ...] = (NotImplementedError, ValueError)

_ACCEPTS: dict[tuple, bool] = {}


def _probe(shape: tuple[int, ...], like: torch.Tensor, grad: bool) -> torch.Tensor:
    """A tensor of ``shape`` with ``like``'s dtype and device that owns one element (zero strides)."""
    base = torch.empty((), dtype=like.dtype, device=like.device)
    return base.requires_grad_(grad).expand(shape) if grad else base.expand(shape)


def _cpu_rule(head_dim: int, head_dim_v: int) -> bool:
    # NATTEN 0.21 runs on CPU only through eager FlexAttention, which it allows for head sizes that are powers
    # of two in [8, 512] with equal QK and V head sizes (head sizes 4, 12, 24, 72, 96 are refused).
    return head_dim == head_dim_v and 8 <= head_dim <= 512 and (head_dim & (head_dim - 1)) == 0


def natten_accepts(request: AttentionRequest) -> bool:
    """Whether NATTEN has a kernel for this call's head sizes, dtype and device, asked before it runs.

    Asks NATTEN's own backend selection (``natten.backends.choose_backend`` for the grid part and
    ``choose_fmha_backend`` for text queries) with stand-in tensors of the call's shapes that own one element, so
    nothing is allocated or computed; cached per shape. When NATTEN is not importable this says True (the
    availability check rejects it), and when its selection API differs from NATTEN 0.21's, the documented CPU
    rule decides off CUDA and a CUDA call is accepted (a refusal at run time still falls back).
    """
    pattern: NeighborhoodPattern = request.pattern  # type: ignore[assignment]
    q, v = request.q, request.v
    batch, heads, n_q, dim = q.shape
    grad = any(t.requires_grad for t in (q, request.k, v))
    text_queries = n_q > pattern.num_tokens
    module = _natten()
    if isinstance(module, str):
        return True
    # The module's id keeps answers apart when a different natten is swapped in (tests do).
    key = (id(module), pattern.grid, batch, heads, dim, v.shape[-1], q.dtype, str(q.device), grad, text_queries)
    known = _ACCEPTS.get(key)
    if known is not None:
        return known
    try:
        from natten import backends as natten_backends

        grid_shape = (batch, *pattern.grid, heads)
        qk, vv = _probe((*grid_shape, dim), q, grad), _probe((*grid_shape, v.shape[-1]), v, grad)
        natten_backends.choose_backend(qk, qk, vv, torch_compile=False)
        if text_queries:
            rows = (batch, n_q - pattern.num_tokens, heads)
            keys = (batch, request.k.shape[2], heads)
            natten_backends.choose_fmha_backend(
                _probe((*rows, dim), q, grad),
                _probe((*keys, dim), q, grad),
                _probe((*keys, v.shape[-1]), v, grad),
                is_causal=False,
                is_varlen=False,
                torch_compile=False,
            )
        accepted = True
    except CAPABILITY_ERRORS:
        accepted = False
    except (ImportError, AttributeError, TypeError):  # another NATTEN release: fall back to what is known
        accepted = q.device.type == "cuda" or _cpu_rule(dim, v.shape[-1])
    _ACCEPTS[key] = accepted
    return accepted
