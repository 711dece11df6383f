"""Prompt-to-Prompt: exact identities, injection of the source's maps, alignment, local blend, every family."""

from __future__ import annotations

import dataclasses
import functools
import inspect

import numpy as np
import pytest
import torch
from helpers import BandPattern, HeadScale, count_planned_answers

import visattn
from visattn.alignment import TokenMap, align_words, token_map, word_pairs
from visattn.attachment import layer_roles
from visattn.effects import AttentionMaps, LocalBlend, PerturbedAttentionGuidance, PromptToPrompt
from visattn.kernels import ProbabilityRead, run_request
from visattn.kernels.probabilities import linear_edits, text_block_edits
from visattn.tiny import TINY_PIPELINES, call_kwargs, tiny_pipeline
from visattn.words import prompt_tokens


@functools.cache
def pipeline(family: str):
    return tiny_pipeline(family)


def options(family: str) -> dict:
    """What the effect needs to know about a call beyond the pipeline (the tiny HunyuanVideo template)."""
    kwargs = call_kwargs(family)
    return {"prompt_template": kwargs["prompt_template"]} if "prompt_template" in kwargs else {}


def edit(family: str, p2p: PromptToPrompt, *others, before=(), seed: int = 0, images: int = 1, **overrides):
    pipe = pipeline(family)
    if images != 1:
        overrides["num_images_per_prompt"] = images  # not every pipeline accepts the argument
    with visattn.attach(pipe, *before, p2p, *others):
        out = pipe(**call_kwargs(family, prompt=p2p.prompts, generator=p2p.generator(seed, images), **overrides))[0]
    return out if overrides.get("output_type") == "latent" else np.asarray(out, dtype=np.float64)


def plain(family: str, prompt: str, seed: int = 0) -> np.ndarray:
    out = pipeline(family)(**call_kwargs(family, prompt=prompt, generator=torch.Generator().manual_seed(seed)))[0]
    return np.asarray(out, dtype=np.float64)


class ProbsProbe(visattn.Effect):
    """Records ``(context, probabilities)`` of every call: a read of its whole final probabilities."""

    roles = ("self", "cross", "joint")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []

    def apply(self, call):
        ctx = call.ctx
        call.reads.append(ProbabilityRead(lambda probs: self.calls.append((ctx, probs))))


def cond_halves(ctx, probs):
    rows = ctx.batch.rows("cond")
    half = (rows.stop - rows.start) // 2
    return probs[rows.start : rows.start + half], probs[rows.start + half : rows.stop]


# --- exact identities ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["unet", "sd3"])
def test_identical_prompts_give_identical_images(family):
    p2p = PromptToPrompt.replace("a red cat", "a red cat", cross_steps=0.5, self_steps=0.5, **options(family))
    out = edit(family, p2p)
    assert np.array_equal(out[0], out[1])


def test_reweight_with_unit_scales_is_exactly_a_no_op():
    out = edit("unet", PromptToPrompt.reweight("a red cat", {"red": 1.0, "cat": 1.0}))
    assert np.array_equal(out[0], out[1])


def test_source_half_equals_a_plain_generation_with_the_same_seed():
    out = edit("unet", PromptToPrompt.replace("a red cat", "a blue dog"))
    reference = plain("unet", "a red cat")
    assert np.abs(out[0] - reference[0]).max() <= 1e-5
    assert np.abs(out[1] - reference[0]).max() > 1e-3  # the target is an edit, not a copy
    # Several images per prompt: source image j is the plain generation seeded seed + j.
    out = edit("unet", PromptToPrompt.replace("a red cat", "a blue dog"), seed=3, images=2)
    for j in range(2):
        assert np.abs(out[j] - plain("unet", "a red cat", seed=3 + j)[0]).max() <= 1e-5


# --- injection ---------------------------------------------------------------------------------------------------


def test_full_cross_injection_makes_the_target_maps_the_sources():
    probe = ProbsProbe()
    maps = AttentionMaps(words=[2], prompt=["a red cat", "a red dog"], drop_special=False)
    edit("unet", PromptToPrompt.replace("a red cat", "a red dog", cross_steps=1.0, self_steps=0), probe, maps)
    cross = [(ctx, probs) for ctx, probs in probe.calls if ctx.role == "cross"]
    layers = [name for name, role in layer_roles(pipeline("unet").unet).items() if role == "cross"]
    assert len(cross) == 2 * len(layers)  # every cross-attention layer at both steps
    for ctx, probs in cross:
        source, target = cond_halves(ctx, probs)
        assert torch.equal(source, target)
        if ctx.step.index == 1:  # once the latents differ, so does the unconditional branch: it is left alone
            uncond = probs[ctx.batch.rows("uncond")]
            assert not torch.equal(uncond[0], uncond[1])
    source_maps, target_maps = maps.maps()
    assert torch.equal(source_maps["cat"], target_maps["dog"])


def test_joint_attention_takes_the_sources_text_block_and_keeps_rows_normalized():
    probe = ProbsProbe()
    edit("sd3", PromptToPrompt.refine("a red cat", "a small red cat", cross_steps=1.0, self_steps=0), probe)
    pipe = pipeline("sd3")
    source_tokens = prompt_tokens(pipe, "a red cat", max_sequence_length=16)
    target_tokens = prompt_tokens(pipe, "a small red cat", max_sequence_length=16)
    cat_source, cat_target = source_tokens.positions("cat"), target_tokens.positions("cat")
    small = list(target_tokens.positions("small"))
    joint = [(ctx, probs) for ctx, probs in probe.calls if ctx.role == "joint"]
    assert joint
    for ctx, probs in joint:
        source, target = cond_halves(ctx, probs)
        image, text = ctx.queries.image.as_slice(), ctx.keys.text.start
        for s, t in zip(cat_source, cat_target):
            assert torch.equal(target[:, :, image, text + t], source[:, :, image, text + s])
        assert target[:, :, image, [text + p for p in small]].sum() > 0  # the added word keeps its own map
        torch.testing.assert_close(target[:, :, image].sum(-1), torch.ones_like(target[:, :, image, 0]))


def test_self_injection_copies_the_sources_self_attention():
    probe = ProbsProbe(layers="self")
    edit("unet", PromptToPrompt.replace("a red cat", "a red dog", cross_steps=0, self_steps=1.0), probe)
    assert probe.calls
    for ctx, probs in probe.calls:
        source, target = cond_halves(ctx, probs)
        assert torch.equal(source, target)


def test_per_word_schedule_leaves_that_words_map_to_the_target():
    probe = ProbsProbe(layers="cross")
    schedule = {"default": 1.0, "dog": 0}
    edit("unet", PromptToPrompt.replace("a red cat", "a red dog", cross_steps=schedule, self_steps=0), probe)
    for ctx, probs in probe.calls:
        source, target = cond_halves(ctx, probs)
        assert torch.equal(target[..., :3], source[..., :3]) and torch.equal(target[..., 4:], source[..., 4:])
        assert not torch.equal(target[..., 3], source[..., 3])  # "dog" (position 3) keeps the target's own map


