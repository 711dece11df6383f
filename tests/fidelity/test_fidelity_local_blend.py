"""LocalBlend against a transcription of the authors' code (issue 28).

The authors' local blend is google/prompt-to-prompt, ``prompt-to-prompt_stable.ipynb`` (the same class is in
``null_text_w_ptp.ipynb``): class ``LocalBlend``, methods ``get_mask`` and ``__call__``, called by
``AttentionControlEdit.step_callback`` with ``AttentionStore.attention_store`` (the maps of every layer of at most
32x32 tokens, summed over the steps so far by ``AttentionStore.between_steps``) right after ``scheduler.step`` in
``ptp_utils.diffusion_step``. :class:`AuthorsLocalBlend` below is written from reading that code (their tensor
layout, their indices ``[2:4]`` and ``[:3]``, their 16x16 reshape, their ``start_blend`` counter and ``th`` pair),
without the word lookup (positions are given); ``substruct_words`` as ``null_text_w_ptp.ipynb`` has them (their
``substruct_layers``: a second, unpooled mask at ``th[1]`` taken out of the first).

Measured here: on shared random maps the masks are identical at every step and the blended latents agree to
float rounding; end to end, on a tiny pipeline with SD 1.5's UNet layout at 512 px's 64x64 latents, visattn's
default LocalBlend gives the latents the transcription gives when it blends in the pipeline's step callback.
visattn's earlier blend (``variant="prediction"``) on the same maps: ``test_the_prediction_variant_differs``.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

import visattn
from visattn.context import StepInfo
from visattn.effects import LocalBlend, PromptToPrompt
from visattn.effects.local_blend import blend_latents
from visattn.families import family_of
from visattn.kernels import ProbabilityRead
from visattn.tiny import tiny_pipeline
from visattn.tiny.vaes import LATENT_CHANNELS

WORDS = 77  # the authors' MAX_NUM_WORDS (the CLIP text length)


class AuthorsLocalBlend:
    """Transcription of google/prompt-to-prompt, ``prompt-to-prompt_stable.ipynb``, class ``LocalBlend``
    (``__init__``'s ``start_blend=0.2`` and ``th=(.3, .3)``, ``get_mask``, ``__call__``), for two prompts.

    ``alpha``: ``[prompts, 1, 1, 1, 1, WORDS]``, 1 at each prompt's blend-word positions (their ``alpha_layers``).
    ``store``: their ``attention_store``, ``{"down_cross": [...], "up_cross": [...], ...}``, each map
    ``[prompts * heads, 256 or 1024 tokens, WORDS]`` summed over the steps so far.
    """

    def __init__(
        self, alpha: torch.Tensor, num_steps: int, start_blend: float = 0.2, th=(0.3, 0.3), substruct=None
    ) -> None:
        self.alpha = alpha
        self.substruct = substruct  # their substruct_layers: [prompts, 1, 1, 1, 1, WORDS], or None
        self.start_blend = int(start_blend * num_steps)
        self.counter = 0
        self.th = th
        self.mask = None

    def get_mask(self, x_t: torch.Tensor, maps: torch.Tensor, alpha: torch.Tensor, use_pool: bool) -> torch.Tensor:
        k = 1
        maps = (maps * alpha).sum(-1).mean(1)  # words summed, heads and layers averaged: [prompts, 1, 16, 16]
        if use_pool:
            maps = F.max_pool2d(maps, (k * 2 + 1, k * 2 + 1), (1, 1), padding=(k, k))
        mask = F.interpolate(maps, size=x_t.shape[2:])  # nearest, their default
        mask = mask / mask.max(2, keepdim=True)[0].max(3, keepdim=True)[0]
        mask = mask.gt(self.th[1 - int(use_pool)])
        return mask[:1] + mask  # the source's mask united with each prompt's

    def __call__(self, x_t: torch.Tensor, store: dict) -> torch.Tensor:
        self.counter += 1
        if self.counter > self.start_blend:
            maps = store["down_cross"][2:4] + store["up_cross"][:3]
            maps = [item.reshape(self.alpha.shape[0], -1, 1, 16, 16, WORDS) for item in maps]
            maps = torch.cat(maps, dim=1)
            mask = self.get_mask(x_t, maps, self.alpha, True)
            if self.substruct is not None:
                maps_sub = ~self.get_mask(x_t, maps, self.substruct, False)
                mask = mask * maps_sub
            self.mask = mask
            mask = mask.float()
            x_t = x_t[:1] + mask * (x_t - x_t[:1])
        return x_t


# SD 1.x's UNet at 512 px: 64x64 latents, cross-attention at 64, 32 and 16 (two layers per down block, three per
# up block) and in the 8x8 mid block. The authors' store keeps maps of at most 32x32 tokens, so its "down_cross"
# list is [32, 32, 16, 16] and its "up_cross" list [16, 16, 16, 32, 32, 32]: [2:4] and [:3] are the 16x16 layers.
LAYERS = [
    ("down", "down_blocks.1.attentions.0", 32),
    ("down", "down_blocks.1.attentions.1", 32),
    ("down", "down_blocks.2.attentions.0", 16),
    ("down", "down_blocks.2.attentions.1", 16),
    ("mid", "mid_block.attentions.0", 8),
    ("up", "up_blocks.1.attentions.0", 16),
    ("up", "up_blocks.1.attentions.1", 16),
    ("up", "up_blocks.1.attentions.2", 16),
    ("up", "up_blocks.2.attentions.0", 32),
    ("up", "up_blocks.2.attentions.1", 32),
    ("up", "up_blocks.2.attentions.2", 32),
]
HEADS = 8
SOURCE_WORDS, TARGET_WORDS = (3,), (3, 4)  # the blend words' token positions in each prompt
SOURCE_SUBTRACT, TARGET_SUBTRACT = (2,), (2,)  # the subtract words' (their substruct_words)


def _alpha(source=SOURCE_WORDS, target=TARGET_WORDS) -> torch.Tensor:
    alpha = torch.zeros(2, 1, 1, 1, 1, WORDS)
    alpha[0, ..., list(source)] = 1
    alpha[1, ..., list(target)] = 1
    return alpha


def _random_maps(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One step's cross-attention probabilities per layer, ``[prompts * heads, tokens, WORDS]``: random logits,
    raised for the blend words around a random centre (an object), so that the masks cover part of the grid, and
    for the subtract words around a point near it (a part of the object)."""
    centre = torch.rand(2, generator=generator) * 0.6 + 0.2
    part = centre + (torch.rand(2, generator=generator) - 0.5) * 0.2
    maps = {}
    for _, name, side in LAYERS:
        logits = torch.randn(2 * HEADS, side * side, WORDS, generator=generator) * 2
        cells = (torch.arange(side) + 0.5) / side
        for where, width, positions in (
            (centre, 0.12, set(SOURCE_WORDS) | set(TARGET_WORDS)),
            (part, 0.06, set(SOURCE_SUBTRACT) | set(TARGET_SUBTRACT)),
        ):
            distance = (cells[:, None] - where[0]) ** 2 + (cells[None, :] - where[1]) ** 2
            logits[..., list(positions)] += (4 * torch.exp(-distance / (2 * width**2))).reshape(-1, 1)
        maps[name] = logits.softmax(-1)
    return maps


def _visattn_layer_maps(
    probs: torch.Tensor, subtract: bool = False, words=(SOURCE_WORDS, TARGET_WORDS)
) -> torch.Tensor:
    """What Prompt-to-Prompt hands its blend for one layer: ``[2, pairs, tokens]`` (``[4, ...]`` with subtract
    words: theirs after the blend words'), words summed, heads averaged."""
    probs = probs.reshape(2, HEADS, *probs.shape[1:])
    sides = [(0, words[0]), (1, words[1])]
    if subtract:
        sides += [(0, SOURCE_SUBTRACT), (1, TARGET_SUBTRACT)]
    return torch.stack([probs[row][..., list(words)].sum(-1).mean(0) for row, words in sides])[:, None]


def _run_both(blend: LocalBlend, steps: int, seed: int = 0, words=(SOURCE_WORDS, TARGET_WORDS)):
    """Feed the same random maps and latents to visattn's blend and to the transcription, step by step (``words``:
    the blend words' positions in visattn's maps)."""
    generator = torch.Generator().manual_seed(seed)
    family = family_of(tiny_pipeline("unet").unet)
    substruct = _alpha(SOURCE_SUBTRACT, TARGET_SUBTRACT) if blend.subtract else None
    authors = AuthorsLocalBlend(_alpha(), steps, th=(blend.threshold, blend.subtract_threshold), substruct=substruct)
    run = blend.new_run()
    store: dict[str, list[torch.Tensor]] = {}
    for i in range(steps):
        maps = _random_maps(generator)
        step_store = {"down_cross": [], "mid_cross": [], "up_cross": []}
        run.begin_call()
        for place, name, side in LAYERS:
            if side * side <= 32**2:
                step_store[f"{place}_cross"].append(maps[name])
            layer_maps = _visattn_layer_maps(maps[name], bool(blend.subtract), words)
            run.add_layer(layer_maps, (1, side, side), (1, 64, 64), name)
        # AttentionStore.between_steps: the store is the sum over the steps so far
        store = step_store if not store else {k: [a + b for a, b in zip(store[k], step_store[k])] for k in store}
        made = run.end_call(StepInfo(i, steps, None), unet=True)
        latents = torch.randn(2, 4, 64, 64, generator=generator)
        expected = authors(latents, store)
        got = blend_latents(latents, run.mask, family) if made else latents
        yield i, run, authors, got, expected


def test_masks_and_blended_latents_match_the_authors_on_shared_random_maps():
    steps = 10
    blended = 0
    for i, run, authors, got, expected in _run_both(LocalBlend(["cat", "dog"]), steps):
        if i + 1 <= int(0.2 * steps):  # the authors' counter: nothing blended before start_blend
            assert run.mask is None and authors.mask is None and torch.equal(got, expected)
            continue
        blended += 1
        assert torch.equal(run.mask[0, 0], authors.mask[1, 0])  # the target's mask: source | target
        assert torch.equal(authors.mask[0], authors.mask[0] & authors.mask[1])  # (the source row is unchanged)
        assert 0 < run.mask.float().mean() < 1
        assert (got - expected).abs().max() <= 1e-5
    assert blended == steps - 2


@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.8])
def test_thresholds_match_the_authors(threshold):
    for _, run, authors, _, _ in _run_both(LocalBlend("cat", threshold=threshold), 5, seed=threshold.hex().__len__()):
        if run.mask is not None:
            assert torch.equal(run.mask[0, 0], authors.mask[1, 0])


