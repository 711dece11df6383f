"""Read a toy-world image back into words: which shapes, colours, sizes and positions it shows.

Deterministic and model-free, so it can grade generated images against their prompts: the background is the
median border colour, foreground pixels are those far from it, each takes the nearest object colour, and
4-connected components of one colour are objects. A component's shape is the nearest prototype in two
scale-free features - how much of its bounding box it fills (square 1.0, circle 0.79, triangle 0.5,
star 0.38) and how low its centroid sits in the box (triangle 0.67, star 0.55, others 0.5) - its size comes
from its extent and its position from the 3 x 3 cell holding its centroid.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .data import BACKGROUNDS, COLORS, DIRECTIONS, POSITIONS, SHAPES, SIZES

# (fill fraction of the bounding box, centroid height within the box) of each ideal shape
_PROTOTYPES = {"square": (1.0, 0.5), "circle": (0.785, 0.5), "triangle": (0.5, 0.667), "star": (0.384, 0.553)}
_FOREGROUND_DISTANCE = 70.0  # RGB distance from the background that counts as an object pixel
_COLOR_DISTANCE = 90.0  # RGB distance to an object colour below which a pixel is that colour
_MIN_AREA_FRACTION = 0.0025  # components smaller than this share of the image are noise


@dataclass(frozen=True)
class FoundObject:
    """One object read from pixels."""

    shape: str
    color: str
    size: str
    position: str
    center: tuple[float, float]
    area: int


def _as_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.float32)
    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image must be RGB [H, W, 3]; got shape {array.shape}")
    return array * 255.0 if array.max() <= 1.0 else array


def background_of(pixels: np.ndarray) -> tuple[str, np.ndarray]:
    """The background's name (nearest known background colour) and its measured RGB (median border pixel)."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    rgb = np.median(border, axis=0)
    names = list(BACKGROUNDS)
    distances = [np.linalg.norm(rgb - np.array(BACKGROUNDS[n])) for n in names]
    return names[int(np.argmin(distances))], rgb


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, as arrays of (row, col) pixel coordinates."""
    seen = np.zeros_like(mask)
    height, width = mask.shape
    found = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = deque([start]), []
        while queue:
            r, c = queue.popleft()
            pixels.append((r, c))
            for nr, nc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= nr < height and 0 <= nc < width and mask[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    queue.append((nr, nc))
        found.append(np.array(pixels))
    return found


def classify_shape(pixels: np.ndarray) -> str:
    """The shape whose prototype is nearest to this component's (fill, centroid height) features."""
    rows, cols = pixels[:, 0], pixels[:, 1]
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    fill = len(pixels) / float((bottom - top) * (right - left))
    centroid_height = (rows.mean() + 0.5 - top) / (bottom - top)
    # centroid height separates triangle from star; weigh it like fill (its range is a third as wide)
    scores = {s: (fill - f) ** 2 + (3 * (centroid_height - h)) ** 2 for s, (f, h) in _PROTOTYPES.items()}
    return min(scores, key=scores.get)


def find_objects(image: Image.Image | np.ndarray) -> tuple[str, list[FoundObject]]:
    """The background's name and the objects in ``image``, largest first."""
    pixels = _as_array(image)
    height, width, _ = pixels.shape
    background, rgb = background_of(pixels)
    foreground = np.linalg.norm(pixels - rgb, axis=2) > _FOREGROUND_DISTANCE
    names = [n for n in COLORS if n != background]
    palette = np.array([COLORS[n] for n in names], dtype=np.float32)
    distances = np.linalg.norm(pixels[:, :, None, :] - palette[None, None], axis=3)
    nearest = np.argmin(distances, axis=2)
    # Anti-aliased edges mix object and background colours; a mix can sit nearest to a third colour and form a
    # thin phantom object, so only pixels close to some object colour count.
    foreground &= distances.min(axis=2) < _COLOR_DISTANCE
    labels = np.where(foreground, nearest, -1)
    # A real object has a core: pixels most of whose 8 neighbours share its colour. The one-pixel rings edge
    # blends leave have none; shapes are measured on whole components (tips and edges included).
    padded = np.pad(labels, 1, constant_values=-1)
    same = sum(
        (padded[1 + dr : 1 + dr + height, 1 + dc : 1 + dc + width] == labels)
        for dr in (-1, 0, 1)
        for dc in (-1, 0, 1)
        if dr or dc
    )
    core = foreground & (same >= 5)
    side = max(height, width)
    # extent (bounding-box side) between the two sizes' ideal extents, in pixels
    size_threshold = (SIZES["small"] + SIZES["large"]) * side * 0.9
    found = []
    for index, color in enumerate(names):
        for component in _components(foreground & (nearest == index)):
            if len(component) < _MIN_AREA_FRACTION * height * width or core[tuple(component.T)].sum() < 3:
                continue
            rows, cols = component[:, 0], component[:, 1]
            extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
            center = (float(cols.mean()) + 0.5, float(rows.mean()) + 0.5)
            cell = (min(2, int(center[0] * 3 / width)), min(2, int(center[1] * 3 / height)))
            position = next(name for name, where in POSITIONS.items() if where == cell)
            size = "large" if extent >= size_threshold else "small"
            found.append(FoundObject(classify_shape(component), color, size, position, center, len(component)))
    found.sort(key=lambda o: -o.area)
    return background, found


