"""The toy world: procedurally generated captioned images and clips, a pixel analyzer that reads them back, and
the small models trained on them that ship with visattn (the offline default model).

What ships is what run time needs: the caption grammar and renderer (:mod:`.data`), the analyzer
(:mod:`.analyze`, which ``visattn eval`` grades with), the vocabulary and tokenizers (:mod:`.vocab`), the model
definitions and loader (:mod:`.models`) and the weights. The lab that trained the models is the repository's
``lab/`` folder, not installed.

Every answer is known in this world: a caption says which shapes, colours, sizes and positions are in the
picture, and :mod:`visattn.toy.analyze` reads those attributes back from pixels deterministically, so the
effect of an attention edit can be measured rather than eyeballed.
"""

from .._lazy import lazy_exports
from .data import COLORS, POSITIONS, SHAPES, SIZES, Clip, Scene, ShapeSpec, render_scene, sample_clip, sample_scene

# The models and the analyzer resolve on first use: importing the grammar must not load diffusers.
_EXPORTS = {
    "load_toy_pipeline": ".models",
    "weights_root": ".models",
    "VIDEO_FRAMES": ".models",
    "VIDEO_SIZE": ".models",
    "find_objects": ".analyze",
    "parse_caption": ".analyze",
    "prompt_accuracy": ".analyze",
}
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
    *_EXPORTS,
]

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS, extra=tuple(__all__))
