"""Effects from JSON-able specs and back (visattn.effect_specs): aliases, field-named errors, round trips, edits."""

from __future__ import annotations

import json

import pytest

import visattn.effects as processors
from visattn.effect_specs import (
    ALIASES,
    SpecError,
    build_edit,
    build_effect,
    build_effects,
    describe,
    describe_edit,
    effect_types,
    resolve_type,
)
from visattn.effects import (
    CrossAttentionCache,
    Effect,
    LocalBlend,
    NeighborhoodAttention,
    PerturbedAttentionGuidance,
    PromptToPrompt,
    SmoothedEnergyGuidance,
)


def test_types_come_from_the_processors_registry_and_every_alias_resolves():
    types = effect_types()
    assert set(types) <= set(processors.__all__)
    assert "PerturbedAttentionGuidance" in types and "NeighborhoodAttention" in types
    # Not buildable as effects: base classes, the processor, the local-blend helper, and the P2P edit.
    assert not {"Effect", "AttentionCall", "VisAttnProcessor", "LocalBlend", "PromptToPrompt"} & set(types)
    for alias, name in ALIASES.items():
        assert name in types
        cls = resolve_type(alias)
        assert cls.__name__ == name and issubclass(cls, Effect)
    assert resolve_type("PAG") is PerturbedAttentionGuidance  # aliases are case-insensitive


def test_build_effects_by_alias_and_class_name_passes_the_parameters():
    pag, seg, na, tgate = build_effects(
        [
            {"type": "pag", "scale": 2.5, "layers": ["mid"], "strength": 0.5},
            {"type": "SmoothedEnergyGuidance"},
            {"type": "neighborhood", "kernel_size": [5, 3], "steps": [0.0, 0.5]},
            {"type": "tgate", "gate_step": 0.4},
        ]
    )
    assert isinstance(pag, PerturbedAttentionGuidance) and (pag.scale, pag.strength) == (2.5, 0.5)
    assert pag.layers == ("mid",)
    assert type(seg) is SmoothedEnergyGuidance
    assert isinstance(na, NeighborhoodAttention) and na.kernel_size == (5, 3) and na.steps == (0.0, 0.5)
    assert isinstance(tgate, CrossAttentionCache) and tgate.gate_step == 0.4
    assert build_effects(None) == [] and build_effects([]) == []


@pytest.mark.parametrize(
    ("specs", "field", "says"),
    [
        ([{"type": "pag"}, {"type": "blur"}], "effects[1].type", "'blur' is not a known effect"),
        ([{"scale": 2}], "effects[0].type", "is missing"),
        ([{"type": 3}], "effects[0].type", "must be an effect name string"),
        ([{"type": "pag", "scael": 2}], "effects[0].scael", "allowed: scale, layers"),
        ([{"type": "neighborhood"}], "effects[0]", "NeighborhoodAttention needs kernel_size"),
        ([{"type": "neighborhood", "kernel_size": 0}], "effects[0]", "kernel_size must be an integer >= 1"),
        ([{"type": "pag", "strength": 2.0}], "effects[0]", "strength must be in [0, 1]"),
        ([{"type": "PromptToPrompt"}], "effects[0].type", "is an edit, not an effect"),
        (["pag"], "effects[0]", "must be an object"),
        ({"type": "pag"}, "effects", "must be a list of effect objects"),
    ],
)
def test_bad_specs_name_the_field(specs, field, says):
    with pytest.raises(SpecError) as info:
        build_effects(specs)
    assert info.value.field == field
    assert says in str(info.value) and str(info.value).startswith(f"{field}: ")


def test_unknown_type_lists_the_choices():
    with pytest.raises(SpecError, match="RadialAttention.*pag \\(PerturbedAttentionGuidance\\)"):
        build_effect({"type": "nope"}, "job.effects[0]")


def test_describe_returns_the_given_spec_and_rebuilds_the_same_effects():
    specs = [
        {"type": "pag", "scale": 2.0, "heads": {"mid": [0, 1]}},
        {"type": "neighborhood", "kernel_size": [3, 3], "dilation": 1},
        {"type": "decay", "train_size": [8, 8], "factor": 0.25},
    ]
    effects = build_effects(specs)
    described = describe(effects)
    assert json.loads(json.dumps(described)) == described
    # The type is normalized to the class name; the parameters are exactly those given.
    assert [spec["type"] for spec in described] == [
        "PerturbedAttentionGuidance",
        "NeighborhoodAttention",
        "ExtrapolationDecay",
    ]
    assert described[0]["heads"] == {"mid": [0, 1]} and described[2]["factor"] == 0.25
    rebuilt = build_effects(described)
    assert [repr(effect) for effect in rebuilt] == [repr(effect) for effect in effects]
    assert describe(rebuilt) == described


def test_describe_introspects_effects_built_in_code():
    effects = [PerturbedAttentionGuidance(scale=1.5, layers="mid", strength=0.75), NeighborhoodAttention((5, 3))]
    described = describe(effects)
    assert described[0]["type"] == "PerturbedAttentionGuidance"
    assert described[0]["scale"] == 1.5 and described[0]["strength"] == 0.75 and described[0]["layers"] == ["mid"]
    assert described[1]["kernel_size"] == [5, 3]
    json.dumps(described)
    rebuilt = build_effects(described)
    assert [repr(effect) for effect in rebuilt] == [repr(effect) for effect in effects]


