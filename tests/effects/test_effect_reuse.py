"""Effects are reusable configurations (issue 27): one effect object attached to several pipelines, or attached,
detached and attached again, behaves as independent copies; its parameters are fixed once it is built."""

from __future__ import annotations

import functools
import pickle
from copy import deepcopy
from types import MappingProxyType

import numpy as np
import pytest
import torch

import visattn
from visattn.effects import (
    AttentionMaps,
    CrossAttentionCache,
    EntropyScaling,
    ExtrapolationDecay,
    NeighborhoodAttention,
    PerturbedAttentionGuidance,
    RadialAttention,
    SmoothedEnergyGuidance,
    SpatioTemporalSkipGuidance,
)
from visattn.guidance.guider import IdentityPerturbation
from visattn.inversion import UnconditionalEmbeddings
from visattn.layers import FAMILY_DEFAULT
from visattn.tiny import call_kwargs, tiny_pipeline

#: (id, family, effect factory, a parameter change for copy_with and a bad value for it)
EFFECTS = [
    ("pag", "unet", lambda: PerturbedAttentionGuidance(scale=3.0, layers="mid"), ("scale", 5.0, -1.0)),
    ("pag-default", "sd3", lambda: PerturbedAttentionGuidance(scale=2.0), ("strength", 0.5, 1.5)),
    (
        "pag-heads",
        "unet",
        lambda: PerturbedAttentionGuidance(scale=3.0, layers="mid", heads={"mid": [1]}),
        ("heads", {"mid": [0]}, {"mid": [True]}),
    ),
    ("seg", "unet", lambda: SmoothedEnergyGuidance(scale=3.0, sigma=2.0, layers="mid"), ("sigma", 1.0, -1.0)),
    ("stg-skip", "unet", lambda: SpatioTemporalSkipGuidance(2.0, layers="mid", mode="skip"), ("mode", "identity", "x")),
    ("stg-block", "wan", lambda: SpatioTemporalSkipGuidance(2.0, layers="blocks.1"), ("scale", 1.0, -1.0)),
    (
        "stg-cfg",
        "wan",
        lambda: SpatioTemporalSkipGuidance(2.0, layers="blocks.1", guidance="cfg", rescale=0.7),
        ("rescale", 0.5, 2.0),
    ),
    ("tgate", "unet", lambda: CrossAttentionCache(gate_step=2, warm_up=0), ("gate_step", 1, 0)),
    (
        "radial",
        "wan",
        lambda: RadialAttention(decay_factor=0.25, block_size=2, dense_steps=None),
        ("decay_factor", 0.5, -1.0),
    ),
    ("ultravico", "wan", lambda: ExtrapolationDecay(train_frames=2), ("alpha", 0.5, 2.0)),
    ("box-decay", "unet", lambda: ExtrapolationDecay(train_size=2, factor=0.25), ("factor", 0.5, 2.0)),
    ("entropy", "unet", lambda: EntropyScaling(train_tokens=64), ("train_tokens", 32, 1)),
    ("neighborhood", "unet", lambda: NeighborhoodAttention(3, layers="self"), ("kernel_size", 5, 0)),
    ("maps", "unet", lambda: AttentionMaps(prompt="a red circle"), ("words", "red", "")),
]
IDS = [entry[0] for entry in EFFECTS]


@functools.cache
def pipeline(family: str, copy: int = 0):
    """Tiny pipelines with identical weights; ``copy`` makes distinct pipeline objects."""
    return tiny_pipeline(family)


def generate(pipe, family: str, **overrides) -> torch.Tensor:
    kwargs = call_kwargs(family, num_inference_steps=3, **overrides)
    return torch.from_numpy(np.asarray(pipe(**kwargs)[0]))


def outcome(effect, pipe, family: str, handle=None, **overrides):
    """The image, and for AttentionMaps the attachment's maps of this generation too (they accumulate over the
    generations of one attachment: its earlier ones are forgotten first)."""
    if isinstance(effect, AttentionMaps) and handle is not None:
        handle.run_of(effect).reset()
    image = generate(pipe, family, **overrides)
    if isinstance(effect, AttentionMaps):
        maps = (handle.run_of(effect) if handle is not None else effect).maps()
        return image, maps
    return image, None


