"""The call context carries the denoiser-level facts (visattn.context.DenoiserCall), read once per denoiser call."""

from __future__ import annotations

import warnings

import pytest
import torch

import visattn
from visattn.effects.base import Effect
from visattn.tiny import call_kwargs, latent_grid, tiny_pipeline


class _Contexts(Effect):
    """Keeps every call's context; changes nothing."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.contexts = []
        self.scales = []

    def apply(self, call) -> None:
        self.contexts.append(call.ctx)
        denoiser = call.ctx.denoiser
        self.scales.append(None if denoiser is None else denoiser.guidance_scale)


@pytest.fixture(scope="module")
def sd():
    return tiny_pipeline("unet")


def test_every_layer_sees_the_input_grid_the_pipeline_its_prompt_and_guidance(sd):
    recorder = _Contexts()
    kwargs = call_kwargs("unet", prompt="a red circle", guidance_scale=5.0)
    with visattn.attach(sd, recorder):
        sd(**kwargs)
    top = latent_grid("unet", kwargs)
    contexts = recorder.contexts
    assert {ctx.input_grid for ctx in contexts} == {top}
    # Lower UNet levels see a smaller grid of their own, and the input grid beside it.
    assert {ctx.grid for ctx in contexts} > {top}
    assert all(ctx.denoiser.pipeline is sd for ctx in contexts)
    assert {ctx.denoiser.prompt.prompt for ctx in contexts} == {"a red circle"}
    assert set(recorder.scales) == {5.0}
    # One record per denoiser call, shared by its attention calls: two steps, two records.
    assert len({id(ctx.denoiser) for ctx in contexts}) == kwargs["num_inference_steps"]


def test_a_bare_denoiser_has_no_pipeline_and_no_guidance(sd):
    recorder = _Contexts()
    unet = sd.unet
    sample = torch.randn(1, unet.config.in_channels, 8, 8)
    text = torch.randn(1, 4, unet.config.cross_attention_dim)
    with visattn.attach(unet, recorder), torch.no_grad():
        unet(sample, 10, text)
    assert recorder.contexts
    assert all(ctx.denoiser.pipeline is None for ctx in recorder.contexts)
    assert set(recorder.scales) == {1.0}
    assert {ctx.input_grid for ctx in recorder.contexts} == {(1, 8, 8)}


@pytest.mark.parametrize(
    "effect",
    [
        lambda: visattn.AttentionMaps(words="red"),
        lambda: visattn.ExtrapolationDecay(train_size=2, factor=0.5),
        lambda: visattn.EntropyScaling(train_tokens=4),
    ],
    ids=["AttentionMaps", "ExtrapolationDecay", "EntropyScaling"],
)
def test_observing_and_grid_sized_effects_do_not_wrap_the_denoiser(effect):
    """Effects read denoiser-level facts from the context; only effects that change the denoiser call (add batch
    branches, blend predictions, swap inputs) wrap it."""
    assert not effect().wraps_denoiser


# --- tokens that are neither grid nor text (TokenLayout.other) ------------------------------------------------------


def _window(size: int, kernel: int) -> torch.Tensor:
    """``[size, size]``: which positions of an axis each position's neighborhood holds (NATTEN's window, shifted
    inward at the borders so that it always holds ``kernel`` positions)."""
    start = (torch.arange(size) - kernel // 2).clamp(0, size - kernel)
    positions = torch.arange(size)
    return (positions[None] >= start[:, None]) & (positions[None] < start[:, None] + kernel)


def _neighborhood_mask(length: int, grid_start: int, grid: tuple[int, int, int], kernel: int) -> torch.Tensor:
    """The hand-built mask of a kernel-``kernel`` neighborhood over a grid at ``grid_start`` of a ``length``
    sequence: grid queries keep their window of grid keys and every key outside the grid; other queries keep all."""
    frames, height, width = grid
    window = _window(height, kernel)[:, None, :, None] & _window(width, kernel)[None, :, None, :]
    window = window.reshape(height * width, height * width)
    if frames > 1:
        window = (_window(frames, kernel)[:, None, :, None] & window[None, :, None, :]).reshape(
            frames * height * width, frames * height * width
        )
    stop = grid_start + window.shape[0]
    mask = torch.ones(length, length, dtype=torch.bool)
    mask[grid_start:stop, grid_start:stop] = window
    return mask


class _MaskedSDPA(torch.overrides.TorchFunctionMode):
    """Runs every self/joint SDPA call of ``length`` tokens (grid at ``grid_start``) and every call over the grid
    alone with the hand-built neighborhood mask: the oracle, plain masked SDPA on the stock model."""

    def __init__(self, length: int, grid_start: int, grid: tuple[int, int, int], kernel: int) -> None:
        super().__init__()
        tokens = grid[0] * grid[1] * grid[2]
        self.masks = {
            length: _neighborhood_mask(length, grid_start, grid, kernel),
            tokens: _neighborhood_mask(tokens, 0, grid, kernel),
        }

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            call = dict(zip(("query", "key", "value", "attn_mask"), args), **kwargs)
            n_q, n_k = call["query"].shape[-2], call["key"].shape[-2]
            mask = self.masks.get(n_q) if n_q == n_k else None
            if mask is not None:
                model_mask = call.get("attn_mask")
                call["attn_mask"] = mask if model_mask is None else mask & model_mask.bool()
                return func(**call)
        return func(*args, **kwargs)


#: class, batch size, the main sequence's length and where its grid starts: HiDream pads a non-square 4x6 grid to
#: 36 tokens before its 10 text tokens; Bria FIBO 2 puts 4 gist tokens before the grid (no text); Framepack puts 56
#: history tokens before the grid, and with a batch of one drops the text's padding; MiniMax-H3 scatters its rows to
#: [7 text, 6 audio, grid]
_PLACED = (
    ("HiDreamImageTransformer2DModel", 2, 46, 0),
    ("BriaFibo2Transformer2DModel", 2, 28, 4),
    ("HunyuanVideoFramepackTransformer3DModel", 1, None, 56),
    ("MiniMaxH3Transformer3DModel", 2, 85, 13),
)


@pytest.mark.parametrize(("class_name", "batch_size", "length", "grid_start"), _PLACED)
def test_grid_patterns_keep_tokens_that_are_neither_grid_nor_text_visible(class_name, batch_size, length, grid_start):
    """NeighborhoodAttention on a sequence holding pad, gist or history tokens equals plain SDPA with a hand-built
    mask: a window over the grid tokens only, every other key kept for grid queries, every key for the others."""
    from harness.coverage_checks import prediction, sdpa_token_counts

    from visattn.tiny.denoisers import TINY_DENOISERS

    entry = next(entry for entry in TINY_DENOISERS if entry.class_name == class_name)
    if length is None:  # the longest call the stock model makes
        length = max(n_q for n_q, n_k in sdpa_token_counts(entry, batch_size) if n_q == n_k)
    model = entry.build()
    inputs = entry.inputs(batch_size)
    with torch.no_grad(), _MaskedSDPA(length, grid_start, entry.grid, 3):
        expected = prediction(model(**inputs))
    with torch.no_grad(), visattn.attach(model, visattn.NeighborhoodAttention(kernel_size=3)):
        out = prediction(model(**inputs))
    with torch.no_grad():
        stock = prediction(model(**inputs))
    assert (expected - stock).abs().max() > 1e-3  # the window drops something
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_the_pipelines_frame_is_read_only_in_calls_that_ask(sd, monkeypatch):
    """Reading the prompt and the CFG scale walks to the pipeline's ``__call__`` frame. Once a Prompt-to-Prompt edit's
    layers have planned their calls (the first generation), a generation's denoiser calls make no call context, so
    nothing asks and the frame is not read; a recorder's contexts, made while the frame was there, keep the prompt."""
    import visattn.families.pipelines as pipelines

    reads = []
    real = pipelines.pipeline_call_prompt
    monkeypatch.setattr(pipelines, "pipeline_call_prompt", lambda pipeline: reads.append(1) or real(pipeline))
    p2p = visattn.PromptToPrompt.replace("a red cat", "a red dog", cross_steps=1.0, self_steps=1.0)
    kwargs = call_kwargs("unet", prompt=p2p.prompts, generator=p2p.generator(0, 1))
    with visattn.attach(sd, p2p):
        sd(**kwargs)
        assert reads, "the first generation plans its calls, with contexts that read the prompt"
        reads.clear()
        sd(**kwargs)
    assert not reads
    recorder = _Contexts()
    with visattn.attach(sd, recorder):
        sd(**kwargs)
    assert reads
    assert recorder.contexts
    assert all(list(ctx.denoiser.prompt.prompt) == list(p2p.prompts) for ctx in recorder.contexts)


