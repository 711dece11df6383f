"""What lets the former coverage known limits pass: declared batch inputs, partial calls, per-row loops, context
latents before the grid, batch-free forwards, and the warning where a grid effect finds no grid to act on."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import pytest
import torch
from harness.coverage_checks import prediction

import visattn
from visattn import interception
from visattn.context import Span
from visattn.denoiser_batch import take_input_rows
from visattn.effects.base import AttentionCall, Effect
from visattn.families.base import FOLDED, NOT_BATCHED_INPUT, PER_SAMPLE_LIST, Argument
from visattn.kernels.patterns import ScoreModifier
from visattn.tiny.denoisers import tiny_denoiser_entry
from visattn.tiny.probes import ContextRecorder


def test_declared_batch_inputs_are_copied_as_declared():
    index = torch.tensor([0, 1, 1])  # a batch of 2, then a copy of row 1
    folded = torch.arange(6).view(6, 1)  # 3 frames per sample, (b f)
    later_axis = torch.arange(8).view(4, 2)  # [layers, B]
    shared = torch.arange(2)  # per-frame indices that happen to be 2 long
    samples = [torch.zeros(1), torch.ones(1)]
    declared = (
        (Argument(("text",), 0), FOLDED),
        (Argument(("llama",)), 1),
        (Argument(("indices",)), NOT_BATCHED_INPUT),
        (Argument(("x",)), PER_SAMPLE_LIST),
    )
    args, kwargs = take_input_rows(
        (folded,), {"llama": later_axis, "indices": shared, "x": samples, "t": torch.arange(2)}, index, 2, declared
    )
    assert args[0].view(-1).tolist() == [0, 1, 2, 3, 4, 5, 3, 4, 5]
    assert kwargs["llama"].tolist() == [[0, 1, 1], [2, 3, 3], [4, 5, 5], [6, 7, 7]]
    assert kwargs["indices"] is shared
    assert [float(s) for s in kwargs["x"]] == [0.0, 1.0, 1.0]
    assert kwargs["t"].tolist() == [0, 1, 1]  # undeclared: its leading axis is the batch


def test_a_declared_input_without_its_batch_is_named():
    with pytest.raises(ValueError, match="input 'llama' should have the batch"):
        take_input_rows((), {"llama": torch.zeros(3, 5)}, torch.tensor([0, 1, 1]), 2, ((Argument(("llama",)), 1),))


@dataclass(frozen=True)
class _Same(ScoreModifier):
    """A score modifier that changes nothing: it sends a call through the attention core."""

    def score_mod(self, score, b, h, q_idx, kv_idx):
        return score

    def cache_key(self):
        return ("same",)


class _ThroughCore(Effect):
    """Routes every call through the attention core with nothing changed, recording each context."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts = []

    def apply(self, call: AttentionCall) -> None:
        self.contexts.append(call.ctx)
        call.score_mods.append(_Same())


def _run(model, entry, *effects):
    with torch.no_grad():
        if not effects:
            return prediction(model(**entry.inputs(2))).float()
        with visattn.attach(model, *effects):
            return prediction(model(**entry.inputs(2))).float()


@pytest.mark.parametrize(
    "class_name",
    [
        "QwenImage21Transformer2DModel",  # image queries over [text, image]: the text queries are added
        "MochiTransformer3DModel",  # per-row calls without the padded text: text keys are added, masked
        "Cosmos3OmniTransformer",  # vision queries over [text, vision], grouped-query attention
        "HeliosTransformer3DModel",  # history latents before the grid
    ],
)
def test_calls_that_hold_part_of_the_layout_compute_what_the_stock_call_does(class_name):
    entry = tiny_denoiser_entry(class_name)
    model = entry.build()
    stock = _run(model, entry)
    effect = _ThroughCore()
    assert (_run(model, entry, effect) - stock).abs().max() < 1e-5
    placed = [ctx for ctx in effect.contexts if ctx.role in ("self", "joint") and ctx.grid is not None]
    assert placed and all(ctx.queries.image.length == ctx.num_grid_tokens for ctx in placed)


def test_mochi_text_positions_keep_their_meaning_in_every_row():
    entry = tiny_denoiser_entry("MochiTransformer3DModel")
    effect = _ThroughCore()
    _run(entry.build(), entry, effect)
    # Rows keep different numbers of valid text tokens; every call shows the whole text, in row order.
    assert {ctx.keys.text.length for ctx in effect.contexts} == {entry.text_tokens}
    assert [ctx.batch.names for ctx in effect.contexts[:2]] == [("cond",), ("cond",)]


