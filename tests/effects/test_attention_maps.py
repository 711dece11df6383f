"""AttentionMaps: output-neutral, exact against the reference backend, flat memory, rendering, every family."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch
from helpers import HeadScale, count_planned_answers
from PIL import Image

import visattn
from visattn.attachment import layer_roles
from visattn.effects import AttentionCall, AttentionMaps, Effect
from visattn.heatmaps import colorize, colormap_table, heatmap
from visattn.kernels import ProbabilityRead
from visattn.kernels.backends import reference
from visattn.tiny import TINY_PIPELINES, call_kwargs, denoiser_of, latent_grid, tiny_pipeline
from visattn.words import prompt_tokens


@functools.cache
def pipeline(family: str):
    return tiny_pipeline(family)


def prompt_of(family: str, prompt: str | None = None):
    """What AttentionMaps needs as ``prompt``: the string, or PromptTokens where the call uses a custom template."""
    kwargs = call_kwargs(family)
    prompt = prompt or kwargs["prompt"]
    if family == "hunyuan_video":
        return prompt_tokens(
            pipeline(family),
            prompt,
            max_sequence_length=kwargs["max_sequence_length"],
            prompt_template=kwargs["prompt_template"],
        )
    return prompt


def run(family: str, *effects, backend: str = "auto", **overrides) -> np.ndarray:
    pipe = pipeline(family)
    with visattn.attach(pipe, *effects, backend=backend):
        return np.asarray(pipe(**call_kwargs(family, **overrides))[0])


def first_text_layer(family: str) -> str:
    roles = layer_roles(denoiser_of(pipeline(family)))
    return next(name for name, role in roles.items() if role in ("cross", "joint"))


class ReferenceProbe(Effect):
    """Materializes each call's probabilities with the reference backend (the oracle), after every other effect,
    and also records the block the attention core's probability stage hands a read of it."""

    roles = ("cross", "joint")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.records = []

    def apply(self, call: AttentionCall) -> None:
        ctx = call.ctx
        rows, image, text = ctx.batch.rows("cond"), ctx.queries.image.as_slice(), ctx.keys.text.as_slice()
        read = {}
        keys = torch.arange(text.start, text.stop)
        call.reads.append(ProbabilityRead(lambda block: read.update(block=block), rows=rows, queries=image, keys=keys))
        call.observers.append(lambda done: self.observe(done, read["block"]))

    def observe(self, call: AttentionCall, observed: torch.Tensor) -> None:
        ctx = call.ctx
        probs = torch.softmax(reference.masked_logits(call.request(), 0, call.q.shape[2]), dim=-1)
        rows, image, text = ctx.batch.rows("cond"), ctx.queries.image.as_slice(), ctx.keys.text.as_slice()
        self.records.append((ctx, probs[rows, :, image, text], observed, call.lse is not None))


# --- output neutrality -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["unet", "flux"])
@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_output_is_bit_identical_with_and_without_attention_maps(family, backend):
    plain = run(family, backend=backend)
    maps = AttentionMaps(prompt=prompt_of(family))
    observed = run(family, maps, backend=backend)
    assert np.array_equal(plain, observed)
    assert maps.contributions > 0


# --- exactness ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["unet", "sd3"])
def test_reads_answered_at_the_sdpa_call_are_the_cores_reads_bit_for_bit(family, monkeypatch):
    """All AttentionMaps does in a call is read its probabilities: the layer plans that once per call shape and
    answers the call with the stock SDPA and the read served from its queries and keys, without building the
    call's context again (on SD3 in the same planned call as SEG's blur, reading SEG's rows). The same image and
    maps, bit for bit, as the attention core serving every read (which a backend forced for effects keeps), and the
    planned answer is what served the calls."""
    served = count_planned_answers(monkeypatch, "reads")

    def effects() -> list[Effect]:
        if family == "unet":
            return [AttentionMaps(prompt=prompt_of(family))]
        # The maps of SEG's rows: read from the blurred queries.
        seg = visattn.SmoothedEnergyGuidance(3.0, sigma=2.0, layers="joint")
        return [AttentionMaps(prompt=prompt_of(family), branch=seg.branch), seg]

    planned = effects()
    planned_image = run(family, *planned)
    assert served["calls"] > 0
    served["calls"] = 0
    core = effects()
    core_image = run(family, *core, backend="sdpa")
    assert served["calls"] == 0
    assert np.array_equal(planned_image, core_image)
    a, b = planned[0].maps(), core[0].maps()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[word], b[word]) for word in a)


