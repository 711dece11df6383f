"""HeadSet files and unions, HeadHunter's greedy search (planted head, resume, progress), and ``visattn hunt``."""

from __future__ import annotations

import contextlib
import functools
import io
import json

import numpy as np
import pytest
from PIL import Image

import visattn
from visattn.cli import main
from visattn.guidance import HeadSet, hunt_heads, resolve_objective
from visattn.guidance.head_hunter import HuntStateError, contrast, saturation, sharpness
from visattn.layers import matches
from visattn.tiny import tiny_denoiser, tiny_pipeline

MID = "mid_block.attentions.0.transformer_blocks.0.attn1"
UP = "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
PLANTED = (UP, 1)
CALL = {"num_inference_steps": 2}
ONE = {"heads_per_round": 1, "progress": False, **CALL}  # visattn's one-head-per-round variant


@functools.cache
def pipeline():
    return tiny_pipeline("unet")


@functools.cache
def candidates() -> HeadSet:
    return HeadSet.all_heads(pipeline(), [MID, UP])


@functools.cache
def reference() -> np.ndarray:
    """Images generated with PAG on the planted head only: the target the synthetic objective measures against."""
    pipe = pipeline()
    with visattn.attach(pipe, HeadSet([PLANTED]).effect(scale=3.0)):
        # CFG off and seed 0 for the first prompt: the search's defaults (the authors')
        return pipe("a red circle", generator=_generator(0), output_type="np", guidance_scale=0.0, **CALL).images


def _generator(seed):
    import torch

    return [torch.Generator("cpu").manual_seed(seed)]


class Counting:
    """Objective = minus the mean distance to the planted head's images; counts its calls."""

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self, images, prompts):
        if self.fail_after is not None and self.calls == self.fail_after:
            raise KeyboardInterrupt  # a run killed in the middle of a round
        self.calls += 1
        assert prompts == ["a red circle"] and images.shape == reference().shape
        return -float(np.abs(images - reference()).mean())


# --- HeadSet --------------------------------------------------------------------------------------------------------
def test_head_set_is_ordered_and_deduplicated_and_unions_compose():
    a = HeadSet([(MID, 1), (UP, 0), (MID, 1)], model="m")
    b = HeadSet([(UP, 0), (UP, 1)])
    assert a.pairs == ((MID, 1), (UP, 0))
    union = a | b
    assert union.pairs == ((MID, 1), (UP, 0), (UP, 1)) and union.model == "m"
    assert union.by_layer() == {MID: [1], UP: [0, 1]}
    assert (UP, 1) in union and len(union) == 3
    with pytest.raises(ValueError, match="different models: 'm' and 'other'"):
        a | HeadSet([(UP, 1)], model="other")


def test_to_heads_selects_exactly_its_layers():
    # FLUX: "transformer_blocks.0.attn" is a substring of "single_transformer_blocks.0.attn".
    heads = HeadSet([("transformer_blocks.0.attn", 1)]).to_heads()
    (key,) = heads
    assert heads[key] == [1]
    assert matches(key, "transformer_blocks.0.attn") and not matches(key, "single_transformer_blocks.0.attn")
    HeadSet([("transformer_blocks.0.attn", 1)]).validate(tiny_denoiser("flux"))


def test_head_set_save_load_round_trip_and_format_checks(tmp_path):
    heads = HeadSet([(MID, 1), (UP, 0)], model="visattn/tiny-sd", metadata={"objective": "sharpness"})
    path = heads.save(tmp_path / "sub" / "heads.json")
    data = json.loads(path.read_text())
    assert data["format"] == "visattn.head_set" and data["version"] == 1 and data["model"] == "visattn/tiny-sd"
    loaded = HeadSet.load(path)
    assert loaded == heads and loaded.metadata == {"objective": "sharpness"}
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="format version 99; this visattn reads version 1"):
        HeadSet.load(path)
    path.write_text("{}")
    with pytest.raises(ValueError, match="is not a visattn head set"):
        HeadSet.load(path)


