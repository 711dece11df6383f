"""Atomic output files for batch runs: PNG images with their parameters, animated WebP or MP4 videos, JSON.

Every file is written to a hidden temporary file in the same folder (``.NAME.PID@HOST.partial``) and moved into
place with :func:`os.replace`, which is atomic on POSIX and Windows within one file system: a reader, or a resumed
run after a crash or ``kill -9``, sees either the complete old file, the complete new file, or no file, never a
truncated one. A process killed mid-write leaves only its hidden ``.partial`` file, which
:func:`remove_partials` deletes at the start of the next run: only files of this process or of dead processes of
this host, never those of a process still writing.

Images carry their parameters like ``visattn generate``'s (:mod:`visattn.images`: a ``visattn`` JSON text chunk
and an AUTOMATIC1111-style ``parameters`` chunk, so :func:`visattn.images.read_metadata` reads them back) and get a
``.json`` sidecar; videos get the sidecar only.

Videos: animated WebP is written with Pillow (always available). MP4 (H.264, yuv420p, CRF 18) needs PyAV
(``pip install av``, which bundles FFmpeg's libraries); :func:`mp4_encoder` says whether it is there, and
``visattn batch --video-format mp4`` refuses to start without it.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from PIL import Image, PngImagePlugin

from ..images import METADATA_KEY, PARAMETERS_KEY, format_parameters
from .lock import host_name, process_alive

VIDEO_FORMATS = ("webp", "mp4")
PARTIAL_SUFFIX = ".partial"


def _partial_path(path: Path) -> Path:
    # Hidden and unique per process, so two processes never write the same temporary file either; the pid and host
    # say whose it is, so a clean-up can tell a dead writer's leftovers from a live writer's file.
    return path.with_name(f".{path.name}.{os.getpid()}@{host_name()}{PARTIAL_SUFFIX}")


def partial_owner(path: str | Path) -> tuple[int, str | None] | None:
    """``(pid, host)`` of a temporary file written by :func:`write_atomic` (host ``None`` for files of older
    versions, which wrote ``.NAME.PID.partial``), or ``None`` for a name that is not one."""
    name = Path(path).name
    if not (name.startswith(".") and name.endswith(PARTIAL_SUFFIX)):
        return None
    stem = name[: -len(PARTIAL_SUFFIX)]
    stem, _, host = stem.rpartition("@") if "@" in stem else (stem, "", None)
    pid = stem.rpartition(".")[2]
    return (int(pid), host) if pid.isdigit() else None


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temporary file next to ``path``, then move it to ``path`` in one step.

    The data is flushed and fsynced before the rename, so after a crash the final name holds complete data or
    nothing. If ``write`` raises (even ``KeyboardInterrupt``) the temporary file is removed and ``path`` is left
    as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_path(path)
    try:
        with open(partial, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        with suppress(FileNotFoundError):
            partial.unlink()
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """``data`` written to ``path`` atomically (see :func:`write_atomic`)."""
    return write_atomic(path, lambda handle: handle.write(data))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """``data`` as indented JSON, written atomically."""
    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))


def remove_partials(directory: str | Path) -> list[Path]:
    """Delete the temporary files that killed runs left in ``directory``; returns what was removed.

    Removes files of this process and of processes of this host that no longer exist; a live process's file (it
    may be writing it now) and files of other hosts (whose processes cannot be checked from here) are left alone.
    Files of older versions, named without a host, count as this host's.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    here, me = host_name(), os.getpid()
    removed = []
    for partial in directory.glob(f".*{PARTIAL_SUFFIX}"):
        owner = partial_owner(partial)
        if owner is None:
            continue
        pid, host = owner
        if (host or here) != here or (pid != me and process_alive(pid)):
            continue
        with suppress(FileNotFoundError):
            partial.unlink()
            removed.append(partial)
    return removed


def save_png(image: Image.Image, path: str | Path, metadata: Mapping[str, Any], extra: Mapping[str, Any] | None = None):
    """``image`` as a PNG with its parameters in text chunks (as :func:`visattn.images.save_image`) plus a ``.json``
    sidecar holding ``metadata`` and ``extra``; both written atomically, existing files replaced.

    ``metadata["effects"]`` must be a list of strings (effect reprs), as :func:`visattn.images.format_parameters`
    joins them.
    """
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(dict(metadata), ensure_ascii=True, sort_keys=True))
    info.add_text(PARAMETERS_KEY, format_parameters(metadata))
    write_atomic(path, lambda handle: image.save(handle, format="PNG", pnginfo=info))
    write_json_atomic(path.with_suffix(".json"), {**metadata, **(extra or {}), "image": path.name})
    return path


