"""A deterministic procedural world of captioned shapes: images for the image model, short clips for the video model.

A scene has a plain background and one to three objects; each object is a shape (circle, square, triangle,
star) with a colour, a size (small or large) and a position on a 3 x 3 grid (top left ... bottom right). Its
caption says all of it in a fixed grammar, for example ``"a small red circle at the top left on a blue
background"``. A clip is one object moving in a straight line: ``"a red circle moving right on a black
background"``. Sample ``i`` of seed ``s`` is the same on every machine (its own :class:`random.Random`), so
data sets, evaluations and their captions are reproducible without storing any image.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
#: object colours (RGB); far apart so the analyzer reads them back unambiguously
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 190),
    "orange": (240, 140, 30),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (20, 20, 20),
    "white": (235, 235, 235),
    "gray": (128, 128, 128),
    "blue": (40, 80, 220),
    "green": (40, 180, 60),
}
#: object radius as a fraction of the image side (a large object still fits inside its grid cell)
SIZES: dict[str, float] = {"small": 0.09, "large": 0.155}
#: position name -> (column, row) on the 3 x 3 grid
POSITIONS: dict[str, tuple[int, int]] = {
    "top left": (0, 0),
    "top": (1, 0),
    "top right": (2, 0),
    "left": (0, 1),
    "center": (1, 1),
    "right": (2, 1),
    "bottom left": (0, 2),
    "bottom": (1, 2),
    "bottom right": (2, 2),
}
DIRECTIONS: dict[str, tuple[int, int]] = {"right": (1, 0), "left": (-1, 0), "up": (0, -1), "down": (0, 1)}
# Render at this multiple and downsample: anti-aliased edges, like real images, at no cost to determinism.
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeSpec:
    """One object: what it is and where its centre is (pixels), with its radius (pixels)."""

    shape: str
    color: str
    size: str
    position: str
    center: tuple[float, float]
    radius: float

    def phrase(self, with_size: bool = True, with_position: bool = True) -> str:
        words = ["a"] + ([self.size] if with_size else []) + [self.color, self.shape]
        if with_position:
            words.append("in the center" if self.position == "center" else f"at the {self.position}")
        return " ".join(words)


@dataclass(frozen=True)
class Scene:
    """A captioned image: background, objects, caption and side length in pixels."""

    background: str
    objects: tuple[ShapeSpec, ...]
    size: int = 64
    caption: str = field(default="")

    @staticmethod
    def caption_of(background: str, objects: tuple[ShapeSpec, ...]) -> str:
        return " and ".join(o.phrase() for o in objects) + f" on a {background} background"


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        half = r * 0.85  # about the circle's area, so "large" looks equally large for every shape
        return [(cx - half, cy - half), (cx + half, cy - half), (cx + half, cy + half), (cx - half, cy + half)]
    if shape == "triangle":
        # pointing up; centroid at the centre
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            angle = -math.pi / 2 + i * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    raise ValueError(f"shape={shape!r} is not one of {', '.join(SHAPES)}")


def draw_shape(draw: ImageDraw.ImageDraw, spec: ShapeSpec, scale: float = 1.0) -> None:
    """Draw one object on a Pillow canvas whose pixels are ``scale`` times the scene's."""
    cx, cy, r = spec.center[0] * scale, spec.center[1] * scale, spec.radius * scale
    fill = COLORS[spec.color]
    if spec.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(spec.shape, cx, cy, r), fill=fill)


def render_scene(scene: Scene) -> Image.Image:
    """The scene as an RGB image of ``scene.size`` pixels, anti-aliased."""
    big = scene.size * _SUPERSAMPLE
    image = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for spec in scene.objects:
        draw_shape(draw, spec, _SUPERSAMPLE)
    return image.resize((scene.size, scene.size), Image.Resampling.LANCZOS)


def _rng(kind: str, index: int, seed: int) -> random.Random:
    if index < 0 or seed < 0:
        raise ValueError(f"index={index} and seed={seed} must be >= 0")
    # String seeds hash with SHA-512 in CPython's random: stable across runs and machines.
    return random.Random(f"visattn-toy/{kind}/{seed}/{index}")


def _place(rng: random.Random, position: str, size: str, side: int) -> tuple[tuple[float, float], float]:
    col, row = POSITIONS[position]
    cell = side / 3
    jitter = cell * 0.08
    center = ((col + 0.5) * cell + rng.uniform(-jitter, jitter), (row + 0.5) * cell + rng.uniform(-jitter, jitter))
    return center, SIZES[size] * side * rng.uniform(0.92, 1.08)


