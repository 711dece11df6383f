"""Context-parallel plans visattn ships for families diffusers gives none: 2 gloo processes on CPU.

One spawn runs every case on both ranks (``harness.parallel``); each test compares a case with the same
case in one process, the oracle. With visattn's plan the stock split reproduces one process, attaching visattn
with no effect changes nothing, and effects under Ulysses equal one process: HunyuanVideo (joint [video, text]
attention, both streams split after its token refiner, a padded prompt), Wan-VACE (control blocks beside Wan's,
cross-attention over replicated text), Motif-Video (joint [video, text] attention with a text cross-attention and
decoder blocks, a padded prompt), Kandinsky 5 (split by frames, the text per visual block), Kandinsky 6 (video
tokens split at the first fused block and gathered at the last, replicated audio) and HunyuanVideo Framepack
(packed history, a key mask cut per rank, several rows and one row). Classes with no plan anywhere are refused by
name.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from harness.parallel import Case, CaseRuns

pytestmark = pytest.mark.slow

#: the bar of the issue for effects under Ulysses (fp32, max abs diff against one process)
TOLERANCE = 1e-5

#: the tiny models split with a plan visattn ships (keys of ``harness.parallel.MODELS``)
PLANNED = (
    "hunyuan_video",
    "wan_vace",
    "motif_video",
    "kandinsky5",
    "kandinsky6",
    "hunyuan_video_framepack",
    "framepack_one_row",
)

#: the effects checked on each (Framepack's history latents are placed as other tokens: grid effects keep them
#: visible to every grid query, text effects read its text)
_CHECKED = {model: ("pag", "neighborhood", "maps", "p2p") for model in PLANNED} | {
    "framepack_one_row": ("pag", "neighborhood", "maps"),  # one row: no source/target pair to edit
}

STOCK = tuple(Case(model, order="none") for model in PLANNED)
NO_EFFECT = tuple(Case(model, order=order) for model in PLANNED for order in ("after", "before"))
EFFECTS = tuple(Case(model, (effect,)) for model in PLANNED for effect in _CHECKED[model])
CASES = STOCK + NO_EFFECT + EFFECTS


RUNS = CaseRuns(CASES)
single, _ranks = RUNS.single, RUNS.ranks


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


def test_plans_come_from_diffusers_then_visattn_then_none():
    from visattn.parallel import context_parallel_plan, plan_source
    from visattn.tiny import tiny_denoiser

    assert plan_source(tiny_denoiser("wan")) == "diffusers"
    assert context_parallel_plan(tiny_denoiser("wan")) is type(tiny_denoiser("wan"))._cp_plan
    hunyuan = tiny_denoiser("hunyuan_video")
    assert plan_source(hunyuan) == "visattn"
    assert set(context_parallel_plan(hunyuan)) == {"", "x_embedder", "rope", "context_embedder", "proj_out"}
    assert plan_source(tiny_denoiser("wan_vace")) == "visattn"
    assert plan_source(tiny_denoiser("motif_video")) == "visattn"
    assert plan_source(tiny_denoiser("kandinsky5")) == "visattn"
    assert plan_source(tiny_denoiser("kandinsky6")) == "visattn"
    assert plan_source(tiny_denoiser("hunyuan_video_framepack")) == "visattn"
    # CogVideoX's processor calls torch's SDPA itself, not diffusers' dispatcher: no Ulysses, so no plan.
    assert plan_source(tiny_denoiser("cogvideox")) == "none"


def test_every_video_class_has_a_plan_or_a_reason_in_the_coverage_table():
    # issue 26 item 4: each video class of the coverage list is split with a plan (diffusers' or visattn's), or
    # its context parallel column says why not.
    from harness.coverage_table import _context_parallel, core_context_parallel

    from visattn.families import declared_family
    from visattn.tiny.denoisers import TINY_DENOISERS

    bare = []
    for entry in TINY_DENOISERS:
        model = entry.build()
        family = declared_family(model)
        if family is not None and family.video and _context_parallel(model) == "none":
            bare.append(entry.class_name)
    assert not bare
    # The core families (CogVideoX, HunyuanVideo, Wan, ...) are listed below the table.
    core = {name: split for name, _, split in core_context_parallel()}
    assert core["CogVideoXTransformer3DModel"] == "none (processors call SDPA without diffusers' dispatcher)"
    assert core["HunyuanVideoTransformer3DModel"] == "visattn plan"
    assert "none" not in core.values()


def test_a_class_with_no_plan_is_refused_by_name():
    import visattn
    from visattn.tiny import tiny_denoiser

    with pytest.raises(ValueError, match="CogVideoXTransformer3DModel has no context-parallel plan"):
        visattn.enable_context_parallelism(tiny_denoiser("cogvideox"), config=None)


@pytest.mark.parametrize("case", STOCK, ids=lambda case: case.name)
def test_stock_split_with_visattn_plan_reproduces_one_process(case):
    for rank in _ranks(case):
        assert "error" not in rank, rank.get("error")
        assert _max_diff(rank["output"], single(case)["output"]) <= TOLERANCE


@pytest.mark.parametrize("case", NO_EFFECT, ids=lambda case: case.name)
def test_attaching_with_no_effect_changes_nothing_and_detach_restores(case):
    stock = _ranks(Case(case.model, order="none"))
    for rank, plain in zip(_ranks(case), stock, strict=True):
        assert np.array_equal(rank["output"], plain["output"])
        assert np.array_equal(rank["after_detach"], plain["output"])


def test_a_gather_point_names_the_last_module_of_a_list_whatever_the_config():
    from visattn.parallel import submodule_at
    from visattn.tiny import tiny_denoiser

    model = tiny_denoiser("kandinsky6")
    blocks = model.visual_transformer_blocks
    assert submodule_at(model, "visual_transformer_blocks.-1") is blocks[len(blocks) - 1]
    assert submodule_at(model, "visual_transformer_blocks.0.video_dec_block") is blocks[0].video_dec_block
    with pytest.raises(ValueError, match=r"index -9 is outside a list of 2 modules"):
        submodule_at(model, "visual_transformer_blocks.-9")
    with pytest.raises(ValueError, match=r"Kandinsky6Transformer3DModel has no submodule 'proj_out'"):
        submodule_at(model, "proj_out")


@pytest.mark.parametrize("case", EFFECTS, ids=lambda case: case.name)
def test_effects_under_ulysses_equal_one_process(case):
    oracle = single(case)
    plain_oracle = single(Case(case.model, order="none"))["output"]
    # The effect changes the output (AttentionMaps, an observer, does not), so a dropped effect fails.
    assert _max_diff(oracle["output"], plain_oracle) > 1e-3 or "maps" in case.effects
    stock = _ranks(Case(case.model, order="none"))
    # The split's own rounding, which guidance arithmetic carries: PAG at scale 2 returns 3 cond - 2 perturbed, so
    # a difference e of both predictions may reach 5 e. It matters for Kandinsky 5 only, whose processor rounds the
    # queries and keys to bfloat16 after RoPE: the stock split differs from one process by 4.7e-6 there.
    carried = 5 * max(_max_diff(plain["output"], plain_oracle) for plain in stock)
    for rank, plain in zip(_ranks(case), stock, strict=True):
        assert "error" not in rank, rank.get("error")
        assert _max_diff(rank["output"], oracle["output"]) <= TOLERANCE + carried
        assert np.array_equal(rank["after_detach"], plain["output"])
        if "maps" in oracle:
            # Every rank ends with the maps one process makes.
            assert _max_diff(rank["maps"], oracle["maps"]) <= TOLERANCE


@pytest.mark.parametrize("class_name", ["MotifVideoTransformer3DModel", "Flux2Transformer2DModel"])
def test_a_text_the_degree_cannot_split_is_refused_before_any_step(class_name):
    """Text split at its embedder (Motif-Video's plan) or as a forward input (FLUX.2's) must divide by the degree:
    a ValueError naming the count and the degree, instead of diffusers' bare assertion inside the split."""
    from types import SimpleNamespace

    from visattn.parallel import check_model
    from visattn.tiny.denoisers import tiny_denoiser_entry

    entry = tiny_denoiser_entry(class_name)
    model = entry.build()
    config = SimpleNamespace(ring_degree=1, ulysses_degree=2, ring_anything=False)
    model._parallel_config = SimpleNamespace(context_parallel_config=config)
    text_names = ("encoder_hidden_states",)
    grid = (entry.grid[0], entry.grid[1], entry.grid[2] - entry.grid[2] % 2)
    check_model(model, grid, 8, text_names)  # even: accepted
    with pytest.raises(ValueError, match=r"text of this call has 7 tokens.*degree of 2 \(ulysses_degree=2"):
        check_model(model, grid, 7, text_names)


