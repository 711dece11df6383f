"""Every declared family: attaching leaves the stock path exact, and the call context is right."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from helpers import Probe

import visattn
from visattn.tiny import TINY_PIPELINES, call_kwargs, latent_grid, tiny_pipeline

# How each pipeline lays out its denoiser batch with the call kwargs of visattn.tiny (CFG on where it exists).
EXPECTED_BRANCHES = {
    "unet": {("uncond", "cond")},
    "StableDiffusionXLPipeline": {("uncond", "cond")},
    "pixart": {("uncond", "cond")},
    "sd3": {("uncond", "cond")},
    "flux": {("cond",)},  # guidance-distilled: one branch
    "wan": {("cond",), ("uncond",)},  # the pipeline calls the transformer once per branch
    "cogvideox": {("uncond", "cond")},
    "hunyuan_video": {("cond",)},
}
EXPECTED_ROLES = {
    "unet": {"self", "cross"},
    "StableDiffusionXLPipeline": {"self", "cross"},
    "pixart": {"self", "cross"},
    "sd3": {"joint"},
    "flux": {"joint"},
    "wan": {"self", "cross"},
    "cogvideox": {"joint"},
    "hunyuan_video": {"joint", "text"},
}


@functools.cache
def pipeline(family: str):
    return tiny_pipeline(family)


def run(family: str, **overrides) -> np.ndarray:
    output = pipeline(family)(**call_kwargs(family, **overrides))[0]
    return np.asarray(output, dtype=np.float64)


def denoiser(pipe):
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


@pytest.mark.parametrize("family", TINY_PIPELINES)
def test_identity_through_attach_matches_the_stock_processors(family):
    stock = run(family)
    with visattn.attach(pipeline(family)):
        swapped = run(family)
    assert np.abs(stock - swapped).max() <= 1e-5


@pytest.mark.parametrize("family", TINY_PIPELINES)
def test_attach_keeps_every_stock_processor_object_in_place(family):
    model = denoiser(pipeline(family))
    originals = dict(model.attn_processors)
    with visattn.attach(pipeline(family), Probe()):
        assert all(model.attn_processors[name] is processor for name, processor in originals.items())
    assert all(model.attn_processors[name] is processor for name, processor in originals.items())


@pytest.mark.parametrize("family", TINY_PIPELINES)
def test_identity_holds_with_a_pass_through_effect_on_every_layer(family):
    stock = run(family)
    with visattn.attach(pipeline(family), Probe(), backend="auto"):
        probed = run(family)
    assert np.abs(stock - probed).max() <= 1e-5


@pytest.mark.parametrize("family", TINY_PIPELINES)
def test_call_context_grid_text_step_and_batch(family):
    kwargs = call_kwargs(family)
    probe = Probe()
    with visattn.attach(pipeline(family), probe):
        pipeline(family)(**kwargs)
    contexts = probe.contexts
    assert contexts
    assert {ctx.role for ctx in contexts} == EXPECTED_ROLES[family]
    assert {ctx.batch.names for ctx in contexts} == EXPECTED_BRANCHES[family]

    top_grid = latent_grid(family, kwargs)
    grids = {ctx.grid for ctx in contexts if ctx.role != "text"}
    assert top_grid in grids
    for ctx in contexts:
        if ctx.role == "text":
            assert ctx.grid is None and ctx.queries.text.length == ctx.queries.length
            continue
        # Every latent token of the call is accounted for by the grid.
        assert ctx.grid is not None and ctx.num_grid_tokens == ctx.queries.image.length
        if ctx.role == "cross":
            assert ctx.keys.text == visattn.Span(0, ctx.keys.length) and ctx.keys.image is None
        if ctx.role == "joint":
            assert ctx.queries == ctx.keys
            text, image = ctx.queries.text, ctx.queries.image
            assert text.length + image.length == ctx.queries.length
            assert text.stop == image.start or image.stop == text.start
        assert ctx.heads >= 2 and ctx.head_dim * ctx.heads > 0

    steps = kwargs["num_inference_steps"]
    assert {ctx.step.index for ctx in contexts} == set(range(steps))
    assert {ctx.step.total for ctx in contexts} == {steps}
    assert all(0.0 <= ctx.step.fraction < 1.0 for ctx in contexts)


def test_joint_text_positions_per_family():
    """Where text sits in the joint sequence is family knowledge: first for Flux/CogVideoX, last for SD3/Hunyuan."""
    first, last = {"flux", "cogvideox"}, {"sd3", "hunyuan_video"}
    for family in first | last:
        probe = Probe()
        with visattn.attach(pipeline(family), probe, layers="joint"):
            pipeline(family)(**call_kwargs(family))
        for ctx in probe.contexts:
            text = ctx.queries.text
            assert (text.start == 0) if family in first else (text.stop == ctx.queries.length), family


def test_flux_single_stream_blocks_know_the_text_length():
    probe = Probe(layers="single_transformer_blocks")
    with visattn.attach(pipeline("flux"), probe):
        pipeline("flux")(**call_kwargs("flux"))
    assert probe.contexts
    for ctx in probe.contexts:
        assert ctx.role == "joint" and ctx.queries.text.start == 0 and ctx.queries.text.length > 0


def test_unet_levels_each_get_their_own_grid():
    probe = Probe(layers="self")
    kwargs = call_kwargs("unet")
    with visattn.attach(pipeline("unet"), probe):
        pipeline("unet")(**kwargs)
    _, height, width = latent_grid("unet", kwargs)
    grids = {ctx.grid for ctx in probe.contexts}
    assert (1, height, width) in grids and (1, height // 2, width // 2) in grids


def test_layer_index_and_names_follow_the_model():
    pipe = pipeline("unet")
    names = list(visattn.attention_layers(pipe.unet))
    probe = Probe()
    with visattn.attach(pipe, probe):
        pipe(**call_kwargs("unet"))
    for ctx in probe.contexts:
        assert names[ctx.layer_index] == ctx.layer_name


def test_two_prompts_without_guidance_are_one_branch():
    probe = Probe()
    with visattn.attach(pipeline("unet"), probe):
        pipeline("unet")(**call_kwargs("unet", prompt=["a red circle", "a blue square"], guidance_scale=1.0))
    assert {ctx.batch.names for ctx in probe.contexts} == {("cond",)}
    assert {ctx.batch.batch_size for ctx in probe.contexts} == {2}


@pytest.mark.parametrize("family", ["flux", "wan"])
def test_dispatcher_backend_chosen_with_set_attention_backend_is_used(family, monkeypatch):
    """With no effect acting, the stock processor calls diffusers' dispatcher with the backend it was given."""
    import sys

    model = denoiser(pipeline(family))
    stock = run(family)
    seen = []
    # The stock processors call the dispatcher their own module imported.
    dispatch = sys.modules[type(next(iter(model.attn_processors.values()))).__module__]
    original = dispatch.dispatch_attention_fn

    def spy(*args, backend=None, **kwargs):
        seen.append(backend)
        return original(*args, backend=backend, **kwargs)

    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    monkeypatch.setattr(dispatch, "dispatch_attention_fn", spy)
    # set_attention_backend also sets diffusers' process-wide active backend, which reset_attention_backend leaves.
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)
    with visattn.attach(pipeline(family)):
        model.set_attention_backend("_native_math")
        try:
            out = run(family)
        finally:
            model.reset_attention_backend()
    assert seen and all(str(getattr(b, "value", b)) == "_native_math" for b in seen)
    assert np.abs(stock - out).max() <= 1e-5


