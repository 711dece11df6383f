"""Head sets: which attention heads a head-level perturbation acts on, saved and combined.

"Fine-Grained Perturbation Guidance via Attention Head Selection" (HeadHunter / SoftPAG) perturbs individual
attention heads instead of whole layers; specific heads govern structure, style or texture, and the sets found
for different goals compose by union. A :class:`HeadSet` is that selection: an ordered set of
``(layer name, head index)`` pairs, with the model it was found on, saved as versioned JSON.

Layer names are the attention modules' names inside the denoiser (as in ``named_modules``), for example
``"transformer_blocks.3.attn"``. They are exact names, not ``pag_applied_layers`` patterns: :meth:`HeadSet.to_heads`
turns them into anchored patterns because diffusers' identifiers are searched (``re.search``), and
``"transformer_blocks.0.attn"`` would otherwise also select FLUX's ``"single_transformer_blocks.0.attn"``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

#: the ``format`` field of a head-set file, and the version this module writes and reads
FORMAT = "visattn.head_set"
FORMAT_VERSION = 1


def layer_pattern(name: str) -> str:
    """A ``pag_applied_layers`` identifier that selects exactly the attention layer called ``name``."""
    return f"^{re.escape(name)}$"


def _denoisers(target: Any) -> list[torch.nn.Module]:
    if isinstance(target, torch.nn.Module):
        return [target]
    from ..attachment import DENOISER_ATTRIBUTES

    found = [getattr(target, name) for name in DENOISER_ATTRIBUTES if getattr(target, name, None) is not None]
    if not found:
        raise TypeError(
            "expected a diffusers pipeline with a unet or transformer, or a denoiser model; "
            f"got {type(target).__name__}"
        )
    return found


def layer_heads(target: Any, roles: Iterable[str] | None = ("self", "joint")) -> dict[str, int]:
    """Attention layer names of a pipeline's denoiser(s) (or of a denoiser) mapped to their head counts.

    Args:
        target: a diffusers pipeline or a denoiser model.
        roles: keep only layers of these static roles (``self``, ``cross``, ``joint``, ``text``); ``None`` keeps all.
            The default is the layers perturbation guidance acts on.
    """
    from ..attachment import attention_layers, layer_roles
    from ..parallel import module_heads

    wanted = None if roles is None else set(roles)
    heads: dict[str, int] = {}
    for model in _denoisers(target):
        model_roles = layer_roles(model)
        for name, module in attention_layers(model).items():
            # diffusers' Attention names its head count `heads`, Kandinsky's attention `num_heads`.
            count = module_heads(module)
            if count is not None and (wanted is None or model_roles[name] in wanted):
                heads.setdefault(name, count)
    return heads


def _check_pair(pair: Any) -> tuple[str, int]:
    try:
        layer, head = pair
    except (TypeError, ValueError):
        raise ValueError(f"head set entries must be (layer name, head index) pairs; got {pair!r}") from None
    if not isinstance(layer, str) or not layer:
        raise ValueError(f"head set layer names must be non-empty strings; got {layer!r}")
    if isinstance(head, bool) or not isinstance(head, int) or head < 0:
        raise ValueError(f"head indices must be integers >= 0; got {head!r} for layer {layer!r}")
    return layer, head


class HeadSet:
    """An ordered set of ``(layer name, head index)`` pairs (HeadHunter's selection), immutable.

    Order is the order pairs were added (HeadHunter's selection order); duplicates are dropped.

    Args:
        pairs: ``(layer name, head index)`` pairs; layer names are exact attention-module names.
        model: the model the heads were found on (a model id or pipeline class), recorded in saved files.
        metadata: JSON-serializable extras saved with the set (the objective, the search history, ...).
    """

    __slots__ = ("_pairs", "model", "metadata")

    def __init__(
        self,
        pairs: Iterable[tuple[str, int]] = (),
        *,
        model: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if model is not None and not isinstance(model, str):
            raise ValueError(f"model must be a string (a model id or name) or None; got {model!r}")
        self._pairs: tuple[tuple[str, int], ...] = tuple(dict.fromkeys(_check_pair(pair) for pair in pairs))
        self.model = model
        self.metadata = dict(metadata or {})

    # --- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_heads(cls, heads: Mapping[str, Iterable[int]], *, model: str | None = None) -> HeadSet:
        """From ``{layer name: [head indices]}``."""
        if not isinstance(heads, Mapping):
            raise ValueError(f"heads must be a dict {{layer name: [head indices]}}; got {heads!r}")
        return cls(((layer, head) for layer, indices in heads.items() for head in indices), model=model)

    @classmethod
    def all_heads(cls, target: Any, layers: str | Iterable[str] | None = None, *, model: str | None = None) -> HeadSet:
        """Every head of every self/joint attention layer of a pipeline or denoiser (HeadHunter's candidates).

        Args:
            target: a diffusers pipeline or a denoiser model.
            layers: restrict to layers selected by ``pag_applied_layers`` identifiers (regex searched in the
                names) and role keywords, as in :func:`visattn.attach`; ``None`` for all.
            model: recorded as :attr:`model`.
        """
        from ..layers import normalize_layers, select_layers

        counts = layer_heads(target)
        if not counts:
            raise ValueError(f"{type(target).__name__} has no self or joint attention layers to perturb")
        if layers is not None:
            from ..attachment import layer_roles

            roles = {name: role for model_ in _denoisers(target) for name, role in layer_roles(model_).items()}
            roles = {name: role for name, role in roles.items() if name in counts}
            selected = select_layers(roles, normalize_layers(layers), "layers")
            counts = {name: counts[name] for name in selected}
        return cls(((name, head) for name, count in counts.items() for head in range(count)), model=model)

    # --- set behaviour -----------------------------------------------------------------------------------------
    @property
    def pairs(self) -> tuple[tuple[str, int], ...]:
        return self._pairs

    @property
    def layers(self) -> tuple[str, ...]:
        """Layer names in first-appearance order."""
        return tuple(dict.fromkeys(layer for layer, _ in self._pairs))

    def by_layer(self) -> dict[str, list[int]]:
        """``{exact layer name: [head indices]}`` in selection order."""
        grouped: dict[str, list[int]] = {}
        for layer, head in self._pairs:
            grouped.setdefault(layer, []).append(head)
        return grouped

    def to_heads(self) -> dict[str, list[int]]:
        """``{layer identifier: [head indices]}`` for the ``heads=`` argument of the perturbation effects.

        Keys are anchored identifiers (see :func:`layer_pattern`) so each selects exactly its own layer.
        """
        return {layer_pattern(layer): heads for layer, heads in self.by_layer().items()}

    def add(self, layer: str, head: int) -> HeadSet:
        """A new set with ``(layer, head)`` appended."""
        return HeadSet((*self._pairs, (layer, head)), model=self.model, metadata=self.metadata)

    def __or__(self, other: HeadSet) -> HeadSet:
        """The union (this set's order first): head sets found for different goals combine their effects."""
        if not isinstance(other, HeadSet):
            return NotImplemented
        if self.model is not None and other.model is not None and self.model != other.model:
            raise ValueError(f"cannot combine head sets found on different models: {self.model!r} and {other.model!r}")
        return HeadSet((*self._pairs, *other._pairs), model=self.model or other.model)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def __contains__(self, pair: object) -> bool:
        return pair in self._pairs

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HeadSet):
            return NotImplemented
        return self._pairs == other._pairs and self.model == other.model

    def __hash__(self) -> int:
        return hash((self._pairs, self.model))

    def __repr__(self) -> str:
        shown = ", ".join(f"{layer}[{head}]" for layer, head in self._pairs[:6])
        more = f", ... ({len(self)} heads)" if len(self) > 6 else ""
        return f"HeadSet({shown}{more}, model={self.model!r})"

    # --- checks and effects --------------------------------------------------------------------------------------
    def validate(self, target: Any) -> HeadSet:
        """Check every pair against a pipeline's or denoiser's attention layers; returns ``self``.

        Raises:
            ValueError: a layer name that is not a self/joint attention layer of the model (the message lists the
                available ones), or a head index >= the layer's head count (the message gives both numbers).
        """
        counts = layer_heads(target)
        for layer, head in self._pairs:
            if layer not in counts:
                available = ", ".join(counts) or "none"
                raise ValueError(
                    f"head set layer {layer!r} is not a self/joint attention layer of "
                    f"{type(target).__name__}; available layers: {available}"
                )
            if head >= counts[layer]:
                raise ValueError(
                    f"head set head {head} is out of range for layer {layer!r}, which has {counts[layer]} heads "
                    f"(indices 0 to {counts[layer] - 1})"
                )
        return self

    def effect(self, scale: float = 3.0, strength: float = 1.0, **kwargs: Any):
        """A :class:`visattn.effects.PerturbedAttentionGuidance` (SoftPAG when ``strength < 1``) on these heads.

        Extra keyword arguments (``adaptive_scale``, ``steps``) go to the effect.
        """
        from ..effects.perturbed_attention_guidance import PerturbedAttentionGuidance

        if not self._pairs:
            raise ValueError("an empty HeadSet selects no head to perturb; add heads first")
        heads = self.to_heads()
        return PerturbedAttentionGuidance(scale=scale, layers=list(heads), heads=heads, strength=strength, **kwargs)

    # --- files ---------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "model": self.model,
            "heads": [[layer, head] for layer, head in self._pairs],
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "head set") -> HeadSet:
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise ValueError(f'{source} is not a visattn head set (expected "format": {FORMAT!r})')
        version = data.get("version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{source} has head-set format version {version!r}; this visattn reads version {FORMAT_VERSION}"
            )
        heads = data.get("heads")
        if not isinstance(heads, list):
            raise ValueError(f'{source}: "heads" must be a list of [layer, head] pairs; got {heads!r}')
        return cls((tuple(pair) for pair in heads), model=data.get("model"), metadata=data.get("metadata") or {})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the set as JSON (atomically: a killed write never leaves half a file); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> HeadSet:
        """Read a set written by :meth:`save`; ValueError for a file that is not one (or of another version)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from None
        return cls.from_dict(data, source=str(path))
