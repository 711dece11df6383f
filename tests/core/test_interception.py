"""How attention calls reach visattn: routing ``torch.nn.functional`` during hooked forwards, and the mode it falls
back to (a processor that calls SDPA by another name, a forward inside another TorchFunctionMode, other threads)."""

from __future__ import annotations

import functools
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers.hooks.layer_skip import AttentionScoreSkipFunctionMode
from diffusers.models.attention_processor import AttnProcessor2_0
from helpers import Boom, Probe, ZeroOutput

import visattn
from visattn.effects.base import AttentionCall, Effect
from visattn.interception import layer_hook
from visattn.tiny import call_kwargs, tiny_pipeline

REAL_SDPA = torch._C._nn.scaled_dot_product_attention
REAL_LINEAR = torch._C._nn.linear


@functools.cache
def pipeline():
    return tiny_pipeline("unet")


def run(**overrides) -> np.ndarray:
    return np.asarray(pipeline()(**call_kwargs("unet", **overrides))[0], dtype=np.float64)


def hooks(model):
    return [hook for module in visattn.attention_layers(model).values() if (hook := layer_hook(module)) is not None]


class BoundNameProcessor(AttnProcessor2_0):
    """A processor that holds SDPA under its own name (imported once), which routing the attribute cannot reach."""

    sdpa = staticmethod(REAL_SDPA)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch = hidden_states.shape[0]
        q, k, v = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = k.shape[-1] // attn.heads
        q, k, v = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (q, k, v))
        out = self.sdpa(q, k, v)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)
        return attn.to_out[1](attn.to_out[0](out))


def test_routing_leaves_torch_functional_as_it_was_outside_hooked_forwards():
    unet = pipeline().unet
    with visattn.attach(pipeline(), visattn.PerturbedAttentionGuidance(scale=2.0, layers="mid")):
        run()
        assert F.scaled_dot_product_attention is REAL_SDPA
        assert F.linear is REAL_LINEAR
        assert {hook._routing for hook in hooks(unet)} == {"attribute"}
    assert F.scaled_dot_product_attention is REAL_SDPA


def test_a_processor_calling_sdpa_by_another_name_is_answered_through_the_mode():
    """Routing misses such a processor's calls; the first forward finds that out and answers them anyway, and the
    layer keeps the mode: zeroing the attention output changes the image on every call, the first included."""
    unet = pipeline().unet
    stock_processors = dict(unet.attn_processors)
    try:
        unet.set_attn_processor(BoundNameProcessor())
        plain = run()
        with visattn.attach(pipeline(), ZeroOutput(layers="self")):
            first, second = run(), run()
            assert {hook._routing for hook in hooks(unet)} == {"mode"}
        zeroed = first
        assert np.abs(zeroed - plain).max() > 1e-3
        assert np.array_equal(first, second)
    finally:
        unet.set_attn_processor(stock_processors)
    with visattn.attach(pipeline(), ZeroOutput(layers="self")):
        assert np.array_equal(run(), zeroed), "the routed stock processors compute what the mode did"


def test_a_torch_function_mode_around_the_forward_still_sees_the_real_functions():
    """diffusers' layer-skip hook answers SDPA in a TorchFunctionMode that compares the function it sees with
    torch.nn.functional's: around a hooked forward it must keep working (visattn answers through a mode there)."""
    pipe = pipeline()
    module = pipe.unet.mid_block.attentions[0].transformer_blocks[0].attn1
    hidden = torch.randn(2, 4, module.to_q.in_features)
    probe = Probe(layers="mid")
    with torch.no_grad():
        value = module.to_out[0](module.to_v(hidden))
        with visattn.attach(pipe, probe), AttentionScoreSkipFunctionMode():
            skipped = module(hidden)
    assert probe.contexts, "visattn saw the call"
    torch.testing.assert_close(skipped, value, rtol=0, atol=0)


class Blocking(Effect):
    """Waits inside an attention call (the forward is hooked and routing is installed) until told to go on."""

    roles = ("self",)

    def __init__(self, inside: threading.Event, go_on: threading.Event, **kwargs):
        super().__init__(**kwargs)
        self.inside, self.go_on = inside, go_on

    def apply(self, call: AttentionCall) -> None:
        self.inside.set()
        self.go_on.wait(timeout=30)