def test_edit_specs_build_prompt_to_prompt():
    swap = build_edit({"source": "a cat riding a bike", "target": "a dog riding a bike", "cross_steps": 0.6})
    assert isinstance(swap, PromptToPrompt) and swap.mode == "replace"
    assert swap.prompts == ["a cat riding a bike", "a dog riding a bike"]
    assert swap.cross_steps["default"] == (0.0, 0.6)
    # Without a mode: different word counts make a refinement.
    refine = build_edit({"source": "a cat", "target": "a fluffy cat", "local_blend": "cat"})
    assert refine.mode == "refine" and isinstance(refine.local_blend, LocalBlend)
    assert refine.local_blend.words == ("cat",)
    blend = build_edit(
        {"source": "a cat", "target": "a dog", "local_blend": {"words": ["cat", "dog"], "threshold": 0.5}}
    )
    assert blend.local_blend.words == ("cat", "dog") and blend.local_blend.threshold == 0.5
    reweight = build_edit({"prompt": "a fluffy cat", "reweight": {"fluffy": 3.0}})
    assert reweight.prompts == ["a fluffy cat", "a fluffy cat"] and reweight.weights == {"fluffy": 3.0}
    assert describe_edit(swap) == {
        "source": "a cat riding a bike",
        "target": "a dog riding a bike",
        "mode": "replace",
        "cross_steps": 0.6,
    }
    assert describe_edit(reweight) == {"prompt": "a fluffy cat", "reweight": {"fluffy": 3.0}}
    assert build_edit(describe_edit(refine)).mode == "refine"


@pytest.mark.parametrize(
    ("spec", "field", "says"),
    [
        ({"source": "a cat"}, "edit.target", "is missing"),
        ({"source": "a cat", "target": ""}, "edit.target", "non-empty prompt"),
        ({"source": "a cat", "target": "a dog", "mode": "swap"}, "edit.mode", "replace, refine"),
        ({"source": "a cat", "target": "a dog", "strength": 1}, "edit.strength", "allowed: source, target"),
        ({"source": "a cat", "target": "a big dog", "mode": "replace"}, "edit", "refine"),
        ({"prompt": "a cat", "reweight": {"dog": 2.0}}, "edit", "dog"),
        ({"prompt": "a cat", "reweight": {"cat": 2.0}, "weights": {}}, "edit.weights", "as reweight"),
        ({"prompt": "a cat", "reweight": {}}, "edit", "non-empty dict"),
        ({"source": "a cat", "target": "a dog", "local_blend": {"word": "cat"}}, "edit.local_blend.word", "words"),
        ({"source": "a cat", "target": "a dog", "local_blend": "bird"}, "edit", "bird"),
        ("a cat -> a dog", "edit", "must be an object"),
    ],
)
def test_bad_edits_name_the_field(spec, field, says):
    with pytest.raises(SpecError) as info:
        build_edit(spec)
    assert info.value.field == field
    assert says in str(info.value)


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        ({"type": "pag", "layers": "a{99999999999}"}, "effects[0].layers", "not a regular expression"),
        ({"type": "pag", "layers": ["mid", "b{99999999999}"]}, "effects[0].layers", "not a regular expression"),
        ({"type": "pag", "scale": 10**400}, "effects[0].scale", "takes numbers up to 1.8e"),
        ({"type": "pag", "scale": -(10**400)}, "effects[0].scale", "is not allowed"),
    ],
)
def test_values_that_overflow_are_spec_errors_naming_the_field(spec, field, message):
    """Issue 27: ``re`` raises OverflowError for a huge repetition, float() for a 400-digit number; neither may
    escape as anything but a SpecError (a ValueError) that names the parameter and shows the value, shortened."""
    with pytest.raises(SpecError, match=message) as caught:
        build_effects([spec])
    assert caught.value.field == field and len(str(caught.value)) < 300
    with pytest.raises(ValueError):
        build_effects([spec])


# --- train_video_frames: a training length in video frames (issue 29) --------------------------------------------
def test_train_video_frames_becomes_latent_frames_with_the_pipelines_factors():
    spec = {"type": "decay", "train_video_frames": 81, "factor": 0.5}
    (effect,) = build_effects([spec], latent_frames=lambda frames: 1 + (frames - 1) // 4)  # Wan's VAE: 81 -> 21
    assert effect.train_frames == 21
    assert describe([effect]) == [{"type": "ExtrapolationDecay", "train_video_frames": 81, "factor": 0.5}]
    # checked without a pipeline (a jobs file before the model loads): the count passes through, the spec is valid
    assert build_effect(spec).train_frames == 81


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ({"type": "decay", "train_video_frames": 81, "train_frames": 21}, "not both"),
        ({"type": "decay", "train_video_frames": 0}, "must be a number of frames >= 1"),
        ({"type": "decay", "train_video_frames": "81"}, "must be a number of frames >= 1"),
        ({"type": "pag", "train_video_frames": 81}, "is not a parameter of PerturbedAttentionGuidance"),
    ],
)
def test_bad_train_video_frames_name_the_field(spec, says):
    with pytest.raises(SpecError, match=says) as caught:
        build_effects([spec])
    assert caught.value.field == "effects[0].train_video_frames"


def test_a_converter_error_is_a_spec_error():
    def image_pipeline(frames: int) -> int:
        raise ValueError("StableDiffusionPipeline makes images")

    with pytest.raises(SpecError, match="makes images"):
        build_effect({"type": "decay", "train_video_frames": 9}, latent_frames=image_pipeline)


def test_every_alias_is_documented_in_the_batch_guide():
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[2] / "docs" / "batch.md").read_text(encoding="utf-8")
    rows = [line for line in guide.splitlines() if line.startswith("| `")]
    for alias, class_name in ALIASES.items():
        assert any(f"`{alias}`" in row.split("|")[1] and f"`{class_name}`" in row for row in rows), alias
