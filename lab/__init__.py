"""The toy world's lab: how the toy models that ship with visattn were trained and studied.

Not part of the installed package. Run from the repository root, next to an installed visattn (``pip install -e .``):

    python -m lab train [--parallel] [--out DIR]       # lab.train: the training recipe of both toy models
    python -m lab colour-swaps BEFORE AFTER OUT.png    # lab.colour_swaps: two image models' colour swaps side by side

The training losses beyond the plain diffusion loss each live in one module: :mod:`lab.grounding` (TokenCompose's
token loss), :mod:`lab.consistency` (outline consistency between a scene and its colour variant) and
:mod:`lab.contrast` (the shape-word contrast objective, off in the shipped recipe). What the package needs at run
time, the models' definitions, vocabulary, loader and weights, stays in :mod:`visattn.toy`; the lab's notes
(training history, seeds, experiments) are in ``lab/NOTES.md``.
"""
