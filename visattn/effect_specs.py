"""visattn effects from JSON-able dicts, and back: the effect configuration of batch jobs, the demo and evaluations.

An effect spec is a dict with a ``"type"`` and the keyword arguments of that effect's constructor::

    {"type": "PerturbedAttentionGuidance", "scale": 3.0, "layers": "mid"}
    {"type": "neighborhood", "kernel_size": 7}            # a short alias (see ALIASES)
    {"type": "decay", "train_video_frames": 81}           # training length in video frames (see below)

``type`` is a class name from :mod:`visattn.effects` (the names it registers lazily) or an alias; only the
module of the types actually used is imported. :func:`build_effects` checks every spec up front and raises a
:class:`SpecError` that names the offending field (``effects[1].kernel_size``), so a jobs file or a form can point
at the exact place. :func:`describe` turns effects back into specs for metadata; a spec that :func:`build_effects`
built is described exactly as it was given (type normalized to the class name), so the description rebuilds the
same effect.

Video length: :class:`~visattn.effects.ExtrapolationDecay` counts ``train_frames`` in *latent* frames (after the
VAE's temporal compression and the transformer's temporal patches: 21 for Wan 2.1's 81-frame clips). A model card
gives the clip length in video frames, so a spec may give ``train_video_frames`` instead: the builder converts it
with the pipeline's own factors (:func:`visattn.frames.latent_frames`) when it is given a ``latent_frames``
converter (the batch runner passes the loaded pipeline's), and the description keeps the field as written.

Prompt-to-Prompt edits (Hertz et al., 2022, "Prompt-to-Prompt Image Editing with Cross Attention Control") are
not ordinary effects: they decide the prompts the pipeline is called with. They have their own spec, built by
:func:`build_edit`::

    {"source": "a cat riding a bike", "target": "a dog riding a bike"}      # word swap (same word count)
    {"source": "a cat", "target": "a fluffy cat", "local_blend": "cat"}     # refinement (words added/removed)
    {"prompt": "a fluffy cat", "reweight": {"fluffy": 3.0}}                 # re-weighting
"""

from __future__ import annotations

import inspect
import math
import re
import sys
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .effects.base import Effect
    from .effects.prompt_to_prompt import PromptToPrompt

#: short names for the effect classes of :mod:`visattn.effects` (a spec may also use the class name itself)
ALIASES: dict[str, str] = {
    "pag": "PerturbedAttentionGuidance",
    "softpag": "PerturbedAttentionGuidance",
    "seg": "SmoothedEnergyGuidance",
    "stg": "SpatioTemporalSkipGuidance",
    "neighborhood": "NeighborhoodAttention",
    "radial": "RadialAttention",
    "decay": "ExtrapolationDecay",
    "extrapolation": "ExtrapolationDecay",
    "entropy": "EntropyScaling",
    "maps": "AttentionMaps",
    "tgate": "CrossAttentionCache",
}

# Names in the registry of visattn.effects that are not effects a spec can build: the base classes, the
# processor, a helper object, and Prompt-to-Prompt (an edit decides the pipeline's prompts: see build_edit).
_NOT_EFFECTS = frozenset({"AttentionCall", "Effect", "LocalBlend"})
_EDIT_TYPES = frozenset({"PromptToPrompt"})
# The largest integer an effect parameter may be: beyond it, float(value) overflows.
_LARGEST_INT = int(sys.float_info.max)

EDIT_MODES = ("replace", "refine")
_EDIT_OPTIONS = ("cross_steps", "self_steps", "weights", "local_blend", "layers", "edit_uncond")
_LOCAL_BLEND_FIELDS = ("words", "threshold", "radius", "start", "variant", "subtract", "subtract_threshold")

#: spec-only fields: ``{field: (the constructor parameter it sets, the effect classes that take it)}``
VIDEO_FRAME_FIELDS: dict[str, tuple[str, frozenset[str]]] = {
    "train_video_frames": ("train_frames", frozenset({"ExtrapolationDecay"})),
}

# Specs of the effects and edits built here, so describe() can return exactly what was given.
_BUILT: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