def test_a_timestep_that_is_a_view_of_the_schedule_is_read_from_its_values_on_the_host():
    """Pipelines that pass the scheduler's ``t`` (SD, SDXL) or ``t.expand(batch)`` (SD3, Wan) hand the denoiser a
    view of the scheduler's timesteps: its value is read from their values, read to the host once per schedule
    (on a GPU, reading the tensor would wait for the device at every denoiser call). Other timesteps are read."""
    from visattn.families.base import Schedule, _timestep_value

    timesteps = torch.tensor([999.0, 749.0, 499.0, 249.0])
    # Values that differ from the tensor's show which one was read.
    schedule = Schedule(timesteps, [1.0, 2.0, 3.0, 4.0])
    assert _timestep_value(timesteps[2], schedule) == 3.0
    assert _timestep_value(timesteps[1].expand(4), schedule) == 2.0
    assert _timestep_value(timesteps[1:], schedule) == 2.0  # the first of the call's timesteps
    assert isinstance(_timestep_value(torch.tensor([5, 6])[1], Schedule(torch.tensor([5, 6]), [5, 6])), float)
    # Not a view at an element of the schedule: read from the tensor.
    assert _timestep_value(timesteps[2].clone(), schedule) == 499.0
    assert _timestep_value(timesteps[2].to(torch.float64), schedule) == 499.0
    assert _timestep_value(timesteps[2] / 1000, schedule) == pytest.approx(0.499)
    assert _timestep_value(timesteps.view(torch.int32)[1], schedule) == timesteps.view(torch.int32)[1].item()
    assert _timestep_value(timesteps[2], None) == 499.0


