"""``python -m visattn.testing.coverage``: run the coverage checks on every tiny denoiser, write docs/models.md."""

from __future__ import annotations

import argparse
import datetime
import sys
import warnings
from pathlib import Path

import diffusers
import torch

from visattn.families import declared_family
from visattn.parallel import plan_source
from visattn.testing.coverage import TINY_DENOISERS
from visattn.testing.coverage.checks import CoverageRow, check
from visattn.testing.coverage.pipelines import COVERAGE_PIPELINE_SPECS, KNOWN_PIPELINE_LIMITS

# diffusers pipeline class name -> the key of its tiny pipeline
_TINY_PIPELINES = {spec.pipeline_cls.__name__: spec.key for spec in COVERAGE_PIPELINE_SPECS}


def _mark(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"yes ({value:.2g})" if value > 1e-6 else "no change"


#: why no plan (diffusers' or visattn's) can split a class whose processors do reach diffusers' dispatcher, for
#: the classes whose forward was read for one (issue 26); the others say "none"
_NO_PLAN = {
    "HunyuanVideo15Transformer3DModel": (
        "its processor builds a query-by-key text mask from the local sequence, which Ulysses cannot gather"
    ),
    "SkyReelsV2Transformer3DModel": (
        "its cross-attention sends the replicated text through Ulysses' all-to-all, and diffusion forcing builds "
        "per-token timesteps and a causal mask whole"
    ),
    "WanAnimateTransformer3DModel": (
        "its face adapter attends per frame (frames folded into the batch) through Ulysses' all-to-all, which "
        "would join different frames' tokens from different ranks"
    ),
    "WanAnimate2Transformer3DModel": (
        "its processor applies RoPE from the whole grid's sizes and scatters the tokens into buffers laid out for a "
        "block mask of the whole video, which a sequence shard cannot fill"
    ),
    "AnyFlowTransformer3DModel": "its RoPE table is a dict (query, key), which diffusers' plan hooks cannot split",
    "HunyuanVideoFramepackTransformer3DModel": (
        "the forward slices the video off the packed [history, video] tokens after the blocks with no module "
        "between to gather them, and with one prompt row crops the text to its valid length"
    ),
    "SanaVideoTransformer3DModel": (
        "its self-attention is linear attention the processor computes itself, without diffusers' dispatcher"
    ),
    "SanaWMTransformer3DModel": (
        "its self-attention (gated-delta-net linear attention, or its softmax variant) calls torch itself, "
        "without diffusers' dispatcher"
    ),
    "JoyImageEditTransformer3DModel": (
        "its RoPE tables are nested tuples built by a method, not a module's output, which diffusers' plan hooks "
        "cannot split"
    ),
    "Cosmos3OmniTransformer": (
        "one packed sample per call with no batch axis (text ids and a list of vision latents packed by the "
        "forward, a causal text pathway, grouped-query heads); no plan read for it yet"
    ),
}


def _context_parallel(model: torch.nn.Module) -> str:
    """Where the class's context-parallel plan comes from, and for classes with none, why no plan fits: the
    processors never reach diffusers' attention dispatcher (so no Ulysses all-to-all could run), or a reason
    from :data:`_NO_PLAN`."""
    source = plan_source(model)
    if source != "none":
        return f"{source} plan"
    if type(model).__name__ in _NO_PLAN:
        return f"none ({_NO_PLAN[type(model).__name__]})"
    processors = [module.processor for module in model.modules() if getattr(module, "processor", None) is not None]
    if processors and not any(hasattr(processor, "_parallel_config") for processor in processors):
        return "none (processors call SDPA without diffusers' dispatcher)"
    return "none"


def _row(entry, result: CoverageRow) -> str:
    model = entry.build()
    family = declared_family(model)
    key = family.name if family is not None else "generic"
    identity = (
        f"exact ({result.identity_error:.0e})" if result.identity_exact else f"FAIL ({result.identity_error:.1e})"
    )
    detach = "yes" if result.detach_exact else "FAIL"
    guidance = ", ".join(f"{name} {_mark(value)}" for name, value in result.guidance.items()) or "n/a (no self/joint)"
    parts = []
    if "P2P" in result.editing:
        parts.append(f"P2P {_mark(result.editing['P2P'])} (source {result.editing['P2P source']:.0e})")
    if "LocalBlend" in result.editing:
        parts.append(f"LocalBlend mask {result.editing['LocalBlend']:.0%}")
    if result.maps is not None:
        parts.append("maps collected")
    if parts:
        editing = ", ".join(parts)
    elif result.text_found:
        editing = "text found; no grid for maps"
    else:
        editing = "n/a (no text located)"
    sparse = ", ".join(f"{name} {_mark(value)}" for name, value in result.sparse.items()) or "n/a (no grid)"
    problems = "; ".join(p.split(":")[0] + ": " + p.split(":", 1)[1].strip()[:90] for p in result.problems)
    pipeline = entry.pipeline or "-"
    if entry.pipeline in _TINY_PIPELINES:
        limit = KNOWN_PIPELINE_LIMITS.get(_TINY_PIPELINES[entry.pipeline])
        pipeline += f" (tiny: `{_TINY_PIPELINES[entry.pipeline]}`{', known limit' if limit else ''})"
    return (
        f"| {entry.class_name} | {pipeline} | {key} | {identity}, detach {detach} | "
        f"{'/'.join(result.roles)} | {editing} | {guidance} | {sparse} | {_context_parallel(model)} | "
        f"{problems or '-'} |"
    )


def core_context_parallel() -> list[tuple[str, str, str]]:
    """(class, tiny pipeline key, context parallel) of the core families' denoisers (``TINY_PIPELINES``), which
    ``tests/core`` covers rather than this table's checks; the core classes the coverage list also holds are left
    out."""
    from visattn.testing import TINY_PIPELINES, tiny_denoiser

    listed = {entry.class_name for entry in TINY_DENOISERS}
    rows = []
    for key in TINY_PIPELINES:
        model = tiny_denoiser(key)
        if type(model).__name__ not in listed:
            rows.append((type(model).__name__, key, _context_parallel(model)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/models.md", help="where to write the table")
    args = parser.parse_args(argv)
    lines = []
    for entry in TINY_DENOISERS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = check(entry)
        lines.append(_row(entry, result))
        print(lines[-1], file=sys.stderr)
    header = f"""# Model coverage

Generated by `python -m visattn.testing.coverage` from the checks `tests/families/test_coverage.py` asserts on
({datetime.date.today()}, diffusers {diffusers.__version__}, torch {torch.__version__}); do not edit by hand.

Each row is one diffusers denoiser class, built tiny from a config (`visattn.testing.coverage`), with visattn
attached through its generic path (the stock processors stay; visattn answers their
`scaled_dot_product_attention` calls). Columns:

- **pipeline**: the diffusers pipeline that drives the class; "tiny" names the offline tiny pipeline
  (`visattn.testing.tiny_pipeline(key)`) that `tests/families/test_coverage_pipelines.py` runs end to end: identity
  bit-exact, detach, PAG, and where the family declares its tokenizer ladder, Prompt-to-Prompt and AttentionMaps
  addressed by words ("known limit": listed with its reason in `KNOWN_PIPELINE_LIMITS`).
- **family**: the `visattn.families` entry whose facts apply (`generic`: inferred from the call, with a warning).
- **identity**: max abs difference of the output with an observing effect on every layer (every call routed
  through visattn) against the stock model, fp32; "detach" says every processor object and hook is as before.
- **roles**: the roles visattn derived from the calls' shapes.
- **editing and maps**: where text and grid are found, on a source/target pair of rows with one word swapped
  (prompts given as `PromptTokens`, one word per text position): Prompt-to-Prompt with the max change of the
  target rows (and of the source rows, which must stay a plain generation), LocalBlend with the share of the
  grid its mask leaves editable, and `AttentionMaps` collecting per-token maps (output unchanged). With real
  tokenizers, words and pipelines, Prompt-to-Prompt and LocalBlend are tested end to end on the tiny pipelines
  (`visattn.testing.TINY_PIPELINES`) in `tests/effects/test_prompt_to_prompt.py`.
- **guidance**: PAG and SEG (scale 2) on the self/joint layers, with the max output change.
- **sparse**: NeighborhoodAttention (window 3 per axis, 1 on axes shorter than 3), ExtrapolationDecay (train
  size 2) and, on 3-D grids, RadialAttention, with the max output change.
- **context parallel**: where the plan `visattn.enable_context_parallelism` splits the class with comes from:
  the class's own `_cp_plan` ("diffusers plan"), the one visattn ships for its family ("visattn plan",
  `visattn.families` `cp_plan`), or none (then it runs on one device; see `docs/parallel.md`).
- **problems**: what failed (each is listed in `KNOWN_LIMITS` of the test with the reason).

| class | pipeline | family | identity | roles | editing and maps | guidance | sparse | context parallel | problems |
|---|---|---|---|---|---|---|---|---|---|
"""
    core = "\n".join(f"| {name} | `{key}` | {split} |" for name, key, split in core_context_parallel())
    footer = f"""
## Core families: context parallelism

The core families' tiny pipelines (`visattn.testing.TINY_PIPELINES`) are tested in `tests/core` rather than by the
checks above; where their plan comes from (the **context parallel** column above; see `docs/parallel.md`):

| class | tiny pipeline | context parallel |
|---|---|---|
{core}
"""
    Path(args.out).write_text(header + "\n".join(lines) + "\n" + footer)
    print(f"wrote {args.out} ({len(lines)} classes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
