"""HeadHunter: greedy search for the attention heads whose perturbation best serves an objective.

"Fine-Grained Perturbation Guidance via Attention Head Selection" observes that single attention heads govern
distinct visual concepts (structure, style, texture quality), so perturbation guidance on the right heads beats
perturbing whole layers. HeadHunter selects them iteratively against a user objective: in each round, every
remaining candidate head is added in turn to the heads selected so far, the prompts are generated with PAG (or
SoftPAG, ``strength < 1``) on that set, the objective scores the images, and the best candidates are kept.

Defaults follow the authors' search (cvlab-kaist/HeadHunter, ``pipeline_distributed.py``: ``generate_images``,
``select_topk_heads``, ``run.sh``): the top 3 heads join per round (``--top_k 3``), CFG is off during the search
(``guidance_scale=0.0``; the only guidance is the perturbation, ``perturb_guidance_scale=3.0``), and prompt ``i``
is generated once, from ``torch.Generator("cpu").manual_seed(i)``. The authors evaluate already selected heads
again and then exclude them from the top-k; this search skips them, which selects the same heads.

The search is resumable: with ``state_path`` every evaluation is written to a JSON file as soon as it is known,
so a killed run continues where it stopped and a finished search extended by more rounds does not recompute the
rounds it already has.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .head_sets import HeadSet

Objective = Callable[[Any, list[str]], float]

#: the ``format`` field of a search-state file, and the version this module writes and reads
STATE_FORMAT = "visattn.hunt_state"
STATE_VERSION = 2
#: the authors' ``--top_k``: heads added per round
AUTHORS_HEADS_PER_ROUND = 3
#: the authors' ``guidance_scale`` while searching: classifier-free guidance off
AUTHORS_SEARCH_GUIDANCE = 0.0
#: pipeline arguments hunt_heads sets itself
RESERVED_ARGUMENTS = ("prompt", "generator", "num_images_per_prompt")


class HuntStateError(ValueError):
    """A state file that cannot be resumed (another search, another format, or not a state file)."""


# --- built-in objectives ----------------------------------------------------------------------------------------------
def as_image_array(images: Any) -> np.ndarray:
    """Pipeline images as a float array ``[N, H, W, C]`` in ``[0, 1]`` (from numpy, torch or PIL images)."""
    if isinstance(images, torch.Tensor):
        array = images.detach().float().cpu().numpy()
        if array.ndim == 4 and array.shape[1] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = array.transpose(0, 2, 3, 1)  # output_type="pt" is channels-first
    elif isinstance(images, np.ndarray):
        array = images
    else:
        array = np.stack([np.asarray(image.convert("RGB")) for image in images])
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(f"images must be a batch [N, H, W, C]; got an array of shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    return array.astype(np.float64)


def _luminance(images: np.ndarray) -> np.ndarray:
    if images.shape[-1] == 1:
        return images[..., 0]
    # Rec. 601 luma: the weights the eye gives red, green and blue.
    return images[..., :3] @ np.array([0.299, 0.587, 0.114])


def sharpness(images: Any, prompts: Sequence[str]) -> float:
    """Mean gradient magnitude of the luminance (forward differences): higher means more fine detail and edges."""
    luma = _luminance(as_image_array(images))
    dy = np.diff(luma, axis=1)[:, :, :-1]
    dx = np.diff(luma, axis=2)[:, :-1, :]
    return float(np.sqrt(dx**2 + dy**2).mean())


def contrast(images: Any, prompts: Sequence[str]) -> float:
    """RMS contrast: the standard deviation of each image's luminance, averaged over images."""
    luma = _luminance(as_image_array(images))
    return float(luma.reshape(luma.shape[0], -1).std(axis=1).mean())


def saturation(images: Any, prompts: Sequence[str]) -> float:
    """Mean HSV saturation ``(max - min) / max`` over RGB channels (0 for grey and black pixels)."""
    rgb = as_image_array(images)[..., :3]
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    return float(np.where(high > 0, (high - low) / np.maximum(high, 1e-12), 0.0).mean())


#: built-in objectives by name; each maps ``(images, prompts)`` to a float, higher is better
OBJECTIVES: dict[str, Objective] = {"sharpness": sharpness, "contrast": contrast, "saturation": saturation}


