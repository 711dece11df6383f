"""Word-to-token mapping: every family's text layout, decoded back to the words; errors for bad input."""

from __future__ import annotations

import functools

import pytest

from visattn.tiny import TINY_PIPELINES, call_kwargs, pipeline_spec, text_tokenizer, tiny_pipeline
from visattn.tiny.tokenizers import llama_tokenizer
from visattn.tiny.video_pipelines import hunyuan_prompt_template
from visattn.words import STOP_WORDS, PromptTokens, prompt_recipe, prompt_tokens, split_words

PROMPT = "A red zebrafish, near the cat"
WORDS = ("a", "red", "zebrafish", ",", "near", "the", "cat")


@functools.cache
def pipeline(family: str):
    return tiny_pipeline(family)


def call_options(family: str) -> dict:
    kwargs = call_kwargs(family)
    return {k: kwargs[k] for k in ("max_sequence_length", "prompt_template") if k in kwargs}


def text_sequence(family: str, pipe, prompt: str, options: dict) -> tuple[list[tuple[object, int]], int]:
    """``(tokenizer, id)`` per position of the text sequence, built the way each pipeline builds it."""

    def padded(tokenizer, text, length):
        ids = tokenizer(text, padding="max_length", max_length=length, truncation=True).input_ids
        return [(tokenizer, i) for i in ids]

    length = options.get("max_sequence_length")
    if family in ("unet", "StableDiffusionXLPipeline"):
        return padded(pipe.tokenizer, prompt, 77), 77
    if family == "sd3":
        return padded(pipe.tokenizer, prompt, 77) + padded(pipe.tokenizer_3, prompt, length), 77 + length
    if family == "flux":
        return padded(pipe.tokenizer_2, prompt, length), length
    if family == "hunyuan_video":
        template = options["prompt_template"]
        crop = template["crop_start"]
        return padded(pipe.tokenizer, template["template"].format(prompt), length + crop)[crop:], length
    if family == "pixart":
        prompt = prompt.lower().strip()
    return padded(pipe.tokenizer, prompt, length), length


@pytest.mark.parametrize("family", TINY_PIPELINES)
def test_positions_decode_to_the_words(family):
    pipe = pipeline(family)
    options = call_options(family)
    tokens = prompt_tokens(pipe, PROMPT, **options)
    assert tokens.family == pipeline_spec(family).family and tokens.words == WORDS
    sequence, length = text_sequence(family, pipe, PROMPT, options)
    assert tokens.length == length == len(sequence)
    for index, word in enumerate(tokens.words):
        positions = tokens.word_tokens[index]
        # SD3 holds each word twice: in the 77 CLIP positions and in the T5 part after them.
        parts = (
            [[p for p in positions if p < 77], [p for p in positions if p >= 77]] if family == "sd3" else [positions]
        )
        for part in parts:
            assert part, f"{family}: {word!r} has no positions in one part of the text sequence"
            tokenizer = sequence[part[0]][0]
            decoded = tokenizer.decode([sequence[p][1] for p in part]).strip().lower()
            assert decoded == word, (family, word, decoded)
    # "zebrafish" is not in the tiny vocabulary, so it splits into several subword tokens.
    assert len(tokens.positions("zebrafish")) > (2 if family == "sd3" else 1)
    # Everything else is special: start/end, padding, the template; and nothing is both.
    owned = {p for positions in tokens.word_tokens for p in positions}
    assert owned.isdisjoint(tokens.special) and owned | set(tokens.special) == set(range(length))


def test_clip_layout_has_start_end_and_padding_as_special():
    tokens = prompt_tokens(text_tokenizer("clip"), "a red circle", family="unet")
    assert tokens.word_tokens == ((1,), (2,), (3,))
    assert tokens.special == (0, *range(4, 77))


def test_t5_layout_starts_at_zero_and_respects_max_sequence_length():
    tokens = prompt_tokens(text_tokenizer("t5"), "a red circle", family="flux", max_sequence_length=8)
    assert tokens.word_tokens == ((0,), (1,), (2,)) and tokens.length == 8
    assert tokens.special == (3, 4, 5, 6, 7)


def test_family_defaults_come_from_the_pipeline_signature():
    # Without max_sequence_length the pipeline's own default applies (Flux: 512, SD3: 77 + 256).
    assert prompt_tokens(pipeline("flux"), "a cat").length == 512
    assert prompt_tokens(pipeline("sd3"), "a cat").length == 77 + 256


def test_hunyuan_template_prefix_is_cropped_and_suffix_is_special():
    template = hunyuan_prompt_template()
    tokens = prompt_tokens(
        llama_tokenizer(), "red cat", family="hunyuan_video", max_sequence_length=8, prompt_template=template
    )
    assert tokens.word_tokens == ((0,), (1,))
    # <|eot_id|> closes the template after the prompt; then padding.
    assert tokens.special == tuple(range(2, 8))
    tokenizer = llama_tokenizer()
    ids = tokenizer(template["template"].format("red cat")).input_ids[template["crop_start"] :]
    assert tokenizer.convert_ids_to_tokens(ids[2]) == "<|eot_id|>"


def test_wrong_crop_start_is_an_error():
    template = {**hunyuan_prompt_template(), "crop_start": 40}
    with pytest.raises(ValueError, match="crop_start=40"):
        prompt_tokens(llama_tokenizer(), "red cat", family="hunyuan_video", prompt_template=template)


def test_positions_by_text_index_and_phrase():
    tokens = prompt_tokens(text_tokenizer("clip"), "a red cat and a red dog", family="unet")
    assert tokens.positions("red") == (2, 6)  # every occurrence
    assert tokens.positions("RED") == (2, 6)  # words are lower-cased
    assert tokens.positions(2) == (3,) and tokens.positions(-1) == (7,)
    assert tokens.positions("red dog") == (6, 7)  # consecutive words
    assert tokens.content_words() == (1, 2, 5, 6)  # "a" and "and" are stop words
    assert {"a", "and", "the", ","} <= STOP_WORDS


def test_unknown_word_error_lists_the_prompt_words():
    tokens = prompt_tokens(text_tokenizer("t5"), "a red circle", family="pixart", max_sequence_length=16)
    with pytest.raises(ValueError, match=r"'dog' is not in the prompt.*0: 'a', 1: 'red', 2: 'circle'"):
        tokens.positions("dog")
    with pytest.raises(ValueError, match="word index 3 is out of range.*'circle'"):
        tokens.positions(3)
    with pytest.raises(ValueError, match="word must be"):
        tokens.positions(1.5)