@pytest.mark.parametrize("family", ["unet", "sd3", "flux"])
def test_observer_probabilities_equal_the_reference_backend(family):
    layer = "^" + re.escape(first_text_layer(family)) + "$"
    probe = ReferenceProbe(layers=layer)
    maps = AttentionMaps(layers=layer, prompt=prompt_of(family), drop_special=False, words=["red", "circle"])
    run(family, maps, probe, num_inference_steps=1)
    ((ctx, block, observed, _),) = probe.records
    assert ctx.role == ("cross" if family == "unet" else "joint")
    torch.testing.assert_close(observed, block, rtol=1e-5, atol=1e-7)
    # The maps are the head-mean of the image->text block summed over each word's tokens, on the token grid.
    tokens = prompt_tokens(
        pipeline(family),
        call_kwargs(family)["prompt"],
        max_sequence_length=call_kwargs(family).get("max_sequence_length"),
    )
    frames, height, width = ctx.grid
    result = maps.maps()
    for word in ("red", "circle"):
        expected = block[..., list(tokens.positions(word))].sum(-1).mean(dim=(0, 1)).view(frames, height, width)
        # The first text layer sees the top grid in every family, so no resize is involved.
        torch.testing.assert_close(result[word], expected, rtol=1e-5, atol=1e-7)


class ScaleHeads(Effect):
    """Adds a head-dependent logit modifier (makes the call non-dense, so the core returns the log-sum-exp)."""

    def apply(self, call: AttentionCall) -> None:
        call.score_mods.append(HeadScale(0.5))


def test_score_modifiers_and_the_core_log_sum_exp_are_used():
    # HeadScale makes the call non-dense: the core returns the log-sum-exp, and the modifier must be applied.
    layer = "^" + re.escape(first_text_layer("flux")) + "$"
    probe = ReferenceProbe(layers=layer)
    run("flux", ScaleHeads(), AttentionMaps(layers=layer, prompt=prompt_of("flux")), probe, num_inference_steps=1)
    ((_, block, observed, had_lse),) = probe.records
    assert had_lse
    torch.testing.assert_close(observed, block, rtol=1e-5, atol=1e-7)


class BoostWord(Effect):
    """A probability editor: shifts attention toward one text key (as Prompt-to-Prompt's re-weighting does:
    ``exp(4)`` times the key's weight, renormalized) and keeps what it made."""

    roles = ("cross",)

    def __init__(self, position: int, **kwargs):
        super().__init__(**kwargs)
        self.position = position
        self.seen = []

    def apply(self, call: AttentionCall) -> None:
        column = call.ctx.keys.text.start + self.position

        def edit(probs, start, stop):
            probs[..., column] *= float(np.exp(4.0))
            probs /= probs.sum(-1, keepdim=True)
            self.seen.append(probs.clone())

        call.editors.append(edit)


