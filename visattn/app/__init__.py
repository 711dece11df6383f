"""The Gradio editing demo behind ``visattn demo``.

* :mod:`visattn.app.handlers`: what a run does, in plain Python (:class:`~visattn.app.handlers.DemoEngine`,
  :class:`~visattn.app.handlers.DemoRequest`); usable and tested without a browser or Gradio.
* :mod:`visattn.app.uploads`: checks on uploaded images (not an image, pixel limit, decompression bombs).
* :mod:`visattn.app.outputs`: each run's images and sheet of per-word maps as PNGs that carry their parameters.
* :mod:`visattn.app.ui`: the ``gr.Blocks`` interface and :func:`~visattn.app.ui.launch` (needs the ``app``
  extra: ``pip install "visattn[app]"``).

Nothing is imported here, so ``import visattn.app.uploads`` stays light.
"""