def alone(factory, family: str, **overrides):
    effect = factory()
    with visattn.attach(pipeline(family, 9), effect) as handle:
        return outcome(effect, pipeline(family, 9), family, handle, **overrides)


def same(a, b) -> bool:
    image_a, maps_a = a
    image_b, maps_b = b
    if not torch.equal(image_a, image_b):
        return False
    if maps_a is None:
        return maps_b is None
    return maps_a.keys() == maps_b.keys() and all(torch.equal(maps_a[w], maps_b[w]) for w in maps_a)


@pytest.mark.parametrize(("name", "family", "factory", "change"), EFFECTS, ids=IDS)
def test_one_effect_on_two_pipelines_acts_as_two_copies(name, family, factory, change):
    """Attached to two pipelines at once, the effect gives each what it gives alone; detaching one leaves the
    other as it was (the issue's PAG widened to every layer here); attached again, it gives the first result."""
    expected = alone(factory, family)
    effect = factory()
    first, second = pipeline(family, 1), pipeline(family, 2)
    one = visattn.attach(first, effect)
    two = visattn.attach(second, effect)
    try:
        assert same(outcome(effect, first, family, one), expected)
        assert same(outcome(effect, second, family, two), expected)
        one.detach()
        assert same(outcome(effect, second, family, two), expected)
    finally:
        one.detach()
        two.detach()
    with visattn.attach(first, effect) as again:
        assert same(outcome(effect, first, family, again), expected)


@pytest.mark.parametrize(("name", "family", "factory", "change"), EFFECTS, ids=IDS)
def test_parameters_are_frozen_and_copy_with_changes_one(name, family, factory, change):
    effect = factory()
    assert type(effect).frozen_parameters
    public = [key for key in vars(effect) if not key.startswith("_")]
    assert public
    for key in public:
        with pytest.raises(AttributeError, match=f"copy_with\\({key}="):
            setattr(effect, key, getattr(effect, key))
        with pytest.raises(AttributeError, match="cannot change"):
            delattr(effect, key)
        value = getattr(effect, key)
        # Parameter containers are immutable too: nothing to widen in place.
        assert not isinstance(value, (list, dict, set, bytearray)), (key, type(value))
    parameter, new, bad = change
    copy = effect.copy_with(**{parameter: new})
    assert type(copy) is type(effect) and copy is not effect
    expected = factory().__class__(**{**_given(effect), parameter: new})
    assert repr(copy) == repr(expected)
    assert repr(effect) == repr(factory())  # the original is untouched
    with pytest.raises((ValueError, TypeError), match=parameter):
        effect.copy_with(**{parameter: bad})
    with pytest.raises(TypeError, match="no parameter 'nonsense'"):
        effect.copy_with(nonsense=1)


@pytest.mark.parametrize(("name", "family", "factory", "change"), EFFECTS, ids=IDS)
def test_copies_and_pickles_are_built_from_the_parameters(name, family, factory, change):
    """A frozen effect copies and pickles as its configuration (its attachments' state stays behind)."""
    effect = factory()
    for copy in (pickle.loads(pickle.dumps(effect)), deepcopy(effect)):
        assert type(copy) is type(effect) and repr(copy) == repr(effect)
        assert copy.layers is FAMILY_DEFAULT if effect.layers is FAMILY_DEFAULT else copy.layers == effect.layers


def _given(effect) -> dict:
    """The keyword arguments an effect was built with (as copy_with replays them)."""
    import inspect

    cls, (args, kwargs) = effect.__dict__["_arguments"]
    bound = inspect.signature(cls.__init__).bind_partial(None, *args, **kwargs)
    given = dict(bound.arguments)
    given.pop("self")
    return given