def test_kandinsky5_split_by_frames_refuses_frames_text_and_heads_the_degree_cannot_split():
    """Kandinsky 5's plan splits the latents by frames and each visual block's text: the frame count (not the token
    count) and the text length must divide by the degree, and the degree must divide the heads its attention modules
    name ``num_heads`` (its config names no head count). Each refusal names the count and the degree."""
    from types import SimpleNamespace

    from visattn.parallel import check_model
    from visattn.tiny import tiny_denoiser

    model = tiny_denoiser("kandinsky5")
    heads = {module.num_heads for module in model.modules() if hasattr(module, "num_heads")}
    assert heads == {2}

    def split(ulysses: int) -> None:
        config = SimpleNamespace(ring_degree=1, ulysses_degree=ulysses, ring_anything=False)
        for module in model.modules():
            if hasattr(module, "processor"):
                module.processor._parallel_config = SimpleNamespace(context_parallel_config=config)
        model._parallel_config = SimpleNamespace(context_parallel_config=config)

    split(2)
    text_names = ("encoder_hidden_states",)
    check_model(model, (4, 3, 3), 8, text_names)  # 4 frames of 9 tokens, 8 text tokens: accepted
    with pytest.raises(ValueError, match=r"latent grid of this call has 3 frames.*degree of 2 \(ulysses_degree=2"):
        check_model(model, (3, 4, 4), 8, text_names)  # 48 tokens split evenly, 3 frames do not
    with pytest.raises(ValueError, match=r"text of this call has 7 tokens.*degree of 2"):
        check_model(model, (4, 3, 3), 7, text_names)
    split(4)
    with pytest.raises(ValueError, match=r"ulysses_degree=4 does not divide the 2 attention heads of Kandinsky5"):
        check_model(model, (4, 4, 4), 8, text_names)


