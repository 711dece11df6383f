"""Shape-word contrast: the swapped captions, the replacement weights and the loss."""

from __future__ import annotations

import pytest
import torch

from lab.contrast import ShapeWordSwap, contrast_loss, silhouette_overlap
from visattn.toy.data import SHAPES
from visattn.toy.vocab import clip_tokenizer


def _ids(tokenizer, captions):
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids


def _words(tokenizer, ids):
    return [tokenizer.decode(row, skip_special_tokens=True).split() for row in ids]


def test_square_and_circle_are_each_others_closest_silhouettes():
    overlap = silhouette_overlap()
    assert torch.allclose(overlap, overlap.T) and torch.allclose(overlap.diagonal(), torch.ones(len(SHAPES)))
    off_diagonal = overlap - torch.eye(len(SHAPES))
    circle, square = SHAPES.index("circle"), SHAPES.index("square")
    assert off_diagonal[circle].argmax() == square and off_diagonal[square].argmax() == circle
    assert 0.75 < overlap[circle, square] < 0.85  # a disc inside a square of nearly its area


def test_one_shape_word_per_caption_changes_to_another_shape():
    tokenizer = clip_tokenizer()
    captions = [
        "a small red circle at the top left and a large blue star at the right on a gray background",
        "a large green square in the center on a black background",
        "",
    ]
    ids = _ids(tokenizer, captions)
    swap = ShapeWordSwap(tokenizer)
    generator = torch.Generator().manual_seed(0)
    replaced = {shape: set() for shape in SHAPES}
    for _ in range(200):
        swapped, has_shape = swap(ids, generator)
        assert has_shape.tolist() == [True, True, False]
        assert torch.equal(swapped[2], ids[2])  # nothing to swap in an empty caption
        for before, after in zip(_words(tokenizer, ids[:2]), _words(tokenizer, swapped[:2])):
            changed = [(a, b) for a, b in zip(before, after) if a != b]
            assert len(changed) == 1 and changed[0][0] in SHAPES and changed[0][1] in SHAPES
            replaced[changed[0][0]].add(changed[0][1])
    # both shape words of the first caption get swapped some of the time, to every other shape
    assert replaced["circle"] == {"square", "triangle", "star"} and replaced["star"] == {"circle", "square", "triangle"}


def test_a_square_is_swapped_to_a_circle_most_often():
    tokenizer = clip_tokenizer()
    ids = _ids(tokenizer, ["a red square on a black background"] * 2000)
    swapped, _ = ShapeWordSwap(tokenizer)(ids, torch.Generator().manual_seed(1))
    circle = tokenizer("circle", add_special_tokens=False).input_ids[0]
    share = (swapped == circle).any(-1).float().mean()
    assert 0.42 < share < 0.54  # 0.82 / (0.82 + 0.44 + 0.45)


def test_a_shape_word_must_be_one_token():
    with pytest.raises(ValueError, match="'red square' must be one token"):
        ShapeWordSwap(clip_tokenizer(), shapes=("circle", "red square"))


def test_the_loss_falls_as_the_wrong_word_predicts_worse():
    true_error = torch.tensor([0.2, 0.02])
    same = contrast_loss(true_error, true_error.clone(), temperature=0.1)
    assert same == pytest.approx(torch.log(torch.tensor(2.0)).item())
    # relative to the true error: a tenfold smaller error needs a tenfold smaller gap for the same loss
    assert contrast_loss(true_error, true_error * 1.3, 0.1) == pytest.approx(
        contrast_loss(true_error[:1], true_error[:1] * 1.3, 0.1).item()
    )
    assert contrast_loss(true_error, true_error * 1.3, 0.1) < same < contrast_loss(true_error, true_error * 0.7, 0.1)


def test_the_gradient_lowers_the_true_error_and_raises_the_swapped_one():
    true_error = torch.tensor([0.1], requires_grad=True)
    swapped_error = torch.tensor([0.1], requires_grad=True)
    contrast_loss(true_error, swapped_error, 0.1).backward()
    assert true_error.grad.item() > 0 > swapped_error.grad.item()


def test_the_temperature_must_be_positive():
    with pytest.raises(ValueError, match="temperature=0"):
        contrast_loss(torch.ones(2), torch.ones(2), 0)