def test_pag_heads_are_read_only():
    pag = PerturbedAttentionGuidance(layers="mid", heads={"mid": [0, 1]})
    assert isinstance(pag.heads, MappingProxyType) and pag.heads["mid"] == (0, 1)
    with pytest.raises(TypeError):
        pag.heads["mid"] = (0,)
    identity = IdentityPerturbation({"mid_block.attentions.0.transformer_blocks.0.attn1": [0]})
    with pytest.raises(TypeError):
        identity.heads["x"] = None
    with pytest.raises(AttributeError, match="copy_with"):
        identity.strength = 0.5


def test_arguments_the_user_changes_after_construction_reach_neither_copies_nor_pickles():
    heads = {"mid": [0, 1]}
    pag = PerturbedAttentionGuidance(layers="mid", heads=heads)
    heads["mid"].append(2)
    heads["up"] = [0]
    for copied in (pag.copy_with(scale=2.0), pickle.loads(pickle.dumps(pag)), deepcopy(pag)):
        assert dict(copied.heads) == {"mid": (0, 1)} == dict(pag.heads)


def test_unconditional_embeddings_are_frozen():
    effect = UnconditionalEmbeddings([torch.zeros(1, 4, 8)])
    with pytest.raises(AttributeError, match="copy_with"):
        effect.embeddings = ()


def test_pag_family_default_resolves_per_attachment():
    """layers=FAMILY_DEFAULT attached to an SD and an SD3 pipeline at once: each perturbs its own family's default,
    exactly as a PAG attached to it alone."""
    pag = PerturbedAttentionGuidance(scale=2.0)
    expected = {family: alone(lambda: PerturbedAttentionGuidance(scale=2.0), family) for family in ("unet", "sd3")}
    unet, sd3 = pipeline("unet", 3), pipeline("sd3", 3)
    with visattn.attach(unet, pag) as on_unet, visattn.attach(sd3, pag) as on_sd3:
        assert on_unet.layers_of(pag) == ("mid",) and on_sd3.layers_of(pag) == ("blocks.1",)
        assert pag.layers is FAMILY_DEFAULT  # the effect is unchanged: the attachments resolved it
        assert same(outcome(pag, sd3, "sd3"), expected["sd3"])
        assert same(outcome(pag, unet, "unet"), expected["unet"])


def test_stg_default_mode_resolves_per_attachment():
    """mode=None is block skipping on a video family and attention skipping on an image family: one effect attached
    to a Wan and an SD pipeline at once does each, as it does attached alone."""
    factory = functools.partial(SpatioTemporalSkipGuidance, 2.0, layers="self")
    expected = {family: alone(factory, family) for family in ("wan", "unet")}
    stg = factory()
    wan, unet = pipeline("wan", 3), pipeline("unet", 3)
    with visattn.attach(wan, stg) as on_wan, visattn.attach(unet, stg) as on_unet:
        assert (on_wan.run_of(stg).mode, on_unet.run_of(stg).mode) == ("block", "skip")
        assert same(outcome(stg, wan, "wan"), expected["wan"])
        assert same(outcome(stg, unet, "unet"), expected["unet"])


def _interleaved(family: str, effect, first_kwargs: dict, second_kwargs: dict):
    """Generate on a first attachment of ``effect``, and in the middle of it (after its first step) a whole
    generation on a second attachment of the same effect; returns both outcomes."""
    first, second = pipeline(family, 4), pipeline(family, 5)
    results = {}
    with visattn.attach(first, effect) as one, visattn.attach(second, effect) as two:

        def in_between(pipe, index, timestep, tensors):
            if index == 0:
                results["second"] = outcome(effect, second, family, two, **second_kwargs)
            return {}

        results["first"] = outcome(effect, first, family, one, callback_on_step_end=in_between, **first_kwargs)
        # The effect's own results methods read the latest generation: the first, which ended last.
        if isinstance(effect, AttentionMaps):
            latest = effect.maps()
            assert latest.keys() == results["first"][1].keys()
            assert all(torch.equal(latest[w], results["first"][1][w]) for w in latest)
    return results["first"], results["second"]