@pytest.mark.parametrize(
    ("family", "kind", "options", "part"),
    [
        ("unet", "clip", {}, "CLIP"),
        ("flux", "t5", {"max_sequence_length": 16}, "T5"),
        ("hunyuan_video", "llama", {"max_sequence_length": 16, "prompt_template": hunyuan_prompt_template()}, "Llama"),
    ],
)
def test_long_prompt_is_an_error_with_the_counts(family, kind, options, part):
    limit = 77 if family == "unet" else 16
    prompt = " ".join(["cat"] * 80)
    with pytest.raises(ValueError, match=rf"has \d+ {part} tokens .* holds {limit}"):
        prompt_tokens(text_tokenizer(kind), prompt, family=family, **options)
    # A prompt that exactly fills the sequence is fine.
    fits = limit - (2 if kind == "clip" else 1)
    assert len(prompt_tokens(text_tokenizer(kind), " ".join(["cat"] * fits), family=family, **options).words) == fits


def test_sd3_checks_both_limits():
    tokenizers = {"tokenizer": text_tokenizer("clip"), "tokenizer_3": text_tokenizer("t5")}
    with pytest.raises(ValueError, match="T5 tokens"):
        prompt_tokens(tokenizers, "a red circle on a blue square", family="sd3", max_sequence_length=4)
    with pytest.raises(ValueError, match="CLIP tokens"):
        prompt_tokens(tokenizers, " ".join(["cat"] * 90), family="sd3", max_sequence_length=512)


def test_bad_family_and_missing_tokenizer():
    with pytest.raises(ValueError, match="family='sdxx' is not a family key; the keys are unet, "):
        prompt_tokens(text_tokenizer("clip"), "a cat", family="sdxx")
    # A family whose tokenizer ladder is not declared says so and names the ones that are.
    with pytest.raises(ValueError, match=r"the bria_fibo2 family declares no tokenizer ladder .*'unet'"):
        prompt_tokens(text_tokenizer("t5"), "a cat", family="bria_fibo2")
    with pytest.raises(ValueError, match="pass family="):
        prompt_tokens(text_tokenizer("clip"), "a cat")
    with pytest.raises(ValueError, match="tokenizer_2"):
        prompt_tokens({"tokenizer": text_tokenizer("clip")}, "a cat", family="flux")


class _NoOffsets:
    """A tokenizer that cannot report character offsets, like transformers' slow tokenizers."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text, **kwargs):
        if kwargs.get("return_offsets_mapping"):
            raise NotImplementedError("no offsets")
        return self.tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.mark.parametrize("kind", ["clip", "t5"])
def test_tokenizers_without_offsets_align_the_same(kind):
    family = "unet" if kind == "clip" else "pixart"
    prompt = "a red zebrafish, near the cat"
    expected = prompt_tokens(text_tokenizer(kind), prompt, family=family, max_sequence_length=16)
    assert prompt_tokens(_NoOffsets(text_tokenizer(kind)), prompt, family=family, max_sequence_length=16) == expected


def test_split_words_lowercases_and_splits_punctuation():
    assert [w for w, _, _ in split_words("Top-left: a CAT's hat")] == [
        "top",
        "-",
        "left",
        ":",
        "a",
        "cat",
        "'",
        "s",
        "hat",
    ]
    assert isinstance(prompt_tokens(text_tokenizer("clip"), "", family="unet"), PromptTokens)


def test_qwen_image_reads_its_chat_template_from_the_pipeline():
    """Qwen-Image drops its template's first prompt_template_encode_start_idx tokens; a word's positions are its
    tokens after that prefix, and they decode back to the word."""
    pipe = tiny_pipeline("qwen_image")
    template, drop = pipe.prompt_template_encode, pipe.prompt_template_encode_start_idx
    ids = pipe.tokenizer(template.format("a red circle")).input_ids[drop:]
    tokens = prompt_tokens(pipe, "a red circle", max_sequence_length=len(ids))
    assert tokens.family == "qwen_image" and tokens.length == len(ids)
    for word in ("red", "circle"):
        assert pipe.tokenizer.decode([ids[p] for p in tokens.positions(word)]).strip() == word
    with pytest.raises(ValueError, match="pass the pipeline, not its tokenizers"):
        prompt_tokens(pipe.tokenizer, "a red circle", family="qwen_image", max_sequence_length=len(ids))


def test_krea2_pads_between_the_prompt_and_its_template_suffix():
    """Krea 2 tokenizes ``[prefix | prompt | PAD | suffix]`` over max_sequence_length positions after dropping the
    prefix's first tokens; the words decode back from the ids it builds, and the suffix takes from the budget."""
    pipe = tiny_pipeline("krea2")
    drop, reserve = pipe.prompt_template_encode_start_idx, pipe.prompt_template_encode_num_suffix_tokens
    length = 24
    prompt = "a red circle"
    ids = pipe.tokenizer(
        pipe.prompt_template_encode_prefix + prompt, padding="max_length", max_length=length + drop - reserve
    ).input_ids
    ids = (ids + pipe.tokenizer(pipe.prompt_template_encode_suffix).input_ids)[drop:]
    tokens = prompt_tokens(pipe, prompt, max_sequence_length=length)
    assert tokens.family == "krea2" and tokens.length == length == len(ids)
    for word in ("red", "circle"):
        assert pipe.tokenizer.decode([ids[p] for p in tokens.positions(word)]).strip() == word
    # The prompt may fill max_sequence_length less the suffix, no more.
    fits = " ".join(["cat"] * (length - reserve))
    assert len(prompt_tokens(pipe, fits, max_sequence_length=length).words) == length - reserve
    with pytest.raises(ValueError, match=rf"holds {length - reserve}"):
        prompt_tokens(pipe, fits + " cat", max_sequence_length=length)


def test_longcat_image_spells_quoted_text_letter_by_letter():
    """LongCat-Image keeps the prompt's own tokens, quoted text tokenized a character at a time, padded to
    tokenizer_max_length; the words decode back from the ids it builds."""
    from diffusers.pipelines.longcat_image.pipeline_longcat_image import split_quotation

    pipe = tiny_pipeline("longcat_image")
    prompt = "a red sign saying 'cat' near a circle"
    ids = []
    for piece, quoted in split_quotation(prompt):
        for chunk in piece if quoted else [piece]:
            ids += pipe.tokenizer(chunk, add_special_tokens=False).input_ids
    length = pipe.tokenizer_max_length
    tokens = prompt_tokens(pipe, prompt, max_sequence_length=length)
    assert tokens.family == "longcat_image" and tokens.length == length
    for word in ("red", "circle", "cat"):
        assert pipe.tokenizer.decode([ids[p] for p in tokens.positions(word)]).strip() == word
    assert len(tokens.positions("cat")) == 3  # c, a, t
    assert tokens.positions("'")[-1] == tokens.positions("cat")[-1] + 1
    with pytest.raises(ValueError, match="holds 4"):
        prompt_tokens(pipe, prompt, max_sequence_length=4)