def test_head_set_validation_names_the_layer_and_both_numbers():
    pipe = pipeline()
    HeadSet([(MID, 1)]).validate(pipe)
    with pytest.raises(ValueError, match="head 2 is out of range for layer .*attn1', which has 2 heads"):
        HeadSet([(MID, 2)]).validate(pipe)
    with pytest.raises(ValueError, match="'mid_block.attn9' is not a self/joint attention layer.*available layers"):
        HeadSet([("mid_block.attn9", 0)]).validate(pipe)
    with pytest.raises(ValueError, match="head indices must be integers >= 0; got -1"):
        HeadSet([(MID, -1)])


def test_all_heads_lists_every_self_attention_head():
    every = HeadSet.all_heads(pipeline())
    assert len(every) == 7 * 2  # seven self-attention layers with two heads each; cross-attention is excluded
    assert all(name.endswith("attn1") for name in every.layers)
    assert candidates().pairs == ((UP, 0), (UP, 1), (MID, 0), (MID, 1))  # model order


def test_all_heads_reads_head_counts_an_attention_class_names_num_heads():
    # Kandinsky 5's attention module names its head count num_heads (diffusers' Attention: heads).
    model = tiny_denoiser("kandinsky5")
    every = HeadSet.all_heads(model)
    # The visual blocks' self-attention (the text encoder block's is the family's "text" role).
    self_layers = [f"visual_transformer_blocks.{i}.self_attention" for i in range(2)]
    assert set(every.layers) == set(self_layers)
    assert len(every) == sum(model.get_submodule(name).num_heads for name in self_layers) == 2 * 2


def test_head_set_effect_perturbs_only_its_heads():
    pipe = pipeline()
    base = pipe("a red circle", generator=_generator(0), output_type="np", guidance_scale=0.0, **CALL).images
    with visattn.attach(pipe, HeadSet([PLANTED]).effect(scale=3.0)):
        one = pipe("a red circle", generator=_generator(0), output_type="np", guidance_scale=0.0, **CALL).images
    np.testing.assert_array_equal(one, reference())
    assert np.abs(one - base).max() > 1e-4
    with pytest.raises(ValueError, match="empty HeadSet"):
        HeadSet().effect()


# --- objectives -------------------------------------------------------------------------------------------------------
def test_builtin_objectives_measure_what_they_say():
    flat = np.full((1, 8, 8, 3), 0.5)
    checker = np.indices((8, 8)).sum(axis=0) % 2
    board = np.repeat(checker[None, :, :, None], 3, axis=-1).astype(float)
    red = np.zeros((1, 8, 8, 3))
    red[..., 0] = 1.0
    assert sharpness(flat, []) == 0 and sharpness(board, []) > 0.5
    assert contrast(flat, []) == 0 and contrast(board, []) == pytest.approx(0.5)
    assert saturation(flat, []) == 0 and saturation(red, []) == 1
    pil = [Image.fromarray((board[0] * 255).astype(np.uint8))]
    assert sharpness(pil, []) == pytest.approx(sharpness(board, []))


def test_resolve_objective_by_name_module_and_file(tmp_path):
    assert resolve_objective("contrast") == (contrast, "contrast")
    function, name = resolve_objective("visattn.guidance.head_hunter:saturation", minimize=True)
    assert name == "-visattn.guidance.head_hunter:saturation"
    assert function(np.zeros((1, 2, 2, 3)) + [1.0, 0, 0], []) == -1.0
    source = tmp_path / "my_objective.py"
    source.write_text("def brightness(images, prompts):\n    return float(images.mean())\n")
    function, _ = resolve_objective(f"{source}:brightness")
    assert function(np.ones((1, 2, 2, 3)), []) == 1.0
    with pytest.raises(ValueError, match="is not a built-in objective"):
        resolve_objective("blurriness")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        resolve_objective("no_such_module:f")
    with pytest.raises(ValueError, match="has no function 'missing'"):
        resolve_objective(f"{source}:missing")