@pytest.mark.parametrize("subtract_threshold", [0.3, 0.6])
def test_subtract_words_match_the_authors_substruct_words(subtract_threshold):
    """The later notebook's ``substruct_words``: a second mask (not pooled, ``th[1]``) taken out of the blend
    region, at every step; and it takes something out here (their region with the part's words removed)."""
    steps = 6
    blend = LocalBlend(["cat", "dog"], subtract="red", subtract_threshold=subtract_threshold)
    without = [
        run.mask.clone() for _, run, *_ in _run_both(blend.copy_with(subtract=None), steps) if run.mask is not None
    ]
    masks = []
    for _, run, authors, got, expected in _run_both(blend, steps):
        if run.mask is None:
            assert authors.mask is None
            continue
        assert torch.equal(run.mask[0, 0], authors.mask[1, 0])
        assert (got - expected).abs().max() <= 1e-5
        masks.append(run.mask.clone())
    assert len(masks) == len(without) == steps - 1
    for mask, full in zip(masks, without):
        assert torch.equal(mask & full, mask)  # only ever removes cells
    assert any(mask.sum() < full.sum() for mask, full in zip(masks, without))
    assert all(mask.any() for mask in masks)


def test_subtract_words_with_the_prediction_variant_leave_their_region_out_of_each_step():
    """visattn's prediction blend takes each step's subtract region out before the union over steps: after one
    step the mask is the words' region minus the subtract words' region."""
    blend = LocalBlend("cat", variant="prediction", subtract="red", subtract_threshold=0.4)
    ((_, run, *_),) = list(_run_both(blend, 1))
    ((_, full, *_),) = list(_run_both(blend.copy_with(subtract=None), 1))
    part_blend = LocalBlend("red", variant="prediction", threshold=0.4, radius=0)
    ((_, part, *_),) = list(_run_both(part_blend, 1, words=(SOURCE_SUBTRACT, TARGET_SUBTRACT)))
    assert torch.equal(run.mask, full.mask & ~part.mask)
    assert 0 < run.mask.sum() < full.mask.sum()


