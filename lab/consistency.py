"""Colour-variant outline consistency for the toy image model: a colour word should not move an object's outline.

Prompt-to-Prompt (Hertz et al., 2022, "Prompt-to-Prompt Image Editing with Cross Attention Control") rests on the
model drawing an object's outline from where the words attend, so that the source's attention maps keep the
outline while a swapped colour word repaints it. The toy image model, trained on the denoising loss alone, does
not draw that way: the same noise gives a red star and a blue star different outlines, with the source's maps
injected or not (docs/toy-world.md measures it). This objective trains the dependence away. It is
this project's, not a paper's; what it shares with P2P is the premise that structure and colour are separable.

Every training scene has a colour variant (:func:`recolour`): the same layout with every object in another
colour. Both are noised with the same noise at the same timestep and denoised under their own captions. The two
predictions of the clean latent are decoded by the frozen VAE and reduced to colour-free outlines
(:func:`object_alpha`: how far each pixel sits along the line from the background's colour to the object's, 0 on
the background, 1 on the object), which an anti-aliased edge or a blurred prediction fills the same way whatever
the object's colour. :func:`outline_loss` is their squared difference per pixel of object area. A model that
repaints the object and keeps its outline scores 0; the denoising loss on both scenes keeps the colours right.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import torch

from visattn.toy.data import BACKGROUNDS, COLORS, Scene


def recolour(scene: Scene, index: int, seed: int = 0) -> Scene:
    """The colour variant of training scene ``index`` of data seed ``seed``: the same layout (shapes, sizes,
    positions, background), every object in a different colour, all still distinct and none the background's.

    Deterministic in ``(seed, index)``, like the scenes themselves.
    """
    rng = random.Random(f"visattn-toy/recolour/{seed}/{index}")
    choices = [[c for c in COLORS if c != spec.color and c != scene.background] for spec in scene.objects]
    while True:  # three objects always find distinct new colours: each has at least four to choose from
        colors = [rng.choice(options) for options in choices]
        if len(set(colors)) == len(colors):
            break
    objects = tuple(dataclasses.replace(spec, color=color) for spec, color in zip(scene.objects, colors))
    return dataclasses.replace(scene, objects=objects, caption=Scene.caption_of(scene.background, objects))


def unit_rgb(colors: Sequence[tuple[int, int, int]]) -> torch.Tensor:
    """``[N, 3]``: RGB triples in the VAEs' [-1, 1] range."""
    return torch.tensor(colors, dtype=torch.float32) / 127.5 - 1.0


def object_alpha(pixels: torch.Tensor, background: torch.Tensor, color: torch.Tensor) -> torch.Tensor:
    """``[N, 1, H, W]`` in [0, 1]: each pixel's position on the line from ``background`` to ``color``.

    Args:
        pixels: ``[N, 3, H, W]`` images in [-1, 1].
        background, color: ``[N, 3]`` each image's background and object colour in [-1, 1].

    A blend ``a * color + (1 - a) * background`` reads ``a`` whatever the two colours, so an outline measured this
    way does not change with the object's colour, as a threshold on the distance from the background would.
    """
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must be [N, 3, H, W]; got shape {tuple(pixels.shape)}")
    if background.shape != (len(pixels), 3) or color.shape != (len(pixels), 3):
        raise ValueError(
            f"background and color must be [{len(pixels)}, 3]; got {tuple(background.shape)} and {tuple(color.shape)}"
        )
    line = (color - background)[:, :, None, None]
    along = ((pixels - background[:, :, None, None]) * line).sum(1, keepdim=True)
    return (along / line.pow(2).sum(1, keepdim=True)).clamp(0.0, 1.0)


def outline_loss(
    decoded: torch.Tensor,
    variant: torch.Tensor,
    background: torch.Tensor,
    color: torch.Tensor,
    variant_color: torch.Tensor,
    area: torch.Tensor,
) -> torch.Tensor:
    """Mean over pairs of the squared difference of the two images' :func:`object_alpha` outlines, summed over
    pixels and divided by the object's ``area`` (pixels, ``[N]``), so small and large objects weigh alike.

    Args:
        decoded, variant: ``[N, 3, H, W]`` a scene and its colour variant (decoded predictions) in [-1, 1].
        background: ``[N, 3]`` their shared background colour; ``color``, ``variant_color``: ``[N, 3]`` the
            object's colour in each.
    """
    mismatch = (object_alpha(decoded, background, color) - object_alpha(variant, background, variant_color)).pow(2)
    return (mismatch.sum(dim=(1, 2, 3)) / area.clamp(min=1.0)).mean()


def one_object_colours(scenes: Sequence[Scene]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For :func:`outline_loss`: ``single`` (``[N]`` booleans: the scene has one object), and the background's and
    the first object's colour (``[N, 3]`` each, in [-1, 1]) of every scene."""
    single = torch.tensor([len(scene.objects) == 1 for scene in scenes])
    background = unit_rgb([BACKGROUNDS[scene.background] for scene in scenes])
    color = unit_rgb([COLORS[scene.objects[0].color] for scene in scenes])
    return single, background, color
