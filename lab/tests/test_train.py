"""Training the toy-world pipelines (lab/train.py): the quick run end to end, seeds, resuming, the stages.

The run-time side (tokenizers, size budget, the loader's message) is tested in tests/toy/test_toy_models.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, WanPipeline

from lab import train
from lab.consistency import recolour
from visattn.toy import models, render_scene, sample_scene

#: The shipped weights' budget (issue 7): both pipelines together.
MAX_SHIPPED_BYTES = 30 * 1024 * 1024


@pytest.fixture(scope="module")
def quick_weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    # a claim left by a killed run on a stage that never finished must not block this one
    (out / ".checkpoints" / "image").mkdir(parents=True)
    (out / ".checkpoints" / "image" / "image-decoder.claim").touch()
    threads = torch.get_num_threads()
    try:
        # both models at once, one child process each (how the shipped weights were trained)
        assert train.main(["--quick", "--parallel", "--out", str(out), "--threads", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_quick_training_saves_loadable_pipelines(quick_weights):
    assert not (quick_weights / ".checkpoints").exists()  # removed once the pipelines are saved
    image = StableDiffusionPipeline.from_pretrained(quick_weights / "image")
    assert image.safety_checker is None
    pixels = image(
        "a small red circle at the top left on a blue background",
        num_inference_steps=2,
        height=models.IMAGE_SIZE,
        width=models.IMAGE_SIZE,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images
    assert pixels.shape == (1, models.IMAGE_SIZE, models.IMAGE_SIZE, 3)
    assert np.isfinite(pixels).all()

    video = WanPipeline.from_pretrained(quick_weights / "video")
    frames = video(
        "a red circle moving right on a black background",
        num_inference_steps=2,
        height=models.VIDEO_SIZE,
        width=models.VIDEO_SIZE,
        num_frames=models.PIPELINE_NUM_FRAMES,  # the pipeline adds one frame when time is not compressed
        max_sequence_length=16,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).frames
    assert frames.shape == (1, models.VIDEO_FRAMES, models.VIDEO_SIZE, models.VIDEO_SIZE, 3)
    assert np.isfinite(frames).all()


def test_saved_pipelines_record_their_latent_statistics_and_fit_the_budget(quick_weights):
    image_vae = json.loads((quick_weights / "image" / "vae" / "config.json").read_text())
    video_vae = json.loads((quick_weights / "video" / "vae" / "config.json").read_text())
    # measured on the training latents, not the constructor defaults
    assert image_vae["scaling_factor"] != pytest.approx(0.18215)
    assert video_vae["latents_std"] != [1.0] * models.LATENT_CHANNELS
    assert video_vae["scale_factor_temporal"] == 1 and video_vae["temperal_downsample"] == [False, False]
    size = sum(f.stat().st_size for f in quick_weights.rglob("*.safetensors"))
    assert size <= MAX_SHIPPED_BYTES


def test_parallel_training_gives_the_image_weights_of_one_process(quick_weights, tmp_path):
    """With --parallel, either process may train the image decoder; the weights are those of a plain run."""
    threads = torch.get_num_threads()
    try:
        assert train.main(["--quick", "--which", "image", "--out", str(tmp_path), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    for component in ("vae", "unet"):
        alone = models.load_toy_pipeline("image", root=tmp_path).components[component]
        shared = models.load_toy_pipeline("image", root=quick_weights).components[component]
        for (name, a), b in zip(alone.state_dict().items(), shared.state_dict().values(), strict=True):
            assert torch.equal(a, b), f"{component}.{name}"


def test_each_model_trains_from_its_default_seed_unless_seed_is_given(quick_weights, tmp_path):
    """The shipped image model is the script's seed-1 run, the video model its seed-0 run (train.DEFAULT_SEEDS)."""
    assert train.DEFAULT_SEEDS == {"image": 1, "video": 0}
    threads = torch.get_num_threads()
    try:
        for seed in (1, 0):
            argv = [
                "--quick",
                "--which",
                "image",
                "--seed",
                str(seed),
                "--threads",
                "1",
                "--out",
                str(tmp_path / f"s{seed}"),
            ]
            assert train.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    default = models.load_toy_pipeline("image", root=quick_weights).unet.state_dict()
    seeded = {seed: models.load_toy_pipeline("image", root=tmp_path / f"s{seed}").unet.state_dict() for seed in (1, 0)}
    assert all(torch.equal(default[name], seeded[1][name]) for name in default)
    assert not all(torch.equal(default[name], seeded[0][name]) for name in default)