def resolve_objective(spec: str | Objective, minimize: bool = False) -> tuple[Objective, str]:
    """An objective function and its name from a built-in name, ``module:function`` or ``file.py:function``.

    Args:
        spec: a callable, a name in :data:`OBJECTIVES`, an importable ``module:function``, or a Python file and a
            function in it, ``path/to/file.py:function``.
        minimize: negate the objective (the search always maximizes).

    Raises:
        ValueError: an unknown name, a module or file that cannot be imported, or a missing function.
    """
    if callable(spec):
        function, name = spec, getattr(spec, "__name__", repr(spec))
    elif not isinstance(spec, str) or not spec:
        raise ValueError(f"objective must be a callable or a name; got {spec!r}")
    elif spec in OBJECTIVES:
        function, name = OBJECTIVES[spec], spec
    elif ":" in spec:
        module_name, _, attribute = spec.rpartition(":")
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser()
            if not path.is_file():
                raise ValueError(f"objective={spec!r}: no such file {str(path)!r}")
            module_spec = importlib.util.spec_from_file_location(f"visattn_objective_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            try:
                module_spec.loader.exec_module(module)
            except Exception as error:  # the user's file: any failure means "this objective cannot be loaded"
                raise ValueError(
                    f"objective={spec!r}: importing {path} failed: {type(error).__name__}: {error}"
                ) from error
        else:
            try:
                module = importlib.import_module(module_name)
            except ImportError as error:
                raise ValueError(f"objective={spec!r}: cannot import module {module_name!r}: {error}") from None
        function = getattr(module, attribute, None)
        if not callable(function):
            raise ValueError(f"objective={spec!r}: {module_name!r} has no function {attribute!r}")
        name = spec
    else:
        raise ValueError(
            f"objective={spec!r} is not a built-in objective ({', '.join(OBJECTIVES)}) "
            "nor of the form module:function or file.py:function"
        )
    if not minimize:
        return function, name

    def negated(images: Any, prompts: list[str]) -> float:
        return -float(function(images, prompts))

    return negated, f"-{name}"


# --- results ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RoundResult:
    """One HeadHunter round: the heads it added (best first), the best one's score, and every candidate's score."""

    round: int
    heads: tuple[tuple[str, int], ...]
    score: float
    scores: dict[tuple[str, int], float]

    @property
    def head(self) -> tuple[str, int]:
        """The round's best head."""
        return self.heads[0]


@dataclass
class HuntResult:
    """What :func:`hunt_heads` found.

    Attributes:
        heads: the selected heads in selection order (round 1's first), with the search recorded in ``metadata``.
        history: one :class:`RoundResult` per completed round.
        baseline_score: the objective on images generated without any perturbation guidance.
    """

    heads: HeadSet
    history: list[RoundResult] = field(default_factory=list)
    baseline_score: float | None = None

    @property
    def scores(self) -> list[dict[tuple[str, int], float]]:
        """Every evaluated candidate's score, one dict per round."""
        return [record.scores for record in self.history]

    @property
    def best_score(self) -> float | None:
        return self.history[-1].score if self.history else None


# --- the resumable state -------------------------------------------------------------------------------------------
def _setup_fingerprint(
    prompts, seed_rows, scale, strength, heads_per_round, candidates: HeadSet, pipe_kwargs, model
) -> dict[str, Any]:
    """Everything that decides a score: a state file only resumes the search it was written for."""
    return {
        "model": model,
        "prompts": list(prompts),
        "seeds": [list(row) for row in seed_rows],
        "scale": scale,
        "strength": strength,
        "heads_per_round": heads_per_round,
        "candidates": [[layer, head] for layer, head in candidates],
        # repr for values JSON cannot hold (dtypes, tensors): equal settings give equal text.
        "pipe_kwargs": json.loads(json.dumps(pipe_kwargs, sort_keys=True, default=repr)),
    }


class _State:
    def __init__(self, path: Path | None, setup: dict[str, Any]) -> None:
        self.path = path
        self.setup = setup
        self.baseline: float | None = None
        # {"scores": {(layer, head): score}, "best": [(layer, head), ...] once the round is decided, else None}
        self.rounds: list[dict[str, Any]] = []
        if path is not None and path.exists():
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise HuntStateError(f"state file {self.path} is not valid JSON: {error}") from None
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise HuntStateError(f'{self.path} is not a HeadHunter state file (expected "format": {STATE_FORMAT!r})')
        if data.get("version") != STATE_VERSION:
            raise HuntStateError(
                f"state file {self.path} has version {data.get('version')!r}; this visattn reads {STATE_VERSION}"
            )
        recorded = data.get("setup", {})
        for key, value in self.setup.items():
            if recorded.get(key) != value:
                raise HuntStateError(
                    f"state file {self.path} belongs to another search: its {key} is {recorded.get(key)!r}, this "
                    f"search's is {value!r}; use another state file or the same settings"
                )
        self.baseline = data.get("baseline")
        for entry in data.get("rounds", []):
            scores = {(layer, head): float(score) for layer, head, score in entry["scores"]}
            best = [tuple(pair) for pair in entry["best"]] if entry.get("best") is not None else None
            self.rounds.append({"scores": scores, "best": best})

    def save(self) -> None:
        if self.path is None:
            return
        data = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "setup": self.setup,
            "baseline": self.baseline,
            "rounds": [
                {
                    "scores": [[layer, head, score] for (layer, head), score in entry["scores"].items()],
                    "best": [list(pair) for pair in entry["best"]] if entry["best"] is not None else None,
                }
                for entry in self.rounds
            ],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a run killed mid-write keeps the previous, complete state.
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        os.replace(temporary, self.path)


# --- generation ----------------------------------------------------------------------------------------------------
@contextmanager
def _pipeline_progress_off(pipe: Any) -> Iterator[None]:
    """Hide the pipeline's own per-call bar (the search shows one bar for all calls); restore it afterwards."""
    if not hasattr(pipe, "set_progress_bar_config"):
        yield
        return
    previous = dict(getattr(pipe, "_progress_bar_config", None) or {})
    pipe.set_progress_bar_config(**{**previous, "disable": True})
    try:
        yield
    finally:
        pipe._progress_bar_config = previous


def _generate(
    pipe: Any, prompts: list[str], seed_rows: Sequence[Sequence[int]], effect: Any, pipe_kwargs: dict[str, Any]
) -> Any:
    """The prompts' images, one batch per row of seeds (row ``r`` gives prompt ``i`` the seed ``seed_rows[r][i]``),
    with ``effect`` attached when given."""
    from ..attachment import attach

    batches = []
    with attach(pipe, effect) if effect is not None else nullcontext():
        for row in seed_rows:
            # One CPU generator per image: the same seed gives the same noise on any device and batch size, so a
            # batch of prompts draws what the authors' one-prompt calls draw.
            generators = [torch.Generator("cpu").manual_seed(seed) for seed in row]
            output = pipe(prompt=list(prompts), generator=generators, **pipe_kwargs)
            batches.append(output.images if hasattr(output, "images") else output[0])
    if all(isinstance(batch, np.ndarray) for batch in batches):
        return np.concatenate(batches)
    if all(isinstance(batch, torch.Tensor) for batch in batches):
        return torch.cat(batches)
    return [image for batch in batches for image in batch]


def _model_name(pipe: Any) -> str:
    name = getattr(pipe, "name_or_path", None)
    if not name and hasattr(pipe, "config"):
        name = pipe.config.get("_name_or_path")
    return name or type(pipe).__name__


def _score(objective: Objective, images: Any, prompts: list[str], what: str) -> float:
    value = objective(images, prompts)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"the objective must return a number; it returned {value!r} for {what}") from None
    if not math.isfinite(value):
        raise ValueError(f"the objective returned {value} for {what}; it must be finite")
    return value


