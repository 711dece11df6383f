"""The per-class coverage checks: what visattn does on one tiny denoiser, measured, as one table row.

The tests (``tests/families/test_coverage.py``) assert on these rows, and
``python -m tests.harness.coverage_table`` writes them to ``docs/models.md``, so the coverage table is generated
from the same checks the tests run.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

import visattn
from visattn.families import family_of
from visattn.interception import layer_hook
from visattn.tiny.denoisers.denoiser_spec import TinyDenoiser
from visattn.tiny.probes import ContextRecorder, synthetic_prompt

#: the identity bar of the issue: fp32, max abs diff
IDENTITY_TOLERANCE = 1e-6

#: Prompt-to-Prompt's source rows are a plain generation; the edited calls compute them in float32 with an
#: explicit softmax instead of the fused kernel, so they match to rounding (relative to the output's scale)
SOURCE_TOLERANCE = 1e-4


@dataclass
class CoverageRow:
    """What visattn did on one denoiser class; ``None`` where a check does not apply."""

    class_name: str
    pipeline: str | None
    layers: int = 0
    roles: tuple[str, ...] = ()
    identity_error: float = math.inf
    detach_exact: bool = False
    grid_found: bool = False
    text_found: bool = False
    guidance: dict[str, float] = field(default_factory=dict)
    maps: float | None = None
    #: max abs of the stock output, the scale of the rounding bar for recomputed rows
    output_scale: float = 1.0
    #: Prompt-to-Prompt: ``{"P2P source": max change of the source rows (must stay ~0), "P2P": change of the
    #: target rows, "LocalBlend": the fraction of the grid its mask keeps editable}``
    editing: dict[str, float] = field(default_factory=dict)
    sparse: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def identity_exact(self) -> bool:
        return self.identity_error <= IDENTITY_TOLERANCE

    def failures(self) -> dict[str, str]:
        """Each failed check by name: an error, or an effect that should change the output and did not."""
        failed = {problem.split(":")[0]: problem.split(":", 1)[1].strip() for problem in self.problems}
        if not self.roles and "identity" not in failed:
            failed["identity"] = "no attention call went through visattn"
        changes = dict(self.sparse)
        if "PAG" in self.guidance:
            changes["PAG"] = self.guidance["PAG"]
        if "SEG" in self.guidance and self.grid_found:
            changes["SEG"] = self.guidance["SEG"]
        if "P2P" in self.editing:
            changes["P2P"] = self.editing["P2P"]
            if not self.editing["P2P source"] <= SOURCE_TOLERANCE * max(1.0, self.output_scale):
                failed.setdefault("P2P source", f"the source rows changed by {self.editing['P2P source']}")
        for name, change in changes.items():
            if not 1e-6 < change < math.inf:
                failed.setdefault(name, f"changed the output by {change}")
        return failed


def prediction(out: Any) -> torch.Tensor:
    """The prediction tensor of a denoiser's output (``.sample``, a tuple's first item, or the tensor); a
    per-sample list (Z-Image) is stacked into one batch."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return prediction(out.sample)
    if isinstance(out, list) and out and all(isinstance(item, torch.Tensor) for item in out):
        if len({item.shape for item in out}) == 1:
            return torch.stack(out)
        return torch.stack([item.flatten() for item in out]) if len({item.numel() for item in out}) == 1 else out[0]
    if isinstance(out, (tuple, list)):
        return prediction(out[0])
    raise TypeError(f"cannot find the prediction in a {type(out).__name__}")


def _run(model: torch.nn.Module, entry: TinyDenoiser, batch_size: int = 2) -> torch.Tensor:
    with torch.no_grad():
        return prediction(model(**entry.inputs(batch_size))).float()


def _change(model, entry, stock, *effects, layers=None) -> float:
    """Max abs change of the output with ``effects`` attached (NaN or inf as ``inf``)."""
    with visattn.attach(model, *effects, layers=layers):
        out = _run(model, entry)
    diff = (out - stock).abs().max().item()
    return diff if math.isfinite(diff) else math.inf