def test_reads_see_the_probabilities_editors_made():
    tokens = prompt_tokens(pipeline("unet"), "a red circle")
    layer = "^" + re.escape(first_text_layer("unet")) + "$"
    boost = BoostWord(tokens.positions("red")[0], layers=layer)
    maps = AttentionMaps(words="red", layers=layer, prompt="a red circle", drop_special=False)
    run("unet", boost, maps, num_inference_steps=1)
    (probs,) = boost.seen
    rows = slice(probs.shape[0] // 2, probs.shape[0])  # the conditional half
    expected = probs[rows, :, :, tokens.positions("red")[0]].mean(dim=(0, 1)).view(1, 16, 16)
    torch.testing.assert_close(maps.maps()["red"], expected)


# --- aggregation -----------------------------------------------------------------------------------------------------


def test_memory_stays_flat_with_more_steps():
    short, long = AttentionMaps(prompt="a red circle"), AttentionMaps(prompt="a red circle")
    run("unet", short, num_inference_steps=2)
    run("unet", long, num_inference_steps=6)
    assert long.contributions == 3 * short.contributions
    assert long.nbytes == short.nbytes > 0
    assert {w: m.shape for w, m in long.maps().items()} == {w: m.shape for w, m in short.maps().items()}


def test_drop_special_renormalizes_over_the_remaining_words():
    maps = AttentionMaps(prompt="a red circle")
    run("flux", maps)
    result = maps.maps()
    assert set(result) == {"red", "circle"}  # "a" is a stop word
    torch.testing.assert_close(result["red"] + result["circle"], torch.ones_like(result["red"]))
    raw = AttentionMaps(prompt="a red circle", drop_special=False)
    run("flux", raw)
    raw_maps = raw.maps()
    assert set(raw_maps) == {"a", "red", "circle"}
    # Raw probabilities of the joint softmax: the text words get only part of each image query's attention.
    assert float((raw_maps["a"] + raw_maps["red"] + raw_maps["circle"]).max()) < 1.0


def test_steps_resolution_and_reset():
    maps = AttentionMaps(prompt="a red circle", steps=(0.5, 1.0), resolution=(6, 10))
    run("unet", maps, num_inference_steps=2)
    half = maps.contributions
    assert maps.maps()["red"].shape == (1, 6, 10)
    everything = AttentionMaps(prompt="a red circle")
    run("unet", everything, num_inference_steps=2)
    assert everything.contributions == 2 * half
    maps.reset()
    assert maps.nbytes == 0
    with pytest.raises(RuntimeError, match="no maps yet"):
        maps.maps()


def test_several_prompts_give_maps_per_prompt():
    prompts = ["a red circle", "a blue square"]
    maps = AttentionMaps(prompt=prompts)
    run("unet", maps, prompt=prompts)
    first, second = maps.maps()
    assert set(first) == {"red", "circle"} and set(second) == {"blue", "square"}
    assert not torch.equal(first["red"], second["blue"])


@pytest.mark.parametrize("family", TINY_PIPELINES)
def test_every_family_runs_end_to_end(family):
    maps = AttentionMaps(prompt=prompt_of(family, "a red circle"))
    run(family, maps, prompt="a red circle")
    frames, height, width = latent_grid(family)
    result = maps.maps()
    assert set(result) == {"red", "circle"}
    for values in result.values():
        assert values.shape == (frames, height, width)
        assert torch.isfinite(values).all() and (values >= 0).all()
    torch.testing.assert_close(result["red"] + result["circle"], torch.ones(frames, height, width))


# --- rendering -------------------------------------------------------------------------------------------------------


def test_heatmaps_and_overlay_for_an_image():
    maps = AttentionMaps(prompt="a red circle")
    image = run("unet", maps)[0]  # [H, W, 3]
    pictures = maps.heatmaps()
    assert set(pictures) == {"red", "circle"}
    assert all(isinstance(p, Image.Image) and p.size == (16, 16) and p.mode == "RGB" for p in pictures.values())
    assert maps.heatmaps(size=64)["red"].size == (64, 64)
    drawn = maps.overlay(image, alpha=0.6)
    assert drawn["red"].size == (image.shape[1], image.shape[0])
    assert not np.array_equal(np.asarray(drawn["red"]), np.asarray(drawn["circle"]))
    with pytest.raises(ValueError, match="alpha"):
        maps.overlay(image, alpha=1.5)


def test_heatmaps_and_overlay_per_frame_for_video():
    maps = AttentionMaps(prompt="a red circle")
    video = run("wan", maps)[0]  # [frames, H, W, 3]
    frames = latent_grid("wan")[0]
    pictures = maps.heatmaps(size=(20, 12))
    assert len(pictures["red"]) == frames and all(p.size == (20, 12) for p in pictures["red"])
    drawn = maps.overlay(video)
    assert len(drawn["circle"]) == video.shape[0]
    assert drawn["circle"][0].size == (video.shape[2], video.shape[1])


def test_colormap_is_perceptually_ordered():
    table = colormap_table().astype(np.float64) / 255
    assert table.shape == (256, 3)
    linear = np.where(table <= 0.04045, table / 12.92, ((table + 0.055) / 1.055) ** 2.4)
    luminance = linear @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(luminance) > 0)  # brighter with every step
    assert colorize(np.array([0.0, 2.0]))[0].tolist() == colormap_table()[0].tolist()
    assert heatmap(np.zeros((3, 5)), size=(10, 6)).size == (10, 6)
    with pytest.raises(ValueError, match="2-D"):
        heatmap(np.zeros(4))