def test_refine_maps_through_the_alignment_and_added_words_keep_their_own():
    probe = ProbsProbe(layers="cross")
    edit("unet", PromptToPrompt.refine("a red cat", "a red fluffy cat", cross_steps=1.0, self_steps=0), probe)
    # Source: <start> a red cat <end>; target: <start> a red fluffy cat <end>  (fluffy is several tokens here).
    fluffy = prompt_tokens(pipeline("unet"), "a red fluffy cat").positions("fluffy")
    cat = fluffy[-1] + 1
    for ctx, probs in probe.calls:
        source, target = cond_halves(ctx, probs)
        assert torch.equal(target[..., :3], source[..., :3])
        assert torch.equal(target[..., cat], source[..., 3])
        assert torch.equal(target[..., cat + 1], source[..., 4])  # end of text follows its word
        assert not torch.equal(target[..., fluffy[0]], source[..., fluffy[0]])


def test_reweight_scales_the_words_map():
    maps = AttentionMaps(words=["red"], prompt=["a red cat", "a red cat"], drop_special=False)
    out = edit("unet", PromptToPrompt.reweight("a red cat", {"red": 3.0}, cross_steps=1.0, self_steps=0), maps)
    source_maps, target_maps = maps.maps()
    assert target_maps["red"].mean() > source_maps["red"].mean()
    torch.testing.assert_close(target_maps["red"], 3.0 * source_maps["red"])
    assert np.abs(out[0] - out[1]).max() > 1e-4


def test_reweight_in_joint_attention_keeps_rows_normalized():
    probe = ProbsProbe(layers="joint")
    edit("flux", PromptToPrompt.reweight("a red cat", {"red": 2.0}, cross_steps=1.0, self_steps=0), probe)
    red = prompt_tokens(pipeline("flux"), "a red cat", max_sequence_length=16).positions("red")
    for ctx, probs in probe.calls:
        source, target = cond_halves(ctx, probs)
        image, text = ctx.queries.image.as_slice(), ctx.keys.text.start
        rows = target[:, :, image]
        torch.testing.assert_close(rows.sum(-1), torch.ones_like(rows[..., 0]))
        columns = [text + p for p in red]
        torch.testing.assert_close(rows[..., columns], 2.0 * source[:, :, image][..., columns])


def test_joint_attention_with_pad_tokens_keeps_rows_normalized_over_every_key():
    """HiDream's non-square image puts pad tokens between the grid and the text: the edited text block is the
    source's, and the keys outside the text (grid and padding) share what it leaves, so rows still sum to one."""
    from visattn.tiny.denoisers import TINY_DENOISERS
    from visattn.tiny.probes import synthetic_prompt

    entry = next(entry for entry in TINY_DENOISERS if entry.class_name == "HiDreamImageTransformer2DModel")
    model = entry.build()
    source, target = synthetic_prompt(entry.text_tokens), synthetic_prompt(entry.text_tokens, swap=1)
    probe = ProbsProbe()
    with torch.no_grad(), visattn.attach(model, PromptToPrompt(source, target, cross_steps=1.0, self_steps=0), probe):
        model(**entry.inputs(2))
    assert probe.calls
    for ctx, probs in probe.calls:
        assert ctx.keys.other, "the pad tokens are placed"
        source_rows, target_rows = cond_halves(ctx, probs)
        image, text = ctx.queries.image.as_slice(), ctx.keys.text.as_slice()
        pad = ctx.keys.other[0].as_slice()
        assert pad.start == ctx.keys.image.stop and pad.stop == ctx.keys.text.start
        torch.testing.assert_close(target_rows[:, :, image, text], source_rows[:, :, image, text])
        rows = target_rows[:, :, image]
        torch.testing.assert_close(rows.sum(-1), torch.ones_like(rows[..., 0]))
        assert rows[..., pad].sum() > 0  # the padding keeps its share of the mass


# --- alignment -----------------------------------------------------------------------------------------------


def test_word_alignment_of_added_and_removed_words():
    assert align_words(["a", "cat"], ["a", "fluffy", "cat"]) == (0, None, 1)
    assert align_words(["a", "fluffy", "cat"], ["a", "cat"]) == (0, 2)
    assert align_words(["a", "cat", "on", "a", "mat"], ["a", "cat", "on", "a", "red", "mat"]) == (0, 1, 2, 3, None, 4)
    assert align_words(["a", "big", "cat"], ["a", "cat", "sitting"]) == (0, 2, None)
    assert align_words(["A", "Cat"], ["a", "cat"]) == (0, 1)
    assert word_pairs(["a", "cat"], ["a", "small", "cat"], "refine") == [(0, 0), (1, 2)]


def test_token_map_of_an_added_word_shifts_the_rest():
    pipe = pipeline("unet")
    source, target = prompt_tokens(pipe, "a cat"), prompt_tokens(pipe, "a big cat")
    mapping = token_map(source, target, word_pairs(source.words, target.words, "refine"))
    # <start> a cat <end> pad...  ->  <start> a big cat <end> pad...
    assert mapping.source_of(0) == (0,) and mapping.source_of(1) == (1,)
    assert mapping.source_of(2) == () and not mapping.mapped[2]
    assert mapping.source_of(3) == (2,) and mapping.source_of(4) == (3,)
    assert mapping.source_of(76) == (76,)  # padding matched from the end too
    assert all(mapping.mapped[p] for p in range(77) if p != 2)


def test_token_map_of_a_removed_word_and_of_two_tokenizer_parts():
    pipe = pipeline("sd3")
    source = prompt_tokens(pipe, "a big cat", max_sequence_length=16)
    target = prompt_tokens(pipe, "a cat", max_sequence_length=16)
    mapping = token_map(source, target, word_pairs(source.words, target.words, "refine"))
    # Every target token has a source, except one surplus padding token per part (the target has one word less).
    unmapped = [p for p in range(target.length) if not mapping.mapped[p]]
    assert len(unmapped) <= 2 and all(p in target.special and p not in (0, 76, 92) for p in unmapped)
    for s, t in zip(source.positions("cat"), target.positions("cat")):  # the CLIP part and the T5 part
        assert mapping.source_of(t) == (s,)
    t5_end = target.positions("cat")[1] + 1
    assert mapping.source_of(t5_end) == (source.positions("cat")[1] + 1,)


def test_token_map_of_a_swap_with_different_token_counts_spreads_the_mass():
    pipe = pipeline("unet")
    source, target = prompt_tokens(pipe, "a cat"), prompt_tokens(pipe, "a zebrafish")
    pieces = target.positions("zebrafish")
    assert len(pieces) > 1
    mapping = token_map(source, target, word_pairs(source.words, target.words, "replace"))
    for piece in pieces:
        assert mapping.source_of(piece) == (2,)
    weights = [w for s, w in zip(mapping.source_index, mapping.weight) if s == 2]
    assert sum(weights) == pytest.approx(1.0)
    assert mapping.source_of(pieces[-1] + 1) == (3,)
    assert TokenMap.identity(4).source_of(3) == (3,)


# --- local blend ---------------------------------------------------------------------------------------------


def _expanded(mask: torch.Tensor, family: str, latents: torch.Tensor) -> torch.Tensor:
    """The blend mask of pair 0 laid out like one row of the family's latents (the test's own layout knowledge)."""
    mask = mask[0]
    if family == "flux":  # packed latents: one token per grid cell, in grid order
        return mask.reshape(-1, 1).expand(latents.shape[1:])
    if family == "unet":  # [C, H, W], grid = latent size
        return mask[0].expand(latents.shape[1:])
    # wan: [C, F, H, W] with 2x2 patches
    return mask.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2).expand(latents.shape[1:])


