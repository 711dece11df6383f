"""The jobs file of ``visattn batch``: one JSON object per line, parsed and checked before anything runs.

A job is a prompt or a Prompt-to-Prompt edit, with its seed, size and effects::

    {"id": "cat-pag", "prompt": "a cat", "seed": 1, "steps": 30, "guidance": 7.5, "effects": [{"type": "pag"}]}
    {"prompt": "a dog running", "frames": 33, "height": 480, "width": 832}
    {"edit": {"source": "a cat riding a bike", "target": "a dog riding a bike"}, "seed": 7}

Fields (see :data:`FIELDS`): ``prompt`` or ``edit`` (exactly one), ``id`` (letters, digits, ``.``, ``_`` and
``-``; default: a readable name derived from the prompt and a hash of the parameters), ``negative_prompt``,
``seed`` (default 0), ``steps``, ``guidance``, ``height``, ``width`` (default: the pipeline's own), ``frames``
(video pipelines), ``fps`` (of the written video, default 16) and ``effects`` (specs for
:func:`visattn.effect_specs.build_effects`). Blank lines and lines starting with ``#`` are skipped.

Every job gets a :attr:`Job.key`, a hash of its parameters: a run is resumed by skipping jobs whose id *and* key
already have a result, so changing a job's parameters runs it again. Errors are collected per line
(:class:`JobError`) instead of stopping at the first, so one bad line does not hide the next.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..effect_specs import SpecError, build_edit, build_effects
from ..generate import ParameterError, check_guidance, check_positive_int, check_seed, check_size
from ..images import slugify

if TYPE_CHECKING:
    from ..processors import Effect, PromptToPrompt

#: every field a job may have
FIELDS = (
    "id",
    "prompt",
    "edit",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "height",
    "width",
    "frames",
    "fps",
    "effects",
)
DEFAULT_FPS = 16.0  # Wan's frame rate; written videos only, the model is not told
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class InvalidJob(ValueError):
    """One job line that cannot run as written; the message names the field."""


@dataclass(frozen=True)
class JobError:
    """A line of the jobs file that was rejected (bad JSON, unknown field, bad value) or a job that failed."""

    line: int
    message: str
    id: str | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass(frozen=True)
class Job:
    """One validated job; :meth:`parameters` is what is hashed into :attr:`key` and recorded with the results."""

    line: int
    id: str
    key: str
    prompt: str | None = None
    edit: dict[str, Any] | None = None
    negative_prompt: str | None = None
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    frames: int | None = None
    fps: float = DEFAULT_FPS
    effects: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def parameters(self) -> dict[str, Any]:
        """The job's parameters as JSON-able data (defaults filled in; ``None`` = the pipeline's default)."""
        return _parameters(self.__dict__)

    def build_effects(self) -> list[Effect]:
        """Fresh effects for one run (effects keep per-run state, so every run builds its own)."""
        return build_effects(list(self.effects))

    def build_edit(self) -> PromptToPrompt | None:
        """A fresh :class:`~visattn.processors.PromptToPrompt` for an edit job, else ``None``."""
        return None if self.edit is None else build_edit(self.edit)

    @property
    def is_edit(self) -> bool:
        return self.edit is not None


def _parameters(values: dict[str, Any]) -> dict[str, Any]:
    names = ("prompt", "edit", "negative_prompt", "seed", "steps", "guidance", "height", "width", "frames", "fps")
    data = {name: values.get(name) for name in names}
    data["effects"] = list(values.get("effects") or ())
    return data


def job_key(parameters: dict[str, Any]) -> str:
    """A stable hash of a job's parameters (its id excluded): equal parameters, equal key."""
    text = json.dumps(parameters, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def _check(check, *args: Any) -> Any:
    try:
        return check(*args)
    except ParameterError as exc:
        raise InvalidJob(str(exc)) from None


def _text(data: dict[str, Any], name: str, required: bool = False) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidJob(f"{name}={value!r} is not allowed: must be a non-empty string")
    return value


def parse_job(data: Any, line: int) -> Job:
    """Check one decoded job object; raises :class:`InvalidJob` naming the field and the allowed values."""
    if not isinstance(data, dict):
        raise InvalidJob(f'a job must be a JSON object {{"prompt": ..., ...}}; got {type(data).__name__}')
    unknown = [name for name in data if name not in FIELDS]
    if unknown:
        raise InvalidJob(f"unknown field {unknown[0]!r}; allowed fields: {', '.join(FIELDS)}")
    if ("prompt" in data) == ("edit" in data):
        raise InvalidJob("a job needs exactly one of prompt (a generation) or edit (a Prompt-to-Prompt edit)")
    values: dict[str, Any] = {
        "prompt": _text(data, "prompt", required="prompt" in data),
        "negative_prompt": _text(data, "negative_prompt"),
        "seed": _check(check_seed, data.get("seed", 0)),
        "guidance": _check(check_guidance, data.get("guidance")),
        "height": _check(check_size, "height", data.get("height")),
        "width": _check(check_size, "width", data.get("width")),
    }
    for name in ("steps", "frames"):
        values[name] = None if data.get(name) is None else _check(check_positive_int, name, data[name])
    fps = data.get("fps", DEFAULT_FPS)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 1000:
        raise InvalidJob(f"fps={fps!r} is not allowed: must be a number in (0, 1000] (frames per second)")
    values["fps"] = float(fps)
    effects = data.get("effects") or []
    try:
        build_effects(effects)  # built once to check; each run builds fresh ones
        if "edit" in data:
            build_edit(data["edit"])
    except SpecError as exc:
        raise InvalidJob(str(exc)) from None
    values["effects"] = tuple(effects)
    values["edit"] = data.get("edit")
    key = job_key(_parameters(values))
    job_id = data.get("id")
    if job_id is None:
        prompt = values["prompt"] or data["edit"].get("target") or data["edit"].get("prompt") or ""
        job_id = f"{slugify(prompt, 40)}-{key[:10]}"
    elif not isinstance(job_id, str) or not _ID.fullmatch(job_id):
        raise InvalidJob(
            f"id={job_id!r} is not allowed: must be 1 to 100 letters, digits, '.', '_' or '-' (it names the output "
            "files), starting with a letter or digit"
        )
    return Job(line=line, id=job_id, key=key, **values)


def parse_lines(lines: Iterable[str]) -> tuple[list[Job], list[JobError]]:
    """Jobs and errors from the lines of a jobs file (line numbers from 1).

    Also rejects a second job with the id of an earlier one (ids name the output files), including two
    identical jobs without an id.
    """
    jobs: list[Job] = []
    errors: list[JobError] = []
    seen: dict[str, int] = {}
    for number, text in enumerate(lines, start=1):
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as exc:
            errors.append(JobError(number, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        try:
            job = parse_job(data, number)
        except InvalidJob as exc:
            job_id = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None
            errors.append(JobError(number, str(exc), job_id))
            continue
        if job.id in seen:
            errors.append(JobError(number, f"id {job.id!r} is already used by line {seen[job.id]}", job.id))
            continue
        seen[job.id] = number
        jobs.append(job)
    return jobs, errors


def parse_jobs(path: str | Path) -> tuple[list[Job], list[JobError]]:
    """Jobs and per-line errors of a JSONL jobs file.

    Raises:
        FileNotFoundError, IsADirectoryError, UnicodeDecodeError: the file cannot be read as UTF-8 text.
    """
    text = Path(path).read_text(encoding="utf-8")
    return parse_lines(text.splitlines())
