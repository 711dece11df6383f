"""An effect that needs a fact the model's family does not provide (the latent grid, text tokens, words) is
refused at attach, naming the class and the missing fact, with nothing left hooked."""

from __future__ import annotations

import pytest

import visattn
from visattn.families import Family
from visattn.interception import layer_hook
from visattn.tiny.denoisers import TINY_DENOISERS
from visattn.words import PromptTokens

ENTRIES = {entry.class_name: entry for entry in TINY_DENOISERS}


def _tokens(prompt: str, length: int = 8) -> PromptTokens:
    words = tuple(prompt.split())
    return PromptTokens(prompt, words, tuple((i,) for i in range(len(words))), (), length)


def _untouched(model) -> bool:
    registry = getattr(model, "_diffusers_hook", None)
    hooked = registry is not None and registry.get_hook("visattn") is not None
    return not hooked and not any(layer_hook(m) for m in visattn.attention_layers(model).values())


@pytest.mark.parametrize(
    ("class_name", "effect", "message"),
    [
        (
            "UNet2DModel",
            lambda: visattn.PromptToPrompt(_tokens("a cat"), _tokens("a dog")),
            r"PromptToPrompt needs text tokens, but UNet2DModel \(family 'unet_2d'\) takes no text",
        ),
        (
            "DiTTransformer2DModel",
            lambda: visattn.CrossAttentionCache(),
            r"CrossAttentionCache needs text tokens, but DiTTransformer2DModel \(family 'dit'\) takes no text",
        ),
        (
            "BriaFibo2Transformer2DModel",
            lambda: visattn.AttentionMaps(),
            r"AttentionMaps needs words mapped to text positions, but BriaFibo2Transformer2DModel \(family "
            r"'bria_fibo2'\) declares no tokenizer ladder",
        ),
        (
            "BriaFibo2Transformer2DModel",
            lambda: visattn.PromptToPrompt("a cat", "a dog"),
            r"PromptToPrompt needs words mapped to text positions, but BriaFibo2Transformer2DModel",
        ),
    ],
)
def test_attach_refuses_an_effect_the_class_cannot_serve(class_name, effect, message):
    model = ENTRIES[class_name].build()
    with pytest.raises(ValueError, match=message):
        visattn.attach(model, visattn.PerturbedAttentionGuidance(scale=1.0), effect())
    assert _untouched(model)


def test_prompt_tokens_stand_in_for_a_missing_tokenizer_ladder():
    model = ENTRIES["Flux2Transformer2DModel"].build()
    with visattn.attach(model, visattn.AttentionMaps(prompt=_tokens("a red cat"))):
        pass
    with visattn.attach(model, visattn.PromptToPrompt(_tokens("a red cat"), _tokens("a blue cat"))):
        pass
    assert _untouched(model)


def test_family_says_what_it_lacks():
    packed = Family("packed_without_reader", layout="packed")
    assert "declares no grid reader" in packed.missing("grid")
    assert packed.missing("text") is None
    with pytest.raises(ValueError, match="fact must be one of"):
        packed.missing("colour")