@pytest.mark.parametrize("variant", ["authors", "prediction"])
@pytest.mark.parametrize("family", ["unet", "wan", "flux"])
def test_local_blend_keeps_the_latents_outside_the_mask_equal_to_the_source(family, variant):
    """The authors' blend (the latents after each scheduler step, the last step's mask) and visattn's prediction
    blend (a mask grown over the steps) both leave the final latents outside the mask equal to the source's."""
    # Random tiny models spread attention almost evenly, so a high threshold gives a partial mask.
    blend = LocalBlend(["cat", "dog"], threshold=0.9, radius=0, variant=variant)
    p2p = PromptToPrompt.replace("a red cat", "a red dog", local_blend=blend)
    latents = edit(family, p2p, output_type="latent")
    assert blend.mask is not None and blend.mask.any() and not blend.mask.all()
    inside = _expanded(blend.mask, family, latents)
    source, target = latents[0], latents[1]
    assert torch.equal(source[~inside], target[~inside])
    assert (source[inside] - target[inside]).abs().max() > 0
    unblended = edit(family, PromptToPrompt.replace("a red cat", "a red dog"), output_type="latent")
    assert not torch.equal(unblended[0][~inside], unblended[1][~inside])


def test_local_blend_starts_over_at_each_generation():
    blend = LocalBlend("dog", threshold=0.5)
    p2p = PromptToPrompt.replace("a red cat", "a red dog", local_blend=blend)
    edit("unet", p2p)
    first = blend.mask.clone()
    edit("unet", p2p)
    assert torch.equal(first, blend.mask)


# --- one edit, several attachments (issue 27) -----------------------------------------------------------------


def _blended_edit() -> PromptToPrompt:
    blend = LocalBlend(["cat", "dog"], threshold=0.9, radius=0)
    return PromptToPrompt.replace("a red cat", "a red dog", self_steps=1.0, local_blend=blend)


def _latents(family: str, p2p: PromptToPrompt) -> torch.Tensor:
    pipe = pipeline(family)
    return pipe(**call_kwargs(family, prompt=p2p.prompts, generator=p2p.generator(0), output_type="latent"))[0]


def test_one_edit_attached_to_two_pipelines_gives_each_what_it_gives_alone():
    alone = {}
    for family in ("unet", "sd3"):
        p2p = _blended_edit()
        alone[family] = (edit(family, p2p, output_type="latent"), p2p.local_blend.mask.clone())
    shared = _blended_edit()
    with visattn.attach(pipeline("unet"), shared) as first, visattn.attach(pipeline("sd3"), shared) as second:
        outputs = [(family, _latents(family, shared)) for family in ("unet", "sd3", "unet")]
        for family, latents in outputs:
            assert torch.equal(latents, alone[family][0])
        assert torch.equal(first.run_of(shared).mask, alone["unet"][1])
        assert torch.equal(second.run_of(shared).mask, alone["sd3"][1])
        assert shared.local_blend.mask is first.run_of(shared).mask  # the most recent generation's
    assert "step" not in vars(pipeline("unet").scheduler) and "prepare_latents" not in vars(pipeline("unet"))


def test_an_edit_attached_again_gives_what_it_gave_the_first_time():
    p2p = _blended_edit()
    first = edit("unet", p2p, output_type="latent")
    first_mask = p2p.local_blend.mask.clone()
    assert torch.equal(edit("unet", p2p, output_type="latent"), first)
    assert torch.equal(p2p.local_blend.mask, first_mask)


def test_parameters_are_fixed_once_built_and_copy_with_changes_them():
    p2p = _blended_edit()
    with pytest.raises(AttributeError, match=r"self_steps cannot change.*copy_with\(self_steps="):
        p2p.self_steps = 0.2
    with pytest.raises(AttributeError, match=r"threshold cannot change.*copy_with\(threshold="):
        p2p.local_blend.threshold = 0.5
    with pytest.raises(TypeError):
        p2p.cross_steps["default"] = (0.0, 1.0)
    reweighted = PromptToPrompt.reweight("a red cat", {"red": 2.0})
    with pytest.raises(TypeError):
        reweighted.weights["red"] = 3.0
    other = p2p.copy_with(self_steps=0)
    assert other.self_steps is None and p2p.self_steps == (0.0, 1.0) and other.local_blend is p2p.local_blend
    assert not torch.equal(edit("unet", other, output_type="latent"), edit("unet", p2p, output_type="latent"))
    with pytest.raises(TypeError, match="no parameter 'bogus'"):
        p2p.copy_with(bogus=1)
    blend = LocalBlend("dog")
    assert blend.copy_with(threshold=0.5).threshold == 0.5 and blend.copy_with(threshold=0.5).words == ("dog",)
    assert blend.start == 0.2 and blend.copy_with(variant="prediction").start == 0.0
    with pytest.raises(TypeError, match="no parameter 'radiuss'"):
        blend.copy_with(radiuss=2)
    with pytest.raises(ValueError, match="start must be 0 for variant='prediction'"):
        LocalBlend("dog", start=0.2, variant="prediction")


def test_a_bare_denoiser_builds_the_mask_and_warns_that_nothing_is_blended():
    from visattn.tiny import tiny_denoiser

    model = tiny_denoiser("unet")
    tokens = prompt_tokens(pipeline("unet"), "a red cat"), prompt_tokens(pipeline("unet"), "a red dog")
    p2p = PromptToPrompt(*tokens, local_blend=LocalBlend("dog"))
    inputs = {
        "sample": torch.randn(4, model.config.in_channels, 16, 16, generator=torch.Generator().manual_seed(0)),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(4, tokens[0].length, model.config.cross_attention_dim),
    }
    inputs["sample"][[1, 3]] = inputs["sample"][[0, 2]]
    with visattn.attach(model, p2p), pytest.warns(UserWarning, match="nothing is blended") as caught, torch.no_grad():
        model(**inputs)
    assert p2p.local_blend.mask is not None
    # the warning names the line that called the model, not a frame inside visattn, diffusers or torch
    (warning,) = [w for w in caught if "nothing is blended" in str(w.message)]
    assert (warning.filename, warning.lineno) == (__file__, inspect.currentframe().f_lineno - 4)


# --- every family, composition ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", TINY_PIPELINES)
def test_every_family_edits_end_to_end(family):
    p2p = PromptToPrompt.refine("a red cat", "a red cat in the snow", weights={"snow": 2.0}, **options(family))
    out = edit(family, p2p)
    assert np.isfinite(out).all()
    assert np.abs(out[0] - out[1]).max() > 1e-4
    assert np.abs(out[0] - plain(family, "a red cat")[0]).max() <= 1e-4


@pytest.mark.parametrize("pag_first", [False, True], ids=["p2p-first", "pag-first"])
def test_composes_with_perturbed_attention_guidance(pag_first):
    pag = PerturbedAttentionGuidance(scale=2.0, layers="mid")
    p2p = PromptToPrompt.replace("a red cat", "a red cat", self_steps=1.0)
    out = edit("unet", p2p, before=[pag]) if pag_first else edit("unet", p2p, pag)
    assert np.array_equal(out[0], out[1])  # identical prompts stay identical with a perturbed branch
    assert np.abs(out[0] - edit("unet", p2p)[0]).max() > 1e-4
    edited = edit("unet", PromptToPrompt.replace("a red cat", "a red dog"), pag)
    assert np.isfinite(edited).all() and np.abs(edited[0] - edited[1]).max() > 1e-4


class BandAndScale(visattn.Effect):
    """A pattern and a score modifier on every call (to check that an edited call honours them)."""

    def apply(self, call):
        call.patterns.append(BandPattern(40))
        call.score_mods.append(HeadScale(0.5))