_OBJECT = re.compile(
    rf"an? (?:(?P<size>{'|'.join(SIZES)}) )?(?P<color>{'|'.join(COLORS)}) (?P<shape>{'|'.join(SHAPES)})"
    rf"(?: (?:at the|in the) (?P<position>{'|'.join(sorted(POSITIONS, key=len, reverse=True))}))?"
)


def parse_caption(caption: str) -> tuple[str | None, list[dict[str, str | None]]]:
    """The background and the objects a toy-world caption describes (attributes it leaves out are None)."""
    background = re.search(r"on an? (\w+) background", caption)
    objects = [m.groupdict() for m in _OBJECT.finditer(caption.lower())]
    if not objects:
        raise ValueError(f"caption={caption!r} describes no toy-world object (e.g. 'a small red circle at the top')")
    return (background.group(1) if background else None), objects


def prompt_accuracy(image: Image.Image | np.ndarray, caption: str) -> dict[str, float | None]:
    """Per attribute, the fraction of described objects the image gets right (None when the caption omits it).

    Objects are matched by colour (a scene never repeats a colour); ``count`` is 1.0 when the image holds
    exactly as many objects as described; ``all`` is 1.0 when everything described is right.
    """
    _, described = parse_caption(caption)
    _, found = find_objects(image)
    by_color = {}
    for obj in found:  # largest object of each colour
        by_color.setdefault(obj.color, obj)
    scores: dict[str, list[float]] = {"color": [], "shape": [], "size": [], "position": []}
    for want in described:
        got = by_color.get(want["color"])
        scores["color"].append(float(got is not None))
        for attribute in ("shape", "size", "position"):
            if want[attribute] is not None:
                scores[attribute].append(float(got is not None and getattr(got, attribute) == want[attribute]))
    result: dict[str, float | None] = {k: (sum(v) / len(v) if v else None) for k, v in scores.items()}
    result["count"] = float(len(found) == len(described))
    result["all"] = float(all(v is None or v == 1.0 for v in result.values()))
    return result


def track(frames: Sequence[Image.Image | np.ndarray], color: str) -> list[tuple[float, float] | None]:
    """The centre of the largest ``color`` object in each frame (None where it is not found)."""
    path = []
    for frame in frames:
        _, found = find_objects(frame)
        match = [o for o in found if o.color == color]
        path.append(match[0].center if match else None)
    return path


def motion_continuity(path: Sequence[tuple[float, float] | None], direction: str, size: int) -> float:
    """Fraction of consecutive frame pairs in which the object is present and moves the captioned way.

    A step counts when it goes in ``direction`` by a positive amount no larger than a third of the frame (a
    larger jump is a teleport or a duplicate, not motion); wrapping across the frame edge counts as continuing.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} is not one of {', '.join(DIRECTIONS)}")
    dx, dy = DIRECTIONS[direction]
    good = 0
    for a, b in zip(path, path[1:]):
        if a is None or b is None:
            continue
        step = ((b[0] - a[0]) * dx + (b[1] - a[1]) * dy) % size  # wrap-around motion stays positive
        good += 0 < step <= size / 3
    return good / max(1, len(path) - 1)
