"""Every covered diffusers denoiser class, through visattn's generic path: identity, detach, and each effect.

The rows come from :func:`harness.coverage_checks.check`, the same checks that generate docs/models.md.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from harness.coverage_checks import ContextRecorder, CoverageRow, check, prediction, sdpa_token_counts

import visattn
from visattn.tiny.denoisers import TINY_DENOISERS
from visattn.tiny.denoisers.videos import SDPA_TOKENS

# Checks a class fails today, with why. Prompt-to-Prompt pairs source and target rows inside one attention call
# (a per-row attention loop, as Mochi's, gets each target row answered with its source row), which a forward
# without a batch axis (Cosmos 3) never makes. The test fails both when another check fails and when one of these
# starts passing (then remove it here).
KNOWN_LIMITS: dict[str, dict[str, str]] = {
    "Cosmos3OmniTransformer": {
        "P2P": "one sample per call (no batch axis): source and target are separate denoiser calls, so "
        "PromptToPrompt refuses the class at attach (ValueError)",
    },
}

ENTRIES = {entry.class_name: entry for entry in TINY_DENOISERS}

# Text-conditioned classes whose self/joint calls hold tokens visattn does not place, so text effects and grid
# effects see neither text nor grid there (the row says "n/a"), with why. The test fails when one starts locating
# them. None today: tokens that are neither grid nor text are declared per family (Family.other_tokens: HiDream's
# padding, Bria FIBO 2's gist tokens, Framepack's history latents, MiniMax-H3's rows between text and video).
UNPLACED_TOKENS: dict[str, str] = {}


@functools.cache
def row(class_name: str) -> CoverageRow:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return check(ENTRIES[class_name])


@pytest.mark.parametrize("class_name", ENTRIES)
def test_identity_is_exact_and_detach_restores_the_model(class_name):
    result = row(class_name)
    if "identity" in KNOWN_LIMITS.get(class_name, {}):
        pytest.skip(KNOWN_LIMITS[class_name]["identity"])
    assert result.identity_error <= 1e-6, result.problems
    assert result.detach_exact
    assert result.roles, "no attention call went through visattn"


@pytest.mark.parametrize("class_name", ENTRIES)
def test_every_check_passes_or_is_a_known_limit(class_name):
    """PAG and SEG change the output, sparse effects too where a grid is found, each effect runs without error."""
    failed = row(class_name).failures()
    assert set(failed) == set(KNOWN_LIMITS.get(class_name, {})), failed


@pytest.mark.parametrize("class_name", ENTRIES)
def test_text_conditioned_classes_locate_their_text_and_grid(class_name):
    """Where a class takes text and has a latent grid, visattn finds both in its calls (the families' facts: roles,
    joined text inputs, where text sits), so every effect category applies."""
    entry = ENTRIES[class_name]
    model = entry.build()
    if visattn.families.family_of(model).missing("text") is not None or not entry.text_tokens:
        pytest.skip("takes no text")
    result = row(class_name)
    located = result.text_found and result.grid_found
    assert located == (class_name not in UNPLACED_TOKENS), UNPLACED_TOKENS.get(class_name, result)


@pytest.mark.parametrize("class_name", ENTRIES)
def test_attention_maps_only_observe(class_name):
    result = row(class_name)
    if result.maps is None:
        pytest.skip("no text and grid located: AttentionMaps does not apply")
    assert result.maps == 0.0


@pytest.mark.parametrize("class_name", sorted(SDPA_TOKENS))
def test_video_models_make_the_attention_calls_their_table_says(class_name):
    """The tiny inputs reach attention with the token counts read from each class's processors."""
    assert sdpa_token_counts(ENTRIES[class_name]) == SDPA_TOKENS[class_name]


def test_a_class_visattn_has_never_seen_runs_the_generic_path_with_one_warning():
    from diffusers import Transformer2DModel

    class UsersOwnTransformer(Transformer2DModel):
        pass

    entry = ENTRIES["Transformer2DModel"]
    torch.manual_seed(0)
    model = UsersOwnTransformer(**entry.build().config).eval()
    inputs = entry.inputs(2)
    with torch.no_grad():
        stock = prediction(model(**inputs))
    with pytest.warns(UserWarning, match="no facts for UsersOwnTransformer") as caught:
        handle = visattn.attach(model, visattn.PerturbedAttentionGuidance(scale=2.0, layers="self"))
    assert [w.filename for w in caught if "no facts" in str(w.message)] == [__file__]  # points at the attach call
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once is enough
        with handle, torch.no_grad():
            guided = prediction(model(**inputs))
        with visattn.attach(model), torch.no_grad():
            assert torch.equal(prediction(model(**inputs)), stock)
    assert (guided - stock).abs().max() > 1e-4


def test_a_module_visattn_cannot_intercept_is_named_when_selected():
    from diffusers.models.attention_processor import AttnProcessor

    entry = ENTRIES["Transformer2DModel"]
    model = entry.build()
    name = next(iter(visattn.attention_layers(model)))
    visattn.attention_layers(model)[name].set_processor(AttnProcessor())
    with pytest.raises(ValueError, match=f"selects '{name}' .* AttnProcessor computes attention without"):
        visattn.attach(model, layers=name.replace(".", r"\."))
    before = {n: m.processor for n, m in visattn.attention_layers(model).items()}
    with visattn.attach(model) as handle:
        assert name not in handle.layers["model"] and handle.layers["model"]
    assert all(m.processor is before[n] for n, m in visattn.attention_layers(model).items())


def test_a_subclass_of_a_supported_class_inherits_its_facts():
    """A user's subclass of a declared class (matched along the MRO) gets that class's facts, not the generic path:
    its packed latents' grid is read, identity is exact and PAG acts, without a warning."""
    from diffusers import QwenImageTransformer2DModel

    class UsersOwnQwen(QwenImageTransformer2DModel):
        pass

    entry = ENTRIES["QwenImageTransformer2DModel"]
    torch.manual_seed(0)
    model = UsersOwnQwen(**entry.build().config).eval()
    inputs = entry.inputs(2)
    with torch.no_grad():
        stock = prediction(model(**inputs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recorder = ContextRecorder()
        with visattn.attach(model, recorder) as handle, torch.no_grad():
            assert torch.equal(prediction(model(**inputs)), stock)
            state = handle.states[0]
            assert state.family.name == "qwen_image" and state.inputs.grid == entry.grid
        with visattn.attach(model, visattn.PerturbedAttentionGuidance(scale=2.0)), torch.no_grad():
            guided = prediction(model(**inputs))
    assert (guided - stock).abs().max() > 1e-4