@pytest.mark.parametrize("family", ["unet", "flux"])
def test_patterns_and_score_modifiers_of_later_effects_are_honoured(family):
    p2p = PromptToPrompt.replace("a red cat", "a red dog", cross_steps=1.0, self_steps=1.0, **options(family))
    out = edit(family, p2p, BandAndScale())
    pipe = pipeline(family)
    with visattn.attach(pipe, BandAndScale()):
        alone = pipe(**call_kwargs(family, prompt="a red cat", generator=torch.Generator().manual_seed(0)))[0]
    assert np.abs(out[0] - np.asarray(alone, dtype=np.float64)[0]).max() <= 1e-5
    assert np.abs(out[0] - plain(family, "a red cat")[0]).max() > 1e-4


def test_editing_the_unconditional_branch_is_optional():
    probe = ProbsProbe(layers="cross")
    edit("unet", PromptToPrompt.replace("a red cat", "a red dog", cross_steps=1.0, edit_uncond=True), probe)
    for ctx, probs in probe.calls:
        uncond = probs[ctx.batch.rows("uncond")]
        assert torch.equal(uncond[0], uncond[1])


# --- the edit as attention over mixed values ----------------------------------------------------------------------


class OracleProbe(visattn.Effect):
    """Attached after the edit: every edited call's output and probabilities (final, and before the edit) against the
    reference backend's materialized edit of the same call, on the same inputs."""

    roles = ("cross", "joint")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.records = []

    def apply(self, call):
        if not call.editors:
            return
        seen, oracle = {}, {}

        def reads(into):
            return (
                ProbabilityRead(lambda block: into.update(final=block)),
                ProbabilityRead(lambda block: into.update(before=block), before_edits=True),
            )

        call.reads.extend(reads(seen))

        def check(done):
            request = dataclasses.replace(done.request(), reads=reads(oracle))
            out, _ = run_request(request, "reference")
            # The fast form the core takes (None: materialized).
            fast = "linear" if linear_edits(request) else "blocks" if text_block_edits(request) else None
            diffs = [(a - b).abs().max().item() for a, b in ((done.output, out), *((seen[n], oracle[n]) for n in seen))]
            self.records.append((done.ctx.role, fast, max(diffs)))

        call.observers.append(check)


FAST_PATH_EDITS = {
    "replace": lambda: PromptToPrompt.replace(
        "a red cat", "a blue dog", local_blend=LocalBlend(["cat", "dog"], threshold=0.3)
    ),
    "refine": lambda: PromptToPrompt.refine(
        "a red cat", "a red fluffy cat", local_blend=LocalBlend(["fluffy", "cat"], threshold=0.3)
    ),
    "reweight": lambda: PromptToPrompt.reweight(
        "a red cat", {"red": 3.0, "cat": 0.5}, local_blend=LocalBlend(["red"], threshold=0.3)
    ),
    "replace+reweight": lambda: PromptToPrompt.replace(
        "a red cat",
        "a blue cat",
        weights={"blue": 2.0},
        cross_steps={"default": 0.8, "cat": 0.4},
        local_blend=LocalBlend(["blue"], threshold=0.3),
    ),
}


@pytest.mark.parametrize("kind", list(FAST_PATH_EDITS))
def test_unet_cross_attention_edits_run_as_attention_over_mixed_values_and_match_the_materialized_edit(kind):
    """Word swap, refinement, re-weighting and a swap with re-weighting, observed by LocalBlend and AttentionMaps:
    every edited cross-attention call takes the fast form, whose output and probabilities (the maps' and the local
    blend's reads) equal the reference backend's materialized edit of the same call."""
    probe = OracleProbe()
    p2p = FAST_PATH_EDITS[kind]()
    blend = p2p.local_blend
    maps = AttentionMaps(words=["cat"], prompt=p2p.prompts)
    fast = edit("unet", p2p, maps, probe, output_type="latent")
    assert probe.records and all(role == "cross" and form == "linear" for role, form, _ in probe.records)
    assert max(diff for _, _, diff in probe.records) <= 2e-6
    # The whole generation on the reference backend (every call materialized, rounding apart from SDPA's): the same
    # latents up to that rounding, maps and local-blend mask.
    fast_maps, fast_mask = maps.maps(), blend.mask.clone()
    pipe = pipeline("unet")
    maps.reset()
    with visattn.attach(pipe, p2p, maps, backend="reference"):
        slow = pipe(**call_kwargs("unet", prompt=p2p.prompts, generator=p2p.generator(0), output_type="latent"))[0]
    assert (fast - slow).abs().max() <= 1e-4 * slow.abs().max()
    assert torch.equal(fast_mask, blend.mask)
    for fast_side, slow_side in zip(fast_maps, maps.maps(), strict=True):
        for word in fast_side:
            assert (fast_side[word] - slow_side[word]).abs().max() <= 1e-6


@pytest.mark.parametrize(
    ("family", "kind"), [("unet", "reweight"), ("unet", "refine"), ("sd3", "reweight"), ("flux", "refine")]
)
def test_edits_that_move_values_are_planned_at_the_sdpa_call_bit_for_bit(family, kind, monkeypatch):
    """An edit that mixes the values (re-weighting, refinement; no local blend reading maps) is all Prompt-to-Prompt
    does in a cross-attention or joint call: the layer plans its LinearEdits (cross) or TextBlockEdits (joint) and
    the maps' read once per step pattern and sends the call to the attention core without building its context. The
    same latents and maps, bit for bit, as the effects' full path (which a backend forced for effects keeps), and the
    planned calls served the edit."""
    served = count_planned_answers(monkeypatch, "edits")

    def generate(backend: str):
        if kind == "reweight":
            p2p = PromptToPrompt.reweight("a red cat", {"red": 3.0, "cat": 0.5})
        else:
            p2p = PromptToPrompt.refine("a red cat", "a red fluffy cat")
        maps = AttentionMaps(prompt=p2p.prompts)
        call = {"prompt": p2p.prompts, "generator": p2p.generator(0), "output_type": "latent"}
        with visattn.attach(pipeline(family), p2p, maps, backend=backend):
            latents = pipeline(family)(**call_kwargs(family, **call))[0]
        return latents, maps.maps()

    planned, planned_maps = generate("auto")
    assert served["calls"] > 0
    served["calls"] = 0
    core, core_maps = generate("sdpa")
    assert served["calls"] == 0
    assert torch.equal(planned, core)
    for planned_side, core_side in zip(planned_maps, core_maps, strict=True):
        assert all(torch.equal(planned_side[word], core_side[word]) for word in planned_side)


class BeforeAndAfter(visattn.Effect):
    """Attached after the edit: each cross call's whole probabilities before the edit and as the output used them."""

    roles = ("cross",)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []

    def apply(self, call):
        seen = {"ctx": call.ctx}
        call.reads.append(ProbabilityRead(lambda block: seen.update(before=block), before_edits=True))
        call.reads.append(ProbabilityRead(lambda block: seen.update(after=block)))
        self.calls.append(seen)