def test_z_image_renders_the_tokenizers_chat_template():
    """Z-Image tokenizes its tokenizer's chat template (thinking on) around the prompt and crops nothing; the words
    decode back from those ids, and the template counts against max_sequence_length."""
    pipe = tiny_pipeline("z_image")
    messages = [{"role": "user", "content": "a red circle"}]
    text = pipe.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    ids = pipe.tokenizer(text).input_ids
    tokens = prompt_tokens(pipe.tokenizer, "a red circle", family="z_image", max_sequence_length=len(ids))
    assert tokens.family == "z_image" and tokens.length == len(ids)
    assert tokens.positions("a")[0] > 0  # the template's user turn comes first
    for word in ("red", "circle"):
        assert pipe.tokenizer.decode([ids[p] for p in tokens.positions(word)]).strip() == word
    assert prompt_tokens(pipe, "a red circle", max_sequence_length=len(ids)) == tokens
    with pytest.raises(ValueError, match=rf"holds {len(ids) - 1}"):
        prompt_tokens(pipe, "a red circle", max_sequence_length=len(ids) - 1)


def test_sana_keeps_bos_and_crops_its_complex_human_instruction():
    """Sana prefixes the call's complex_human_instruction to the lower-cased prompt and keeps <bos> and the last
    max_sequence_length - 1 tokens; the words decode back from the ids it keeps."""
    import inspect

    pipe = tiny_pipeline("sana")
    instruction = "\n".join(inspect.signature(type(pipe).__call__).parameters["complex_human_instruction"].default)
    length = 24
    all_ids = pipe.tokenizer(
        instruction + "a red circle",
        padding="max_length",
        max_length=len(pipe.tokenizer.encode(instruction)) + length - 2,
    ).input_ids
    ids = all_ids[:1] + all_ids[-(length - 1) :]
    tokens = prompt_tokens(pipe, "A Red circle", max_sequence_length=length)
    assert tokens.family == "sana" and tokens.length == length and 0 in tokens.special
    for word in ("red", "circle"):
        assert pipe.tokenizer.decode([ids[p] for p in tokens.positions(word)]).strip() == word
    with pytest.raises(ValueError, match="holds 4"):
        prompt_tokens(pipe, "a red circle near a blue square", max_sequence_length=4)
    with pytest.raises(ValueError, match="pass the pipeline, not its tokenizers"):
        prompt_tokens(pipe.tokenizer, "a red circle", family="sana", max_sequence_length=length)


def _decodes_to_words(tokenizer, ids, tokens, words=("red", "circle")):
    for word in words:
        assert tokenizer.decode([ids[p] for p in tokens.positions(word)]).strip().lower() == word


def test_flux2_left_pads_its_system_chat_template():
    """FLUX.2 lets apply_chat_template tokenize [system_message, prompt] (no generation prompt, no further <s>) and
    pads on the tokenizer's side (Mistral's: left); the words decode back from those ids, at the end."""
    from diffusers.pipelines.flux2.pipeline_flux2 import format_input

    pipe = tiny_pipeline("flux2")
    length = 48
    ids = pipe.tokenizer.apply_chat_template(
        format_input(["a red circle"], pipe.system_message),
        add_generation_prompt=False,
        tokenize=True,
        return_dict=True,
        padding="max_length",
        truncation=True,
        max_length=length,
    )["input_ids"][0]
    tokens = prompt_tokens(pipe, "a red circle", max_sequence_length=length)
    assert tokens.family == "flux2" and tokens.length == length == len(ids)
    assert pipe.tokenizer.padding_side == "left" and 0 in tokens.special  # padding first
    _decodes_to_words(pipe.tokenizer, ids, tokens)

    class Flux2KleinPipeline:  # another pipeline of the family, with another text path
        tokenizer = pipe.tokenizer

    with pytest.raises(ValueError, match="describes the text sequence of Flux2Pipeline; Flux2KleinPipeline"):
        prompt_tokens(Flux2KleinPipeline(), "a red circle", family="flux2", max_sequence_length=length)


def test_lumina2_prefixes_its_system_prompt():
    pipe = tiny_pipeline("lumina2")
    length = 48
    text = pipe.system_prompt + " <Prompt Start> " + "a red circle"
    ids = pipe.tokenizer(text, padding="max_length", max_length=length).input_ids
    tokens = prompt_tokens(pipe, "a red circle", max_sequence_length=length)
    assert tokens.family == "lumina2" and tokens.length == length == len(ids)
    _decodes_to_words(pipe.tokenizer, ids, tokens)


def test_cogview4_pads_on_the_left():
    """CogView4 pads GLM's tokens on the left to a multiple of 16: the words sit at the end of the sequence."""
    pipe = tiny_pipeline("cogview4")
    ids = pipe.tokenizer("a red circle").input_ids
    ids = [pipe.tokenizer.pad_token_id] * (16 - len(ids)) + ids
    tokens = prompt_tokens(pipe, "a red circle", max_sequence_length=16)
    assert tokens.positions("circle")[-1] == 15 and tokens.special[0] == 0
    _decodes_to_words(pipe.tokenizer, ids, tokens)


def test_tokens_the_model_puts_around_the_text_hold_no_word():
    """AuraFlow puts 8 register tokens before its T5 tokens; UniDiffuser 3 tokens before its CLIP tokens and one
    after. They count in the length and hold no word."""
    t5 = prompt_tokens(text_tokenizer("t5"), "a red circle", family="pixart", max_sequence_length=16)
    aura = prompt_tokens(text_tokenizer("t5"), "a red circle", family="auraflow", max_sequence_length=16)
    assert aura.length == 8 + 16 and set(range(8)) <= set(aura.special)
    assert aura.word_tokens == tuple(tuple(p + 8 for p in positions) for positions in t5.word_tokens)
    assert prompt_recipe("auraflow").sequence_length_of(aura.length) == 16
    clip = prompt_tokens(text_tokenizer("clip"), "a red circle", family="unet")
    uni = prompt_tokens({"clip_tokenizer": text_tokenizer("clip")}, "a red circle", family="unidiffuser")
    assert uni.length == 3 + 77 + 1 and uni.positions("red") == tuple(p + 3 for p in clip.positions("red"))


