"""Prompt-to-Prompt where source and target rows do not share an attention call, and the family facts that place
its edits: per-row processors (Mochi), one sample per call (Cosmos 3 Omni), items along time (JoyImage-Edit) and
text padded by the model (Wan-Animate 2)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from harness.coverage_checks import prediction

import visattn
from visattn.effects.prompt_to_prompt import _mask_for_prediction
from visattn.families import family_of
from visattn.interception import layer_hook
from visattn.tiny.denoisers import TINY_DENOISERS
from visattn.words import PromptTokens

ENTRIES = {entry.class_name: entry for entry in TINY_DENOISERS}


class RowLoop:
    """A processor that hands its stock processor one batch row at a time, as Mochi's does."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        rows = []
        for i in range(hidden_states.shape[0]):
            context = None if encoder_hidden_states is None else encoder_hidden_states[i : i + 1]
            rows.append(self.processor(attn, hidden_states[i : i + 1], context, attention_mask, **kwargs))
        return torch.cat(rows)


def _prompt(length: int, swap: int | None = None) -> PromptTokens:
    words = tuple(f"x{i}" if i == swap else f"w{i}" for i in range(length))
    return PromptTokens(" ".join(words), words, tuple((i,) for i in range(length)), (), length, family="")


def _models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """The tiny Transformer2DModel (self- and cross-attention), batched and with every processor looping over rows."""
    entry = ENTRIES["Transformer2DModel"]
    batched, rows = entry.build(), entry.build()
    for module in visattn.attention_layers(rows).values():
        module.processor = RowLoop(module.processor)
    return batched, rows


def _run(model: torch.nn.Module, batch_size: int, *effects) -> torch.Tensor:
    inputs = ENTRIES["Transformer2DModel"].inputs(batch_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with visattn.attach(model, *effects), torch.no_grad():
            return prediction(model(**inputs)).float()


def _edit(local_blend: visattn.LocalBlend | None = None) -> visattn.PromptToPrompt:
    length = ENTRIES["Transformer2DModel"].text_tokens
    return visattn.PromptToPrompt(
        _prompt(length), _prompt(length, swap=1), cross_steps=1.0, self_steps=1.0, local_blend=local_blend
    )


@pytest.mark.parametrize("batch_size", [2, 4])
def test_per_row_calls_edit_as_one_batched_call(batch_size):
    """Each target row's call is answered with its source row's attention, as the batched processor pairs them;
    the source rows stay exactly a plain generation."""
    batched, rows = _models()
    stock = _run(rows, batch_size)
    # Row by row and batched agree up to rounding: a matmul over one row's tokens and one over the batch's may be
    # blocked differently (bit for bit on some CPUs, an ulp apart on others).
    torch.testing.assert_close(stock, _run(batched, batch_size), rtol=0, atol=1e-6)
    expected = _run(batched, batch_size, _edit())
    edited = _run(rows, batch_size, _edit())
    half = batch_size // 2
    assert torch.equal(edited[:half], stock[:half])
    assert (edited[half:] - stock[half:]).abs().max() > 1e-3
    torch.testing.assert_close(edited, expected, rtol=1e-5, atol=1e-5)


def test_local_blend_builds_the_batched_mask_from_per_row_calls():
    """Two image pairs: the per-row calls' maps are gathered per layer into the mask the batched call builds."""
    batched, rows = _models()
    masks = []
    for model in (batched, rows):
        blend = visattn.LocalBlend("x1", threshold=0.8, radius=0)
        out = _run(model, 4, _edit(blend))
        masks.append((blend.mask, out))
    (mask, expected), (row_mask, edited) = masks
    assert mask.shape[0] == 2 and not mask.all() and not torch.equal(mask[0], mask[1])
    assert torch.equal(row_mask, mask)
    torch.testing.assert_close(edited, expected, rtol=1e-5, atol=1e-5)


def test_per_row_calls_stay_exact_without_an_edit_and_release_the_kept_rows():
    _, rows = _models()
    stock = _run(rows, 2)
    observed = _run(rows, 2, visattn.AttentionMaps(prompt=_prompt(ENTRIES["Transformer2DModel"].text_tokens)))
    assert torch.equal(observed, stock)
    # A closed window: P2P attached but editing nothing answers every call with its stock computation.
    idle = visattn.PromptToPrompt(_prompt(7), _prompt(7, swap=1), cross_steps=0, self_steps=0)
    assert torch.equal(_run(rows, 2, idle), stock)
    edit = _edit()
    inputs = ENTRIES["Transformer2DModel"].inputs(2)
    with visattn.attach(rows, edit), torch.no_grad():
        rows(**inputs)
        hooks = [layer_hook(module) for module in visattn.attention_layers(rows).values()]
        assert all(hook is not None and not hook._row_stash for hook in hooks)


def test_prompt_to_prompt_refuses_one_sample_per_call_at_attach():
    model = ENTRIES["Cosmos3OmniTransformer"].build()
    edit = visattn.PromptToPrompt(_prompt(4), _prompt(4, swap=1))
    with pytest.raises(ValueError, match="Cosmos3OmniTransformer.*one sample per call"):
        visattn.attach(model, edit)
    assert all(layer_hook(module) is None for module in visattn.attention_layers(model).values())


def test_joyimage_mask_follows_the_items_of_the_prediction():
    """The grid holds the generated item first along frames; the prediction keeps it last among the items."""
    family = family_of(ENTRIES["JoyImageEditTransformer3DModel"].build())
    mask = torch.zeros(2, 2, 3, dtype=torch.bool)  # (items * T, H, W): the generated item, then the reference
    mask[0, 0, 0] = True  # a cell of the generated image
    mask[1, 1, 2] = True  # a cell of the reference
    row = torch.Size([2, 4, 1, 4, 6])  # [items, C, T, H, W] with 2x2 patches
    keep = _mask_for_prediction(mask, row, family).expand(row)
    assert keep[1, :, 0, :2, :2].all() and keep[1].sum() == 4 * 4  # the generated item is the last one
    assert keep[0, :, 0, 2:, 4:].all() and keep[0].sum() == 4 * 4
    assert _mask_for_prediction(mask[:1], row[1:], family).shape == (1, 1, 4, 6)  # a 5-D input is one item


def test_wan_animate_2_reads_its_padded_text_length():
    entry = ENTRIES["WanAnimate2Transformer3DModel"]
    model = entry.build()
    inputs = entry.inputs(2)
    inputs["encoder_hidden_states"] = [text[:3] for text in inputs["encoder_hidden_states"]]  # unpadded, as piped
    read = family_of(model).read_inputs(model, (), inputs)
    assert read.text_length == model.config.text_len