class SpecError(ValueError):
    """A spec that cannot be built; ``field`` says where (``effects[1].kernel_size``, ``edit.target``, ...)."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}")


# --- the registry -----------------------------------------------------------------------------------------------
def effect_types() -> tuple[str, ...]:
    """The class names a spec's ``type`` may use, from :mod:`visattn.effects`' registry (nothing is imported)."""
    from . import processors

    return tuple(sorted(name for name in processors.__all__ if name not in _NOT_EFFECTS | _EDIT_TYPES))


def _choices() -> str:
    aliases = ", ".join(f"{alias} ({name})" for alias, name in ALIASES.items())
    return f"one of {', '.join(effect_types())}, or an alias: {aliases}"


def resolve_type(name: Any, field: str = "type") -> type[Effect]:
    """The effect class for a spec's ``type`` (a class name or an alias, case-insensitive for aliases).

    Raises:
        SpecError: the name is not a string, is unknown, or names Prompt-to-Prompt (use an edit instead).
    """
    if not isinstance(name, str) or not name:
        raise SpecError(field, f"must be an effect name string; got {name!r}. Use {_choices()}")
    class_name = ALIASES.get(name.lower(), name)
    if class_name in _EDIT_TYPES:
        raise SpecError(field, f"{name!r} is an edit, not an effect: give it as the job's edit ({{source, target}})")
    if class_name not in effect_types():
        raise SpecError(field, f"{name!r} is not a known effect. Use {_choices()}")
    from . import processors
    from .effects.base import Effect

    cls = getattr(processors, class_name)  # imports only this effect's module
    if not (isinstance(cls, type) and issubclass(cls, Effect)):
        raise SpecError(field, f"{name!r} ({class_name}) is not an Effect class")
    return cls


# --- building -----------------------------------------------------------------------------------------------------
def _check_kwargs(callable_: Any, kwargs: Mapping[str, Any], field: str, what: str) -> None:
    """Unknown and missing keyword arguments of ``callable_``, reported before calling it."""
    parameters = inspect.signature(callable_).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    allowed = [name for name, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for name in kwargs:
        if name not in allowed:
            raise SpecError(f"{field}.{name}", f"is not a parameter of {what}; allowed: {', '.join(allowed)}")
    missing = [
        name
        for name, p in parameters.items()
        if p.default is inspect.Parameter.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and name not in kwargs
    ]
    if missing:
        raise SpecError(field, f"{what} needs {', '.join(missing)}")


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a value pasted into a message stays readable)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int beyond str()'s digit limit, a structure nested too deeply
        return f"<a {type(value).__name__} too large to show>"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _check_numbers(kwargs: Mapping[str, Any], field: str, what: str) -> None:
    """Integers no float can hold (a 400-digit scale), refused by name before a constructor's arithmetic
    overflows on them."""
    for name, value in kwargs.items():
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _LARGEST_INT:
            raise SpecError(
                f"{field}.{name}", f"{_shown(value)} is not allowed: {what} takes numbers up to {_LARGEST_INT:.3g}"
            )


def _regex_culprit(kwargs: Mapping[str, Any], error: type[BaseException]) -> str | None:
    """The keyword whose string (or list of strings) fails to compile as a regular expression with ``error``:
    layer patterns are regexes, and ``re`` raises OverflowError or re.error, neither naming the argument."""
    for name, value in kwargs.items():
        for text in [value] if isinstance(value, str) else value if isinstance(value, (list, tuple)) else []:
            if not isinstance(text, str):
                continue
            try:
                re.compile(text)
            except error:
                return name
            except Exception:  # noqa: BLE001 - another failure of another argument: keep looking
                continue
    return None


def _construct(factory: Any, kwargs: dict[str, Any], field: str, what: str) -> Any:
    """``factory(**kwargs)``, with the constructor's own failures re-raised as a :class:`SpecError`.

    Besides ValueError/TypeError, arithmetic overflow, regular expressions ``re`` cannot compile (a layer pattern
    ``a{99999999999}`` raises OverflowError) and runaway recursion are the spec's fault too; the field names the
    argument when it can be found.
    """
    _check_numbers(kwargs, field, what)
    try:
        return factory(**kwargs)
    except (ValueError, TypeError) as exc:
        raise SpecError(field, f"{what}: {exc}") from None
    except (ArithmeticError, re.error, RecursionError) as exc:
        name = _regex_culprit(kwargs, type(exc)) if isinstance(exc, (OverflowError, re.error)) else None
        if name is not None:
            raise SpecError(
                f"{field}.{name}",
                f"{_shown(kwargs[name])} is not allowed: not a regular expression {what} can compile ({exc})",
            ) from None
        raise SpecError(field, f"{what}: {type(exc).__name__}: {exc}") from None


def _video_frames_to_latent(
    cls: type, kwargs: dict[str, Any], field: str, latent_frames: Callable[[int], int] | None
) -> dict[str, Any]:
    """``kwargs`` with ``train_video_frames`` (video frames) replaced by ``train_frames`` (latent frames).

    Without a converter (a jobs file checked before any model is loaded) the count is passed through unchanged:
    the spec is checked, not run.
    """
    for name, (parameter, classes) in VIDEO_FRAME_FIELDS.items():
        if name not in kwargs:
            continue
        if cls.__name__ not in classes:
            raise SpecError(f"{field}.{name}", f"is not a parameter of {cls.__name__}; it is {', '.join(classes)}'s")
        if parameter in kwargs:
            raise SpecError(f"{field}.{name}", f"give {name} (video frames) or {parameter} (latent frames), not both")
        value = kwargs.pop(name)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _LARGEST_INT:
            raise SpecError(f"{field}.{name}", f"{_shown(value)} is not allowed: must be a number of frames >= 1")
        try:
            kwargs[parameter] = latent_frames(value) if latent_frames is not None else value
        except ValueError as exc:
            raise SpecError(f"{field}.{name}", str(exc)) from None
    return kwargs


def build_effect(
    spec: Mapping[str, Any], field: str = "effect", *, latent_frames: Callable[[int], int] | None = None
) -> Effect:
    """One effect from ``{"type": name, **kwargs}``; ``field`` names the spec in error messages.

    ``latent_frames`` converts a spec's ``train_video_frames`` (video frames) into the effect's ``train_frames``
    (latent frames), e.g. ``functools.partial(visattn.frames.latent_frames, pipe)``; see the module docstring.

    Raises:
        SpecError: not a dict, a missing or unknown ``type``, a keyword the constructor does not take, a missing
            required one, or a value the constructor rejects (its message, prefixed with the field).
    """
    if not isinstance(spec, Mapping):
        raise SpecError(field, f'must be an object {{"type": name, ...parameters}}; got {spec!r}')
    if "type" not in spec:
        raise SpecError(f"{field}.type", f"is missing. Use {_choices()}")
    cls = resolve_type(spec["type"], f"{field}.type")
    kwargs = {key: value for key, value in spec.items() if key != "type"}
    if any(not isinstance(key, str) for key in kwargs):
        raise SpecError(field, f"parameter names must be strings; got {list(kwargs)!r}")
    given = dict(kwargs)
    kwargs = _video_frames_to_latent(cls, kwargs, field, latent_frames)
    _check_kwargs(cls, kwargs, field, cls.__name__)
    effect = _construct(cls, kwargs, field, cls.__name__)
    _remember(effect, {"type": cls.__name__, **_jsonable(given)})  # as written: train_video_frames stays
    return effect


def build_effects(
    specs: Sequence[Mapping[str, Any]] | None,
    field: str = "effects",
    *,
    latent_frames: Callable[[int], int] | None = None,
) -> list[Effect]:
    """Effects from a list of specs (``None`` or ``[]``: no effect), in order; errors name ``field[i]...``.
    ``latent_frames``: see :func:`build_effect`."""
    if specs is None:
        return []
    if isinstance(specs, (str, bytes, Mapping)) or not isinstance(specs, Sequence):
        raise SpecError(field, f"must be a list of effect objects; got {specs!r}")
    return [build_effect(spec, f"{field}[{i}]", latent_frames=latent_frames) for i, spec in enumerate(specs)]


def _local_blend(value: Any, field: str) -> Any:
    """A :class:`~visattn.effects.LocalBlend` from words (a string or list) or ``{words, threshold, radius}``."""
    from .effects import LocalBlend

    if value is None:
        return None
    if isinstance(value, (str, list, tuple)):
        value = {"words": value}
    if not isinstance(value, Mapping):
        raise SpecError(field, f"must be words or {{words, threshold, radius}}; got {value!r}")
    for key in value:
        if key not in _LOCAL_BLEND_FIELDS:
            raise SpecError(f"{field}.{key}", f"is not a local-blend field; allowed: {', '.join(_LOCAL_BLEND_FIELDS)}")
    if "words" not in value:
        raise SpecError(f"{field}.words", "is missing: the words whose region may change")
    return _construct(LocalBlend, dict(value), field, "LocalBlend")


def build_edit(spec: Mapping[str, Any], field: str = "edit") -> PromptToPrompt:
    """A :class:`~visattn.effects.PromptToPrompt` edit from its spec (Hertz et al., 2022).

    Forms:
        ``{"source": ..., "target": ..., "mode"?: "replace" | "refine", ...options}``: a word swap or a
        refinement. Without ``mode``: ``"replace"`` when both prompts have the same number of words, else
        ``"refine"``.
        ``{"prompt": ..., "reweight": {word: scale}, ...options}``: re-weighting.

    Options (see :class:`~visattn.effects.PromptToPrompt`): ``cross_steps``, ``self_steps``, ``weights``
    (swap/refine only), ``local_blend`` (words, or ``{"words", "threshold", "radius", "start", "variant", "subtract",
    "subtract_threshold"}``),
    ``layers``, ``edit_uncond``.

    Raises:
        SpecError: an unknown field, a missing prompt, or a value PromptToPrompt rejects (a word that is not in
            its prompt, a bad schedule, ...).
    """
    from .effects import PromptToPrompt
    from .words import split_words

    if not isinstance(spec, Mapping):
        raise SpecError(field, f'must be an object such as {{"source": ..., "target": ...}}; got {spec!r}')
    reweighting = "reweight" in spec or "prompt" in spec
    allowed = ("prompt", "reweight", *_EDIT_OPTIONS) if reweighting else ("source", "target", "mode", *_EDIT_OPTIONS)
    for key in spec:
        if key not in allowed:
            hint = " (a re-weighting edit has prompt and reweight; a swap/refinement has source and target)"
            raise SpecError(f"{field}.{key}", f"is not allowed here; allowed: {', '.join(allowed)}{hint}")
    if reweighting and "weights" in spec:
        raise SpecError(f"{field}.weights", "give the scales of a re-weighting edit as reweight, not weights")
    required = ("prompt", "reweight") if reweighting else ("source", "target")
    for key in required:
        if key not in spec:
            raise SpecError(f"{field}.{key}", "is missing")
        if key != "reweight" and (not isinstance(spec[key], str) or not spec[key].strip()):
            raise SpecError(f"{field}.{key}", f"must be a non-empty prompt string; got {spec[key]!r}")
    options = {key: spec[key] for key in _EDIT_OPTIONS if key in spec}
    if "local_blend" in options:
        options["local_blend"] = _local_blend(options["local_blend"], f"{field}.local_blend")
    if reweighting:
        p2p = _construct(
            lambda **kw: PromptToPrompt.reweight(spec["prompt"], spec["reweight"], **kw), options, field, "reweight"
        )
        canonical = {"prompt": spec["prompt"], "reweight": spec["reweight"]}
    else:
        mode = spec.get("mode")
        if mode is None:
            same = len(split_words(spec["source"])) == len(split_words(spec["target"]))
            mode = "replace" if same else "refine"
        if mode not in EDIT_MODES:
            raise SpecError(f"{field}.mode", f"must be one of {', '.join(EDIT_MODES)} (or omitted); got {mode!r}")
        factory = PromptToPrompt.replace if mode == "replace" else PromptToPrompt.refine
        p2p = _construct(lambda **kw: factory(spec["source"], spec["target"], **kw), options, field, mode)
        canonical = {"source": spec["source"], "target": spec["target"], "mode": mode}
    rest = {key: spec[key] for key in _EDIT_OPTIONS if key in spec}
    _remember(p2p, _jsonable({**canonical, **rest}))
    return p2p


# --- describing ---------------------------------------------------------------------------------------------------
def _remember(obj: Any, spec: dict[str, Any]) -> None:
    try:
        _BUILT[obj] = spec
    except TypeError:  # an unhashable or non-weak-referenceable object: describe() falls back to introspection
        pass


def _jsonable(value: Any) -> Any:
    """``value`` with tuples/sets as lists and other objects as their repr, so it survives ``json.dumps``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_jsonable(item) for item in items]
    return repr(value)