def test_the_prediction_variant_differs():
    """visattn's earlier blend (every layer, resized to the latent grid, pooled there, masks united over steps)
    on the same maps: a different region (the issue measured IoU 0.60 on 512 px maps)."""
    steps = 10
    authors_masks = [run.mask.clone() for _, run, *_ in _run_both(LocalBlend("cat"), steps) if run.mask is not None]
    prediction = [run.mask.clone() for _, run, *_ in _run_both(LocalBlend("cat", variant="prediction"), steps)]
    final_authors, final_prediction = authors_masks[-1], prediction[-1]
    iou = (final_authors & final_prediction).sum() / (final_authors | final_prediction).sum()
    assert iou < 0.95


# --- end to end -------------------------------------------------------------------------------------------------


@functools.cache
def sd15_layout_pipeline() -> StableDiffusionPipeline:
    """The tiny SD pipeline with a UNet of SD 1.5's layout (4 levels, 2 layers per down block, 3 per up block),
    called at 128 px: 64x64 latents with the 2x tiny VAE, as SD 1.5's at 512 px."""
    pipe = tiny_pipeline("unet")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=2,
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=2,
        cross_attention_dim=pipe.text_encoder.config.hidden_size,
    ).eval()
    pipe = StableDiffusionPipeline(**{**pipe.components, "unet": unet})
    pipe.set_progress_bar_config(disable=True)
    return pipe


