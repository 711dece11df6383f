"""The demo's downloads: each run's images and its sheet of per-word maps as PNGs that carry their parameters.

The page shows enlarged previews; what a user keeps should be the generated pixels with everything needed to
repeat the run. :func:`save_run` writes them with :func:`visattn.images.save_image`: the parameters go into the
PNG's text chunks (JSON under ``visattn``, an AUTOMATIC1111-style block under ``parameters``) and a JSON sidecar,
the same format ``visattn generate`` and ``visattn edit`` write.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..images import save_image, slugify


def run_metadata(
    *,
    model: str,
    pipeline: str,
    seed: int,
    steps: int,
    guidance: float | None,
    size: tuple[int, int],
    effects: Sequence[Mapping[str, Any]],
    edit: Mapping[str, Any] | None,
    inversion: str | None,
) -> dict[str, Any]:
    """The parameters every file of one run shares (JSON-able), in :func:`visattn.images.format_parameters`'
    vocabulary: ``effects`` holds one JSON spec per effect (the edit first), so the ``parameters`` text block
    lists them and a batch job can take them back."""
    import torch

    from .. import __version__

    specs = ([json.dumps({"edit": dict(edit)}, sort_keys=True)] if edit else []) + [
        json.dumps(dict(spec), sort_keys=True) for spec in effects
    ]
    metadata: dict[str, Any] = {
        "model": model,
        "pipeline": pipeline,
        "seed": int(seed),
        "steps": int(steps),
        "guidance": guidance,
        "width": int(size[0]),
        "height": int(size[1]),
        "effects": specs,
        "edit": None if edit is None else dict(edit),
        "app": "visattn demo",
        "visattn_version": __version__,
        "torch_version": torch.__version__,
    }
    if inversion is not None:
        metadata["inversion"] = inversion
    return metadata


def save_run(
    directory: str | Path,
    pictures: Sequence[tuple[str, Any, str]],
    sheet: Image.Image | None,
    metadata: Mapping[str, Any],
) -> list[str]:
    """Write one run's files into ``directory``; returns their paths, the pictures' first, then the sheet's.

    Args:
        directory: the run's folder (created if missing).
        pictures: ``(role, picture, prompt)`` per panel: ``role`` names it (``"source"``, ``"edit"``, ``"without
            effects"``, ...), ``prompt`` is what it was generated from. A PIL image becomes a PNG with the
            parameters; a string is a file already written (a video's animated WebP) and is offered as it is.
        sheet: the labelled sheet of per-word maps, or ``None``.
        metadata: :func:`run_metadata`'s parameters; each file adds its ``role`` and ``prompt``.
    """
    directory = Path(directory)
    files: list[str] = []
    for role, picture, prompt in pictures:
        if isinstance(picture, Image.Image):
            stem = f"{slugify(prompt)}-{slugify(role)}"
            files.append(str(save_image(picture, directory, stem, {**metadata, "role": role, "prompt": prompt})))
        elif isinstance(picture, str):
            files.append(picture)
    if sheet is not None:
        prompt = pictures[0][2] if pictures else ""  # the sheet is named, and described, by the first prompt
        stem = f"{slugify(prompt)}-maps"
        files.append(str(save_image(sheet, directory, stem, {**metadata, "role": "per-word maps", "prompt": prompt})))
    return files