def describe_effect(effect: Effect) -> dict[str, Any]:
    """A JSON-able spec of ``effect``: the spec it was built from, or (for an effect built in code) its class name
    and the constructor parameters it keeps as attributes of the same name."""
    try:
        built = _BUILT.get(effect)
    except TypeError:
        built = None
    if built is not None:
        return dict(built)
    spec: dict[str, Any] = {"type": type(effect).__name__}
    for name, parameter in inspect.signature(type(effect)).parameters.items():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) or not hasattr(effect, name):
            continue
        spec[name] = _jsonable(getattr(effect, name))
    return spec


def describe(effects: Sequence[Effect]) -> list[dict[str, Any]]:
    """JSON-able specs of ``effects`` (for metadata); see :func:`describe_effect`."""
    return [describe_effect(effect) for effect in effects]


def describe_edit(edit: PromptToPrompt) -> dict[str, Any]:
    """A JSON-able spec of a Prompt-to-Prompt edit: the spec :func:`build_edit` got, or its prompts and mode."""
    try:
        built = _BUILT.get(edit)
    except TypeError:
        built = None
    if built is not None:
        return dict(built)
    spec = {"source": edit.source, "target": edit.target, "mode": edit.mode}
    if edit.weights:
        spec["weights"] = dict(edit.weights)
    return spec
