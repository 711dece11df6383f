"""Which attention layers an attach or an effect acts on.

Identifiers follow diffusers' ``pag_applied_layers``: each is a regular expression searched in the attention
module's name (``re.search``), except that an identifier ending in an integer does not match a name ending in
the same integer (so ``"blocks.1"`` does not pick ``"blocks.1"``'s look-alikes the way diffusers rules it out).
The role keywords ``"self"``, ``"cross"``, ``"joint"`` (and ``"text"``, ``"stream"``) select by what the layer attends
over.
Regex identifiers are united, role keywords are united, and the two groups intersect:
``["mid_block", "self"]`` is the self-attention inside the mid block.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

#: the roles of attention layers: latent tokens over latent tokens (``self``), over text (``cross``), one sequence of
#: text and latent tokens (``joint``), text over text (``text``: text encoders' and refiners' blocks), and the video
#: over another generated stream or that stream over the video (``stream``: LTX-2's and Kandinsky 6's video/audio
#: attention, which no effect acts on)
ROLE_KEYWORDS = ("self", "cross", "joint", "text", "stream")


class _FamilyDefault:
    """The ``layers`` default of perturbation guidance: where the model's family perturbs by default."""

    def __repr__(self) -> str:
        return "FAMILY_DEFAULT"

    def __reduce__(self) -> str:
        return "FAMILY_DEFAULT"  # one sentinel: copies and pickles are the module's (tested with ``is``)


#: ``layers=FAMILY_DEFAULT``: the family's default layers, resolved at attach
#: (:meth:`visattn.families.Family.default_pag_layers`: diffusers' PAG pipeline default, else the middle layer)
FAMILY_DEFAULT = _FamilyDefault()


def normalize_layers(layers: str | Iterable[str] | None, parameter: str = "layers") -> tuple[str, ...] | None:
    """``None`` (all layers) or a tuple of identifiers; TypeError/ValueError naming ``parameter`` otherwise."""
    from .validation import ParameterTypeError, check_regex

    if layers is None:
        return None
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, Iterable) or isinstance(layers, Mapping):
        raise ParameterTypeError(
            f"{parameter} must be None, a layer identifier (regex or one of {ROLE_KEYWORDS}) or a list of them; "
            f"got {layers!r} ({type(layers).__name__})"
        )
    layers = tuple(layers)
    for layer in layers:
        if not isinstance(layer, str):
            raise ParameterTypeError(f"{parameter} must be strings (regex or {ROLE_KEYWORDS}); got {layer!r}")
        if layer not in ROLE_KEYWORDS:
            check_regex(layer, parameter)
    if not layers:
        raise ValueError(f"{parameter} is empty; pass None for every layer")
    return layers


def is_fake_integral_match(layer_id: str, name: str) -> bool:
    """diffusers' rule: an identifier ending in an integer never matches a name ending in the same integer."""
    layer_tail, name_tail = layer_id.split(".")[-1], name.split(".")[-1]
    return layer_tail.isnumeric() and name_tail.isnumeric() and layer_tail == name_tail


def matches(layer_id: str, name: str) -> bool:
    """Whether a regex identifier selects the attention module called ``name`` (diffusers' PAG matching)."""
    return re.search(layer_id, name) is not None and not is_fake_integral_match(layer_id, name)


def select_layers(roles: Mapping[str, str], layers: tuple[str, ...] | None, parameter: str = "layers") -> list[str]:
    """Names (in model order) of the attention layers selected by ``layers``.

    Args:
        roles: every attention module name mapped to its static role.
        layers: normalized identifiers (see :func:`normalize_layers`), ``None`` for all.

    Raises:
        ValueError: an identifier matches no layer; the message lists the available names.
    """
    names = list(roles)
    if layers is None:
        return names
    role_ids = [layer for layer in layers if layer in ROLE_KEYWORDS]
    regex_ids = [layer for layer in layers if layer not in ROLE_KEYWORDS]
    for layer_id in regex_ids:
        if not any(matches(layer_id, name) for name in names):
            raise ValueError(
                f"{parameter}={layer_id!r} matches no attention layer; available layers: {', '.join(names)}"
            )
    for role in role_ids:
        if role not in roles.values():
            raise ValueError(
                f"{parameter}={role!r}: this model has no {role} attention layers "
                f"(it has {', '.join(sorted(set(roles.values())))})"
            )
    selected = [
        name
        for name in names
        if (not regex_ids or any(matches(layer_id, name) for layer_id in regex_ids))
        and (not role_ids or roles[name] in role_ids)
    ]
    if not selected:
        raise ValueError(f"{parameter}={list(layers)} selects no attention layer; available layers: {', '.join(names)}")
    return selected
