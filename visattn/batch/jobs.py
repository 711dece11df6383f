"""The jobs file of ``visattn batch``: one JSON object per line, parsed and checked before anything runs.

A job is a prompt or a Prompt-to-Prompt edit, with its seed, size and effects::

    {"id": "cat-pag", "prompt": "a cat", "seed": 1, "steps": 30, "guidance": 7.5, "effects": [{"type": "pag"}]}
    {"prompt": "a dog running", "frames": 33, "height": 480, "width": 832}
    {"edit": {"source": "a cat riding a bike", "target": "a dog riding a bike"}, "seed": 7}

Fields (see :data:`FIELDS`): ``prompt`` or ``edit`` (exactly one), ``id`` (letters, digits, ``.``, ``_`` and
``-``; default: a readable name derived from the prompt and a hash of the parameters), ``negative_prompt``,
``seed`` (default 0), ``steps``, ``guidance``, ``height``, ``width`` (default: the pipeline's own), ``frames``
(video pipelines), ``fps`` (of the written video, default 16) and ``effects`` (specs for
:func:`visattn.effect_specs.build_effects`; ``train_video_frames`` is converted for the loaded pipeline, see
:meth:`Job.build_effects`). Blank lines and lines starting with ``#`` are skipped. Whether a job fits the model
(a video job for an image model) is checked by :mod:`visattn.batch.models` once the model is named.

Every job gets a :attr:`Job.key`, a hash of its parameters: a run is resumed by skipping jobs whose id *and* key
already have a result, so changing a job's parameters runs it again. Each line is parsed and checked on its own:
whatever goes wrong with one line (bad JSON, a number too large for any float, nesting too deep to decode, a
regular expression too large to compile, an unknown field) is that line's :class:`JobError`, with its line number,
and the other lines still run.

Output names (:func:`output_stems`): a job writes ``ID.EXT`` (``ID+source.EXT`` and ``ID+target.EXT`` for an edit),
each with ``.json`` sidecars. Ids cannot contain ``+`` and must differ in more than letter case (file systems on
macOS and Windows ignore case), so no two jobs of a file, of any kinds, write the same path.

Sizes are bounded (:data:`DEFAULT_MAX_PIXELS` per image or frame; raise it with ``--max-pixels`` or the
:data:`MAX_PIXELS_ENV` environment variable), so a job too large to allocate is refused while parsing, not after
the model has loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..effect_specs import SpecError, build_edit, build_effects
from ..generate import (
    SIZE_MULTIPLE,
    ParameterError,
    check_guidance,
    check_positive_int,
    check_seed,
    check_size,
)
from ..images import slugify

if TYPE_CHECKING:
    from ..effects import Effect, PromptToPrompt

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
#: joins an edit job's id and the role of its image; not allowed in ids, so a role's file never has another job's name
ROLE_SEPARATOR = "+"
#: the roles of an edit job's two images, in the order the pipeline returns them
EDIT_ROLES = ("source", "target")
#: the largest image (or video frame) a job may ask for, in pixels: 4096 x 4096. A 65536 x 65536 job would fail
#: only after loading the model, trying to allocate gigabytes; raise the limit where the hardware allows.
DEFAULT_MAX_PIXELS = 4096 * 4096
#: environment variable that overrides :data:`DEFAULT_MAX_PIXELS` (``--max-pixels`` overrides both)
MAX_PIXELS_ENV = "VISATTN_MAX_PIXELS"
#: longest error message kept per line (a value pasted into a message is cut, a megabyte line stays readable)
_MESSAGE_LIMIT = 400


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

    def build_effects(
        self, latent_frames: Callable[[int], int] | None = None, model: str | None = None
    ) -> list[Effect]:
        """Fresh effects for one run; ``latent_frames`` converts a spec's ``train_video_frames`` for the loaded
        pipeline (see :mod:`visattn.effect_specs`); ``model``: the loaded model's name, whose measured guidance
        settings fill in what a PAG/SoftPAG/SEG spec leaves out (:func:`visattn.defaults.with_guidance_defaults`)."""
        from ..defaults import with_guidance_defaults

        specs = [with_guidance_defaults(spec, model) for spec in self.effects]
        return build_effects(specs, latent_frames=latent_frames)

    def build_edit(self) -> PromptToPrompt | None:
        """A fresh :class:`~visattn.effects.PromptToPrompt` for an edit job, else ``None``."""
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


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters; a number with more digits than ``repr`` may print is described."""
    try:
        text = repr(value)
    except ValueError:  # an int beyond Python's digit limit for str()
        return f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _check(check, name: str, *args: Any) -> Any:
    """``check(*args)``, its failures as :class:`InvalidJob` naming ``name``, the value (shortened) and the rule."""
    value = args[-1]
    try:
        return check(*args)
    except ParameterError as exc:
        raise InvalidJob(f"{name}={_shown(value)} is not allowed: {exc.allowed}") from None
    except (OverflowError, ValueError, TypeError) as exc:  # e.g. a 400-digit number no float can hold
        raise InvalidJob(f"{name}={_shown(value)} is not allowed: {exc}") from None


def max_pixels_from_env() -> int:
    """The pixel limit: :data:`MAX_PIXELS_ENV` when set, else :data:`DEFAULT_MAX_PIXELS`.

    Raises:
        ValueError: the variable is set to something other than a positive integer.
    """
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    if not text.isdigit() or int(text) < 1:
        raise ParameterError(MAX_PIXELS_ENV, text, "must be a positive integer (pixels per image or video frame)")
    return int(text)