def test_model_hook_is_a_diffusers_hook_and_goes_away_on_detach():
    model = denoiser(pipeline("sd3"))
    with visattn.attach(pipeline("sd3")):
        assert model._diffusers_hook.get_hook("visattn") is not None
    assert model._diffusers_hook.get_hook("visattn") is None


def test_compiled_model_keeps_working():
    pipe = tiny_pipeline("unet")
    stock = np.asarray(pipe(**call_kwargs("unet"))[0], dtype=np.float64)
    pipe.unet.compile(backend="aot_eager", dynamic=False)
    probe = Probe()
    with visattn.attach(pipe, probe):
        compiled = np.asarray(pipe(**call_kwargs("unet"))[0], dtype=np.float64)
    assert probe.contexts, "the compiled forward's attention calls reach the effects"
    assert np.abs(stock - compiled).max() <= 1e-5
    torch._dynamo.reset()


# --- tokens that are neither grid nor text (Family.other_tokens) ----------------------------------------------------


def _contexts(class_name: str, **changes):
    """The contexts of one stock forward of a tiny denoiser, its inputs changed by ``changes``."""
    from visattn.tiny.denoisers import tiny_denoiser_entry
    from visattn.tiny.probes import ContextRecorder

    entry = tiny_denoiser_entry(class_name)
    model = entry.build()
    inputs = {**entry.inputs(2), **{name: make(entry.inputs(2)) for name, make in changes.items()}}
    recorder = ContextRecorder()
    with torch.no_grad(), visattn.attach(model, recorder) as handle:
        model(**inputs)
        read = handle.states[0].inputs
    return model, read, recorder.contexts