@pytest.mark.parametrize(
    ("family", "factory"),
    [
        ("unet", lambda: CrossAttentionCache(gate_step=2, warm_up=0)),
        ("wan", lambda: SpatioTemporalSkipGuidance(2.0, layers="blocks.1")),
        ("wan", lambda: SpatioTemporalSkipGuidance(2.0, layers="blocks.1", guidance="cfg", rescale=0.7)),
        ("unet", lambda: AttentionMaps()),
    ],
    ids=["tgate", "stg-block", "stg-cfg", "maps"],
)
def test_interleaved_generations_on_two_attachments_stay_independent(family, factory):
    """Caches, step counters, pending predictions and collected maps belong to one attachment: a generation run
    in the middle of another (different prompts for the maps) changes neither."""
    first_kwargs = {}
    second_kwargs = {"prompt": "a blue square"} if family == "unet" else {}
    expected_first = alone(factory, family, **first_kwargs)
    expected_second = alone(factory, family, **second_kwargs)
    got_first, got_second = _interleaved(family, factory(), first_kwargs, second_kwargs)
    assert same(got_first, expected_first)
    assert same(got_second, expected_second)


def test_attention_maps_read_the_latest_generation_and_each_attachments_own():
    maps = AttentionMaps()
    red, blue = pipeline("unet", 6), pipeline("unet", 7)
    with pytest.raises(RuntimeError, match="no maps yet"):
        maps.maps()
    with visattn.attach(red, maps) as on_red, visattn.attach(blue, maps) as on_blue:
        generate(red, "unet")
        assert set(maps.maps()) == {"red", "circle"}
        generate(blue, "unet", prompt="a blue square")
        assert set(maps.maps()) == {"blue", "square"}  # the latest generation's
        assert set(on_red.run_of(maps).maps()) == {"red", "circle"}
        assert on_red.run_of(maps).prompts == ("a red circle",) and maps.prompts is None
        assert maps.contributions == on_blue.run_of(maps).contributions > 0
    # Readable after detach; reset forgets every attachment's maps.
    assert set(on_red.run_of(maps).maps()) == {"red", "circle"}
    maps.reset()
    assert maps.nbytes == 0 and on_red.run_of(maps).contributions == 0


def test_tgate_clear_and_detach_free_each_attachments_caches():
    tgate = CrossAttentionCache(gate_step=2, warm_up=0)
    first, second = pipeline("unet", 8), pipeline("unet", 9)
    with visattn.attach(first, tgate) as one, visattn.attach(second, tgate) as two:
        generate(first, "unet")
        generate(second, "unet")
        assert one.run_of(tgate).caches and two.run_of(tgate).caches
        one.detach()
        assert not one.run_of(tgate).caches and two.run_of(tgate).caches
        tgate.clear()
        assert not two.run_of(tgate).caches


def test_the_same_effect_twice_in_one_attachment_is_refused():
    pag = PerturbedAttentionGuidance(layers="mid")
    with pytest.raises(ValueError, match="passed twice"):
        visattn.attach(pipeline("unet"), pag, pag)
    with pytest.raises(KeyError, match="not one of this attachment's effects"):
        with visattn.attach(pipeline("unet"), pag) as handle:
            handle.run_of(PerturbedAttentionGuidance(layers="mid"))


def test_every_shipped_effect_freezes_its_parameters():
    """Every Effect class visattn ships is a frozen configuration (subclasses users write opt in with
    ``frozen_parameters = True``; the base class leaves theirs as they wrote them)."""
    import importlib
    import pkgutil

    from visattn.effects import Effect

    for module in pkgutil.walk_packages(visattn.__path__, "visattn."):
        if not module.name.startswith(("visattn.tiny", "visattn.app", "visattn.commands")):
            importlib.import_module(module.name)

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    # visattn.tiny's recorders (effects that observe for the tests) are scaffolding, not effects users attach
    shipped = {
        cls
        for cls in subclasses(Effect)
        if cls.__module__.startswith("visattn.") and not cls.__module__.startswith("visattn.tiny")
    }
    assert len(shipped) >= 12, sorted(cls.__name__ for cls in shipped)
    thawed = sorted(cls.__qualname__ for cls in shipped if not cls.frozen_parameters)
    assert not thawed, f"effects whose parameters can change after construction: {thawed}"
    assert Effect.frozen_parameters is False