def test_load_toy_pipeline_reads_a_trained_folder(quick_weights):
    pipe = models.load_toy_pipeline("image", root=quick_weights)
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.unet.dtype == torch.float32  # stored in fp16, loaded as asked
    video = models.load_toy_pipeline("video", root=quick_weights, dtype=torch.float32)
    assert isinstance(video, WanPipeline)


def test_parallel_training_needs_both_models(capsys):
    with pytest.raises(SystemExit):
        train.main(["--quick", "--parallel", "--which", "image"])
    assert "--parallel" in capsys.readouterr().err


def test_a_killed_stage_resumes_to_the_same_weights(tmp_path):
    plan = train.StagePlan(steps=4, batch=2, lr=1e-2, warmup=1, minutes=1.0)
    target = torch.randn(8, 3)

    def run(folder, stop_at=None):
        torch.manual_seed(0)
        modules = {"linear": torch.nn.Linear(3, 3)}

        def loss(step, generator):
            if step == stop_at:
                raise KeyboardInterrupt
            x = torch.randn(plan.batch, 3, generator=generator)
            return (modules["linear"](x) - x @ target[:3]).pow(2).mean()

        return train.train_stage(
            "image-vae", modules, plan, loss, seed=0, checkpoints=folder, deadline=float("inf"), checkpoint_seconds=0
        )["linear"]

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", stop_at=2)
    resumed = run(tmp_path / "b")
    assert torch.equal(straight.weight, resumed.weight)
    assert torch.load(tmp_path / "b" / "image-vae.pt", weights_only=False)["step"] == plan.steps


def test_the_decoder_stage_trains_the_decoder_and_leaves_the_latents_alone(tmp_path):
    """The decoder stage's premise: with the encoder frozen, the denoisers' latents stay valid."""
    torch.manual_seed(0)
    vae = models.image_components()["vae"]
    encoder = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    decoder = {k: v.clone() for k, v in vae.decoder.state_dict().items()}
    scenes = [sample_scene(i, seed=0) for i in range(4)]
    images = torch.from_numpy(np.stack([np.asarray(render_scene(s)) for s in scenes])).permute(0, 3, 1, 2)
    refined = train.refine_image_decoder(
        vae,
        images.contiguous(),
        train.QUICK_PLAN,
        seed=0,
        device=torch.device("cpu"),
        checkpoints=tmp_path,
        deadline=float("inf"),
    )
    assert all(torch.equal(refined.encoder.state_dict()[k], v) for k, v in encoder.items())
    assert any(not torch.equal(refined.decoder.state_dict()[k], v) for k, v in decoder.items())
    assert not any(p.requires_grad for p in refined.parameters()) and not refined.training
    assert torch.load(tmp_path / "image-decoder.pt", weights_only=False)["step"] == train.QUICK_PLAN.image_decoder.steps


def test_the_shape_contrast_adds_its_term_and_keeps_pairs_paired():
    """The image loss's shape-word contrast: a second pass under swapped shape words, added at its weight."""
    torch.manual_seed(0)
    components = models.image_components()
    scenes = [sample_scene(i, seed=0) for i in range(4)]
    images = torch.from_numpy(np.stack([np.asarray(render_scene(s)) for s in scenes])).permute(0, 3, 1, 2)
    channels = components["unet"].config.in_channels
    latents = torch.randn(len(scenes), channels, 16, 16)
    batches = train._ImageBatches(latents, images, [s.caption for s in scenes], components["tokenizer"])
    encoder, unet = components["text_encoder"], components["unet"]

    def loss(contrast):
        fn = batches.loss_fn(encoder, unet, 4, torch.device("cpu"), contrast=contrast)
        with torch.no_grad():
            return fn(0, torch.Generator().manual_seed(3)).item()

    # an untrained denoiser barely reads its caption, so the swapped word predicts as well as the true one
    assert loss((0.5, 0.1)) - loss(None) == pytest.approx(0.5 * np.log(2), rel=0.2)
    # a paired batch: two scenes, then their colour variants; a variant gets its scene's swap
    pairs = scenes[:2] + [recolour(s, i) for i, s in enumerate(scenes[:2])]
    ids = train._token_ids(components["tokenizer"], [s.caption for s in pairs])
    swapped, has_shape = batches._swapped_captions(ids, paired=True, generator=torch.Generator().manual_seed(0))
    assert has_shape.all()
    first, second = (swapped != ids).chunk(2)
    assert torch.equal(first, second) and first.sum(-1).tolist() == [1, 1]
    assert torch.equal(swapped[:2][first], swapped[2:][second])  # the same replacement word