# --- the search -------------------------------------------------------------------------------------------------------
def test_finds_the_planted_head_in_round_one(capsys):
    objective = Counting()
    result = hunt_heads(pipeline(), "a red circle", objective, candidates=candidates(), rounds=1, **ONE)
    assert result.history[0].head == PLANTED and result.history[0].score == 0.0
    assert result.heads.pairs == (PLANTED,)
    assert max(result.scores[0].values()) == 0.0 and sorted(result.scores[0]) == sorted(candidates())
    assert all(score < 0 for pair, score in result.scores[0].items() if pair != PLANTED)
    assert result.baseline_score < 0
    assert objective.calls == len(candidates()) + 1  # every candidate once, plus the unguided baseline
    assert capsys.readouterr().err == ""  # progress off: nothing on stderr
    assert result.heads.metadata["history"] == [{"round": 1, "layer": UP, "head": 1, "score": 0.0}]


def test_resume_does_not_reevaluate_finished_rounds_or_evaluations(tmp_path):
    state = tmp_path / "state.json"
    n = len(candidates())
    first = Counting()
    one = hunt_heads(pipeline(), "a red circle", first, candidates(), rounds=1, state_path=state, **ONE)
    assert first.calls == n + 1

    extended = Counting()
    two = hunt_heads(pipeline(), "a red circle", extended, candidates(), rounds=2, state_path=state, **ONE)
    assert extended.calls == n - 1  # only round 2: the candidates left after round 1
    assert two.history[0] == one.history[0] and len(two.history) == 2
    assert two.heads.pairs[0] == PLANTED and len(set(two.heads.pairs)) == 2

    again = Counting()
    hunt_heads(pipeline(), "a red circle", again, candidates(), rounds=2, state_path=state, **ONE)
    assert again.calls == 0


def test_a_killed_run_continues_where_it_stopped(tmp_path):
    state = tmp_path / "state.json"
    killed = Counting(fail_after=3)  # baseline and two candidates finish, the third evaluation is interrupted
    with pytest.raises(KeyboardInterrupt):
        hunt_heads(pipeline(), "a red circle", killed, candidates(), rounds=1, state_path=state, **ONE)
    saved = json.loads(state.read_text())
    assert saved["baseline"] is not None and len(saved["rounds"][0]["scores"]) == 2
    resumed = Counting()
    result = hunt_heads(pipeline(), "a red circle", resumed, candidates(), rounds=1, state_path=state, **ONE)
    assert resumed.calls == len(candidates()) - 2
    assert result.history[0].head == PLANTED and len(result.scores[0]) == len(candidates())


def test_a_state_file_of_another_search_is_refused(tmp_path):
    state = tmp_path / "state.json"
    hunt_heads(pipeline(), "a red circle", Counting(), candidates(), rounds=1, state_path=state, progress=False, **CALL)
    with pytest.raises(HuntStateError, match="its scale is 3.0, this search's is 2.0"):
        hunt_heads(
            pipeline(), "a red circle", Counting(), candidates(), scale=2.0, state_path=state, progress=False, **CALL
        )


def test_progress_bar_goes_to_stderr(capsys):
    hunt_heads(pipeline(), "a red circle", Counting(), [PLANTED], rounds=1, progress=True, **CALL)
    assert "HeadHunter" in capsys.readouterr().err