# --- errors ----------------------------------------------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="prompt must be"):
        AttentionMaps(prompt=42)
    with pytest.raises(ValueError, match="resolution must be"):
        AttentionMaps(prompt="a cat", resolution=(0, 4))
    with pytest.raises(ValueError, match="words must be"):
        AttentionMaps(prompt="a cat", words=[1.5])
    with pytest.raises(ValueError, match="drop_special"):
        AttentionMaps(prompt="a cat", drop_special="yes")


def test_unknown_word_lists_the_prompt_words():
    with pytest.raises(ValueError, match=r"\['dog'\] are in none of the prompts.*'red', 'circle'"):
        run("unet", AttentionMaps(words="dog", prompt="a red circle"))


def test_prompt_tokens_for_another_text_length_are_rejected():
    tokens = prompt_tokens(pipeline("flux"), "a red circle", max_sequence_length=32)
    with pytest.raises(ValueError, match="32 positions but layer .* sees 16 text tokens"):
        run("flux", AttentionMaps(prompt=tokens))


@pytest.mark.parametrize("family", ["unet", "flux", "hunyuan_video"])
def test_prompt_is_read_from_the_pipeline_call(family):
    explicit, inferred = AttentionMaps(prompt=prompt_of(family)), AttentionMaps()
    run(family, explicit)
    run(family, inferred)
    a, b = explicit.maps(), inferred.maps()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[word], b[word]) for word in a)


def test_an_inferred_prompt_that_changes_needs_a_reset():
    """Maps accumulate over the generations of one attachment: a second prompt there needs a reset (a new
    attachment starts with maps of its own)."""
    maps, pipe = AttentionMaps(), pipeline("unet")
    with visattn.attach(pipe, maps):
        pipe(**call_kwargs("unet"))
        with pytest.raises(ValueError, match="call reset"):
            pipe(**call_kwargs("unet", prompt="a blue square"))
        maps.reset()
        pipe(**call_kwargs("unet", prompt="a blue square"))
    assert "square" in maps.maps()
    # The calls of the second prompt have the first one's shapes (the layers' planned reads of them are kept): the
    # reads are made again for the new prompt, so the maps are a new attachment's, bit for bit.
    fresh = AttentionMaps()
    run("unet", fresh, prompt="a blue square")
    a, b = maps.maps(), fresh.maps()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[word], b[word]) for word in a)


def test_prompt_embeds_without_a_prompt_is_a_clear_error():
    pipe = pipeline("unet")
    embeds, negative = pipe.encode_prompt("a red circle", "cpu", 1, True)
    kwargs = {k: v for k, v in call_kwargs("unet").items() if k != "prompt"}
    with pytest.raises(ValueError, match="pass AttentionMaps\\(prompt=...\\)"):
        with visattn.attach(pipe, AttentionMaps()):
            pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, **kwargs)
