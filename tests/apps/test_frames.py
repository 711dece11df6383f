"""num_frames_argument: a video pipeline returns the number of frames asked for, without a spurious warning."""

from __future__ import annotations

import logging

import pytest
import torch

from visattn.defaults import TOY_VIDEO_MODEL, load_embedded_pipeline
from visattn.frames import frame_rounding_quieted, makes_video, num_frames_argument
from visattn.tiny import tiny_pipeline
from visattn.toy.models import weights_root

needs_toy_video = pytest.mark.skipif(
    not (weights_root() / "video" / "model_index.json").is_file(), reason="the toy video weights are not shipped"
)


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _clip(pipe, num_frames: int) -> int:
    out = pipe(
        "a red circle moving right on a black background",
        num_frames=num_frames,
        height=32,
        width=32,
        num_inference_steps=1,
        max_sequence_length=8,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    return out.frames[0].shape[0]


@needs_toy_video
@pytest.mark.parametrize("frames", [2, 5, 9])
def test_toy_video_makes_exactly_the_frames_asked_for_and_says_nothing(frames):
    pipe = load_embedded_pipeline(TOY_VIDEO_MODEL)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.vae_scale_factor_temporal == 1
    # diffusers' loggers do not propagate to the root logger, so listen on the pipeline module's own
    logger, heard = logging.getLogger(type(pipe).__module__), _Recorder()
    logger.addHandler(heard)
    try:
        with frame_rounding_quieted(pipe):
            made = _clip(pipe, num_frames_argument(pipe, frames))
        assert made == frames
        assert not heard.messages
        # outside the block the pipeline's own warning is back (the filter does not leak)
        assert _clip(pipe, frames) == frames + 1
        assert any("has to be divisible by 1" in m for m in heard.messages)
    finally:
        logger.removeHandler(heard)


def test_makes_video_tells_video_pipelines_from_image_ones():
    assert makes_video(tiny_pipeline("wan")) and makes_video(tiny_pipeline("cogvideox"))
    assert not makes_video(tiny_pipeline("unet")) and not makes_video(tiny_pipeline("flux"))


def test_pipelines_with_temporal_compression_get_the_value_unchanged():
    wan = tiny_pipeline("wan")
    assert wan.vae_scale_factor_temporal == 4
    assert [num_frames_argument(wan, n) for n in (1, 9, 81)] == [1, 9, 81]
    assert num_frames_argument(object(), 7) == 7  # not a Wan pipeline: passed through


@pytest.mark.parametrize("frames", [0, -3, 2.5, True, "9"])
def test_bad_frame_counts_name_the_parameter(frames):
    with pytest.raises(ValueError, match=r"frames=.* must be an integer >= 1"):
        num_frames_argument(tiny_pipeline("wan"), frames)


@needs_toy_video
def test_one_frame_is_too_short_for_a_pipeline_that_always_adds_one():
    with pytest.raises(ValueError, match="frames=1 is too short"):
        num_frames_argument(load_embedded_pipeline(TOY_VIDEO_MODEL), 1)


def test_latent_frames_follow_the_vae_and_the_temporal_patch():
    from types import SimpleNamespace

    from visattn.frames import latent_frames

    wan = tiny_pipeline("wan")  # VAE temporal factor 4, patch (1, 2, 2)
    assert [latent_frames(wan, frames) for frames in (1, 5, 9, 81)] == [1, 2, 3, 21]

    class Hunyuan:  # HunyuanVideo's layout: a separate patch_size_t
        vae_scale_factor_temporal = 4
        transformer = SimpleNamespace(config={"patch_size": 2, "patch_size_t": 1})

        def __call__(self, prompt, num_frames=129): ...

    assert latent_frames(Hunyuan(), 129) == 33
    with pytest.raises(ValueError, match="makes images"):
        latent_frames(tiny_pipeline("unet"), 9)
    with pytest.raises(ValueError, match="frames=0"):
        latent_frames(wan, 0)
