"""The toy models' run-time side: the word-level tokenizers, the size budget, the loader's message without weights."""

from __future__ import annotations

import pytest

from visattn.toy import models, sample_clip, sample_scene
from visattn.toy.vocab import WORDS, clip_tokenizer, t5_tokenizer

#: The shipped weights' budget (issue 7): both pipelines together.
MAX_SHIPPED_BYTES = 30 * 1024 * 1024


def test_load_toy_pipeline_says_how_to_train_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"python -m lab train --which video"):
        models.load_toy_pipeline("video", root=tmp_path)
    with pytest.raises(ValueError, match="kind='audio'"):
        models.load_toy_pipeline("audio", root=tmp_path)


def _captions() -> list[str]:
    scenes = [sample_scene(i, seed=s).caption for s in range(2) for i in range(300)]
    return scenes + [sample_clip(i, frames=2, size=16).caption for i in range(100)]


@pytest.mark.parametrize("build", [clip_tokenizer, t5_tokenizer], ids=["clip", "t5"])
def test_every_caption_word_is_one_known_token(build):
    tokenizer = build()
    special = set(tokenizer.all_special_ids)
    seen = set()
    for caption in _captions():
        ids = tokenizer(caption).input_ids
        words = [i for i in ids if i not in special]
        assert len(words) == len(caption.split()), caption  # one token per word, none unknown (unk is special)
        assert tokenizer.decode(ids, skip_special_tokens=True) == caption
        seen.update(caption.split())
    assert seen == set(WORDS)  # the vocabulary is exactly the captions' words
    assert all(len(tokenizer(w, add_special_tokens=False).input_ids) == 1 for w in WORDS)


def test_clip_tokenizer_frames_and_pads_like_stable_diffusion():
    tokenizer = clip_tokenizer()
    longest = " and ".join(["a small purple triangle at the bottom right"] * 3) + " on a white background"
    ids = tokenizer(longest, padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert len(ids) == tokenizer.model_max_length  # the longest caption fits without truncation
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    empty = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert empty[:2] == [tokenizer.bos_token_id, tokenizer.eos_token_id]
    assert set(empty[2:]) == {tokenizer.pad_token_id} and tokenizer.pad_token_id != tokenizer.eos_token_id
    # an unknown word is split into pieces, never mapped to the end token CLIP pools at
    assert tokenizer.eos_token_id not in tokenizer("zebra", add_special_tokens=False).input_ids


def test_configured_models_fit_the_shipped_size_budget():
    # fp16 for the diffusers models, fp32 for the text encoders (what train.py saves); fp32 everywhere also fits
    total = models.parameter_bytes("image", 4) + models.parameter_bytes("video", 4)
    assert total <= MAX_SHIPPED_BYTES
    with pytest.raises(ValueError, match="kind='audio'"):
        models.parameter_bytes("audio")


def test_words_outside_the_toy_grammar_are_named():
    from visattn.toy.vocab import unknown_words

    assert unknown_words("a corgi riding a bicycle, at the top left") == ("corgi", "riding", "bicycle")
    assert unknown_words("a large green triangle in the center on a black background") == ()


def test_generate_warns_about_words_the_default_model_does_not_know(tmp_path, capsys):
    from visattn.generate import generate

    generate("a corgi at the top left", steps=1, out_dir=tmp_path, progress=False)
    err = capsys.readouterr().err
    assert "visattn/toy-image knows only the words of its training captions; unknown here: corgi" in err