def check_max_pixels(value: Any) -> int:
    """``value`` if it is a positive integer (a pixel limit), else a :class:`~visattn.generate.ParameterError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError("max_pixels", value, "must be a positive integer (pixels per image or video frame)")
    return value


def _check_pixels(height: int | None, width: int | None, max_pixels: int) -> None:
    # An unset side is the pipeline's default, known only once it is loaded; the set one is bounded by itself.
    pixels = (height or SIZE_MULTIPLE) * (width or SIZE_MULTIPLE)
    if pixels > max_pixels:
        raise InvalidJob(
            f"height={height!r}, width={width!r} is not allowed: {pixels:,} pixels is above the limit of "
            f"{max_pixels:,} per image or frame (raise it with --max-pixels N or {MAX_PIXELS_ENV}=N)"
        )


def output_stems(job_id: str, edit: bool) -> tuple[str, ...]:
    """The file names, without extension, that a job writes: ``(id,)``, or ``(id+source, id+target)`` for an edit.

    Every extension written (``.png``, ``.webp``, ``.mp4`` and the ``.json`` sidecars) ends in different last four
    characters, so two different stems never give the same file name either.
    """
    return tuple(f"{job_id}{ROLE_SEPARATOR}{role}" for role in EDIT_ROLES) if edit else (job_id,)


def _text(data: dict[str, Any], name: str, required: bool = False) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidJob(f"{name}={value!r} is not allowed: must be a non-empty string")
    return value


def parse_job(data: Any, line: int, max_pixels: int | None = None) -> Job:
    """Check one decoded job object; raises :class:`InvalidJob` naming the field and the allowed values.

    ``max_pixels``: the largest ``height * width`` allowed (default :data:`DEFAULT_MAX_PIXELS`).
    """
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
        "seed": _check(check_seed, "seed", data.get("seed", 0)),
        "guidance": _check(check_guidance, "guidance", data.get("guidance")),
        "height": _check(check_size, "height", "height", data.get("height")),
        "width": _check(check_size, "width", "width", data.get("width")),
    }
    _check_pixels(values["height"], values["width"], DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    for name in ("steps", "frames"):
        values[name] = None if data.get(name) is None else _check(check_positive_int, name, name, data[name])
    fps = data.get("fps", DEFAULT_FPS)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 1000:
        raise InvalidJob(f"fps={_shown(fps)} is not allowed: must be a number in (0, 1000] (frames per second)")
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
            f"id={_shown(job_id)} is not allowed: must be 1 to 100 letters, digits, '.', '_' or '-' (it names the "
            "output files), starting with a letter or digit"
        )
    return Job(line=line, id=job_id, key=key, **values)


def _error(line: int, message: str, job_id: str | None = None) -> JobError:
    if len(message) > _MESSAGE_LIMIT:
        message = message[: _MESSAGE_LIMIT - 3] + "..."
    return JobError(line, message, job_id)


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidJob(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise InvalidJob("invalid JSON: nested too deeply to decode") from None
    except ValueError as exc:  # json's own int conversion: more digits than Python converts (4300 by default)
        raise InvalidJob(f"invalid JSON: {exc}") from None


def _text_of(line: str | bytes) -> str:
    if isinstance(line, str):
        return line
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJob(f"not UTF-8 text: byte {line[exc.start]:#04x} at column {exc.start + 1}") from None


def parse_lines(lines: Iterable[str | bytes], max_pixels: int | None = None) -> tuple[list[Job], list[JobError]]:
    """Jobs and errors from the lines of a jobs file (line numbers from 1; ``bytes`` lines are decoded as UTF-8).

    Every line is parsed and checked in isolation: any exception doing so becomes that line's :class:`JobError`
    (with the exception's type when it is not one of the checks' own messages), and the next line is parsed.
    Also rejects a second job with the id of an earlier one, ignoring letter case (ids name the output files),
    including two identical jobs without an id.
    """
    jobs: list[Job] = []
    errors: list[JobError] = []
    seen: dict[str, int] = {}  # output stems, case-folded, -> line
    ids: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        data: Any = None
        try:
            stripped = _text_of(line).strip()
            if not stripped or stripped.startswith("#"):
                continue
            data = _decode(stripped)
            job = parse_job(data, number, max_pixels)
        except InvalidJob as exc:
            errors.append(_error(number, str(exc), _id_of(data)))
            continue
        except Exception as exc:  # noqa: BLE001 - one line's failure, whatever it is, must not stop the others
            errors.append(_error(number, f"cannot check this job: {type(exc).__name__}: {exc}", _id_of(data)))
            continue
        names = [stem.casefold() for stem in output_stems(job.id, job.is_edit)]
        taken = next((seen[name] for name in names if name in seen), None)
        if taken is not None:
            same = ids.get(job.id) == taken
            why = "is already used by" if same else "differs only in letter case from the id of"
            errors.append(_error(number, f"id {job.id!r} {why} line {taken} (ids name the output files)", job.id))
            continue
        seen.update(dict.fromkeys(names, number))
        ids[job.id] = number
        jobs.append(job)
    return jobs, errors


def _id_of(data: Any) -> str | None:
    return data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else None


def parse_jobs(path: str | Path, max_pixels: int | None = None) -> tuple[list[Job], list[JobError]]:
    """Jobs and per-line errors of a JSONL jobs file (``max_pixels``: see :func:`parse_job`).

    Lines end at ``\n`` only (JSON Lines): a JSON string may hold U+2028 and other characters that
    :meth:`str.splitlines` would split at. A line that is not UTF-8 is that line's error; a UTF-8 byte-order mark
    at the start is skipped.

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError: the file cannot be read.
    """
    data = Path(path).read_bytes().removeprefix(b"\xef\xbb\xbf")
    return parse_lines((line.removesuffix(b"\r") for line in data.split(b"\n")), max_pixels)
