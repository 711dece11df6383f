"""The toy model's guidance and re-weighting defaults visibly change its images (issue 29, item 2).

The defaults are the choices of ``visattn eval --studies guidance_sweep`` (:mod:`visattn.eval.guidance_sweep_study`);
here each one runs through the public API on the shipped toy model, on one caption at few steps, and its change
is checked against a threshold well below what the sweep measured and well above the mid block's no-op.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import visattn
from visattn.defaults import DEFAULT_MODEL, guidance_defaults, load_default_pipeline, reweight_defaults
from visattn.effect_specs import build_effect
from visattn.effects import PerturbedAttentionGuidance, PromptToPrompt
from visattn.eval.guidance_sweep_study import choose, color_change, object_region, pixel_change

CAPTION = "a large yellow circle in the center on a gray background"
STEPS = 10
#: Mean absolute pixel change (0-1) a default must reach: about 1/200 of the range over the whole 64 x 64 image,
#: i.e. about 0.05 on the object, which covers a tenth of it (PAG on the mid block: about 1e-4).
VISIBLE_CHANGE = 0.004
#: Change of the object's mean colour (0-1) a re-weighting default must reach (0.03 is 8 of 255 levels).
VISIBLE_COLOR_CHANGE = 0.03


@pytest.fixture(scope="module")
def pipe():
    pipe = load_default_pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generate(pipe, *effects) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    with visattn.attach(pipe, *effects):
        image = pipe(CAPTION, num_inference_steps=STEPS, generator=generator, output_type="np").images[0]
    return (image * 255).round().astype(np.uint8)


def test_the_toy_models_guidance_defaults_visibly_change_the_image(pipe):
    specs = guidance_defaults(DEFAULT_MODEL)
    assert set(specs) == {"pag", "softpag", "seg"}
    plain = _generate(pipe)
    changes = {method: pixel_change(plain, _generate(pipe, build_effect(spec))) for method, spec in specs.items()}
    assert all(change >= VISIBLE_CHANGE for change in changes.values()), changes
    # where the Stable Diffusion default (the mid block) acts on this model, the image hardly moves
    mid = pixel_change(plain, _generate(pipe, PerturbedAttentionGuidance(specs["pag"]["scale"], layers="mid")))
    assert mid < VISIBLE_CHANGE / 10, mid


@pytest.mark.parametrize("which", ["weight", "weaken"])
def test_the_toy_models_reweighting_defaults_visibly_change_the_words_region(pipe, which):
    weight = reweight_defaults(DEFAULT_MODEL)[which]
    edit = PromptToPrompt.reweight(CAPTION, {"yellow": weight})
    with visattn.attach(pipe, edit):
        images = pipe(edit.prompts, generator=edit.generator(0), num_inference_steps=STEPS, output_type="np").images
    source, target = (images * 255).round().astype(np.uint8)
    change = color_change(source, target, object_region(source))
    assert change >= VISIBLE_COLOR_CHANGE, change


def test_the_demo_offers_the_measured_defaults_on_the_toy_model(pipe):
    from visattn.app.handlers import default_pag_layers, pag_layer_choices
    from visattn.app.ui import TOY_EXAMPLES

    layers = guidance_defaults(DEFAULT_MODEL)["pag"]["layers"]
    assert default_pag_layers(pipe, DEFAULT_MODEL) == [layers]
    assert pag_layer_choices(pipe, DEFAULT_MODEL)[0] == (f"{layers} (default)", layers)
    assert default_pag_layers(pipe) == ["mid"]  # a pipeline not named as the toy model: its family's default
    pag_examples = [row for row in TOY_EXAMPLES if row[-1] > 0]
    assert pag_examples and all(row[-1] == guidance_defaults(DEFAULT_MODEL)["pag"]["scale"] for row in pag_examples)


def test_guidance_defaults_are_copies_and_empty_for_other_models():
    specs = guidance_defaults(None)
    specs["pag"]["scale"] = -1.0
    assert guidance_defaults(DEFAULT_MODEL)["pag"]["scale"] > 0
    assert guidance_defaults("someone/else") == {} and reweight_defaults("someone/else") == {}


def test_the_sweep_chooses_the_largest_change_that_keeps_the_accuracy():
    rows = [
        {"method": "PAG", "layers": "mid", "scale": 3.0, "change": 0.0001, "accuracy_change": 0.0},
        {"method": "PAG", "layers": "up", "scale": 3.0, "change": 0.01, "accuracy_change": -0.04},
        {"method": "PAG", "layers": "up", "scale": 8.0, "change": 0.02, "accuracy_change": -0.2},
        {"method": "SEG", "layers": "up", "scale": 8.0, "change": 0.02, "accuracy_change": -0.2},
    ]
    assert choose(rows, "PAG", 0.05)["scale"] == 3.0
    assert choose(rows, "PAG", 0.01)["layers"] == "mid"
    assert choose(rows, "SEG", 0.05) is None
    region = np.zeros((4, 4), dtype=bool)
    region[:2] = True
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = a.copy()
    b[:2] = 51  # the region's mean colour moves by 51 / 255 = 0.2, the whole image's by half of that
    assert color_change(a, b, region) == pytest.approx(0.2)
    assert pixel_change(a, b) == pytest.approx(0.1) and pixel_change(a, b, region) == pytest.approx(0.2)
    assert color_change(a, b, np.zeros((4, 4), dtype=bool)) is None


def test_batch_guidance_specs_without_layers_act_where_the_toy_model_shows_them():
    """A batch job's {"type": "pag"} on the embedded toy model perturbs the measured layers (the authors' mid
    block moves its pixels by 1e-4); given layers, other effects and other models stay as written."""
    from visattn.batch.jobs import parse_job
    from visattn.defaults import with_guidance_defaults

    measured = guidance_defaults(DEFAULT_MODEL)
    job = parse_job({"id": "j", "prompt": "a red circle", "effects": [{"type": "pag"}, {"type": "seg", "scale": 2}]}, 1)
    pag, seg = job.build_effects(model=DEFAULT_MODEL)
    assert pag.layers == (measured["pag"]["layers"],) and pag.scale == measured["pag"]["scale"]
    assert seg.layers == (measured["seg"]["layers"],) and seg.scale == 2
    soft = with_guidance_defaults({"type": "PerturbedAttentionGuidance", "strength": 0.5}, DEFAULT_MODEL)
    assert soft["layers"] == measured["softpag"]["layers"]
    assert with_guidance_defaults({"type": "pag", "layers": "mid"}, DEFAULT_MODEL) == {"type": "pag", "layers": "mid"}
    assert with_guidance_defaults({"type": "pag"}, "runwayml/stable-diffusion-v1-5") == {"type": "pag"}
    assert with_guidance_defaults({"type": "neighborhood", "kernel_size": 3}, DEFAULT_MODEL)["kernel_size"] == 3