@pytest.mark.parametrize("mode", ["replace", "refine"])
def test_cross_edits_are_the_authors_formulas(mode):
    """The target's edited cross-attention is the authors' (google/prompt-to-prompt, ``AttentionControlEdit``):
    ``new * alpha_words + (1 - alpha_words) * P_tgt`` with ``new`` the word swap's ``einsum(P_src, mapper)`` or the
    refinement's ``P_src[..., mapper] * alphas + P_tgt * (1 - alphas)``, times the ``AttentionReweight`` equalizer,
    and a word with a shorter schedule (``"red"``: the first step) left to the target after it."""
    source, target = ("a red cat", "a red dog") if mode == "replace" else ("a red cat", "a red fluffy cat")
    weights = {"dog": 2.0} if mode == "replace" else {"fluffy": 2.0, "cat": 0.5}
    p2p = PromptToPrompt(source, target, mode=mode, cross_steps={"default": 1.0, "red": 0.4}, weights=weights)
    probe = BeforeAndAfter()
    edit("unet", p2p, probe)
    pipe = pipeline("unet")
    src, tgt = prompt_tokens(pipe, source), prompt_tokens(pipe, target)
    mapping = token_map(src, tgt, word_pairs(src.words, tgt.words, mode))
    mapper = torch.zeros(mapping.length, mapping.length)
    for s, t, w in zip(mapping.source_index, mapping.target_index, mapping.weight, strict=True):
        mapper[s, t] += w
    alphas = torch.tensor(mapping.mapped, dtype=torch.float32)  # refinement: 1 where a source token maps
    equalizer = torch.ones(mapping.length)
    for word, scale in weights.items():
        equalizer[list(tgt.positions(word))] = scale
    assert {seen["ctx"].step.index for seen in probe.calls} == {0, 1}
    for seen in probe.calls:
        alpha_words = torch.ones(mapping.length)
        if seen["ctx"].step.index > 0:  # int((2 + 1) * 0.4) = 1: "red" is controlled at step 0 only
            alpha_words[list(tgt.positions("red"))] = 0.0
        before_source, before_target = cond_halves(seen["ctx"], seen["before"])
        if mode == "replace":
            new = torch.einsum("bhpw,wn->bhpn", before_source, mapper)
        else:
            new = torch.einsum("bhpw,wn->bhpn", before_source, mapper) * alphas + before_target * (1 - alphas)
        new = new * equalizer
        expected = new * alpha_words + (1 - alpha_words) * before_target
        after_source, after_target = cond_halves(seen["ctx"], seen["after"])
        assert torch.equal(after_source, before_source)
        torch.testing.assert_close(after_target, expected, rtol=1e-5, atol=1e-7)
        uncond = seen["ctx"].batch.rows("uncond")
        assert torch.equal(seen["after"][uncond], seen["before"][uncond])


def test_the_source_rows_are_a_plain_generation_of_both_prompts_bit_for_bit():
    """No edited call of the UNet materializes probabilities (cross edits over mixed values, self injection with the
    source's queries and keys), so the source rows are the stock computation of the same batch, bit for bit."""
    p2p = PromptToPrompt.refine("a red cat", "a red fluffy cat", self_steps=1.0, weights={"fluffy": 2.0})
    edited = edit("unet", p2p, output_type="latent")
    pipe = pipeline("unet")
    plain_latents = pipe(**call_kwargs("unet", prompt=p2p.prompts, generator=p2p.generator(0), output_type="latent"))[0]
    assert torch.equal(edited[0], plain_latents[0])
    assert not torch.equal(edited[1], plain_latents[1])


@pytest.mark.parametrize("family", ["sd3", "flux"])
@pytest.mark.parametrize("mode", ["replace", "refine", "reweight"])
def test_joint_edits_keep_the_source_rows_a_plain_generation_bit_for_bit(family, mode):
    """No joint edit materializes probabilities or touches the source rows (the stock call answers them), so with the
    authors' schedule (cross 0.8, self 0.4: both kinds of joint edit) the source rows are the plain generation of
    both prompts, bit for bit."""
    p2p = {
        "replace": lambda: PromptToPrompt.replace("a red cat", "a red dog"),
        "refine": lambda: PromptToPrompt.refine("a red cat", "a red fluffy cat"),
        "reweight": lambda: PromptToPrompt.reweight("a red cat", {"red": 2.0}),
    }[mode]()
    edited = edit(family, p2p, output_type="latent", num_inference_steps=5)
    call = {"prompt": p2p.prompts, "generator": p2p.generator(0), "num_inference_steps": 5, "output_type": "latent"}
    plain_latents = pipeline(family)(**call_kwargs(family, **call))[0]
    assert torch.equal(edited[0], plain_latents[0])
    assert not torch.equal(edited[1], plain_latents[1])


@pytest.mark.parametrize("kind", list(FAST_PATH_EDITS))
def test_joint_edits_run_as_attention_calls_and_match_the_materialized_edit(kind):
    """In a joint call (SD3) the edited text block is renormalized against the image block, a ratio of sums; each
    sum and each block's weighted values are attention calls over block values, so no edited call materializes
    probabilities: injecting self-attention and every text token through an identity map is attention with the
    source rows' queries and keys (a LinearEdit, the first steps of a word swap), the rest TextBlockEdits (later
    steps, refinements, re-weightings). Each call's output and probabilities (the maps' and the local blend's reads)
    equal the reference backend's materialized edit of the same call, and the whole generation the one on the
    reference backend, up to rounding."""
    probe = OracleProbe()
    p2p = FAST_PATH_EDITS[kind]().copy_with(self_steps=0.5)
    blend = p2p.local_blend
    maps = AttentionMaps(words=["cat"], prompt=p2p.prompts)
    fast = edit("sd3", p2p, maps, probe, output_type="latent", num_inference_steps=4)
    forms = {form for role, form, _ in probe.records if role == "joint"}
    assert probe.records and all(role == "joint" for role, _, _ in probe.records)
    assert forms == ({"linear", "blocks"} if kind == "replace" else {"blocks"})  # every call in a fast form
    assert max(diff for _, _, diff in probe.records) <= 1e-5
    fast_maps, fast_mask = maps.maps(), blend.mask.clone()
    pipe = pipeline("sd3")
    maps.reset()
    with visattn.attach(pipe, p2p, maps, backend="reference"):
        call = {"prompt": p2p.prompts, "generator": p2p.generator(0), "num_inference_steps": 4, "output_type": "latent"}
        slow = pipe(**call_kwargs("sd3", **call))[0]
    assert (fast - slow).abs().max() <= 1e-4 * slow.abs().max()
    assert torch.equal(fast_mask, blend.mask)
    for fast_side, slow_side in zip(fast_maps, maps.maps(), strict=True):
        for word in fast_side:
            assert (fast_side[word] - slow_side[word]).abs().max() <= 1e-5
    assert not torch.equal(fast[0], fast[1])


# --- errors ----------------------------------------------------------------------------------------------------


def test_words_not_in_the_prompt_are_rejected_with_the_prompts_words():
    listing = r"\[0: 'a', 1: 'red', 2: 'cat'\]"
    with pytest.raises(ValueError, match=f"weights: word 'zebra' is not in the prompt; its words are {listing}"):
        PromptToPrompt.reweight("a red cat", {"zebra": 2.0})
    with pytest.raises(ValueError, match=f"cross_steps: word 'zebra' is not in the prompt; its words are {listing}"):
        PromptToPrompt.replace("a blue cat", "a red cat", cross_steps={"default": 0.8, "zebra": 0.5})
    with pytest.raises(
        ValueError, match=r"'zebra' is in neither prompt; the source's words are \['a', 'blue', 'cat'\]"
    ):
        PromptToPrompt.replace("a blue cat", "a red cat", local_blend=LocalBlend("zebra"))