def test_framepack_refuses_packed_latents_or_a_condition_the_degree_cannot_split():
    """Framepack's plan splits the packed [history, window] latents and the [image, text] condition, counts neither
    the grid nor the text gives (the family's cp_split_counts): each must divide the degree, and with one row the
    forward keeps only the prompt's valid tokens, whose count is then the one to split."""
    from types import SimpleNamespace

    from harness.parallel import _model

    from visattn.parallel import check_model
    from visattn.tiny import tiny_denoiser

    model = tiny_denoiser("hunyuan_video_framepack")
    config = SimpleNamespace(ring_degree=1, ulysses_degree=2, ring_anything=False)
    model._parallel_config = SimpleNamespace(context_parallel_config=config)
    inputs = _model("hunyuan_video_framepack").inputs(torch.Generator().manual_seed(0))

    def check(**changed) -> None:
        check_model(model, (2, 4, 4), 8, ("encoder_hidden_states",), (), ((), {**inputs, **changed}))

    check()  # 32 + 32 + 4 + 2 = 70 packed latent tokens, 2 + 8 condition tokens: accepted
    with pytest.raises(ValueError, match=r"packed latents of this call has 69 tokens.*degree of 2"):
        check(latents_history_4x=torch.zeros(2, 4, 4, 8, 8))  # the 4x history pools to 1 token instead of 2
    one_row = {name: value[:1] for name, value in inputs.items() if name.startswith(("encoder", "image"))}
    check(**one_row)  # the first row's 8 valid text tokens
    with pytest.raises(ValueError, match=r"condition \(image and text\) of this call has 7 tokens"):
        check(**{**one_row, "encoder_attention_mask": torch.tensor([[1] * 5 + [0] * 3])})
    # Ring gives every key shard the same mask, and this rank's cut fits its own keys only.
    model._parallel_config = SimpleNamespace(
        context_parallel_config=SimpleNamespace(ring_degree=2, ulysses_degree=1, ring_anything=False)
    )
    with pytest.raises(ValueError, match=r"ring_degree=2.*Use Ulysses: ContextParallelConfig\(ulysses_degree=2\)"):
        check()
