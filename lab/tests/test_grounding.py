"""TokenCompose grounding of the toy image model: the targets, the loss and the recording processor."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from lab.grounding import (
    MIN_GROUNDED_SIDE,
    CrossAttentionRecorder,
    GroundingTargets,
    grounding_targets,
    object_mask,
    token_loss,
)
from visattn.toy import models, sample_scene

GRID = 16


def _scene_with(count: int):
    for index in range(200):
        scene = sample_scene(index, seed=0, max_objects=3)
        if len(scene.objects) == count:
            return scene
    raise AssertionError(f"no scene with {count} objects")


def test_each_object_word_is_grounded_on_its_object_and_the_background_word_on_the_rest():
    scene = _scene_with(2)
    targets = grounding_targets([scene], GRID)
    words = scene.caption.split()
    grounded = {int(t): mask for t, mask in zip(targets.tokens[0], targets.masks[0]) if t >= 0}
    # token = word position + 1 (the start token): 3 words per object plus the background's colour
    assert len(grounded) == 3 * len(scene.objects) + 1
    masks = [object_mask(spec, scene.size, GRID) for spec in scene.objects]
    for spec, mask in zip(scene.objects, masks):
        assert mask.any() and not mask.all()
        tokens = [t for t, m in grounded.items() if torch.equal(m, mask)]
        assert sorted(words[t - 1] for t in tokens) == sorted([spec.color, spec.shape, spec.size])
    assert not (masks[0] & masks[1]).any()  # objects sit two grid cells apart
    background = len(words) - 2
    assert words[background] == scene.background
    assert torch.equal(grounded[background + 1], ~(masks[0] | masks[1]))


def test_object_masks_cover_the_object_cells():
    scene = _scene_with(1)
    spec = scene.objects[0]
    mask = object_mask(spec, scene.size, GRID)
    cell = scene.size / GRID
    column, row = int(spec.center[0] // cell), int(spec.center[1] // cell)
    assert mask[row, column]
    # a disc of radius r touches at most (2r / cell + 2)^2 cells
    assert mask.sum() <= (2 * spec.radius / cell + 2) ** 2


def _targets(mask: torch.Tensor, token: int = 1) -> GroundingTargets:
    tokens = torch.tensor([[token, -1]])
    return GroundingTargets(tokens, torch.stack([mask, torch.zeros_like(mask)])[None])


def test_token_loss_is_zero_inside_the_mask_and_penalizes_spread_attention():
    mask = torch.zeros(GRID, GRID, dtype=torch.bool)
    mask[4:8, 4:8] = True
    inside = torch.zeros(1, GRID * GRID, 3)
    inside[0, mask.flatten(), 1] = 1.0
    inside[0, ~mask.flatten(), 0] = 1.0  # other tokens do not count
    assert token_loss([inside], _targets(mask)).item() == pytest.approx(0.0)

    uniform = torch.full((1, GRID * GRID, 3), 1 / 3)
    share = mask.float().mean().item()
    assert token_loss([uniform], _targets(mask)).item() == pytest.approx((1 - share) ** 2)


def test_token_loss_skips_coarse_layers_and_refuses_only_coarse_ones():
    mask = torch.zeros(GRID, GRID, dtype=torch.bool)
    mask[:8] = True
    fine = torch.full((1, GRID * GRID, 3), 1 / 3)
    coarse = torch.zeros(1, 4 * 4, 3)
    coarse[..., 0] = 1.0  # would be the worst possible loss at 4 x 4
    both = token_loss([fine, coarse], _targets(mask)).item()
    assert both == pytest.approx(token_loss([fine], _targets(mask)).item())
    with pytest.raises(ValueError, match=str(MIN_GROUNDED_SIDE)):
        token_loss([coarse], _targets(mask))


def test_recorder_computes_what_the_stock_processor_computes_and_keeps_the_maps():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**models.IMAGE_UNET).eval()
    sample = torch.randn(2, models.LATENT_CHANNELS, 16, 16)
    text = torch.randn(2, 5, models.IMAGE_TEXT_WIDTH)
    with torch.no_grad():
        expected = unet(sample, 10, text).sample
        recorder = CrossAttentionRecorder()
        processors = {name: AttnProcessor2_0() for name in unet.attn_processors}
        processors.update({name: recorder for name in processors if name.endswith("attn2.processor")})
        unet.set_attn_processor(processors)
        got = unet(sample, 10, text).sample
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    cross_layers = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    assert len(recorder.maps) == len(cross_layers)
    sides = sorted({int(m.shape[1] ** 0.5) for m in recorder.maps})
    assert sides == [4, 8, 16]
    for attention in recorder.maps:
        assert attention.shape[0] == 2 and attention.shape[2] == 5
        torch.testing.assert_close(attention.sum(-1), torch.ones(attention.shape[:2]))


def test_recorder_refuses_self_attention():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**models.IMAGE_UNET).eval()
    recorder = CrossAttentionRecorder()
    unet.set_attn_processor(recorder)  # self-attention layers too
    with pytest.raises(ValueError, match="cross-attention"):
        unet(torch.randn(1, models.LATENT_CHANNELS, 16, 16), 10, torch.randn(1, 5, models.IMAGE_TEXT_WIDTH))