@pytest.mark.parametrize(("family", "variant"), [("flux", "authors"), ("unet", "prediction"), ("wan", "authors")])
def test_local_blend_subtract_words_take_their_region_out_of_the_mask(family, variant):
    """LocalBlend(subtract=...) (the authors' ``substruct_words``) on a pipeline: the mask only loses cells against
    the same blend without them, here some (a low subtract threshold); the fidelity tests compare it with their
    code."""
    blend = LocalBlend(["cat", "dog"], threshold=0.3, radius=0, variant=variant)
    masks = {}
    for subtract in (None, "red"):
        used = blend.copy_with(subtract=subtract, subtract_threshold=0.05)
        p2p = PromptToPrompt.replace("a red cat", "a red dog", local_blend=used)
        edit(family, p2p, output_type="latent")
        masks[subtract] = used.mask
    assert masks["red"].shape == masks[None].shape
    assert torch.equal(masks["red"] & masks[None], masks["red"])
    assert masks["red"].sum() < masks[None].sum()


def test_local_blend_subtract_words_are_checked_kept_and_shown():
    with pytest.raises(ValueError, match=r"subtract must be one or more words of the prompts; got \(\)"):
        LocalBlend("cat", subtract=[])
    with pytest.raises(ValueError, match=r"subtract_threshold must be a number in \(0, 1\); got 1.0"):
        LocalBlend("cat", subtract="red", subtract_threshold=1.0)
    with pytest.raises(ValueError, match=r"LocalBlend subtract word 'zebra' is in neither prompt"):
        PromptToPrompt.replace("a blue cat", "a red cat", local_blend=LocalBlend("cat", subtract="zebra"))
    blend = LocalBlend("cat", subtract=["red", "blue"], subtract_threshold=0.4)
    assert blend.subtract == ("red", "blue") and blend.copy_with(threshold=0.5).subtract == ("red", "blue")
    assert blend.copy_with(subtract=None).subtract == () and LocalBlend("cat").subtract == ()
    assert "subtract=('red', 'blue'), subtract_threshold=0.4" in repr(blend)
    assert "subtract" not in repr(LocalBlend("cat"))
    from visattn.effect_specs import build_edit

    built = build_edit(
        {"source": "a red cat", "target": "a red dog", "local_blend": {"words": ["cat", "dog"], "subtract": "red"}}
    )
    assert built.local_blend.subtract == ("red",) and built.local_blend.subtract_threshold == 0.3


def test_replace_with_different_word_counts_points_to_refine():
    with pytest.raises(ValueError, match=r"source has 2 \['a', 'cat'\] and the target 3 .*PromptToPrompt.refine"):
        PromptToPrompt.replace("a cat", "a fluffy cat")


def test_bad_parameters_raise_clear_errors():
    with pytest.raises(ValueError, match=r"self_steps=1.5 must be a fraction in \(0, 1\]"):
        PromptToPrompt.replace("a cat", "a dog", self_steps=1.5)
    with pytest.raises(ValueError, match="mode='swap' is not one of"):
        PromptToPrompt("a cat", "a dog", mode="swap")
    with pytest.raises(ValueError, match="reweight needs weights"):
        PromptToPrompt.reweight("a cat", {})
    with pytest.raises(ValueError, match=r"weights\['cat'\] must be in \[-10000, 10000\]; got nan"):
        PromptToPrompt.reweight("a cat", {"cat": float("nan")})
    with pytest.raises(ValueError, match=r"threshold must be a number in \(0, 1\); got 2"):
        LocalBlend("cat", threshold=2)
    with pytest.raises(ValueError, match="source must be a non-empty prompt string"):
        PromptToPrompt.replace("", "a dog")


def test_local_blend_needs_cross_attention_layers():
    p2p = PromptToPrompt.replace("a red cat", "a red dog", local_blend=LocalBlend("dog"), layers="self")
    with pytest.raises(ValueError, match=r"LocalBlend reads cross-attention maps, but layers=\('self',\) selects no"):
        visattn.attach(pipeline("unet"), p2p)


@pytest.mark.parametrize("family", ["unet", "flux"])
def test_the_generator_every_diffusers_user_passes_gives_both_prompts_one_noise(family):
    """As the authors' notebooks make one latent for every prompt: any generator, or none, works."""
    p2p = PromptToPrompt.replace("a red cat", "a blue dog", **options(family))
    pipe = pipeline(family)
    with visattn.attach(pipe, p2p):
        out = pipe(**call_kwargs(family, prompt=p2p.prompts, generator=torch.Generator().manual_seed(0)))[0]
        pipe(**call_kwargs(family, prompt=p2p.prompts, generator=None))
    out = np.asarray(out, dtype=np.float64)
    # One generator draws the whole batch's noise at once: its first rows are a one-image generation's.
    assert np.abs(out[0] - plain(family, "a red cat")[0]).max() <= 1e-4
    assert np.abs(out[1] - out[0]).max() > 1e-4
    assert "prepare_latents" not in vars(pipe)  # detach restores the pipeline


def test_calling_without_both_prompts_is_rejected():
    p2p = PromptToPrompt.replace("a red cat", "a red dog")
    pipe = pipeline("unet")
    with visattn.attach(pipe, p2p), pytest.raises(ValueError, match="call the pipeline with prompt=p2p.prompts"):
        pipe(**call_kwargs("unet", prompt="a red cat"))


def test_a_prompt_longer_than_the_text_encoder_is_rejected():
    long = " ".join(["red"] * 90)
    p2p = PromptToPrompt.replace(f"a cat {long}", f"a dog {long}")
    with pytest.raises(ValueError, match="CLIP tokens .* holds 77"):
        edit("unet", p2p)


@pytest.mark.parametrize("steps", [5, 7, 10, 50])
@pytest.mark.parametrize("cross, self_", [(0.8, 0.4), (0.3, 0.25), ((0.1, 0.55), (0.2, 0.7))])
def test_step_windows_are_the_authors_integer_steps(steps, cross, self_):
    """google/prompt-to-prompt, ptp_utils.update_alpha_time_word / get_time_words_attention_alpha: cross-attention
    is injected at steps ``int(b0 * (N + 1)) <= i < int(b1 * (N + 1))`` (a table of N + 1 rows); AttentionControlEdit:
    self-attention at ``int(N * s0) <= i < int(N * s1)``."""
    from visattn.context import StepInfo
    from visattn.effects.prompt_to_prompt import _cross_active, _self_active

    def bounds(value):
        return (0.0, value) if isinstance(value, float) else value

    def authors_cross(i):  # transcription: alpha[:start] = 0; alpha[start:end] = 1; alpha[end:] = 0
        rows = steps + 1
        start, end = int(bounds(cross)[0] * rows), int(bounds(cross)[1] * rows)
        return start <= i < end

    def authors_self(i):
        start, end = int(steps * bounds(self_)[0]), int(steps * bounds(self_)[1])
        return start <= i < end

    for i in range(steps):
        step = StepInfo(i, steps, None)
        assert _cross_active(bounds(cross), step) == authors_cross(i)
        assert _self_active(bounds(self_), step) == authors_self(i)


def test_a_batch_spec_names_the_blend_variant():
    from visattn.effect_specs import build_edit

    spec = {"source": "a cat", "target": "a dog", "local_blend": {"words": ["cat", "dog"], "variant": "prediction"}}
    blend = build_edit(spec).local_blend
    assert blend.variant == "prediction" and blend.start == 0.0
    assert build_edit({"source": "a cat", "target": "a dog", "local_blend": "dog"}).local_blend.variant == "authors"