def test_hidream_maps_words_into_t5_and_both_llama_parts():
    pipe = tiny_pipeline("hidream_image")
    tokens = prompt_tokens(pipe, "a red circle", max_sequence_length=16)
    assert tokens.length == 48 and prompt_recipe("hidream_image").sequence_length_of(48) == 16
    t5 = pipe.tokenizer_3("a red circle").input_ids
    llama = pipe.tokenizer_4("a red circle").input_ids
    for word in ("red", "circle"):
        first, second, third = (tuple(p for p in tokens.positions(word) if lo <= p < lo + 16) for lo in (0, 16, 32))
        assert pipe.tokenizer_3.decode([t5[p] for p in first]).strip() == word
        assert pipe.tokenizer_4.decode([llama[p - 16] for p in second]).strip() == word
        assert third == tuple(p + 16 for p in second)


def test_nucleus_renders_a_module_system_prompt_through_its_processor():
    """NucleusMoE-Image renders [DEFAULT_SYSTEM_PROMPT, the prompt as a text part] with its processor's chat
    template and tokenizes with the processor; the words decode back from those ids."""
    pipe = tiny_pipeline("nucleus_moe_image")
    text = pipe._format_prompt("a red circle")
    ids = pipe.processor(text=[text]).input_ids[0]
    tokens = prompt_tokens(pipe, "a red circle", max_sequence_length=len(ids))
    assert tokens.length == len(ids) and tokens.positions("a")[0] > 0
    _decodes_to_words(pipe.processor.tokenizer, ids, tokens)


def test_ovis_image_crops_its_chat_template_and_system_prompt():
    pipe = tiny_pipeline("ovis_image")
    length = 16
    text = pipe._get_messages("a red circle")[0]
    ids = pipe.tokenizer(
        text, padding="max_length", max_length=length + pipe.user_prompt_begin_id, add_special_tokens=False
    ).input_ids[pipe.user_prompt_begin_id :]
    tokens = prompt_tokens(pipe, "a red circle", max_sequence_length=length)
    assert tokens.length == length == len(ids)
    _decodes_to_words(pipe.tokenizer, ids, tokens)


def _denoiser_text_sources(
    family: str, prompt: str, embedders: dict[str, int], **call
) -> tuple[list[int], list[int], list]:
    """Where each position of the text sequence the denoiser's first block receives comes from, read off a real
    generation: the embedders named in ``embedders`` are made to answer, for each of their positions ``j``,
    ``code * (j + 1)`` (the type embeddings' answers zero), so the block's text input says which position of which
    embedder's output sits where after the model's reordering. Also the ids each text encoder received for the
    prompt: ``(sources, mllm_ids, glyph_ids)``."""
    import torch

    pipe = pipeline(family)
    model = pipe.transformer
    ids: dict[str, list] = {}
    seen: list[torch.Tensor] = []

    def code(scale: int):
        def hook(module, args, output):
            positions = torch.arange(1, output.shape[1] + 1, dtype=output.dtype) * scale
            return positions[None, :, None].expand_as(output).clone()

        return hook

    def zero(module, args, output):
        return torch.zeros_like(output)

    def encoder(name):
        def hook(module, args, kwargs):
            ids.setdefault(name, kwargs.get("input_ids", args[0] if args else None)[0].tolist())

        return hook

    def first_block(module, args, kwargs):
        if not seen:
            seen.append(args[1] if len(args) > 1 else kwargs["encoder_hidden_states"])

    handles = [getattr(model, name).register_forward_hook(code(scale)) for name, scale in embedders.items()]
    handles += [
        getattr(model, name).register_forward_hook(zero) for name in ("cond_type_embed",) if hasattr(model, name)
    ]
    handles += [
        getattr(pipe, name).register_forward_pre_hook(encoder(name), with_kwargs=True)
        for name in ("text_encoder", "text_encoder_2")
    ]
    handles.append(model.transformer_blocks[0].register_forward_pre_hook(first_block, with_kwargs=True))
    try:
        with torch.no_grad():
            pipe(**{**call_kwargs(family), "prompt": prompt, "num_inference_steps": 1, **call})
    finally:
        for handle in handles:
            handle.remove()
    sources = [round(v) for v in seen[0][0, :, 0].tolist()]
    return sources, ids["text_encoder"], ids.get("text_encoder_2", [])


#: what the first block's text input says of a position (see _denoiser_text_sources): the chat template's tokens
#: answer j + 1, the glyph tokens -(j + 1), the image tokens 10000 * (j + 1)
_HUNYUAN_CODES = {"context_embedder": 1, "context_embedder_2": -1, "image_embedder": 10000}


@pytest.mark.parametrize("key", ["hunyuan_image", "hunyuan_video15", "HunyuanVideo15ImageToVideoPipeline"])
@pytest.mark.parametrize("prompt", ['a red sign saying "ok" near a circle', "a red circle"])
def test_hunyuan_words_sit_where_the_denoiser_gathers_the_valid_tokens(key, prompt):
    """HunyuanImage and HunyuanVideo 1.5 gather each part's valid tokens first (HunyuanVideo 1.5's image tokens in
    image-to-video, the ByT5 glyph tokens of the quoted text, then the cropped chat template's), then the padding:
    read off the first block's text input of a real generation, every word's positions hold the chat-template
    tokens that spell it, right after the image and glyph tokens, and the sequence is as long as the denoiser's."""
    pipe = pipeline(key)
    crop = pipe.prompt_template_encode_start_idx
    codes = {name: c for name, c in _HUNYUAN_CODES.items() if hasattr(pipe.transformer, name)}
    sources, mllm_ids, glyph_ids = _denoiser_text_sources(key, prompt, codes, output_type="latent")
    tokens = prompt_tokens(pipe, prompt)
    assert tokens.family == pipeline_spec(key).family and tokens.length == len(sources)
    # the image tokens lead in image-to-video (zeros, masked out, among the padding in text-to-video)
    images = sum(1 for source in sources[:1000] if source >= 10000)
    assert images == (pipe.vision_num_semantic_tokens if key == "HunyuanVideo15ImageToVideoPipeline" else 0)
    assert sources[:images] == [10000 * (j + 1) for j in range(images)]
    # ByT5 runs on the quoted text only (its bytes, then </s>); without quotes its tokens are all padding
    glyphs = sum(1 for i in glyph_ids if i != pipe.tokenizer_2.pad_token_id)
    assert (glyphs > 0) == ('"' in prompt)
    assert sources[images : images + glyphs] == [-(j + 1) for j in range(glyphs)]
    for word in ("red", "circle", *(("ok",) if glyphs else ())):
        positions = tokens.positions(word)
        assert all(0 < sources[p] < 10000 for p in positions)  # chat-template tokens
        spelled = pipe.tokenizer.decode([mllm_ids[crop + sources[p] - 1] for p in positions])
        assert spelled.strip() == word
    owned = {p for positions in tokens.word_tokens for p in positions}
    assert min(owned) >= images + glyphs