class AuthorsStore(visattn.Effect):
    """The authors' ``AttentionStore`` for the conditional rows: per step, the cross-attention maps of every layer
    of at most 32x32 tokens, keyed ``"{down|mid|up}_cross"`` in call order, summed over the steps so far."""

    roles = ("cross",)

    def __init__(self) -> None:
        super().__init__(layers="cross")
        self.store: dict[str, list[torch.Tensor]] = {}
        self.step_store: dict[str, list[torch.Tensor]] = {"down_cross": [], "mid_cross": [], "up_cross": []}

    def apply(self, call):
        ctx = call.ctx
        if ctx.num_grid_tokens > 32**2:
            return
        place = ctx.layer_name.split("_", 1)[0]

        def read(probs):
            rows = ctx.batch.rows("cond")
            self.step_store[f"{place}_cross"].append(probs[rows].reshape(-1, *probs.shape[2:]).clone())

        call.reads.append(ProbabilityRead(read))

    def between_steps(self) -> None:
        step = self.step_store
        self.store = step if not self.store else {k: [a + b for a, b in zip(self.store[k], step[k])] for k in step}
        self.step_store = {"down_cross": [], "mid_cross": [], "up_cross": []}


@pytest.mark.parametrize("subtract", [None, "red"])
def test_end_to_end_latents_match_the_authors_step_callback(subtract):
    """visattn's default LocalBlend on a pipeline vs the transcription blending in the pipeline's step callback
    (``callback_on_step_end`` runs right after ``scheduler.step``, as their ``step_callback``), with the same
    maps (no attention injected, so the stored maps are the maps either way); with ``subtract`` words too (their
    ``substruct_words``)."""
    pipe = sd15_layout_pipeline()
    source, target = "a red cat", "a red dog"
    call = {"num_inference_steps": 5, "height": 128, "width": 128, "output_type": "latent", "guidance_scale": 7.5}

    # Random tiny weights spread attention almost evenly: a high threshold gives a partial mask.
    blend = LocalBlend(["cat", "dog"], threshold=0.9, subtract=subtract, subtract_threshold=0.9)
    p2p = PromptToPrompt.replace(source, target, cross_steps=0, self_steps=0, local_blend=blend)
    with visattn.attach(pipe, p2p):
        ours = pipe(prompt=p2p.prompts, generator=p2p.generator(0), **call).images

    # The same attention path in both runs (maps collected for a blend), without visattn's blend: start=1 never
    # blends; the transcription blends instead.
    never = LocalBlend(["cat", "dog"], threshold=0.9, start=1.0)
    plain = PromptToPrompt.replace(source, target, cross_steps=0, self_steps=0, local_blend=never)
    store = AuthorsStore()
    alpha = torch.zeros(2, 1, 1, 1, 1, WORDS)
    alpha[0, ..., 3] = 1  # "cat": <start> a red cat
    alpha[1, ..., 3] = 1  # "dog"
    substruct = None
    if subtract:
        substruct = torch.zeros(2, 1, 1, 1, 1, WORDS)
        substruct[:, ..., 2] = 1  # "red" in both prompts
    authors = AuthorsLocalBlend(alpha, call["num_inference_steps"], th=(0.9, 0.9), substruct=substruct)

    def step_callback(pipeline, i, t, kwargs):
        store.between_steps()
        return {"latents": authors(kwargs["latents"], store.store)}

    with visattn.attach(pipe, plain, store):
        theirs = pipe(
            prompt=plain.prompts,
            generator=plain.generator(0),
            callback_on_step_end=step_callback,
            callback_on_step_end_tensor_inputs=["latents"],
            **call,
        ).images
    assert [len(store.store[key]) for key in ("down_cross", "up_cross")] == [4, 6]
    assert torch.equal(blend.mask[0, 0], authors.mask[1, 0])
    assert 0 < blend.mask.float().mean() < 1
    assert (ours - theirs).abs().max() <= 1e-5
    # the blend acted: outside the mask the edit's latents are the source's
    assert torch.equal(ours[1][:, ~blend.mask[0, 0]], ours[0][:, ~blend.mask[0, 0]])


def test_the_layers_read_are_the_16x16_level_or_the_closest_one():
    """The authors' maps are SD 1.x's 16x16 layers at 512 px; other sizes and models read the level closest to
    16x16 tokens (visattn's generalization), transformers their latent grid."""
    from visattn.effects.local_blend import authors_grid

    assert authors_grid({(64, 64), (32, 32), (16, 16), (8, 8)}, unet=True) == (16, 16)  # SD 1.x at 512 px
    assert authors_grid({(96, 96), (48, 48), (24, 24)}, unet=True) == (24, 24)  # SD 1.x/2.x at 768 px
    assert authors_grid({(64, 64), (32, 32)}, unet=True) == (32, 32)  # SDXL at 1024 px
    assert authors_grid({(8, 8), (4, 4)}, unet=True) == (8, 8)
    assert authors_grid({(16, 24), (8, 12)}, unet=True) == (16, 24)  # a non-square latent
    assert authors_grid({(32, 32), (16, 16)}, unet=False) == (32, 32)
