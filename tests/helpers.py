"""Test-only effects and patterns that exercise the public extension points."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from visattn.effects import AttentionCall, Effect
from visattn.kernels import Pattern, ScoreModifier


def count_planned_answers(monkeypatch, serving: str = "any") -> dict[str, int]:
    """Count the SDPA calls a layer answered from a plan at the SDPA call (``interception._TransformedCall``) that
    did ``serving``: ``"reads"``, ``"edits"`` or ``"any"``; the returned dict's ``"calls"`` grows as they run."""
    from visattn import interception

    served = {"calls": 0}
    real_run = interception._TransformedCall.run
    wanted = {"reads": lambda call: bool(call.readers), "edits": lambda call: bool(call.editors)}
    counts = wanted.get(serving, lambda call: True)

    def counted(self, *args):
        out = real_run(self, *args)
        served["calls"] += out is not None and counts(self)
        return out

    monkeypatch.setattr(interception._TransformedCall, "run", counted)
    return served


@dataclass(frozen=True)
class BandPattern(Pattern):
    """Keeps pairs whose indices differ by at most ``width`` (a 1-D sliding window)."""

    width: int

    def mask_mod(self, b, h, q_idx, kv_idx):
        return (q_idx - kv_idx).abs() <= self.width

    def cache_key(self):
        return ("band", self.width)


@dataclass(frozen=True)
class HeadScale(ScoreModifier):
    """Multiplies head ``h``'s logits by ``1 + h * step`` (depends on the head index)."""

    step: float

    def score_mod(self, score, b, h, q_idx, kv_idx):
        return score * (1.0 + h * self.step)

    def cache_key(self):
        return ("head_scale", self.step)


class Probe(Effect):
    """Records every call context it sees and leaves the call unchanged."""

    roles = ("self", "cross", "joint", "text", "stream")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.contexts = []

    def apply(self, call: AttentionCall) -> None:
        self.contexts.append(call.ctx)


class Recorder(Effect):
    """Appends its name to a shared log on every call (checks composition order)."""

    def __init__(self, name: str, log: list, **kwargs):
        super().__init__(**kwargs)
        self.name, self.log = name, log

    def apply(self, call: AttentionCall) -> None:
        self.log.append(self.name)


class Boom(Effect):
    """Raises inside an attention call (checks that failures leave nothing half-applied)."""

    def apply(self, call: AttentionCall) -> None:
        raise RuntimeError("boom")


class ZeroOutput(Effect):
    """Replaces the attention output with zeros (an effect that visibly changes results)."""

    def apply(self, call: AttentionCall) -> None:
        call.output = torch.zeros_like(call.q[..., : call.v.shape[-1]])


def mid_block_guidance_difference(authors_processor, effect) -> tuple[float, float]:
    """The authors' perturbation processor in the tiny SD UNet's mid-block self-attention, combined as their
    pipelines do (``uncond + g (cond - uncond) + s (cond - perturbed)``, s = 3, g = 5), against ``effect`` (scale 3,
    layers "mid") attached to the same UNet. Returns ``(largest |visattn - authors|, largest |cond - perturbed|)``:
    the second says the perturbation does something."""
    import weakref

    import visattn
    from visattn.tiny import tiny_pipeline

    unet = tiny_pipeline("unet").unet
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor(500)
    scale, g = 3.0, 5.0
    mid = {name: m for name, m in unet.named_modules() if name.startswith("mid_block") and name.endswith("attn1")}
    assert mid
    stock = {name: module.processor for name, module in mid.items()}

    class GuidedPipeline:  # what the effect reads from a pipeline: that it batches CFG, and its scale
        _guidance_scale = g

    pipe = GuidedPipeline()  # held here: the state keeps only a weak reference
    with torch.no_grad():
        try:
            for module in mid.values():
                module.set_processor(authors_processor)
            eps_u, eps_c, eps_p = unet(torch.cat([latents] * 3), t, torch.cat([text, text[1:]])).sample.chunk(3)
        finally:
            for name, module in mid.items():
                module.set_processor(stock[name])
        expected = eps_u + g * (eps_c - eps_u) + scale * (eps_c - eps_p)
        with visattn.attach(unet, effect) as handle:
            handle.states[0].pipeline_ref = weakref.ref(pipe)
            got_u, got_c = unet(torch.cat([latents] * 2), t, text).sample.chunk(2)
    difference = ((got_u + g * (got_c - got_u)) - expected).abs().max().item()
    return difference, (eps_c - eps_p).abs().max().item()


def perturbed_self_attention(effect, q, k, v, side: int) -> torch.Tensor:
    """A ``[uncond, cond, perturbed]`` batch (equal thirds) of self-attention over a ``side x side`` grid through
    ``effect`` (a perturbation guidance) and visattn's attention core."""
    from visattn.context import BatchLayout, Branch, CallContext, Span, TokenLayout

    n = q.shape[2]
    layout = TokenLayout(n, image=Span(0, n))
    rows = q.shape[0] // 3
    branches = (Branch("uncond", 0, rows), Branch("cond", rows, 2 * rows), Branch(effect.branch, 2 * rows, 3 * rows))
    ctx = CallContext(
        role="self",
        layer_name="layer",
        layer_index=0,
        family="test",
        heads=q.shape[1],
        head_dim=q.shape[3],
        queries=layout,
        keys=layout,
        batch=BatchLayout(branches),
        grid=(1, side, side),
    )
    call = AttentionCall(ctx, q, k, v)
    effect.apply(call)
    return call.run()


def self_attention_context(layer_name: str, branches, tokens: int = 10, heads: int = 3, head_dim: int = 8):
    """The call context of a UNet self-attention call over ``tokens`` grid tokens, its batch split into
    ``branches`` (``(name, start, stop)``), for tests that hand an effect a call of their own."""
    from visattn import BatchLayout, Branch, CallContext, Span, TokenLayout

    layout = TokenLayout(tokens, image=Span(0, tokens))
    return CallContext(
        role="self",
        layer_name=layer_name,
        layer_index=0,
        family="unet",
        heads=heads,
        head_dim=head_dim,
        queries=layout,
        keys=layout,
        batch=BatchLayout(tuple(Branch(*branch) for branch in branches)),
    )
