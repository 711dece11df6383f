"""The toy world: procedurally generated captioned images and clips, a pixel analyzer that reads them back, and
the small models trained on them that ship with visattn (the offline default model).

Every answer is known in this world: a caption says which shapes, colours, sizes and positions are in the
picture, and :mod:`visattn.toy.analyze` reads those attributes back from pixels deterministically, so the
effect of an attention edit can be measured rather than eyeballed.
"""

from .data import COLORS, POSITIONS, SHAPES, SIZES, Clip, Scene, ShapeSpec, render_scene, sample_clip, sample_scene

__all__ = [
    "COLORS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "Clip",
    "Scene",
    "ShapeSpec",
    "render_scene",
    "sample_clip",
    "sample_scene",
]
