"""Audio-video denoisers (LTX-2, Kandinsky 6): the video/audio cross-attention is never text and the audio's tokens
are never the latent grid, whatever their counts (both were placed by count before: an audio as long as the text
had its keys taken for text, an audio as long as the video for the grid)."""

from __future__ import annotations

import functools
import re

import pytest
import torch

import visattn
from tests.helpers import Probe
from visattn.context import Span
from visattn.families import Family
from visattn.interception import layer_hook
from visattn.tiny.denoisers import tiny_denoiser_entry
from visattn.tiny.denoisers.videos import TEXT
from visattn.tiny.probes import synthetic_prompt

GRID = (3, 4, 6)
#: class -> (the video/audio stream layers, the audio's own layers, the audio's cross-attention to its text)
AUDIO_VIDEO = {
    "LTX2VideoTransformer3DModel": (r"_to_\w+_attn$", r"\.audio_attn\d$", r"\.audio_attn2$"),
    "Kandinsky6Transformer3DModel": (r"\.(va|av)_cross_attention$", r"\.audio_dec_block\.", r"audio_dec_block\.cross"),
}


@functools.cache
def model(class_name: str) -> torch.nn.Module:
    return tiny_denoiser_entry(class_name).build()


def inputs(class_name: str, audio_tokens: int) -> dict:
    """The tiny entry's inputs for a batch of 2 with an audio of ``audio_tokens`` tokens."""
    kwargs = tiny_denoiser_entry(class_name).inputs(2)
    audio = kwargs["audio_hidden_states"]
    kwargs["audio_hidden_states"] = torch.randn(
        2, audio_tokens, *audio.shape[2:], generator=torch.Generator().manual_seed(0)
    )
    if "audio_num_frames" in kwargs:
        kwargs["audio_num_frames"] = audio_tokens
    return kwargs


def contexts(class_name: str, audio_tokens: int) -> dict:
    probe = Probe()
    with torch.no_grad(), visattn.attach(model(class_name), probe):
        model(class_name)(**inputs(class_name, audio_tokens))
    return {ctx.layer_name: ctx for ctx in probe.contexts}


@pytest.mark.parametrize("class_name", AUDIO_VIDEO)
def test_video_audio_attention_keys_are_never_text_even_as_many_as_the_text(class_name):
    stream, _, audio_text = AUDIO_VIDEO[class_name]
    seen = contexts(class_name, audio_tokens=TEXT)
    streams = [name for name in seen if re.search(stream, name)]
    assert len(streams) == 4  # two blocks, each way
    for name in streams:
        assert (seen[name].role, seen[name].text_span, seen[name].grid) == ("stream", None, None), name
    # The audio's own cross-attention to its text is cross-attention over text, even with as many audio queries as
    # text keys (equal counts were taken for self-attention before).
    audio_cross = [name for name in seen if re.search(audio_text, name)]
    assert audio_cross
    for name in audio_cross:
        assert (seen[name].role, seen[name].text_span, seen[name].grid) == ("cross", Span(0, TEXT), None), name
    assert {visattn.layer_roles(model(class_name))[name] for name in streams} == {"stream"}


@pytest.mark.parametrize("class_name", AUDIO_VIDEO)
def test_attention_maps_collect_only_the_videos_text_attention(class_name):
    maps = visattn.AttentionMaps(prompt=synthetic_prompt(TEXT), drop_special=False)
    with torch.no_grad(), visattn.attach(model(class_name), maps):
        model(class_name)(**inputs(class_name, audio_tokens=TEXT))
    # One video cross-attention over the text per block (two blocks); the audio-to-video attention, whose keys are
    # as many as the text's, counted too before.
    assert maps.contributions == 2


@pytest.mark.parametrize("class_name", AUDIO_VIDEO)
def test_audio_tokens_are_never_the_grid_even_as_many_as_the_video(class_name):
    _, audio, _ = AUDIO_VIDEO[class_name]
    seen = contexts(class_name, audio_tokens=GRID[0] * GRID[1] * GRID[2])
    audio_layers = [name for name in seen if re.search(audio, name)]
    assert len(audio_layers) == 4  # self and text cross-attention, two blocks
    assert all(seen[name].grid is None for name in audio_layers)
    video_self = [ctx for name, ctx in seen.items() if ctx.role == "self" and name not in audio_layers]
    assert video_self and all(ctx.grid == GRID for ctx in video_self)


@pytest.mark.parametrize("class_name", AUDIO_VIDEO)
def test_grid_effects_leave_audio_as_long_as_the_video_unchanged(class_name):
    _, audio, _ = AUDIO_VIDEO[class_name]
    kwargs = inputs(class_name, audio_tokens=GRID[0] * GRID[1] * GRID[2])
    window = visattn.NeighborhoodAttention(kernel_size=(1, 3, 3))
    only_audio = visattn.NeighborhoodAttention(kernel_size=(1, 3, 3), layers=audio)
    with torch.no_grad():
        stock = model(class_name)(**kwargs)
        with visattn.attach(model(class_name), window, backend="reference"):
            windowed = model(class_name)(**kwargs)
        with visattn.attach(model(class_name), only_audio, backend="reference"):
            audio_only = model(class_name)(**kwargs)
    assert not torch.equal(windowed[0], stock[0])  # the video's self-attention is windowed
    # Windowed only where the audio would have been taken for the grid: nothing changes.
    for ours, theirs in zip(audio_only, stock, strict=True):
        assert torch.equal(ours, theirs)


@pytest.mark.parametrize("class_name", AUDIO_VIDEO)
def test_no_shipped_effect_acts_on_stream_layers(class_name):
    for effect in (visattn.PerturbedAttentionGuidance, visattn.AttentionMaps):
        name = effect.__name__
        with pytest.raises(ValueError, match=f"names 'stream' attention, which {name} does not act on"):
            visattn.attach(model(class_name), effect(layers="stream"))
    # Every layer selected: the stream layers carry no hook (no effect acts there), the others do.
    maps = visattn.AttentionMaps(prompt=synthetic_prompt(TEXT), drop_special=False)
    roles = visattn.layer_roles(model(class_name))
    with visattn.attach(model(class_name), maps, visattn.PerturbedAttentionGuidance(layers="self")):
        hooked = {name for name, module in visattn.attention_layers(model(class_name)).items() if layer_hook(module)}
    assert hooked == {name for name, role in roles.items() if role in ("self", "cross")}
    assert "stream" in roles.values()


def test_a_family_role_must_be_a_layer_role():
    with pytest.raises(ValueError, match=r"roles: 'audio' is not a layer role; roles are \('self'"):
        Family("made_up", roles=((r"\.attn$", "audio"),))
