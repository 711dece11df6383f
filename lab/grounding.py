"""Token-level grounding of the toy image model's cross-attention: TokenCompose's token loss.

TokenCompose (Wang et al., "TokenCompose: Text-to-Image Diffusion with Token-level Supervision", CVPR 2024) adds
to the denoising loss, for every caption word that names something in the image, a penalty on the share of the
word's cross-attention that falls outside that thing's mask::

    L_token = mean over grounded words i and layers l of (1 - sum_{u in mask_i} A_l[u, i] / sum_u A_l[u, i]) ** 2

where ``A_l[u, i]`` is layer ``l``'s attention from latent pixel ``u`` to token ``i`` (mean over heads). The toy
world knows every mask exactly, so each object's colour, shape and size words are grounded on the object and the
background's colour word on the background.

Why the toy model has it: trained on the denoising loss alone, its colour words attend to most of the image, so
attention heatmaps say little and :class:`~visattn.effects.LocalBlend`'s region covered about 80% of it.
Grounded, the colour word's share of attention on its object doubles and the region halves. It does not keep a
Prompt-to-Prompt colour swap's outline: the model reads colour from the position words too, and redraws the
outline late (see docs/toy-world.md). The same training stage's outline-consistency loss
(:mod:`lab.consistency`) is what works on that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from visattn.toy.data import _SUPERSAMPLE, Scene, ShapeSpec, draw_shape

#: Object attributes whose word is grounded on the object (the background's colour word goes on the background).
GROUNDED_ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size")
#: Cross-attention layers at fewer latent pixels per side than this are not supervised: at 4 x 4 a small object
#: and its neighbourhood are the same cell.
MIN_GROUNDED_SIDE = 8


def object_mask(spec: ShapeSpec, image_size: int, grid: int) -> torch.Tensor:
    """``[grid, grid]`` booleans: the cells of a ``grid``-sided lattice over the image that the object touches."""
    side = image_size * _SUPERSAMPLE
    canvas = Image.new("RGB", (side, side), (0, 0, 0))  # every object colour is brighter than black
    draw_shape(ImageDraw.Draw(canvas), spec, _SUPERSAMPLE)
    pixels = torch.from_numpy(np.asarray(canvas).max(axis=-1) > 0).float()
    return F.adaptive_max_pool2d(pixels[None, None], grid)[0, 0] > 0


@dataclass(frozen=True)
class GroundingTargets:
    """Which token of each caption attends where: ``tokens[n, k]`` (``-1``: no target) should attend inside
    ``masks[n, k]`` (``[grid, grid]`` booleans)."""

    tokens: torch.Tensor
    masks: torch.Tensor

    def __getitem__(self, index: torch.Tensor) -> GroundingTargets:
        return GroundingTargets(self.tokens[index], self.masks[index])


def grounding_targets(scenes: Sequence[Scene], grid: int) -> GroundingTargets:
    """Grounding targets of toy scenes at a ``grid``-sided latent lattice.

    Token positions are word positions plus one (the start token): the toy tokenizer makes every word one token
    (:mod:`visattn.toy.vocab`).
    """
    per_scene = [_scene_targets(scene, grid) for scene in scenes]
    width = max(len(targets) for targets in per_scene)
    tokens = torch.full((len(scenes), width), -1, dtype=torch.long)
    masks = torch.zeros((len(scenes), width, grid, grid), dtype=torch.bool)
    for n, targets in enumerate(per_scene):
        for k, (token, mask) in enumerate(targets):
            tokens[n, k], masks[n, k] = token, mask
    return GroundingTargets(tokens, masks)


def _scene_targets(scene: Scene, grid: int) -> list[tuple[int, torch.Tensor]]:
    words = scene.caption.split()
    targets, start = [], 0
    anywhere = torch.zeros((grid, grid), dtype=torch.bool)
    for spec in scene.objects:
        phrase = spec.phrase().split()
        if words[start : start + len(phrase)] != phrase:
            raise ValueError(f"caption {scene.caption!r} does not hold the phrase {' '.join(phrase)!r} at word {start}")
        mask = object_mask(spec, scene.size, grid)
        anywhere |= mask
        attributes = {getattr(spec, attribute) for attribute in GROUNDED_ATTRIBUTES}
        targets += [(start + j + 1, mask) for j, word in enumerate(phrase) if word in attributes]
        start += len(phrase) + 1  # the phrase and "and" (or "on")
    background_word = len(words) - 2  # "... on a <colour> background"
    if words[background_word] != scene.background:
        raise ValueError(f"caption {scene.caption!r} does not end with '{scene.background} background'")
    targets.append((background_word + 1, ~anywhere))
    return targets


class CrossAttentionRecorder:
    """A diffusers attention processor for cross-attention layers that computes the attention probabilities
    explicitly (so they carry gradients) and keeps their mean over heads, ``[batch, latent pixels, tokens]``, in
    :attr:`maps`, one entry per call. Clear :attr:`maps` before every forward pass."""

    def __init__(self) -> None:
        self.maps: list[torch.Tensor] = []

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **_: object,
    ) -> torch.Tensor:
        if encoder_hidden_states is None:
            raise ValueError("CrossAttentionRecorder is for cross-attention layers (attn2) only")
        batch, pixels, _ = hidden_states.shape
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.maps.append(probs.view(batch, attn.heads, pixels, -1).mean(dim=1))
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](out))


def token_loss(maps: Sequence[torch.Tensor], targets: GroundingTargets) -> torch.Tensor:
    """TokenCompose's token loss of recorded maps (``[batch, side * side, tokens]`` each) against ``targets``
    (one row per batch item), averaged over the layers at least :data:`MIN_GROUNDED_SIDE` latent pixels wide."""
    valid = (targets.tokens >= 0).float()
    tokens = targets.tokens.clamp(min=0)
    batch, width = tokens.shape
    masks = targets.masks.float().flatten(0, 1)[:, None]
    losses = []
    for attention in maps:
        side = math.isqrt(attention.shape[1])
        if side < MIN_GROUNDED_SIDE:
            continue
        inside = F.adaptive_max_pool2d(masks, side).view(batch, width, side * side).to(attention.device)
        per_token = attention.gather(2, tokens.to(attention.device)[:, None, :].expand(-1, side * side, -1))
        per_token = per_token.transpose(1, 2)  # [batch, width, pixels]
        share = (per_token * inside).sum(-1) / per_token.sum(-1).clamp(min=1e-8)
        weight = valid.to(attention.device)
        losses.append(((1 - share).pow(2) * weight).sum() / weight.sum().clamp(min=1.0))
    if not losses:
        raise ValueError(f"no recorded cross-attention map is at least {MIN_GROUNDED_SIDE} latent pixels wide")
    return torch.stack(losses).mean()