def test_another_thread_gets_the_real_attention_while_a_hooked_forward_routes_it():
    inside, go_on = threading.Event(), threading.Event()
    errors = []

    def generate():
        try:
            with visattn.attach(pipeline(), Blocking(inside, go_on, layers="mid")):
                run(num_inference_steps=1)
        except Exception as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    worker = threading.Thread(target=generate)
    worker.start()
    try:
        assert inside.wait(timeout=60)
        q, k, v = torch.randn(3, 1, 2, 5, 4).unbind(0)
        assert F.scaled_dot_product_attention is not REAL_SDPA  # routed, for the worker's forward
        torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v), REAL_SDPA(q, k, v), rtol=0, atol=0)
    finally:
        go_on.set()
        worker.join(timeout=60)
    assert not errors
    assert F.scaled_dot_product_attention is REAL_SDPA


def test_rows_answered_by_their_values_skip_their_projections_through_routing(monkeypatch):
    """PAG's perturbed rows are not projected (their query and key projections hold zeros nothing reads) when the
    routing serves the forward, as under the mode, and the image is the one computing every row gives."""
    from visattn import interception

    layers = ["mid"]
    every_row = None
    with visattn.attach(pipeline(), visattn.PerturbedAttentionGuidance(scale=2.0, layers=layers)):
        every_row = run()
    monkeypatch.setattr(interception, "_MIN_SKIPPED_WORK", 0)
    module = pipeline().unet.mid_block.attentions[0].transformer_blocks[0].attn1
    outputs = []
    handle = module.to_q.register_forward_hook(lambda mod, args, out: outputs.append(out.detach().clone()))
    try:
        with visattn.attach(pipeline(), visattn.PerturbedAttentionGuidance(scale=2.0, layers=layers)):
            ours = run()
    finally:
        handle.remove()
    assert outputs and all(out.shape[0] == 3 for out in outputs)  # [uncond, cond, perturbed]
    assert all(not out[2].any() and out[:2].abs().sum() > 0 for out in outputs)
    assert np.abs(ours - every_row).max() <= 1e-6


def test_call_contexts_made_per_call_hold_every_field_of_the_dataclass():
    """The hook makes call contexts without the dataclass's __init__ (per call, it costs): they must still hold
    exactly the dataclass's fields."""
    import dataclasses

    from visattn.context import CallContext

    probe = Probe(layers="mid")
    with visattn.attach(pipeline(), probe):
        run(num_inference_steps=1)
    names = {field.name for field in dataclasses.fields(CallContext)}
    assert probe.contexts
    for ctx in probe.contexts:
        assert set(vars(ctx)) == names
        assert dataclasses.replace(ctx) == ctx  # every field readable, equal to one built through __init__