def _check_candidates(pipe: Any, candidates: HeadSet | Iterable[tuple[str, int]] | None) -> HeadSet:
    if candidates is None:
        candidates = HeadSet.all_heads(pipe)
    elif not isinstance(candidates, HeadSet):
        candidates = HeadSet(candidates)
    if not candidates:
        raise ValueError("candidates is empty; pass heads to search, or None for every self/joint attention head")
    return candidates.validate(pipe)


# --- the search ----------------------------------------------------------------------------------------------------
def _seed_rows(seeds: int | Sequence[int] | None, prompts: list[str]) -> list[list[int]]:
    """Per-batch seeds per prompt: the authors' ``seed = prompt index`` for ``None``, else every prompt per seed."""
    if seeds is None:
        return [list(range(len(prompts)))]
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < 2**64 for s in seeds):
        raise ValueError(
            f"seeds must be None (prompt i uses seed i, as the authors) or integers from 0 to 2**64-1 (at least "
            f"one); got {seeds!r}"
        )
    return [[seed] * len(prompts) for seed in seeds]


def _accepts(pipe: Any, name: str) -> bool:
    import inspect

    try:
        parameters = inspect.signature(pipe.__call__).parameters
    except (TypeError, ValueError):
        return True
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def hunt_heads(
    pipe: Any,
    prompts: str | Sequence[str],
    objective: str | Objective,
    candidates: HeadSet | Iterable[tuple[str, int]] | None = None,
    rounds: int = 3,
    scale: float = 3.0,
    strength: float = 1.0,
    seeds: int | Sequence[int] | None = None,
    state_path: str | os.PathLike | None = None,
    progress: bool = True,
    model_name: str | None = None,
    heads_per_round: int = AUTHORS_HEADS_PER_ROUND,
    guidance_scale: float | None = AUTHORS_SEARCH_GUIDANCE,
    **pipe_kwargs: Any,
) -> HuntResult:
    """Greedy HeadHunter search ("Fine-Grained Perturbation Guidance via Attention Head Selection").

    Round ``r`` tries every remaining candidate added to the heads chosen in rounds ``1 .. r-1``: it generates
    the prompts with :class:`visattn.effects.PerturbedAttentionGuidance` on that set (attached with
    :func:`visattn.attach`), scores the images with ``objective`` and keeps the ``heads_per_round`` candidates
    with the highest scores (ties: the earlier candidate), as the authors' ``select_topk_heads`` does. The cost is
    one generation of the prompts per remaining candidate per round, plus one unguided generation for
    :attr:`HuntResult.baseline_score`.

    Args:
        pipe: a diffusers pipeline visattn supports.
        prompts: one prompt or several; all are generated for every evaluation (as one batch per row of seeds).
        objective: ``objective(images, prompts) -> float``, higher is better, or a name accepted by
            :func:`resolve_objective` (``"sharpness"``, ``"contrast"``, ``"saturation"``, ``module:function``).
            It receives the images (``output_type="np"`` by default: a float array ``[N, H, W, C]`` in
            ``[0, 1]``) and the prompt of each image; the authors average a per-image score (PickScore).
        candidates: ``(layer name, head)`` pairs or a :class:`HeadSet` to choose from; ``None`` is every head of
            every self and joint attention layer (see :meth:`HeadSet.all_heads`).
        rounds: how many rounds to run (the search stops early when candidates run out; the authors run 5).
        scale: PAG guidance scale of every evaluation (the authors' ``perturb_guidance_scale``, 3).
        strength: SoftPAG strength in ``(0, 1]`` (1 is PAG's identity map, the authors' search).
        seeds: ``None`` (default): prompt ``i`` is generated once from seed ``i``, as the authors seed each
            prompt by its index. An int or a list: every prompt is generated once per seed (visattn's variant),
            seed-major.
        state_path: JSON file that records every evaluation; an existing one for the same search is resumed.
        progress: show a progress bar (tqdm, on stderr).
        model_name: recorded in the result's :class:`HeadSet` (default: the pipeline's name or class).
        heads_per_round: heads added per round, an integer >= 1 (default 3, the authors' ``top_k``; 1 is a
            one-head-per-round greedy search).
        guidance_scale: the pipelines' ``guidance_scale`` during the search. Default 0.0, the authors' setting:
            classifier-free guidance off, so scores measure the perturbation guidance alone. ``None`` leaves the
            pipeline's own default.
        **pipe_kwargs: passed to every pipeline call (``num_inference_steps``, ``height``...).

    Returns:
        A :class:`HuntResult` with the selected :class:`HeadSet`, per-round history and all scores.

    Raises:
        ValueError: bad parameters, candidates that are not heads of the pipeline, or an objective that returns
            a non-finite value; :class:`HuntStateError` (a ValueError) for a state file of another search.
    """
    from tqdm.auto import tqdm

    from ..effects.perturbed_attention_guidance import PerturbedAttentionGuidance

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError(f"prompts must be a string or a non-empty list of strings; got {prompts!r}")
    seed_rows = _seed_rows(seeds, prompts)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive integer; got {rounds!r}")
    if isinstance(heads_per_round, bool) or not isinstance(heads_per_round, int) or heads_per_round < 1:
        raise ValueError(
            f"heads_per_round must be an integer >= 1 (the authors add 3 per round); got {heads_per_round!r}"
        )
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0 (the PAG scale of each evaluation); got {scale!r}")
    if not (isinstance(strength, (int, float)) and 0.0 < strength <= 1.0):
        raise ValueError(f"strength must be in (0, 1]; got {strength!r}")
    if guidance_scale is not None and (
        isinstance(guidance_scale, bool)
        or not isinstance(guidance_scale, (int, float))
        or not math.isfinite(guidance_scale)
        or guidance_scale < 0
    ):
        raise ValueError(
            f"guidance_scale must be None (the pipeline's default) or a finite number >= 0 (0: CFG off, the "
            f"authors' search); got {guidance_scale!r}"
        )
    reserved = [name for name in RESERVED_ARGUMENTS if name in pipe_kwargs]
    if reserved:
        raise ValueError(f"hunt_heads sets {', '.join(reserved)} itself; remove it from the pipeline arguments")
    pipe_kwargs.setdefault("output_type", "np")
    if guidance_scale is not None and _accepts(pipe, "guidance_scale"):
        pipe_kwargs["guidance_scale"] = float(guidance_scale)
    objective, objective_name = resolve_objective(objective)
    candidates = _check_candidates(pipe, candidates)
    model_name = model_name or _model_name(pipe)
    state = _State(
        Path(state_path) if state_path is not None else None,
        _setup_fingerprint(
            prompts, seed_rows, float(scale), float(strength), heads_per_round, candidates, pipe_kwargs, model_name
        ),
    )
    image_prompts = [prompt for _ in seed_rows for prompt in prompts]
    rounds = min(rounds, math.ceil(len(candidates) / heads_per_round))

    def evaluate(heads: HeadSet | None, what: str) -> float:
        effect = None
        if heads is not None:
            table = heads.to_heads()
            effect = PerturbedAttentionGuidance(scale=scale, layers=list(table), heads=table, strength=strength)
        images = _generate(pipe, prompts, seed_rows, effect, pipe_kwargs)
        return _score(objective, images, image_prompts, what)

    done = sum(len(entry["scores"]) for entry in state.rounds[:rounds]) + (state.baseline is not None)
    total = 1 + sum(max(len(candidates) - r * heads_per_round, 0) for r in range(rounds))
    selected = HeadSet(model=model_name)
    history: list[RoundResult] = []
    with (
        _pipeline_progress_off(pipe),
        tqdm(
            total=total, initial=done, disable=not progress, desc="HeadHunter", unit="eval", dynamic_ncols=True
        ) as bar,
    ):
        if state.baseline is None:
            bar.set_postfix_str("baseline (no guidance)")
            state.baseline = evaluate(None, "the unguided baseline")
            state.save()
            bar.update()
        for index in range(rounds):
            if index == len(state.rounds):
                state.rounds.append({"scores": {}, "best": None})
            entry = state.rounds[index]
            if entry["best"] is None:
                for pair in candidates:
                    if pair in selected or pair in entry["scores"]:
                        continue
                    bar.set_postfix_str(f"round {index + 1}: {pair[0]}[{pair[1]}]")
                    entry["scores"][pair] = evaluate(selected.add(*pair), f"head {pair[1]} of {pair[0]}")
                    state.save()
                    bar.update()
                # The top heads_per_round by score; sorted is stable, so candidate order breaks ties.
                evaluated = [p for p in candidates if p in entry["scores"]]
                ranked = sorted(evaluated, key=lambda p: -entry["scores"][p])
                entry["best"] = ranked[:heads_per_round]
                state.save()
            best = tuple(tuple(pair) for pair in entry["best"])
            for pair in best:
                selected = selected.add(*pair)
            history.append(RoundResult(index + 1, best, entry["scores"][best[0]], dict(entry["scores"])))
    metadata = {
        "objective": objective_name,
        "scale": scale,
        "strength": strength,
        "heads_per_round": heads_per_round,
        "guidance_scale": pipe_kwargs.get("guidance_scale"),
        "prompts": prompts,
        "seeds": seed_rows,
        "baseline_score": state.baseline,
        "history": [
            {"round": r.round, "layer": layer, "head": head, "score": r.scores[(layer, head)]}
            for r in history
            for layer, head in r.heads
        ],
    }
    heads = HeadSet(selected, model=model_name, metadata=metadata)
    return HuntResult(heads=heads, history=history, baseline_score=state.baseline)
