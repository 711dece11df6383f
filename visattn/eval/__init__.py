"""``visattn eval``: the toy world's "paper table", every visattn effect measured where the right answer is known.

The shipped toy models (:mod:`visattn.toy.models`) draw captions of a procedural world whose pixels a
deterministic analyzer reads back (:mod:`visattn.toy.analyze`), so each effect of the seed papers gets a number:

==========================  ==========================================================================
study                       what is measured (module)
==========================  ==========================================================================
``prompt_accuracy``         colour, shape, size, position, count on held-out captions (:mod:`.accuracy_study`)
``prompt_to_prompt``        word-swap success and foreground IoU, re-weighting monotonicity, local
                            blend's change outside its region (:mod:`.prompt_to_prompt_study`)
``perturbation_guidance``   PAG / SoftPAG: sharpness and accuracy vs scale and strength (:mod:`.guidance_study`)
``guidance_sweep``          PAG / SoftPAG / SEG over layers and scales: image change and accuracy, the chosen
                            defaults; re-weighting's colour change (:mod:`.guidance_sweep_study`)
``sparse_image/_video``     neighborhood and radial attention vs dense: PSNR and time (:mod:`.sparse_study`)
``extrapolation_image``     duplicated objects at 2x resolution, with entropy scaling / decay
``extrapolation_video``     motion continuity at 2x and 4x length, with decay (:mod:`.extrapolation_study`)
==========================  ==========================================================================

Every metric is a plain function in :mod:`.metrics`. Prompts come from a held-out data seed
(:mod:`.prompts`); sample ``i`` uses noise seed ``seed + i`` on a CPU generator, so a run is deterministic
(bit-identical on CPU; on GPU up to the kernels' own nondeterminism) and independent of batching and device.

>>> from visattn.eval import Gallery, evaluate, write_report
>>> gallery = Gallery(samples=4)              # keep each study's first 4 samples as pictures
>>> results = evaluate(quick=True, gallery=gallery)   # the shipped toy models
>>> write_report(results, "eval-results", gallery=gallery)   # eval.json, eval.md, eval.png, eval-gallery.png
>>> # (and eval-guidance-sweep.png when the guidance sweep ran)
"""

from __future__ import annotations

from .._lazy import lazy_exports

# Names resolve lazily, so that ``visattn --help`` (which reads :data:`STUDIES`) does not import torch.
_EXPORTS = {
    "EvalConfig": ".config",
    "STUDIES": ".config",
    "HELD_OUT_SEED": ".prompts",
    "evaluate": ".suite",
    "Gallery": ".gallery",
    "markdown": ".report",
    "write_report": ".report",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