def sample_scene(index: int, *, seed: int = 0, size: int = 64, max_objects: int = 3) -> Scene:
    """Scene ``index`` of the data set ``seed``: deterministic, one to ``max_objects`` objects.

    Several objects sit on grid cells at least two cells apart (corners, edges' ends), so they never touch.
    """
    if not 1 <= max_objects <= 3:
        raise ValueError(f"max_objects={max_objects} must be 1, 2 or 3")
    rng = _rng("scene", index, seed)
    # Single objects are the majority: they carry size and position words the model must learn first.
    count = 1 if max_objects == 1 else rng.choices(range(1, max_objects + 1), weights=[6, 3, 1][:max_objects])[0]
    if count == 1:
        positions = [rng.choice(list(POSITIONS))]
    else:
        far_apart = [p for p, (c, r) in POSITIONS.items() if c != 1 or r != 1]  # corners and edge centres
        positions = []
        for candidate in rng.sample(far_apart, len(far_apart)):
            c, r = POSITIONS[candidate]
            if all(max(abs(c - POSITIONS[p][0]), abs(r - POSITIONS[p][1])) >= 2 for p in positions):
                positions.append(candidate)
            if len(positions) == count:
                break
    colors = rng.sample(list(COLORS), len(positions))
    objects = []
    for position, color in zip(positions, colors):
        shape_size = rng.choice(list(SIZES))
        center, radius = _place(rng, position, shape_size, size)
        objects.append(ShapeSpec(rng.choice(SHAPES), color, shape_size, position, center, radius))
    background = rng.choice([b for b in BACKGROUNDS if b not in colors])
    objects = tuple(objects)
    return Scene(background, objects, size, Scene.caption_of(background, objects))


@dataclass(frozen=True)
class Clip:
    """A captioned clip of one moving object: frames, caption and the object's centre in every frame."""

    frames: tuple[Image.Image, ...]
    caption: str
    shape: str
    color: str
    background: str
    direction: str
    trajectory: tuple[tuple[float, float], ...]


def clip_caption(shape: str, color: str, direction: str, background: str) -> str:
    return f"a {color} {shape} moving {direction} on a {background} background"


def sample_clip(index: int, *, seed: int = 0, frames: int = 8, size: int = 32, speed: float | None = None) -> Clip:
    """Clip ``index`` of the data set ``seed``: one small object crossing the frame at constant speed.

    The default speed makes the object travel from near one edge to near the other in ``frames`` frames; pass
    ``speed`` (pixels per frame) to keep the training speed for longer clips, where the object wraps around the
    frame edge (the world is a torus, so motion never stops).
    """
    if frames < 2 or size < 16:
        raise ValueError(f"frames={frames} must be >= 2 and size={size} >= 16")
    rng = _rng("clip", index, seed)
    shape, color = rng.choice(SHAPES), rng.choice(list(COLORS))
    direction = rng.choice(list(DIRECTIONS))
    background = rng.choice([b for b in BACKGROUNDS if b != color])
    radius = 0.16 * size
    dx, dy = DIRECTIONS[direction]
    margin = radius + 1
    step = speed if speed is not None else (size - 2 * margin) / (frames - 1)
    across = rng.uniform(margin, size - margin)  # the coordinate that does not change
    start = margin if (dx + dy) > 0 else size - margin
    trajectory, images = [], []
    for t in range(frames):
        along = (start + (dx + dy) * step * t) % size
        center = (along, across) if dx else (across, along)
        trajectory.append(center)
        big = size * _SUPERSAMPLE
        image = Image.new("RGB", (big, big), BACKGROUNDS[background])
        draw = ImageDraw.Draw(image)
        # draw wrapped copies so an object crossing an edge re-enters on the other side
        for ox in (-size, 0, size) if dx else (0,):
            for oy in (-size, 0, size) if dy else (0,):
                draw_shape(
                    draw,
                    ShapeSpec(shape, color, "small", "center", (center[0] + ox, center[1] + oy), radius),
                    _SUPERSAMPLE,
                )
        images.append(image.resize((size, size), Image.Resampling.LANCZOS))
    return Clip(
        tuple(images),
        clip_caption(shape, color, direction, background),
        shape,
        color,
        background,
        direction,
        tuple(trajectory),
    )