@pytest.mark.parametrize("bias", [False, True])
def test_projections_written_in_place_equal_f_linear_bit_for_bit(bias):
    from visattn.interception import _project_into

    torch.manual_seed(0)
    x = torch.randn(4, 33, 24)
    weight = torch.randn(40, 24)
    b = torch.randn(40) if bias else None
    out = _project_into(x, 3, 4, weight, b)
    assert out.shape == (4, 33, 40)
    torch.testing.assert_close(out[:3], F.linear(x[:3], weight, b), rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = _project_into(x, 3, 4, weight, b)
        torch.testing.assert_close(out[:3], F.linear(x[:3], weight, b), rtol=0, atol=0)


def test_a_compiled_denoiser_gets_the_same_edit_as_the_eager_one(monkeypatch):
    """torch.compile traces the hooked forward: routing, which swaps a module attribute, would be baked into its
    graph, so compiled forwards are answered through the mode; the edit (self-attention injection and a word swap,
    whose target rows' projections are copies of their sources') equals the eager one exactly."""
    import warnings

    from visattn import interception

    monkeypatch.setattr(interception, "_MIN_SKIPPED_WORK", 0)  # the tiny layers would not pay for the plan
    p2p = visattn.PromptToPrompt.replace("a red cat", "a red dog", cross_steps=1.0, self_steps=1.0)
    pipe = tiny_pipeline("unet")
    kwargs = call_kwargs("unet", prompt=p2p.prompts, generator=p2p.generator(0, 1), num_inference_steps=1)
    with visattn.attach(pipe, p2p):
        eager = np.asarray(pipe(**kwargs)[0], dtype=np.float64)
    unet = pipe.unet
    try:
        pipe.unet = torch.compile(unet, backend="eager")
        kwargs["generator"] = p2p.generator(0, 1)
        with warnings.catch_warnings(), visattn.attach(pipe, p2p):
            warnings.simplefilter("ignore")  # dynamo's notes on graph breaks
            compiled = np.asarray(pipe(**kwargs)[0], dtype=np.float64)
    finally:
        pipe.unet = unet
    assert np.array_equal(compiled, eager)


def test_an_error_inside_a_hooked_forward_leaves_torch_functional_as_it_was():
    with pytest.raises(RuntimeError, match="boom"), visattn.attach(pipeline(), Boom(layers="mid")):
        run(num_inference_steps=1)
    assert F.scaled_dot_product_attention is REAL_SDPA
    assert F.linear is REAL_LINEAR


@pytest.mark.parametrize(
    ("copies", "spans", "calls_apart"),
    [
        ({1: 0}, {}, 0),  # a whole row
        ({2: 0, 3: 1}, {2: slice(0, 4), 3: slice(0, 4)}, 1),  # few queries of two consecutive rows: one call apart
        ({1: 0}, {1: slice(2, 12)}, 1),  # most queries: the row gathered, its own first queries apart
        ({1: 0, 2: 0, 4: 3}, {1: slice(0, 4), 2: slice(2, 12)}, 2),  # the three forms together
        ({1: 0, 2: 0, 3: 0, 4: 0}, {2: slice(2, 12)}, 1),  # every row the first one's: an expanded view, no copies
    ],
    ids=["whole-row", "few-queries", "most-queries", "mixed", "one-source"],
)
def test_shared_calls_equal_each_row_attending_with_its_sources_queries_and_keys(copies, spans, calls_apart):
    """A call planned at the SDPA call (rows attending with another row's queries and keys at some of their
    queries) equals each row's queries there attending with its source row's queries and keys over its own values,
    and with its own elsewhere, whichever side the plan computes apart."""
    from visattn.interception import _shared_call

    torch.manual_seed(0)
    q, k, v = (torch.randn(5, 2, 12, 8) for _ in range(3))
    plan = _shared_call(copies, spans, 5, 12, q.device)
    out = plan.run(F.scaled_dot_product_attention, q, k, v, {})
    expected = F.scaled_dot_product_attention(q, k, v)
    for row, source in copies.items():
        queries = spans.get(row, slice(0, 12))
        shared = F.scaled_dot_product_attention(q[source : source + 1], k[source : source + 1], v[row : row + 1])
        expected[row, :, queries] = shared[0, :, queries]
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)
    assert len(plan.apart) == calls_apart
    if len(set(copies.values())) == 1 and len(copies) == 4:
        assert plan.rows == 0  # not a gathered index tensor
    assert (plan.rows is not None) == any(
        spans.get(row) is None or 2 * (spans[row].stop - spans[row].start) > 12 for row in copies
    )


