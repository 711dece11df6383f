"""Tiny offline pipelines of the covered denoiser classes, where diffusers ships a pipeline for them (a modular
one, made from diffusers' blocks, for the classes it drives only through a ``ModularPipeline``: :mod:`.modular`).

Each module holds the pipelines whose text encoders are of one kind, as
:class:`visattn.tiny.pipeline_spec.PipelineSpec`
records in its ``PIPELINES`` tuple, reusing the class's tiny denoiser config from :mod:`visattn.tiny.denoisers`;
a pipeline visattn does not yet handle end to end is listed, with the reason, in the module's
``KNOWN_PIPELINE_LIMITS``. They are reachable through :func:`visattn.tiny.tiny_pipeline` by key (the family
key, or the pipeline class name for a family's second pipeline) and listed in
:data:`visattn.tiny.COVERAGE_PIPELINES`; ``tests/families/test_coverage_pipelines.py`` runs each one.
"""

from __future__ import annotations

from visattn.tiny.denoisers.pipelines import classic, llm, modular, qwen, t5
from visattn.tiny.pipeline_spec import PipelineSpec

_MODULES = (t5, classic, qwen, llm, modular)

#: every coverage pipeline spec
COVERAGE_PIPELINE_SPECS: tuple[PipelineSpec, ...] = tuple(spec for module in _MODULES for spec in module.PIPELINES)

#: pipelines whose end-to-end test fails today, by key, with the reason (the test expects them to fail)
KNOWN_PIPELINE_LIMITS: dict[str, str] = {
    key: reason for module in _MODULES for key, reason in getattr(module, "KNOWN_PIPELINE_LIMITS", {}).items()
}