class _SDPATokens(torch.overrides.TorchFunctionMode):
    """Records the (queries, keys) token counts of every ``scaled_dot_product_attention`` call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[tuple[int, int]] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.scaled_dot_product_attention:
            q = args[0] if args else kwargs["query"]
            k = args[1] if len(args) > 1 else kwargs["key"]
            self.seen.add((q.shape[-2], k.shape[-2]))
        return func(*args, **kwargs)


def sdpa_token_counts(entry: TinyDenoiser, batch_size: int = 2) -> set[tuple[int, int]]:
    """The ``(Nq, Nk)`` of every attention call one stock forward of ``entry`` makes (no visattn attached)."""
    model = entry.build()
    recorder = _SDPATokens()
    with torch.no_grad(), recorder:
        model(**entry.inputs(batch_size))
    return recorder.seen


def _editing(model, entry: TinyDenoiser, stock: torch.Tensor, length: int) -> dict[str, float]:
    """Prompt-to-Prompt (word swap, every step) and LocalBlend on one call of a source/target pair of rows."""
    source, target = synthetic_prompt(length), synthetic_prompt(length, swap=min(1, length - 1))
    # The whole schedule: a denoiser called by hand has no scheduler, and (0, 1) acts at unknown steps too.
    edit = visattn.PromptToPrompt(source, target, cross_steps=1.0, self_steps=1.0)
    with visattn.attach(model, edit):
        out = _run(model, entry)
    result = {
        "P2P source": _finite((out[:1] - stock[:1]).abs().max()),
        "P2P": _finite((out[1:] - stock[1:]).abs().max()),
    }
    blend = visattn.LocalBlend(target.words[min(1, length - 1)])
    with visattn.attach(
        model, visattn.PromptToPrompt(source, target, cross_steps=1.0, self_steps=1.0, local_blend=blend)
    ):
        _run(model, entry)
    if blend.mask is None:
        raise RuntimeError("LocalBlend built no mask: no cross-attention map reached it")
    result["LocalBlend"] = blend.mask.float().mean().item()
    return result


def _finite(value: torch.Tensor) -> float:
    value = value.item()
    return value if math.isfinite(value) else math.inf


def check(entry: TinyDenoiser) -> CoverageRow:
    """Every coverage check on one tiny denoiser; problems are recorded in the row, never raised."""
    model = entry.build()
    row = CoverageRow(entry.class_name, entry.pipeline, layers=len(visattn.attention_layers(model)))
    stock = _run(model, entry)
    row.output_scale = stock.abs().max().item()
    processors = {name: module.processor for name, module in visattn.attention_layers(model).items()}

    # Identity through interception: an observer on every layer makes every attention call go through visattn.
    recorder = ContextRecorder()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        try:
            with visattn.attach(model, recorder) as handle:
                observed = _run(model, entry)
                read_grid = handle.states[0].inputs.grid
            row.identity_error = (observed - stock).abs().max().item()
        except Exception as error:  # noqa: BLE001 - the row records what failed
            row.problems.append(f"identity: {type(error).__name__}: {error}")
            return row
    modules = visattn.attention_layers(model)
    row.detach_exact = all(modules[n].processor is p for n, p in processors.items()) and not any(
        layer_hook(m) for m in modules.values()
    )
    contexts = recorder.contexts
    row.roles = tuple(sorted({ctx.role for ctx in contexts}))
    row.grid_found = any(ctx.grid is not None for ctx in contexts)
    text_contexts = [ctx for ctx in contexts if ctx.role in ("cross", "joint") and ctx.text_span is not None]
    row.text_found = bool(text_contexts)
    if entry.grid is not None and read_grid != entry.grid:
        row.problems.append(f"grid: the input is a {entry.grid} grid, visattn read {read_grid}")

    declared = visattn.layer_roles(model)
    static_roles = set(declared.values())
    # A layer's declared role selects it (``layers="joint"``) before any call: it must be the role its calls have.
    for name, role in sorted({(ctx.layer_name, ctx.role) for ctx in contexts}):
        if declared.get(name, role) not in (role, "text"):
            row.problems.append(f"roles: {name} is declared {declared[name]!r}, its calls are {role!r}")
    perturbable = [role for role in ("self", "joint") if role in row.roles and role in static_roles]
    for name, effect in (
        ("PAG", lambda: visattn.PerturbedAttentionGuidance(scale=2.0, layers=perturbable)),
        ("SEG", lambda: visattn.SmoothedEnergyGuidance(scale=2.0, sigma=2.0, layers=perturbable)),
    ):
        if not perturbable:
            break
        try:
            row.guidance[name] = _change(model, entry, stock, effect())
        except Exception as error:  # noqa: BLE001
            row.problems.append(f"{name}: {type(error).__name__}: {error}")

    # Text effects where the class takes text (an image-conditioned UNet's cross-attention keys are no words).
    takes_text = family_of(model).missing("text") is None
    if row.text_found and row.grid_found and entry.text_tokens and takes_text:
        try:
            length = text_contexts[0].text_span.length
            maps = visattn.AttentionMaps(prompt=synthetic_prompt(length), drop_special=False)
            row.maps = _change(model, entry, stock, maps)
            if maps.contributions == 0:
                row.problems.append("AttentionMaps: collected nothing")
        except Exception as error:  # noqa: BLE001
            row.problems.append(f"AttentionMaps: {type(error).__name__}: {error}")
        try:
            row.editing = _editing(model, entry, stock, text_contexts[0].text_span.length)
        except Exception as error:  # noqa: BLE001
            row.problems.append(f"P2P: {type(error).__name__}: {error}")

    grids = [ctx.grid for ctx in contexts if ctx.grid is not None and ctx.role in perturbable]
    if grids:
        # A window of 3 on every axis the grids allow (an axis of 1 or 2 frames gets a window of 1).
        kernel = tuple(3 if size >= 3 else 1 for size in min(grids, key=math.prod))
        sparse = {
            "Neighborhood": lambda: visattn.NeighborhoodAttention(kernel_size=kernel, layers=perturbable),
            "Extrapolation": lambda: visattn.ExtrapolationDecay(train_size=2, factor=0.5, layers=perturbable),
        }
        # The authors' radial mask keeps frame pairs at distance 0 and 1 whole: it drops something from 3 frames on.
        if any(grid[0] >= 3 for grid in grids):
            sparse["Radial"] = lambda: visattn.RadialAttention(
                dense_steps=None, block_size=4, decay_factor=0.2, layers=perturbable
            )
        for name, effect in sparse.items():
            try:
                row.sparse[name] = _change(model, entry, stock, effect())
            except Exception as error:  # noqa: BLE001
                row.problems.append(f"{name}: {type(error).__name__}: {error}")
    return row