def test_own_queries_apart_beside_rows_that_are_themselves_are_one_call_over_every_row():
    """Flux's Prompt-to-Prompt pair: the target takes the source's queries and keys at its image queries, so the
    stock call runs both rows on the source's and the target's text queries are computed apart with its own. Where
    every other row is itself in the stock call, that call apart runs over every row with the keys and values as
    they are (no row views): the other rows' queries there come out bit for bit as the stock call gave them."""
    from visattn.interception import _shared_call

    torch.manual_seed(0)
    # [B, H, N, D] views of [B, N, H, D] tensors, as the processors hand them over
    q, k, v = (torch.randn(2, 80, 2, 16).transpose(1, 2) for _ in range(3))
    plan = _shared_call({1: 0}, {1: slice(16, 80)}, 2, 80, q.device)
    assert plan.rows == 0 and plan.apart == ((None, None, slice(0, 16)),)
    out = plan.run(F.scaled_dot_product_attention, q, k, v, {})
    stock = F.scaled_dot_product_attention(q, k, v)
    shared = F.scaled_dot_product_attention(q[:1], k[:1], v[1:])
    assert torch.equal(out[0], stock[0])  # the source row: the stock call's, bit for bit
    assert torch.equal(out[1, :, :16], stock[1, :, :16])  # the target's text queries: its own attention
    assert torch.equal(out[1, :, 16:], shared[0, :, 16:])  # its image queries: the source's queries and keys

    # A third row sharing the source's whole rows is not itself in the stock call: the rows apart are viewed.
    plan = _shared_call({1: 0, 2: 0}, {1: slice(16, 80)}, 3, 80, q.device)
    assert plan.apart == ((slice(1, 2), slice(1, 2), slice(0, 16)),)

    # Off the CPU (a GPU kernel may tile a call of fewer queries otherwise) the source rows are never recomputed:
    # only the target's rows are viewed and computed apart, on a device whose rows are gathered.
    plan = _shared_call({1: 0}, {1: slice(16, 80)}, 2, 80, torch.device("meta"))
    assert plan.apart == ((slice(1, 2), slice(1, 2), slice(0, 16)),)
    assert plan.rows.device.type == "meta" and plan.rows.shape == (2,)


def test_rows_copied_in_place_by_strided_runs_equal_copying_them_one_by_one():
    """Shared rows copied in place (a layer too small for a projection plan): an indexed copy of every target row
    per tensor (plain tensors), or runs repeated at a fixed spacing (subclasses): the same tensors as copying every
    target row from its source row, for any rows, memory layout and tensor subclass."""
    import random

    from visattn.interception import _copy_runs, _share_rows

    assert _copy_runs({1: 0, 3: 2}) == ((1, 0, 1, 2, 2),)  # P2P's target rows of two branches: one strided copy
    assert _copy_runs({2: 0, 3: 1, 6: 4, 7: 5}) == ((2, 0, 2, 2, 4),)
    random.seed(0)
    for trial in range(300):
        batch = random.randint(2, 9)
        rows = random.sample(range(batch), batch)
        count = random.randint(1, batch // 2)
        copies = dict(zip(rows[:count], rows[count : 2 * count], strict=True))
        q = torch.randn(batch, 2, 3, 4).transpose(1, 2)  # as processors hand it over: [B, H, N, D] of a view
        k = torch.randn(batch, 3, 5, 2)
        if trial % 3 == 0:
            k = k.as_subclass(HeadTagged)
        expected_q, expected_k = q.clone(), k.clone()
        for target, source in copies.items():
            expected_q[target], expected_k[target] = q[source], k[source]
        _share_rows(q, k, _copy_runs(copies))
        assert torch.equal(q, expected_q) and torch.equal(k, expected_k), copies


class HeadTagged(torch.Tensor):
    """A tensor subclass (the copies go through indexing rather than strided views)."""


def test_a_denoiser_whose_attention_is_mostly_hooked_routes_it_once_per_call():
    """Where most attention modules carry a hook (self-attention: half of the UNet's), the denoiser's forward routes
    SDPA for its whole call instead of each layer call: the modules without a hook run the stock attention through
    the router, the image is the one routing per layer gives, and torch.nn.functional is as it was after the call and
    after an error."""
    pipe = pipeline()
    unet = pipe.unet
    cross = unet.mid_block.attentions[0].transformer_blocks[0].attn2
    seen = []
    handle = cross.register_forward_pre_hook(lambda module, args: seen.append(F.scaled_dot_product_attention))
    try:
        with visattn.attach(pipe, ZeroOutput(layers="self")):
            denoiser_hook = unet._diffusers_hook.get_hook("visattn")
            assert denoiser_hook.holds_route
            held = run(num_inference_steps=1)
            assert seen and all(function is not REAL_SDPA for function in seen), "routed around the unhooked layer"
            assert F.scaled_dot_product_attention is REAL_SDPA
            denoiser_hook.holds_route = False
            seen.clear()
            per_layer = run(num_inference_steps=1)
            assert seen and all(function is REAL_SDPA for function in seen)
        assert np.array_equal(held, per_layer)
        with pytest.raises(RuntimeError, match="boom"), visattn.attach(pipe, Boom(layers="self")):
            run(num_inference_steps=1)
        assert F.scaled_dot_product_attention is REAL_SDPA
    finally:
        handle.remove()


def test_a_backend_chosen_after_layers_planned_their_forwards_is_still_forced_to_native(monkeypatch):
    """Layers whose forwards take a planned answer (Prompt-to-Prompt's shared joint calls, from the second step on)
    still route a processor through diffusers' native backend (which calls SDPA) when another becomes active, so that
    the edit is made: the same image, every hooked dispatch on the native backend."""
    import sys

    from diffusers.models.attention_dispatch import _AttentionBackendRegistry, attention_backend

    pipe = tiny_pipeline("flux")
    p2p = visattn.PromptToPrompt.replace("a red cat", "a red dog", cross_steps=1.0, self_steps=1.0)

    def generate() -> np.ndarray:
        kwargs = call_kwargs("flux", prompt=p2p.prompts, generator=p2p.generator(0, 1), output_type="latent")
        return np.asarray(pipe(**kwargs)[0], dtype=np.float64)

    dispatch = sys.modules[type(next(iter(pipe.transformer.attn_processors.values()))).__module__]
    original, seen = dispatch.dispatch_attention_fn, []

    def spy(*args, backend=None, **kwargs):
        seen.append(getattr(backend, "value", backend))
        return original(*args, backend=backend, **kwargs)

    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)
    with visattn.attach(pipe, p2p):
        edited = generate()
        monkeypatch.setattr(dispatch, "dispatch_attention_fn", spy)
        with attention_backend("_native_math"):
            again = generate()
    assert seen and set(seen) == {"native"}
    assert np.array_equal(edited, again)