def test_hidream_pads_only_a_non_square_grid_and_the_padding_is_placed_after_it():
    from visattn.context import Span

    model, read, contexts = _contexts("HiDreamImageTransformer2DModel")
    tokens = read.grid[1] * read.grid[2]
    assert read.grid[1] != read.grid[2] and read.other == (0, model.max_seq - tokens)
    for ctx in contexts:
        # every call holds the padded grid, then the text: its length is the model's, not visattn's
        assert ctx.queries.other == (Span(tokens, model.max_seq),)
        assert ctx.queries.text == Span(model.max_seq, ctx.queries.length)
    square = {"hidden_states": lambda inputs: inputs["hidden_states"][..., : inputs["hidden_states"].shape[-2]]}
    _, read, contexts = _contexts("HiDreamImageTransformer2DModel", **square)
    assert read.grid[1] == read.grid[2] and read.other == (0, 0)
    assert all(not ctx.queries.other and ctx.queries.image == Span(0, read.grid[1] ** 2) for ctx in contexts)


def test_bria_fibo2_places_its_gist_tokens_and_the_context_images_tokens():
    from diffusers.models.transformers.transformer_bria_fibo2 import compute_gist_count

    from visattn.context import Span

    context = {"context_latents": lambda inputs: [inputs["hidden_states"][..., :4, :]]}  # a 4x12 latent
    model, read, contexts = _contexts("BriaFibo2Transformer2DModel", **context)
    config = model.config
    (gist,) = set(
        compute_gist_count(
            [read.text_length] * 2,
            config.min_num_gist_tokens,
            config.max_num_gist_tokens,
            config.gist_step,
            config.gist_min_text_len,
            config.gist_max_text_len,
        )
    )
    tokens = read.grid[1] * read.grid[2]
    # the context image: 4 latent rows of the image's width, patch-embedded as the image is
    assert read.other == (gist, (4 // config.patch_size) * read.grid[2])
    main = [ctx for ctx in contexts if ctx.layer_name.endswith(".attention") and ctx.layer_name.startswith("layers")]
    assert main
    for ctx in main:
        assert ctx.queries.image == Span(gist, gist + tokens) and ctx.queries.text is None
        assert ctx.queries.other == (Span(0, gist), Span(gist + tokens, ctx.queries.length))
    (cross,) = {ctx.keys for ctx in contexts if ctx.role == "cross"}
    assert cross.text == Span(0, read.text_length)  # the injection layers' text bundle


def test_other_tokens_name_where_they_sit():
    from visattn.families import OtherTokens, PaddedGrid

    with pytest.raises(ValueError, match="position must be one of.*'between'"):
        OtherTokens("pad tokens", "between", PaddedGrid("max_seq"))
