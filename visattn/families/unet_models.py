"""Facts of the UNet denoisers: one :class:`Family` record per class.

UNet levels halve the grid (rounding up); video UNets fold frames into the batch of their spatial layers, so
those layers see one frame per row, and their temporal layers (a pixel's frames) have no grid of their own.
"""

from __future__ import annotations

from .base import Argument, Family


def _unet(name: str, classes: tuple[str, ...], text: int | None, **facts) -> Family:
    return Family(
        name,
        classes,
        sample=Argument(("sample",), 0),
        patch=None,
        patch_t=None,
        timestep=Argument(("timestep",), 1),
        text=None if text is None else Argument(("encoder_hidden_states",), text),
        unet_levels=True,
        **facts,
    )


def _video_unet(name: str, classes: tuple[str, ...], text: int | None, layout: str = "BCFHW") -> Family:
    return _unet(name, classes, text, layout=layout, frames_in_batch=True, video=True)


UNET_FAMILIES: tuple[Family, ...] = (
    _unet("unet", ("UNet2DConditionModel",), text=2),
    _unet("unet_2d", ("UNet2DModel",), text=None),
    _unet("kandinsky3", ("Kandinsky3UNet",), text=2),
    _unet("dreamlite_unet", ("DreamLiteUNetModel",), text=2),
    _video_unet("unet_3d", ("UNet3DConditionModel",), text=2),
    _video_unet("animatediff", ("UNetMotionModel",), text=2),
    # Cross-attention keys are the text followed by image tokens the model appends itself.
    _video_unet("i2vgen_xl", ("I2VGenXLUNet",), text=5),
    # One CLIP image token instead of text.
    _video_unet("svd", ("UNetSpatioTemporalConditionModel",), text=None, layout="BFCHW"),
)