@pytest.mark.parametrize("images", [1, 2])
def test_target_rows_projected_as_their_sources_equal_the_edit_made_in_the_call(monkeypatch, images):
    """Self-attention injection and a word swap are attention with the source rows' queries and keys: the layer's hook
    lets the processor project the target rows' queries and keys as copies of their sources' (one row copied, one
    row less projected) instead of the edit copying every row in the call; the generation is the same, and the
    target rows of to_q's output are their sources'."""
    from visattn import interception
    from visattn.effects.base import Effect

    monkeypatch.setattr(interception, "_MIN_SKIPPED_WORK", 0)  # the tiny layers would not pay for the plan
    p2p = PromptToPrompt.replace("a red cat", "a red dog", cross_steps=1.0, self_steps=1.0)
    module = pipeline("unet").unet.mid_block.attentions[0].transformer_blocks[0].attn1
    projected = []
    handle = module.to_q.register_forward_hook(lambda mod, args, out: projected.append(out.detach().clone()))
    try:
        shared = edit("unet", p2p, images=images, output_type="latent")
    finally:
        handle.remove()
    # rows [uncond sources, uncond targets, cond sources, cond targets], `images` rows each
    assert projected and all(out.shape[0] == 4 * images for out in projected)
    for out in projected:
        torch.testing.assert_close(out[3 * images :], out[2 * images : 3 * images], rtol=0, atol=0)
    monkeypatch.setattr(PromptToPrompt, "shared_query_key_rows", Effect.shared_query_key_rows)
    in_the_call = edit("unet", p2p, images=images, output_type="latent")
    torch.testing.assert_close(shared, in_the_call, rtol=0, atol=0)


def test_edits_that_move_values_or_collect_maps_keep_every_row_projected(monkeypatch):
    """A refinement mixes the values and a local blend reads the target rows' own maps: their target rows keep
    their own queries and keys."""
    from visattn import interception

    monkeypatch.setattr(interception, "_MIN_SKIPPED_WORK", 0)
    module = pipeline("unet").unet.mid_block.attentions[0].transformer_blocks[0].attn2
    for p2p in (
        PromptToPrompt.refine("a red cat", "a red fluffy cat", cross_steps=1.0, self_steps=0),
        PromptToPrompt.replace(
            "a red cat", "a red dog", cross_steps=1.0, self_steps=0, local_blend=LocalBlend(words=["cat", "dog"])
        ),
    ):
        projected = []
        # The projections themselves (not copies): rows copied in place in the SDPA call would show too.
        handle = module.to_q.register_forward_hook(
            lambda mod, args, out, projected=projected: projected.append(out.detach())
        )
        try:
            edit("unet", p2p, output_type="latent")
        finally:
            handle.remove()
        assert projected and not any(torch.equal(out[3], out[2]) for out in projected)


def _queries_of(module: torch.nn.Module) -> tuple[list[torch.Tensor], object]:
    """The ``to_q`` outputs of ``module`` as the processor holds them (not copies: later in-place writes show)."""
    seen: list[torch.Tensor] = []
    handle = module.to_q.register_forward_hook(lambda mod, args, out: seen.append(out.detach()))
    return seen, handle


@pytest.mark.parametrize(
    ("images", "self_steps", "cross_steps"),
    [(1, 1.0, 1.0), (2, 1.0, 1.0), (1, 0.5, {"default": 1.0, "dog": 0.5})],
    ids=["one-image", "two-images", "closing-windows"],
)
def test_target_rows_copied_in_place_on_small_layers_equal_the_edit_made_in_the_call(images, self_steps, cross_steps):
    """On layers too small to pay for a projection plan, the shared target rows are copied in place into the
    processor's own queries and keys and the SDPA call runs as it is: the same generation, bit for bit, as the edit
    gathering every row in the call, including across steps where a window closes (plans follow the step pattern)."""
    from visattn import interception
    from visattn.effects.base import Effect

    p2p = PromptToPrompt.replace("a red cat", "a red dog", cross_steps=cross_steps, self_steps=self_steps)
    module = pipeline("unet").unet.mid_block.attentions[0].transformer_blocks[0].attn1
    seen, handle = _queries_of(module)
    # After a layer's first such forward in a plan epoch, its next ones take the copy from the planned forward.
    planned = {"calls": 0}
    real_run = interception._CopiedRowsCall.run

    def counted(self, *args):
        planned["calls"] += 1
        return real_run(self, *args)

    interception._CopiedRowsCall.run = counted
    try:
        copied = edit("unet", p2p, images=images, output_type="latent", num_inference_steps=4)
    finally:
        handle.remove()
        interception._CopiedRowsCall.run = real_run
    assert planned["calls"] > 0
    assert len(seen) == 4
    # rows [uncond sources, uncond targets, cond sources, cond targets]; self-attention injected while it is open
    injected = [torch.equal(out[3 * images :], out[2 * images : 3 * images]) for out in seen]
    assert injected == ([True] * 4 if self_steps == 1.0 else [True, True, False, False])
    original = PromptToPrompt.shared_query_key_rows
    try:
        PromptToPrompt.shared_query_key_rows = Effect.shared_query_key_rows
        in_the_call = edit("unet", p2p, images=images, output_type="latent", num_inference_steps=4)
    finally:
        PromptToPrompt.shared_query_key_rows = original
    torch.testing.assert_close(copied, in_the_call, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("family", "size", "side", "images"),
    [
        ("sd3", 32, "few", 1),
        ("sd3", 32, "few", 2),
        ("sd3", 64, "most", 1),
        ("flux", 16, "few", 1),
        ("flux", 32, "most", 1),
        ("flux", 32, "most", 2),
    ],
    ids=["sd3-few", "sd3-few-two-images", "sd3-most", "flux-few", "flux-most", "flux-most-two-images"],
)
def test_joint_calls_sharing_image_queries_skip_the_effects_and_equal_the_edit(monkeypatch, family, size, side, images):
    """In a joint call where self-attention and every text token are injected, the target rows' image queries attend
    with the source rows' image queries and keys: the layer answers the SDPA call without running the effects, as
    the stock call plus the cheaper side computed apart (few image queries: those, with the source's queries and
    keys; most: the rest, with the target's own). The generation equals the one where the effects run every call,
    and the closing self-attention window hands the later steps back to them."""
    from visattn import interception
    from visattn.effects.base import Effect

    p2p = PromptToPrompt.replace("a red cat", "a red dog", cross_steps=1.0, self_steps=0.5)
    runs = []
    original_run = interception._SharedCall.run

    def counting(self, func, q, k, v, kwargs):
        queries = self.apart[0][2]
        runs.append((q.shape[2], queries.stop - queries.start, self.rows is not None))
        return original_run(self, func, q, k, v, kwargs)

    monkeypatch.setattr(interception._SharedCall, "run", counting)
    overrides = {"output_type": "latent", "num_inference_steps": 4, "height": size, "width": size, "images": images}
    shared = edit(family, p2p, **overrides)
    layers = [name for name, role in layer_roles(pipeline(family).transformer).items() if role == "joint"]
    assert len(runs) == 2 * len(layers)  # the first two of four steps: self-attention injected
    for n_q, apart, gathered in runs:
        # few: the image queries apart, the rows as they are; most: the text queries apart, the rows gathered
        assert (2 * apart <= n_q) and gathered == (side == "most")
    monkeypatch.setattr(PromptToPrompt, "shared_query_key_rows", Effect.shared_query_key_rows)
    runs.clear()
    in_the_effects = edit(family, p2p, **overrides)
    assert not runs
    torch.testing.assert_close(shared, in_the_effects, rtol=0, atol=0)
    assert not torch.equal(shared[0], shared[images])