def test_an_effect_added_to_a_hooked_layer_acts_from_its_next_call():
    """visattn's guider adds its perturbation to layers an attachment hooked already: the layer forgets the answers it
    planned for its effects then (Prompt-to-Prompt's shared joint calls), and again when the effect goes."""
    pipe = tiny_pipeline("flux")
    p2p = visattn.PromptToPrompt.replace("a red cat", "a red dog", cross_steps=1.0, self_steps=1.0)

    def generate() -> np.ndarray:
        kwargs = call_kwargs("flux", prompt=p2p.prompts, generator=p2p.generator(0, 1), output_type="latent")
        return np.asarray(pipe(**kwargs)[0], dtype=np.float64)

    with visattn.attach(pipe, p2p):
        edited = generate()
        layer = hooks(pipe.transformer)[0]
        zero = ZeroOutput()
        layer.add_effect(zero)
        zeroed = generate()
        layer.remove_effect(zero)
        again = generate()
    assert np.abs(zeroed - edited).max() > 1e-3
    assert np.array_equal(again, edited)


def test_processors_set_again_between_generations_are_planned_again():
    """A layer's planned forward is tied to its processor object: processors set again between generations (new
    objects) take the full path once and the edit is the same."""
    pipe = tiny_pipeline("flux")
    p2p = visattn.PromptToPrompt.replace("a red cat", "a red dog", cross_steps=1.0, self_steps=1.0)

    def generate() -> np.ndarray:
        kwargs = call_kwargs("flux", prompt=p2p.prompts, generator=p2p.generator(0, 1), output_type="latent")
        return np.asarray(pipe(**kwargs)[0], dtype=np.float64)

    stock_processors = dict(pipe.transformer.attn_processors)
    plain = generate()
    try:
        with visattn.attach(pipe, p2p):
            edited = generate()
            assert all(hook._fast is not None for hook in hooks(pipe.transformer))
            pipe.transformer.set_attn_processor({name: type(p)() for name, p in stock_processors.items()})
            assert np.array_equal(generate(), edited)
    finally:
        pipe.transformer.set_attn_processor(stock_processors)
    assert np.abs(edited - plain).max() > 1e-4