def test_the_denoiser_hook_reads_the_unets_timestep_from_the_schedule(sd, monkeypatch):
    """The tiny SD pipeline passes the scheduler's ``t``: every denoiser call's timestep is read from the
    schedule's values, and the steps it finds are the ones reading the tensor finds."""
    import visattn.families.base as base

    found = []
    real = base._scheduled_value
    monkeypatch.setattr(base, "_scheduled_value", lambda t, s: found.append(real(t, s)) or found[-1])
    recorder = _Contexts()
    kwargs = call_kwargs("unet", prompt="a red circle", num_inference_steps=3)
    with visattn.attach(sd, recorder):
        sd(**kwargs)
    assert len(found) == 3 and None not in found
    assert found == [float(t) for t in sd.scheduler.timesteps]
    steps = sorted({(ctx.denoiser.step.index, ctx.denoiser.step.timestep) for ctx in recorder.contexts})
    assert steps == [(index, float(t)) for index, t in enumerate(sd.scheduler.timesteps)]


def test_a_per_token_timestep_is_read_at_its_noisiest_token():
    """Wan 2.2's image-to-video (``expand_timesteps``) gives every token its own timestep, the conditioning first
    frame's tokens 0 (clean) and first in line: the call's step is read from its noisiest token, not its first."""
    from diffusers import WanImageToVideoPipeline
    from PIL import Image

    from visattn.families.base import _timestep_value

    per_token = torch.tensor([[0.0, 0.0, 750.0, 750.0]])
    assert _timestep_value(per_token) == 750.0
    assert _timestep_value(torch.tensor([[1.0, 1.0, 0.25, 0.25]]), clean_is_high=True) == 0.25
    assert _timestep_value(torch.tensor([[[0.0], [500.0]], [[250.0], [250.0]]])) == 500.0  # the first row's

    t2v = tiny_pipeline("wan")
    parts = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
    components = {name: t2v.components[name] for name in parts}
    pipe = WanImageToVideoPipeline(**components, image_encoder=None, image_processor=None, expand_timesteps=True)
    kwargs = call_kwargs("wan", num_inference_steps=3)
    # Encoded by the text-to-video pipeline: the image-to-video one cleans prompts with ftfy, which is not installed.
    length = kwargs.pop("max_sequence_length")
    prompt, negative = t2v.encode_prompt(kwargs.pop("prompt"), "", max_sequence_length=length)
    seen = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, k: seen.append(k["timestep"].clone()), with_kwargs=True)
    recorder = _Contexts()
    image = Image.new("RGB", (kwargs["width"], kwargs["height"]), (200, 40, 40))
    with visattn.attach(pipe, recorder):
        pipe(image=image, prompt_embeds=prompt, negative_prompt_embeds=negative, **kwargs)
    assert seen[0].ndim == 2 and seen[0][0, 0] == 0 and seen[0].max() > 0  # the first frame's tokens come first, clean
    steps = sorted({ctx.denoiser.step.index for ctx in recorder.contexts})
    assert steps == [0, 1, 2]
    timesteps = sorted({ctx.denoiser.step.timestep for ctx in recorder.contexts}, reverse=True)
    assert timesteps == pytest.approx([float(t) for t in pipe.scheduler.timesteps])