# --- videos -------------------------------------------------------------------------------------------------------
# Why not diffusers' export_to_video: it writes MP4 only (the default here is animated WebP, which needs nothing
# beyond Pillow), needs imageio + imageio-ffmpeg (or OpenCV) where visattn already uses PyAV, takes an integer fps
# where jobs may ask for 23.976, writes to a path rather than the atomic writer's handle, and by default rescales
# frames to multiples of 16 px (a 32 x 30 clip would come back 32 x 32); here odd sizes are cropped to even ones.
def mp4_encoder() -> str | None:
    """``"pyav"`` when PyAV is installed (what :func:`save_video` encodes MP4 with), else ``None``."""
    import importlib.util

    return "pyav" if importlib.util.find_spec("av") is not None else None


def _even_size(frames: Sequence[Image.Image]) -> list[Image.Image]:
    """Frames cropped to even width and height: H.264 with yuv420p chroma subsampling needs both even."""
    width, height = frames[0].size
    even = (width - width % 2, height - height % 2)
    frames = [frame.convert("RGB") for frame in frames]
    return frames if frames[0].size == even else [frame.crop((0, 0, *even)) for frame in frames]


def _mp4_pyav(frames: Sequence[Image.Image], fps: float, handle: IO[bytes]) -> None:
    import fractions

    import av

    rate = fractions.Fraction(fps).limit_denominator(1001)
    with av.open(handle, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def save_video(
    frames: Sequence[Image.Image],
    path: str | Path,
    fps: float,
    metadata: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """``frames`` as a looping animated WebP (``path`` ending in ``.webp``) or an H.264 MP4 (``.mp4``), plus a
    ``.json`` sidecar; both written atomically.

    Raises:
        ValueError: no frames, or an extension other than ``.webp``/``.mp4``.
        RuntimeError: MP4 without an encoder (see :func:`mp4_encoder`), or the encoder failed.
    """
    path = Path(path)
    if not frames:
        raise ValueError("frames is empty: a video needs at least one frame")
    kind = path.suffix.lower().lstrip(".")
    if kind == "webp":
        # Per-frame duration in whole milliseconds (WebP's unit); loop=0 loops forever like a GIF.
        duration = max(1, round(1000.0 / fps))
        first, *rest = [frame.convert("RGB") for frame in frames]

        def write(handle: IO[bytes]) -> None:
            buffer = io.BytesIO()  # Pillow's WebP muxer wants a seekable target; the buffer keeps writes simple
            first.save(buffer, format="WEBP", save_all=True, append_images=rest, duration=duration, loop=0, quality=90)
            handle.write(buffer.getvalue())

    elif kind == "mp4":
        if mp4_encoder() is None:
            raise RuntimeError("MP4 needs PyAV (pip install av, which bundles FFmpeg's encoders); use webp instead")
        even = _even_size(frames)

        def write(handle: IO[bytes]) -> None:
            buffer = io.BytesIO()
            _mp4_pyav(even, fps, buffer)
            handle.write(buffer.getvalue())

    else:
        raise ValueError(f"path={str(path)!r} must end in one of .{', .'.join(VIDEO_FORMATS)}")
    write_atomic(path, write)
    write_json_atomic(path.with_suffix(".json"), {**metadata, **(extra or {}), "video": path.name})
    return path


# --- result records -----------------------------------------------------------------------------------------------
def append_record(path: str | Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line to ``path`` and fsync it (one writer per file: each process has its own).

    A process killed mid-append can leave a truncated last line; :func:`read_records` skips such lines.
    """
    line = json.dumps(dict(record), ensure_ascii=False, sort_keys=True) + "\n"
    path = Path(path)
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as existing:
            existing.seek(-1, os.SEEK_END)
            if existing.read(1) != b"\n":
                line = "\n" + line  # end a line truncated by a killed run, so this record stays on its own line
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file, skipping lines that do not parse (a truncated last line); ``[]`` if
    the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
