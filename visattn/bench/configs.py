"""The attention layouts ``visattn bench`` measures: real models' token grids, text lengths, heads and head dims.

Each configuration is one attention call: ``batch x heads`` over a latent grid (row-major, frames first for
video) plus optional text tokens, with one sparsity pattern. The full set follows the kernels issue: Flux at
1024 px (64 x 64 latents + 512 text tokens, 24 heads, head_dim 128), SDXL's largest attention level (64 x 64,
10 heads, head_dim 64), Wan2.1 at 480p x 81 frames (21 x 30 x 52 latents, 12 heads for 1.3B and 40 for 14B,
head_dim 128) and HunyuanVideo at 720p x 129 frames (33 x 45 x 80 latents + 256 text tokens, 24 heads).
``quick=True`` gives CPU-sized versions of the same shapes for CI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..kernels.neighborhood import NeighborhoodPattern
from ..kernels.patterns import Pattern


@dataclass(frozen=True)
class BenchConfig:
    """One benchmarked attention call.

    Args:
        name: unique label, ``"<model>/<pattern>"``.
        model: the model layout it reproduces.
        grid: latent token grid, ``(height, width)`` or ``(frames, height, width)``.
        heads, head_dim: attention heads and their width.
        text_tokens: text tokens in the sequence (global: every token attends to them and they to every token).
        text_first: text before the latents (Flux, CogVideoX) or after (SD3, HunyuanVideo).
        kind: ``"dense"``, ``"neighborhood"`` or ``"radial"``.
        params: the pattern's parameters (``kernel_size``, ``dilation``, ... or radial settings).
        batch: batch size.
    """

    name: str
    model: str
    grid: tuple[int, ...]
    heads: int
    head_dim: int
    text_tokens: int = 0
    text_first: bool = True
    kind: str = "dense"
    params: dict[str, Any] = field(default_factory=dict)
    batch: int = 1

    @property
    def image_tokens(self) -> int:
        return math.prod(self.grid)

    @property
    def tokens(self) -> int:
        return self.image_tokens + self.text_tokens

    @property
    def offset(self) -> int:
        """Sequence position of the first latent token."""
        return self.text_tokens if self.text_first else 0

    def pattern(self) -> Pattern | None:
        """The sparsity pattern over the whole sequence (``None`` for dense)."""
        if self.kind == "dense":
            return None
        layout = {"offset": self.offset, "extra_keys": 0 if self.text_first else self.text_tokens}
        layout["prefix_keys"] = self.text_first
        if self.kind == "neighborhood":
            return NeighborhoodPattern(self.grid, **layout, **self.params)
        if self.kind == "radial":
            from ..kernels.radial import RadialPattern

            return RadialPattern(self.grid, **layout, **self.params)
        raise ValueError(f"kind={self.kind!r} is not one of 'dense', 'neighborhood', 'radial'")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "grid": list(self.grid),
            "heads": self.heads,
            "head_dim": self.head_dim,
            "text_tokens": self.text_tokens,
            "text_first": self.text_first,
            "kind": self.kind,
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()},
            "batch": self.batch,
            "tokens": self.tokens,
        }


# model -> (grid, heads, head_dim, text tokens, text first)
_LAYOUTS: dict[str, tuple[tuple[int, ...], int, int, int, bool]] = {
    "flux-1024": ((64, 64), 24, 128, 512, True),
    "sdxl-4096": ((64, 64), 10, 64, 0, True),
    "wan2.1-1.3b-480p-81f": ((21, 30, 52), 12, 128, 0, True),
    "wan2.1-14b-480p-81f": ((21, 30, 52), 40, 128, 0, True),
    "hunyuan-720p-129f": ((33, 45, 80), 24, 128, 256, False),
}
# CPU-sized stand-ins with the same structure (text or not, 2-D or 3-D).
_QUICK_LAYOUTS: dict[str, tuple[tuple[int, ...], int, int, int, bool]] = {
    "flux-quick": ((12, 12), 2, 32, 16, True),
    "wan-quick": ((4, 6, 8), 2, 32, 0, True),
}

# Windows per model: several densities, all <= 0.25 for the sparse ones.
_PATTERNS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "flux-1024": [("na-17x17", {"kernel_size": (17, 17)}), ("na-31x31", {"kernel_size": (31, 31)})],
    "sdxl-4096": [("na-17x17", {"kernel_size": (17, 17)}), ("na-31x31", {"kernel_size": (31, 31)})],
    "wan2.1-1.3b-480p-81f": [
        ("na-5x15x27", {"kernel_size": (5, 15, 27)}),
        ("na-9x21x27", {"kernel_size": (9, 21, 27)}),
        ("radial", {}),
    ],
    "wan2.1-14b-480p-81f": [("na-9x21x27", {"kernel_size": (9, 21, 27)}), ("radial", {})],
    # the authors' HunyuanVideo mask: two dense frame distances, no sink frame
    "hunyuan-720p-129f": [
        ("na-9x21x39", {"kernel_size": (9, 21, 39)}),
        ("radial", {"dense_distance": 2, "sink_frames": 0}),
    ],
    "flux-quick": [("na-5x5", {"kernel_size": (5, 5)})],
    "wan-quick": [("na-3x3x3", {"kernel_size": (3, 3, 3)}), ("radial", {"block_size": 8})],
}


def configurations(quick: bool = False, models: list[str] | None = None) -> list[BenchConfig]:
    """The benchmark configurations: per model a dense baseline and its sparse patterns.

    Args:
        quick: CPU-sized layouts for CI instead of the real models' sizes.
        models: restrict to these model names (see :data:`_LAYOUTS` / :data:`_QUICK_LAYOUTS`).
    """
    layouts = _QUICK_LAYOUTS if quick else _LAYOUTS
    if models:
        unknown = [m for m in models if m not in layouts]
        if unknown:
            raise ValueError(f"models={unknown} not known; available: {', '.join(layouts)}")
        layouts = {m: layouts[m] for m in models}
    configs = []
    for model, (grid, heads, head_dim, text, text_first) in layouts.items():
        base = {"model": model, "grid": grid, "heads": heads, "head_dim": head_dim}
        base |= {"text_tokens": text, "text_first": text_first}
        configs.append(BenchConfig(name=f"{model}/dense", kind="dense", **base))
        for label, params in _PATTERNS[model]:
            kind = "radial" if label.startswith("radial") else "neighborhood"
            configs.append(BenchConfig(name=f"{model}/{label}", kind=kind, params=params, **base))
    return configs