def test_a_per_row_attention_loop_gives_each_call_its_rows_branch():
    entry = tiny_denoiser_entry("MochiTransformer3DModel")
    model = entry.build()
    pag = visattn.PerturbedAttentionGuidance(scale=2.0, layers="joint")
    recorder = _ThroughCore()
    with visattn.attach(model, recorder, pag), torch.no_grad():
        model(**entry.inputs(2))
    per_layer = [ctx.batch.names for ctx in recorder.contexts if ctx.layer_name == "transformer_blocks.0.attn1"]
    assert per_layer == [("cond",), ("cond",), (pag.branch,), (pag.branch,)]


def test_history_latents_stay_visible_to_grid_patterns():
    entry = tiny_denoiser_entry("HeliosTransformer3DModel")
    effect = _ThroughCore()
    _run(entry.build(), entry, effect)
    (queries,) = {c.queries for c in effect.contexts if c.role == "self"}
    # The history comes first, placed as other tokens (not text): grid patterns keep them visible as prefix keys.
    assert queries.text is None and queries.other == (Span(0, queries.image.start),)
    assert queries.image.stop == queries.length and queries.grid_context() == (0, True)


def test_a_forward_without_a_batch_axis_gets_its_perturbed_branch_as_a_second_call():
    entry = tiny_denoiser_entry("Cosmos3OmniTransformer")
    model = entry.build()
    stock = _run(model, entry)
    pag = visattn.PerturbedAttentionGuidance(scale=2.0, layers="joint")
    recorder = _ThroughCore()
    guided = _run(model, entry, recorder, pag)
    assert guided.shape == stock.shape and (guided - stock).abs().max() > 1e-4
    assert {ctx.batch.batch_size for ctx in recorder.contexts} == {1}
    assert {ctx.batch.names for ctx in recorder.contexts} == {("cond",), (pag.branch,)}


def _scattered_minimax_inputs(entry, batch_size: int) -> dict:
    """MiniMax-H3's tiny inputs with every row scattered to the mirrored position (the whole sequence reversed): a
    valid call whose text, audio and video rows are not in the ``[text, others, video]`` order of its pipelines."""
    inputs = entry.inputs(batch_size)
    last = inputs["position_ids"].shape[0] - 1
    for name in ("text_indices", "video_indices", "audio_indices"):
        inputs[name] = last - inputs[name]
    for name in ("position_ids", "token_tags", "timestep_indices"):
        inputs[name] = inputs[name].flip(0)
    return inputs


def test_a_grid_effect_that_finds_no_grid_says_so_once_and_changes_nothing(monkeypatch):
    """MiniMax-H3's rows scattered out of span order cannot be placed (its layout is read from its row indices): a
    grid effect leaves the calls alone and warns once per family and effect."""
    monkeypatch.setattr(interception, "_WARNED_UNPLACED", set())
    entry = tiny_denoiser_entry("MiniMaxH3Transformer3DModel")
    model = entry.build()
    inputs = _scattered_minimax_inputs(entry, 2)
    with torch.no_grad():
        stock = prediction(model(**inputs))
    recorder = ContextRecorder()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            seg = visattn.SmoothedEnergyGuidance(scale=2.0, sigma=2.0, layers="joint")
            with torch.no_grad(), visattn.attach(model, recorder, seg, visattn.NeighborhoodAttention(kernel_size=3)):
                out = prediction(model(**inputs))
    messages = [str(w.message) for w in caught if "needs the latent grid" in str(w.message)]
    assert len(messages) == 2  # one per effect, not per call
    assert "SmoothedEnergyGuidance" in messages[0] and "'minimax_h3'" in messages[0]
    # With no grid to blur, SEG's perturbed branch equals the conditional one, so the guided output is the stock one;
    # the neighborhood window has nothing to act on.
    torch.testing.assert_close(out, stock, rtol=0, atol=1e-6)
    joint = [ctx for ctx in recorder.contexts if ctx.layer_name.startswith("transformer_blocks")]
    assert joint and all(ctx.grid is None and ctx.keys.text is None for ctx in joint)