@pytest.mark.parametrize("prompts", [["a red circle near a cat"], ["a red circle near a cat", "a blue circle"]])
def test_framepack_words_follow_its_image_tokens_in_the_cropped_template(prompts):
    """Framepack puts the image's SigLIP tokens ahead of HunyuanVideo's cropped Llama template: read off the first
    block's text input of a real generation, the image tokens lead, every word's positions hold the template tokens
    that spell it, and the sequence is as long as the denoiser's, the padding dropped in a one-row call (the forward
    cuts the text at the row's mask) and kept in a two-row one (the call's max_sequence_length)."""
    key = "hunyuan_video_framepack"
    pipe = pipeline(key)
    call = call_kwargs(key)
    template, crop = call["prompt_template"], call["prompt_template"]["crop_start"]
    codes = {"image_projection": 10000, "context_embedder": 1}
    prompt = prompts[0] if len(prompts) == 1 else prompts
    sources, llama_ids, _ = _denoiser_text_sources(
        key, prompt, codes, output_type="latent", image=[call["image"]] * len(prompts)
    )
    length = prompt_recipe(key).sequence_length_of(len(sources), pipe)
    tokens = prompt_tokens(pipe, prompts[0], max_sequence_length=length, prompt_template=template)
    assert tokens.length == len(sources)
    images = pipe.image_encoder.config.image_size // pipe.image_encoder.config.patch_size
    images *= images  # one SigLIP token per patch, no class token
    assert sources[:images] == [10000 * (j + 1) for j in range(images)]
    valid = sum(1 for i in llama_ids if i != pipe.tokenizer.pad_token_id) - crop
    assert length == (valid if len(prompts) == 1 else call["max_sequence_length"])
    assert sources[images : images + valid] == [j + 1 for j in range(valid)]
    for word in ("red", "circle", "near", "cat"):
        positions = tokens.positions(word)
        assert all(0 < sources[p] < 10000 for p in positions)  # template tokens
        assert pipe.tokenizer.decode([llama_ids[crop + sources[p] - 1] for p in positions]).strip() == word
    owned = {p for positions in tokens.word_tokens for p in positions}
    assert min(owned) >= images and owned.isdisjoint(tokens.special)


class _Seen(Exception):
    """Stops a generation once the denoiser's first call has been seen."""


def _fed(
    family: str, prompt: str, encoder: str | None = "text_encoder", row: int = 0, **call
) -> tuple[list[int], dict]:
    """The ids of batch row ``row`` the pipeline's ``encoder`` (a component, or a dotted path into one) received
    first (the prompt's; none without an encoder) and the keyword inputs of the denoiser's first call (its text
    input under ``"text"``), read off a real one-step generation of the tiny pipeline."""
    import inspect
    import warnings

    import torch

    from visattn.families import family_named

    pipe = pipeline(family)
    denoiser = getattr(pipe, pipeline_spec(family).denoiser)
    text = family_named(pipeline_spec(family).family).text
    ids: list[list[int]] = []
    inputs: list[dict] = []

    def encoded(module, args, kwargs):
        if not ids:
            ids.append(kwargs.get("input_ids", args[0] if args else None)[row].tolist())

    def denoised(module, args, kwargs):
        bound = inspect.signature(module.forward).bind(*args, **kwargs).arguments
        inputs.append({**bound, "text": text.read(args, kwargs)})
        raise _Seen  # nothing after the first denoiser call is needed

    handles = [denoiser.register_forward_pre_hook(denoised, with_kwargs=True)]
    if encoder is not None:
        module = functools.reduce(getattr, encoder.split("."), pipe)
        handles.append(module.register_forward_pre_hook(encoded, with_kwargs=True))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tiny models' own (flex attention without torch.compile, ...)
            pipe(**{**call_kwargs(family), "prompt": prompt, "num_inference_steps": 1, "output_type": "latent", **call})
    except _Seen:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return (ids[0] if ids else []), inputs[0]


def test_ernie_image_words_are_the_prompts_own_tokens_padded_to_the_longest():
    """ERNIE-Image encodes each prompt on its own (<s> first) and zero-pads the batch to its longest prompt: the
    words decode back from the ids its text encoder received, and the call's text length is that prompt's."""
    pipe = pipeline("ernie_image")
    ids, inputs = _fed("ernie_image", "A red circle, near a cat")
    length = inputs["text"].shape[1]
    assert length == len(ids)  # the prompt is longer than the empty negative prompt
    tokens = prompt_tokens(pipe, "A red circle, near a cat", max_sequence_length=length)
    assert tokens.length == length and tokens.special == (0,)  # <s>
    _decodes_to_words(pipe.tokenizer, ids, tokens, ("red", "circle", "near", "cat"))


def test_stable_cascade_prior_follows_clip_with_its_pooled_and_image_tokens():
    """Stable Cascade's prior attends over [CLIP's 77 positions, the pooled text, the image embedding], the last
    two mapped to clip_seq tokens each: the words decode back from the ids its CLIP encoder received, and the
    sequence is as long as the prior's text keys."""
    pipe = pipeline("stable_cascade")
    ids, inputs = _fed("stable_cascade", "a red circle near a cat")
    clip_seq = pipe.prior.config.clip_seq
    keys = inputs["clip_text"].shape[1] + clip_seq * (inputs["clip_text_pooled"].shape[1] + inputs["clip_img"].shape[1])
    tokens = prompt_tokens(pipe, "a red circle near a cat")
    assert tokens.length == keys and len(ids) == inputs["clip_text"].shape[1]
    assert set(range(len(ids), keys)) <= set(tokens.special)
    _decodes_to_words(pipe.tokenizer, ids, tokens, ("red", "circle", "near", "cat"))


def test_amused_words_are_its_clip_positions():
    """aMUSEd's U-ViT cross-attends to CLIP's penultimate hidden states over the tokenizer's padded length: the words
    decode back from the ids its CLIP encoder received."""
    pipe = pipeline("amused")
    ids, inputs = _fed("amused", "a red circle near a cat")
    tokens = prompt_tokens(pipe, "a red circle near a cat")
    assert tokens.length == inputs["text"].shape[1] == len(ids)
    _decodes_to_words(pipe.tokenizer, ids, tokens, ("red", "circle", "near", "cat"))