def _record_reads(monkeypatch) -> list:
    """Reading the call's timestep waits for the device (as on a GPU), and the reads made are recorded."""
    import visattn.families.base as base

    reads = []
    real = base._timestep_value
    monkeypatch.setattr(base, "reading_waits", lambda timestep: True)
    monkeypatch.setattr(base, "_timestep_value", lambda *a, **k: reads.append(real(*a, **k)) or reads[-1])
    return reads


@pytest.mark.parametrize("key", ["flux", "qwen_image"])
def test_where_reading_the_timestep_waits_for_the_device_the_step_is_the_schedulers(key, monkeypatch):
    """Flux passes ``t / 1000`` and Qwen-Image calls once per CFG branch: their timesteps are no views of the
    schedule, and on a GPU reading one waits for every kernel queued before it (the stock loops never do per step).
    There the step is the one the scheduler takes next (its ``step_index``), read only before its first step;
    an edit whose windows depend on the step makes the same image as where every timestep is read."""
    pipe = tiny_pipeline(key)
    p2p = visattn.PromptToPrompt.replace("a red cat", "a red dog", cross_steps=0.5, self_steps=0.3)

    def generate():
        recorder = _Contexts()
        kwargs = call_kwargs(
            key, prompt=p2p.prompts, num_inference_steps=4, output_type="latent", generator=p2p.generator(0, 1)
        )
        with visattn.attach(pipe, p2p, recorder):
            image = pipe(**kwargs)[0]
        steps = {(ctx.denoiser.step.index, ctx.denoiser.batch.names) for ctx in recorder.contexts}
        timesteps = sorted({ctx.denoiser.step.timestep for ctx in recorder.contexts}, reverse=True)
        return image, sorted(steps), timesteps

    read_image, read_steps, read_timesteps = generate()
    reads = _record_reads(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every check agrees
        image, steps, timesteps = generate()
    calls_per_step = 2 if key == "qwen_image" else 1
    assert len(reads) == calls_per_step  # the first step's calls only: the scheduler has no step_index before it
    assert steps == read_steps and [index for index, _ in steps] == sorted(
        index for index in range(4) for _ in range(calls_per_step)
    )
    assert timesteps == pytest.approx(read_timesteps)
    assert torch.equal(image, read_image)


def test_a_call_at_another_step_than_the_schedulers_is_found_and_later_calls_are_read(monkeypatch):
    """A loop that calls the denoiser at another timestep than the one its scheduler steps from (its own loop over
    a scheduler it does not step): the check finds it, warns, and the timesteps of later calls are read."""
    pipe = tiny_pipeline("flux")
    calls = []
    pipe.transformer.register_forward_pre_hook(lambda m, a, k: calls.append(dict(k)), with_kwargs=True)
    pipe(**call_kwargs("flux", num_inference_steps=3, output_type="latent"))
    second_step = calls[1]
    reads = _record_reads(monkeypatch)
    recorder = _Contexts()
    with visattn.attach(pipe, recorder):
        pipe.scheduler._step_index = 0  # a scheduler left at its first step
        with pytest.warns(UserWarning, match="step_index"):
            pipe.transformer(**second_step)
        assert reads == []
        pipe.transformer(**second_step)
    assert len(reads) == 1
    assert recorder.contexts[-1].denoiser.step.index == 1