def test_bad_search_parameters_raise_clear_errors():
    pipe = pipeline()
    with pytest.raises(ValueError, match="rounds must be a positive integer; got 0"):
        hunt_heads(pipe, "p", "sharpness", candidates(), rounds=0)
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]; got 0"):
        hunt_heads(pipe, "p", "sharpness", candidates(), strength=0)
    with pytest.raises(ValueError, match="sets generator itself"):
        hunt_heads(pipe, "p", "sharpness", candidates(), generator=None)
    with pytest.raises(ValueError, match="head 3 is out of range"):
        hunt_heads(pipe, "p", "sharpness", [(MID, 3)])
    with pytest.raises(ValueError, match="the objective returned nan"):
        hunt_heads(pipe, "p", lambda images, prompts: float("nan"), [PLANTED], progress=False, **CALL)
    with pytest.raises(ValueError, match=r"heads_per_round must be an integer >= 1 .*; got 0"):
        hunt_heads(pipe, "p", "sharpness", candidates(), heads_per_round=0)
    with pytest.raises(ValueError, match=r"guidance_scale must be None .* or a finite number >= 0 .*; got -1"):
        hunt_heads(pipe, "p", "sharpness", candidates(), guidance_scale=-1)
    with pytest.raises(ValueError, match=r"seeds must be None .*; got \[-1\]"):
        hunt_heads(pipe, "p", "sharpness", candidates(), seeds=[-1])


# --- the command line -------------------------------------------------------------------------------------------------
def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_cli_hunts_writes_heads_and_resumes(tmp_path):
    out, state = tmp_path / "heads.json", tmp_path / "state.json"
    args = ["hunt", "--prompt", "a red circle", "--prompt", "a blue square", "--objective", "contrast"]
    args += ["--layers", "mid", "--steps", "2", "--state", str(state), "--out", str(out), "--model", "visattn/tiny-sd"]
    args += ["--heads-per-round", "1"]
    code, stdout, stderr = run_main(*args, "--rounds", "1")
    assert code == 0, stderr
    assert stdout.strip() == str(out)
    assert "round 1: mid_block.attentions.0.transformer_blocks.0.attn1 head" in stderr
    heads = HeadSet.load(out)
    assert heads.model == "visattn/tiny-sd" and len(heads) == 1 and heads.layers == (MID,)
    assert heads.metadata["objective"] == "contrast" and heads.metadata["prompts"] == ["a red circle", "a blue square"]
    heads.validate(pipeline())

    code, _, stderr = run_main(*args, "--rounds", "2", "--quiet")
    assert code == 0 and stderr == ""
    two = HeadSet.load(out)
    assert len(two) == 2 and two.pairs[0] == heads.pairs[0] and set(two.pairs) == {(MID, 0), (MID, 1)}
    assert len(json.loads(state.read_text())["rounds"]) == 2


def test_cli_custom_objective_and_minimize(tmp_path):
    source = tmp_path / "objective.py"
    source.write_text("def red(images, prompts):\n    return float(images[..., 0].mean())\n")
    out = tmp_path / "heads.json"
    code, _, stderr = run_main(
        "hunt", "--prompt", "x", "--objective", f"{source}:red", "--minimize", "--layers", "mid",
        "--rounds", "1", "--steps", "1", "--out", str(out), "--quiet",
    )  # fmt: skip
    assert code == 0, stderr
    assert HeadSet.load(out).metadata["objective"] == f"-{source}:red"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--objective", "nope"], "objective='nope' is not a built-in objective"),
        (["--layers", "nowhere"], "--layers: layers='nowhere' matches no attention layer"),
        (["--model", "/no/such/folder"], "cannot load model"),
    ],
)
def test_cli_errors_are_one_line(argv, message, tmp_path):
    code, stdout, stderr = run_main("hunt", "--prompt", "x", "--out", str(tmp_path / "h.json"), *argv)
    assert code == 2 and stdout == ""
    assert stderr.startswith("visattn hunt: error: ") and message in stderr and len(stderr.strip().splitlines()) == 1


def test_cli_rejects_bad_numbers():
    code, _, stderr = run_main("hunt", "--prompt", "x", "--rounds", "0")
    assert code == 2 and "argument --rounds: invalid value 0" in stderr
    code, _, stderr = run_main("hunt", "--prompt", "x", "--strength", "1.5")
    assert code == 2 and "argument --strength: invalid value 1.5" in stderr
    code, _, stderr = run_main("hunt", "--prompt", "x", "--heads-per-round", "0")
    assert code == 2 and "argument --heads-per-round: invalid value 0" in stderr