def test_omnigen_words_sit_at_the_end_of_its_left_padded_instruction():
    """OmniGen feeds its denoiser the token ids of the processor's instruction template around the prompt, padded on
    the left to the longest row of the call (the default negative prompt's), then a time token: the words decode
    back from the ids the denoiser received."""
    pipe = pipeline("omnigen")
    _, inputs = _fed("omnigen", "a red circle near a cat", encoder=None)
    ids = inputs["text"][0].tolist()  # the conditional row
    tokens = prompt_tokens(pipe, "a red circle near a cat", max_sequence_length=len(ids))
    assert tokens.length == len(ids) + 1 and tokens.special[0] == 0 and tokens.special[-1] == len(ids)
    _decodes_to_words(pipe.tokenizer, ids, tokens, ("red", "circle", "near", "cat"))
    # the instruction's own tokens end the row, after the left padding
    instruction = pipe.tokenizer(pipe.multimodal_processor.add_prefix_instruction("a red circle near a cat")).input_ids
    assert len(instruction) < len(ids) and ids[-len(instruction) :] == instruction


def test_sana_wm_keeps_bos_and_crops_its_default_chi_prompt():
    """SANA-WM prefixes its module's DEFAULT_CHI_PROMPT (the call's chi_prompt defaults to None) to the prompt as
    given and keeps <bos> and the last max_sequence_length - 1 tokens: the words decode back from the ids its text
    encoder received, at the positions the denoiser's text keeps."""
    pipe = pipeline("sana_wm")
    ids, inputs = _fed("sana_wm", "A red circle near a cat")
    length = inputs["text"].shape[-2]
    kept = ids[:1] + ids[len(ids) - (length - 1) :]
    tokens = prompt_tokens(pipe, "A red circle near a cat", max_sequence_length=length)
    assert tokens.length == length and 0 in tokens.special
    _decodes_to_words(pipe.tokenizer, kept, tokens, ("red", "circle", "near", "cat"))


def test_dreamlite_crops_its_generate_template_and_pads_to_the_longest():
    """DreamLite (generate mode) encodes [negative prompt, prompt] with its generate template, drops the template's
    first prompt_template_encode_generate_start_idx tokens and pads the valid tokens to the longer row: the words
    decode back from the prompt row's ids its text encoder received."""
    pipe = pipeline("dreamlite_unet")
    crop = pipe.prompt_template_encode_generate_start_idx
    ids, inputs = _fed("dreamlite_unet", "a red circle near a cat", row=1)  # [negative prompt, prompt]
    length = inputs["text"].shape[1]
    tokens = prompt_tokens(pipe, "a red circle near a cat", max_sequence_length=length)
    assert tokens.length == length == len(ids) - crop  # the prompt is the longer row
    _decodes_to_words(pipe.tokenizer, ids[crop:], tokens, ("red", "circle", "near", "cat"))


def test_flux3_words_follow_its_chat_template_in_the_window():
    """Flux 3's text encoder step renders its processor's chat template around the prompt and right-pads the ids
    to a multiple of 80 capped at max_sequence_length: the words decode back from the ids its Qwen3-VL received,
    and the sequence is the denoiser's text length."""
    pipe = pipeline("flux3")
    ids, inputs = _fed("flux3", "a red circle near a cat")
    length = inputs["text"].shape[1]
    tokens = prompt_tokens(pipe, "a red circle near a cat", max_sequence_length=length)
    assert tokens.length == length == len(ids) and tokens.positions("a")[0] > 0  # the template's user turn first
    _decodes_to_words(pipe.tokenizer.tokenizer, ids, tokens, ("red", "circle", "near", "cat"))


def test_minimax_h3_words_are_the_prompts_own_tokens():
    """MiniMax-H3's text-to-video-and-audio step tokenizes the prompt verbatim (no template, no special tokens, no
    padding) and feeds Qwen3-VL's language model those ids: the words decode back from the ids it received, and the
    sequence is the denoiser's text length."""
    pipe = pipeline("minimax_h3")
    # its scheduler takes 2 steps at least (the denoiser is first called in the first)
    ids, inputs = _fed("minimax_h3", "A red circle near a cat", encoder="text_encoder.model", num_inference_steps=2)
    length = inputs["text"].shape[1]
    tokens = prompt_tokens(pipe, "A red circle near a cat", max_sequence_length=length)
    assert tokens.length == length == len(ids) and tokens.special == ()
    _decodes_to_words(pipe.tokenizer, ids, tokens, ("red", "circle", "near", "cat"))
    assert tokens.positions(0) == (0,)  # nothing before the words


def test_wan_animate_2_words_are_its_umt5_positions():
    """Wan-Animate 2 encodes the prompt as given with umT5 and its model pads the text to config.text_len: the
    words decode back from the ids its text encoder received."""
    pipe = pipeline("wan_animate_2")
    ids, _ = _fed("wan_animate_2", "A red circle", output_type="np")
    length = pipe.transformer.config.text_len
    tokens = prompt_tokens(pipe, "A red circle", max_sequence_length=length)
    assert tokens.length == length
    _decodes_to_words(pipe.tokenizer, ids, tokens)


def test_joyimage_edit_text_only_words_follow_its_cropped_template():
    """Without an input image, JoyImage-Edit renders prompt_template_encode["image"] around the prompt, drops its
    first prompt_template_encode_start_idx["image"] tokens and pads each prompt's valid tokens to the call's longest:
    the words decode back from the ids its Qwen3-VL received, and the sequence is the denoiser's text length."""
    pipe = pipeline("joyimage_edit")
    crop = pipe.prompt_template_encode_start_idx["image"]
    call = {**pipeline_spec("joyimage_edit").words_call, "negative_prompt": ["", ""]}
    ids, inputs = _fed("joyimage_edit", ["a red circle near a cat", "a cat"], **call)
    length = inputs["text"].shape[1]
    tokens = prompt_tokens(pipe, "a red circle near a cat", max_sequence_length=length)
    assert tokens.length == length == len(ids) - crop  # the longer row
    _decodes_to_words(pipe.tokenizer, ids[crop:], tokens, ("red", "circle", "near", "cat"))
    short = prompt_tokens(pipe, "a cat", max_sequence_length=length)  # the other row, padded after its tokens
    assert short.positions("cat") == tuple(p - 4 for p in tokens.positions("cat"))


