"""Saving generated images with their parameters, and reading the parameters back.

Each image is written as ``NAME.png`` plus a ``NAME.json`` sidecar. The PNG carries two text chunks:

* ``visattn``: the generation parameters as JSON (ASCII-escaped, so it is always a plain latin-1 ``tEXt`` chunk);
* ``parameters``: the same parameters as one human-readable, AUTOMATIC1111-style block, which many image
  viewers and web UIs already know how to display.

The sidecar holds the same parameters plus extra run data (timing), for tools that do not read PNG chunks.
Nothing is ever overwritten: a name that is taken gets a ``_1``, ``_2``, ... suffix.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin

METADATA_KEY = "visattn"
PARAMETERS_KEY = "parameters"
_SLUG_LENGTH = 48


def slugify(text: str, max_length: int = _SLUG_LENGTH) -> str:
    """A short, filesystem-safe, lowercase ASCII name for ``text`` (``"image"`` when nothing is left).

    Cuts at a word boundary when the prompt is long, so names stay readable and stable for a given prompt.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if len(slug) > max_length:
        cut = slug[: max_length + 1].rfind("-")
        slug = slug[: cut if cut > 0 else max_length].strip("-")
    return slug or "image"


def _free_stem(directory: Path, stem: str) -> str:
    """``stem``, or ``stem_N`` with the smallest N for which neither the PNG nor its sidecar exists yet."""
    candidate, n = stem, 0
    while (directory / f"{candidate}.png").exists() or (directory / f"{candidate}.json").exists():
        n += 1
        candidate = f"{stem}_{n}"
    return candidate


def format_parameters(metadata: Mapping[str, Any]) -> str:
    """The parameters as an AUTOMATIC1111-style text block: prompt, ``Negative prompt: ...``, then ``Key: value``s."""
    lines = [str(metadata.get("prompt", ""))]
    if metadata.get("negative_prompt"):
        lines.append(f"Negative prompt: {metadata['negative_prompt']}")
    effects = metadata.get("effects") or []
    loras = [lora for lora in metadata.get("loras") or [] if isinstance(lora, Mapping) and "source" in lora]
    width, height = metadata.get("width"), metadata.get("height")
    fields = {
        "Steps": metadata.get("steps"),
        "Sampler": metadata.get("scheduler"),
        "CFG scale": metadata.get("guidance"),
        "Seed": metadata.get("image_seed", metadata.get("seed")),
        "Size": f"{width}x{height}" if width is not None and height is not None else None,
        "Model": metadata.get("model"),
        "Variant": metadata.get("variant"),
        # A1111 writes LoRAs into the prompt as <lora:name:scale>; here they get their own field.
        "LoRAs": json.dumps(", ".join(f"{lora['source']}:{lora['scale']:g}" for lora in loras)) if loras else None,
        "Pipeline": metadata.get("pipeline"),
        "Dtype": metadata.get("dtype"),
        "visattn": metadata.get("visattn_version"),
        # Effects are reprs that may contain commas; quote them so the "key: value, " list stays parseable.
        "Effects": json.dumps("; ".join(effects)) if effects else "none",
    }
    lines.append(", ".join(f"{key}: {value}" for key, value in fields.items() if value is not None))
    return "\n".join(lines)


def save_image(
    image: Image.Image,
    directory: str | Path,
    stem: str,
    metadata: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``image`` as ``directory/stem.png`` (or a free ``stem_N.png``) with its parameters; return the path.

    Args:
        image: the image to save.
        directory: created if missing.
        stem: the file name without extension.
        metadata: JSON-serializable generation parameters, stored in the PNG and in the sidecar.
        extra: JSON-serializable run data (e.g. timing) stored only in the sidecar, under its own keys.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    info = PngImagePlugin.PngInfo()
    info.add_text(METADATA_KEY, json.dumps(dict(metadata), ensure_ascii=True, sort_keys=True))
    # Pillow stores this as tEXt when the prompt is latin-1 and falls back to an iTXt chunk otherwise.
    info.add_text(PARAMETERS_KEY, format_parameters(metadata))
    while True:
        path = directory / f"{_free_stem(directory, stem)}.png"
        try:
            # "x" mode: if another process took the name since we looked, pick the next one instead of overwriting.
            with open(path, "xb") as handle:
                image.save(handle, format="PNG", pnginfo=info)
            break
        except FileExistsError:
            continue
    sidecar = {**metadata, **(extra or {}), "image": path.name}
    path.with_suffix(".json").write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The generation parameters stored in a PNG written by :func:`save_image`.

    Raises:
        KeyError: the PNG has no ``visattn`` text chunk.
    """
    with Image.open(path) as image:
        text = getattr(image, "text", {})
        if METADATA_KEY not in text:
            raise KeyError(f"{path} has no {METADATA_KEY!r} PNG text chunk (not written by visattn)")
        return json.loads(text[METADATA_KEY])


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The JSON sidecar next to an image (``image.png`` -> ``image.json``)."""
    return json.loads(Path(path).with_suffix(".json").read_text(encoding="utf-8"))