def test_layers_ask_the_effects_once_per_step_pattern_not_per_call(monkeypatch):
    """A layer keeps the plan it made while the effects' row_plan_key stays the same: with both windows open for the
    whole schedule, each edited layer asks once, at the first step of the first generation, and not again in the
    second; a self-attention window that closes halfway changes the key, so each layer asks once more then."""
    asked: list[tuple[str, int]] = []
    original = PromptToPrompt.shared_query_key_rows

    def counting(self, ctx):
        asked.append((ctx.layer_name, ctx.step.index))
        return original(self, ctx)

    monkeypatch.setattr(PromptToPrompt, "shared_query_key_rows", counting)
    pipe = pipeline("unet")
    layers = sorted(name for name, role in layer_roles(pipe.unet).items() if role in ("self", "cross"))
    for self_steps, steps_asked in ((1.0, [0]), (0.5, [0, 2])):
        p2p = PromptToPrompt.replace("a red cat", "a red dog", cross_steps=1.0, self_steps=self_steps)
        with visattn.attach(pipe, p2p):
            for generation in range(2):
                asked.clear()
                pipe(**call_kwargs("unet", prompt=p2p.prompts, generator=p2p.generator(0), num_inference_steps=4))
                expected = [(name, step) for name in layers for step in steps_asked] if generation == 0 else []
                assert sorted(asked) == expected


def test_rows_autograd_records_are_not_copied_in_place():
    """Where autograd records the processor's queries, the shared rows are not written into them: the edit copies
    them in the call instead, and the generation is the same."""
    p2p = PromptToPrompt.replace("a red cat", "a red dog", cross_steps=1.0, self_steps=1.0)
    module = pipeline("unet").unet.mid_block.attentions[0].transformer_blocks[0].attn1
    reference = edit("unet", p2p, output_type="latent")
    seen, recorded_grad = [], []

    def record(mod, args, out):
        seen.append(out.detach())
        recorded_grad.append(out.requires_grad)

    handle = module.to_q.register_forward_hook(record)
    # The pipeline runs under no_grad; this layer's forward runs with grad enabled (its weights require grad).
    modes = []

    def grad_on(mod, args):
        modes.append(torch.is_grad_enabled())
        torch.set_grad_enabled(True)

    pre = module.register_forward_pre_hook(grad_on)

    def grad_back(mod, args, out):
        torch.set_grad_enabled(modes.pop())

    post = module.register_forward_hook(grad_back)
    try:
        recorded = edit("unet", p2p, output_type="latent")
    finally:
        for hook in (handle, pre, post):
            hook.remove()
    assert seen and all(recorded_grad)
    assert not any(torch.equal(out[3], out[2]) for out in seen)
    torch.testing.assert_close(recorded.detach(), reference, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["unet", "flux"])
def test_a_forced_backend_computes_every_edited_call_and_a_change_of_it_plans_again(monkeypatch, family):
    """Where a backend is forced for effects, the calls an edit changes are the core's on that backend, not answered
    by the stock SDPA call (the UNet's self-attention rows shared in place, Flux's joint calls planned at the SDPA
    call): forcing the reference backend makes the whole generation the oracle, the auto one's up to rounding.
    VISATTN_BACKEND set between generations of one attachment counts too, from the next denoiser call."""
    from visattn import interception
    from visattn.kernels.backends import reference

    p2p = PromptToPrompt.replace("a red cat", "a red dog", cross_steps=1.0, self_steps=1.0)
    pipe = pipeline(family)
    edited = sorted(name for name, role in layer_roles(pipe.unet if family == "unet" else pipe.transformer).items())
    monkeypatch.delenv("VISATTN_BACKEND", raising=False)
    seen = {"stock answers": 0, "reference": 0}
    real_run, real_reference = interception._SharedCall.run, reference.run

    def shared(self, *args):
        seen["stock answers"] += 1
        return real_run(self, *args)

    def materialized(request):
        seen["reference"] += 1
        return real_reference(request)

    monkeypatch.setattr(interception._SharedCall, "run", shared)
    monkeypatch.setattr(reference, "run", materialized)
    kwargs = call_kwargs(family, prompt=p2p.prompts, generator=p2p.generator(0), output_type="latent")
    steps = kwargs.get("num_inference_steps", 2)

    def generate(backend="auto"):
        seen.update({"stock answers": 0, "reference": 0})
        with visattn.attach(pipe, p2p, backend=backend):
            kwargs["generator"] = p2p.generator(0)
            return pipe(**kwargs)[0]

    auto = generate()
    assert seen["reference"] == 0
    forced = generate("reference")
    assert seen == {"stock answers": 0, "reference": steps * len(edited)}
    assert (auto - forced).abs().max() <= 1e-4 * auto.abs().max()
    assert not torch.equal(auto, forced)  # computed apart from the stock call (rounding differs)
    with visattn.attach(pipe, p2p):
        for env in (None, "reference", None):
            if env is None:
                monkeypatch.delenv("VISATTN_BACKEND", raising=False)
            else:
                monkeypatch.setenv("VISATTN_BACKEND", env)
            seen.update({"stock answers": 0, "reference": 0})
            kwargs["generator"] = p2p.generator(0)
            out = pipe(**kwargs)[0]
            assert (seen["reference"] > 0) == (env is not None)
            torch.testing.assert_close(out, forced if env else auto, rtol=0, atol=0)


def test_source_and_target_rows_must_start_from_the_same_noise_and_the_pipelines_own_need_no_compare(monkeypatch):
    """The first denoiser call refuses source and target rows of different noise. Latents the attached pipeline's
    prepare_latents made (their halves equal by construction) are recognized and not compared again, unless they
    were written to since: a pipeline that changes them in place gets the check."""
    from visattn.effects import prompt_to_prompt

    p2p = PromptToPrompt.replace("a red cat", "a red dog", cross_steps=1.0, self_steps=1.0)
    pipe = pipeline("flux")
    made = []
    with visattn.attach(pipe, p2p):
        attached = pipe.prepare_latents

        def recording(*args, **kwargs):
            out = attached(*args, **kwargs)
            made.append(out[0])
            return out

        monkeypatch.setattr(pipe, "prepare_latents", recording)
        kwargs = call_kwargs("flux", prompt=p2p.prompts, generator=p2p.generator(0), output_type="latent")
        pipe(**kwargs)
        assert made and prompt_to_prompt._made_with_equal_halves(made[0])

        def written(*args, **kwargs):
            latents, ids = attached(*args, **kwargs)
            latents[1:] += 1.0  # a pipeline changing the target row in place after preparing it
            assert not prompt_to_prompt._made_with_equal_halves(latents)
            return latents, ids

        monkeypatch.setattr(pipe, "prepare_latents", written)
        kwargs["generator"] = p2p.generator(0)
        with pytest.raises(ValueError, match="start from different noise"):
            pipe(**kwargs)
        # Put back visattn's own wrapper before detaching (which takes it off), not after.
        monkeypatch.undo()
        assert pipe.prepare_latents == attached
    assert "prepare_latents" not in vars(pipe)