def test_joyimage_edit_refuses_words_with_an_input_image():
    """With an input image JoyImage-Edit's processor puts the image's tokens before the words: words are refused in
    such a call, and mapped in a text-only one."""
    import visattn

    pipe = pipeline("joyimage_edit")
    words = pipeline_spec("joyimage_edit").words_call
    call = {"prompt": "a red circle", "num_inference_steps": 1, "output_type": "latent"}
    with visattn.attach(pipe, visattn.AttentionMaps(words="red")):
        with pytest.raises(ValueError, match="describes calls without image; this call's JoyImageEditPipeline"):
            pipe(**call_kwargs("joyimage_edit", **call))
        pipe(**call_kwargs("joyimage_edit", **call, **words))


def test_dreamlite_refuses_words_in_edit_mode():
    """Given an input image, DreamLite encodes its edit template, whose image tokens come before the words: words
    are refused for such a call (its text length, the call's longest prompt, could not tell), and mapped again in
    a generate call."""
    import visattn
    from visattn.tiny.denoisers.pipelines.qwen import input_image

    pipe = pipeline("dreamlite_unet")
    call = {
        **call_kwargs("dreamlite_unet"),
        "prompt": "a red circle",
        "num_inference_steps": 1,
        "output_type": "latent",
    }
    with visattn.attach(pipe, visattn.AttentionMaps(words="red")):
        with pytest.raises(ValueError, match="describes calls without image; this call's DreamLitePipeline"):
            pipe(**call, image=input_image())
        pipe(**call)
    assert prompt_tokens(pipe, "a red circle").positions("red")  # outside a call: the generate layout


def test_ernie_image_refuses_words_when_its_prompt_enhancer_rewrites_the_prompts():
    """ERNIE-Image's prompt enhancer (use_pe, on by default where the pipeline has a pe model) encodes the text it
    generates, not the prompts given: Prompt-to-Prompt's words are refused in such a call, and mapped without it."""
    import visattn
    from visattn.tiny.denoisers.pipelines.llm import mistral3_model, mistral_tokenizer

    pipe = tiny_pipeline("ernie_image")  # not the cached one: it gets an enhancer
    pe_tokenizer = mistral_tokenizer()
    pe_tokenizer.model_max_length = 4  # the enhancer generates that many tokens
    pipe.register_modules(pe=mistral3_model(pe_tokenizer), pe_tokenizer=pe_tokenizer)
    p2p = visattn.PromptToPrompt.replace("a red circle", "a blue circle")
    call = {**call_kwargs("ernie_image"), "prompt": p2p.prompts, "generator": p2p.generator(0), "output_type": "latent"}
    with visattn.attach(pipe, p2p):
        with pytest.raises(ValueError, match="describes calls without revised_prompts; this call's ErnieImagePipeline"):
            pipe(**call)
        pipe(**call, use_pe=False)


@pytest.mark.parametrize(
    ("key", "rewriter", "rewrite"),
    [
        ("flux2", "upsample_prompt", {"caption_upsample_temperature": 0.15}),
        ("ideogram4", "upsample_prompt", {"prompt_upsampling": True}),
        # LTX-2.0's checkpoints need a system prompt for the enhancer (LTX-2.5's carry their own)
        ("ltx2", "enhance_prompt", {"enable_prompt_enhancement": True, "system_prompt": "Describe the video."}),
        ("kandinsky6", "expand_prompts", {"expand_prompts": True}),
    ],
)
def test_words_are_refused_in_a_call_that_rewrites_its_prompt(key, rewriter, rewrite, monkeypatch):
    """FLUX.2 (a caption temperature), Ideogram 4 (prompt_upsampling), LTX-2 (enable_prompt_enhancement) and
    Kandinsky 6 (expand_prompts) encode a language model's rewrite of each prompt, not the prompt given:
    Prompt-to-Prompt's words are refused in such a call (the rewriter, a model the tiny pipelines lack or would run
    for minutes, stands in as the identity), and mapped without it."""
    import visattn

    def identity(*args, **kwargs):
        return kwargs["prompt"] if "prompt" in kwargs else args[0]

    pipe = tiny_pipeline(key)  # not the cached one: its rewriter is replaced
    monkeypatch.setattr(pipe, rewriter, identity)
    p2p = visattn.PromptToPrompt.replace("a red circle", "a blue circle")
    call = {**call_kwargs(key), "prompt": p2p.prompts, "generator": p2p.generator(0), "output_type": "latent"}
    name, value = next(iter(rewrite.items()))
    with visattn.attach(pipe, p2p):
        with pytest.raises(ValueError, match=f"describes calls without {name}; this call's {type(pipe).__name__}"):
            pipe(**call, **rewrite)
        pipe(**call, **{**rewrite, name: type(value)(0)})  # a temperature of 0 (or False) rewrites nothing


def test_words_are_refused_for_modular_blocks_that_rewrite_the_prompt():
    """FLUX.3's auto blocks start with a prompt upsampler (a Qwen3.5 that expands each prompt into a long caption)
    unless it is popped: an effect that needs words is refused when it is attached, before a generation runs the
    upsampler, with the fix; effects without words attach, and the blocks without the step map words."""
    from diffusers.modular_pipelines import Flux3AutoBlocks, Flux3ModularPipeline

    import visattn

    popped = tiny_pipeline("flux3")
    assert "prompt_upsampler" not in popped.blocks.sub_blocks
    pipe = Flux3ModularPipeline(blocks=Flux3AutoBlocks())
    pipe.update_components(**{name: getattr(popped, name) for name in ("tokenizer", "text_encoder", "transformer")})
    p2p = visattn.PromptToPrompt.replace("a red circle", "a blue circle")
    fix = r"blocks.sub_blocks.pop\('prompt_upsampler'\)"
    with pytest.raises(ValueError, match=f"PromptToPrompt needs words .* rewrite the prompt .*{fix}"):
        visattn.attach(pipe, p2p)
    with pytest.raises(ValueError, match=f"AttentionMaps needs words .*{fix}"):
        visattn.attach(pipe, visattn.AttentionMaps(words="red"))
    with pytest.raises(ValueError, match=fix):
        prompt_tokens(pipe, "a red circle")
    with visattn.attach(pipe, visattn.PerturbedAttentionGuidance(scale=2.0)):
        pass
    assert prompt_tokens(popped, "a red circle").positions("red")


def test_text_part_refuses_what_it_cannot_describe():
    from visattn.families.base import PipelineTemplate, PromptRecipe, TextPart

    with pytest.raises(ValueError, match="TextPart.padding must be one of"):
        TextPart("t5", padding="middle")
    with pytest.raises(ValueError, match="only for the parts that are not CLIP"):
        TextPart("clip", padding="left")
    with pytest.raises(ValueError, match="TextPart.template must be one of"):
        TextPart("chat_template", template="pipeline:prompt_template_encode:prompt_template_encode_start_idx")
    with pytest.raises(ValueError, match="required for, and only for"):
        TextPart("t5", template=PipelineTemplate("prompt_template_encode"))
    with pytest.raises(ValueError, match="TextPart.derive is only for kind='t5'"):
        TextPart("clip", derive="module:function")
    with pytest.raises(ValueError, match="TextPart.length is required for kind='reserved'"):
        TextPart("reserved")
    with pytest.raises(ValueError, match="TextPart.valid_in is only for kind='reserved'"):
        TextPart("t5", valid_in=("HunyuanVideo15ImageToVideoPipeline",))
    with pytest.raises(ValueError, match="TextPart.length must be a positive int, a pipeline attribute name or None"):
        TextPart("t5", length=0)
    # a length read from the pipeline beside parts of max_sequence_length (Framepack's image tokens): the call's
    # max_sequence_length follows from the text length only with the pipeline
    mixed = PromptRecipe((TextPart("reserved", length="clip_seq"), TextPart("t5")), max_sequence_length=8)
    with pytest.raises(ValueError, match="reads part lengths from the pipeline"):
        mixed.sequence_length_of(16 + 4)
    with pytest.raises(ValueError, match="has no clip_seq, which this family's tokenizer ladder reads"):
        mixed.sequence_length_of(16 + 4, pipeline("unet"))
    # numeric lengths count toward the fixed length, so the call's max_sequence_length still follows from the text's
    recipe = PromptRecipe((TextPart("t5"), TextPart("reserved", length=4)), max_sequence_length=8)
    assert recipe.sequence_length_of(16 + 4) == 16
    # lengths read from the pipeline: no fixed length, and no max_sequence_length to find
    hunyuan = prompt_recipe("hunyuan_image")
    assert hunyuan.sequence_length_of(1128) is None
    with pytest.raises(ValueError, match="reads part lengths from the pipeline"):
        _ = hunyuan.fixed_length


# --- the real CLIP vocabulary (issue 29) -------------------------------------------------------------------------
# Stable Diffusion's tokenizer, built offline from the BPE merges open_clip_torch ships; the toy tokenizers above
# know only the toy world's words, so punctuation glued to a word and capitals are checked here.
from visattn.tiny.tokenizers import clip_bpe_path, real_clip_tokenizer  # noqa: E402
from visattn.words import _align, _align_by_prefix  # noqa: E402

needs_real_clip = pytest.mark.skipif(
    clip_bpe_path() is None, reason="the real CLIP vocabulary ships in open_clip_torch (pip install --no-deps ...)"
)

#: prompts with punctuation next to words, capitals, digits, apostrophes and runs of spaces
REAL_PROMPTS = (
    "a red car, at night",
    "A Red CAR at Night",
    "a red car,at night.",
    "(a red car) parked; at NIGHT!!",
    "a dog's toy, don't touch",
    "top-left: 2024 cars",
    "a  red\\ncar   at night",
    "Café au lait",
)


@functools.cache
def real_clip():
    return real_clip_tokenizer()


@needs_real_clip
def test_real_clip_tokenizer_has_sd_ids():
    tokenizer = real_clip()
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    # the ids of openai/clip-vit-large-patch14 (Stable Diffusion 1.x's tokenizer/vocab.json)
    assert tokenizer("a red car, at night").input_ids == [49406, 320, 736, 1615, 267, 536, 930, 49407]
    assert tokenizer("A Red CAR").input_ids == tokenizer("a red car").input_ids  # CLIP lower-cases


@needs_real_clip
@pytest.mark.parametrize("prompt", REAL_PROMPTS)
def test_every_word_maps_to_the_real_tokens_that_spell_it(prompt):
    tokenizer = real_clip()
    tokens = prompt_tokens(tokenizer, prompt, family="unet")
    ids = tokenizer(prompt).input_ids
    assert tokens.words == tuple(word for word, _, _ in split_words(prompt))
    for word, positions in zip(tokens.words, tokens.word_tokens, strict=True):
        assert positions, f"{word!r} has no token in {prompt!r}"
        spelled = tokenizer.decode([ids[p] for p in positions]).replace(" ", "")  # bytes back to text
        assert word in spelled, (word, spelled)
    # every token between <|startoftext|> and <|endoftext|> belongs to a word
    owned = {p for positions in tokens.word_tokens for p in positions}
    assert owned == set(range(1, len(ids) - 1))


@needs_real_clip
def test_punctuation_next_to_a_word_and_capitals_find_the_word():
    tokenizer = real_clip()
    tokens = prompt_tokens(tokenizer, "a red car, at night", family="unet")
    assert tokens.positions("car") == (3,) and tokens.positions(",") == (4,) and tokens.positions("night") == (6,)
    assert tokens.positions("car,") == (3, 4) and tokens.positions("red car") == (2, 3)
    shouted = prompt_tokens(tokenizer, "A Red CAR at Night", family="unet")
    for word in ("car", "CAR", "Car"):
        assert shouted.positions(word) == (3,)
    assert shouted.words == ("a", "red", "car", "at", "night")


class _WithoutOffsets:
    """The real tokenizer without character offsets, as a slow tokenizer is: alignment falls back to prefixes."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, text, **kwargs):
        if kwargs.get("return_offsets_mapping"):
            raise NotImplementedError("no offsets")
        return self.tokenizer(text, **kwargs)


@needs_real_clip
@pytest.mark.parametrize("prompt", REAL_PROMPTS)
def test_prefix_alignment_agrees_with_offsets_on_the_real_vocabulary(prompt):
    """Without offsets, a token that spans a word boundary (CLIP's ``'s`` joins ``'`` and ``s``) belongs to both
    words, as it does with offsets; before, the second word got no token."""
    words = split_words(prompt)
    assert _align_by_prefix(_WithoutOffsets(real_clip()), prompt, 0, words) == _align(real_clip(), prompt, 0, words)


@needs_real_clip
def test_an_edit_with_local_blend_and_maps_runs_on_the_real_vocabulary():
    import visattn
    from visattn.effects import AttentionMaps, LocalBlend, PromptToPrompt

    pipe = tiny_pipeline("unet")
    pipe.tokenizer = real_clip()
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))  # the tiny encoder knows the toy ids only
    p2p = PromptToPrompt.replace("A red Car, at night", "a blue car, at night", local_blend=LocalBlend(["CAR"]))
    maps = AttentionMaps(words=["car", "Night"], prompt=p2p.prompts)
    with visattn.attach(pipe, p2p, maps):
        pipe(prompt=p2p.prompts, generator=p2p.generator(0), num_inference_steps=2, height=32, width=32)
    assert p2p.local_blend.mask is not None and maps.contributions
