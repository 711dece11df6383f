"""The Gradio Blocks interface of the editing demo (``visattn demo``); the work is done by :mod:`.handlers`.

This module turns widgets into a :class:`~visattn.app.handlers.DemoRequest` and the result back into widgets.
Every problem with a request (a bad upload, a word that is not in the prompt, a model that cannot be loaded,
settings the model cannot run) becomes a ``gr.Warning`` toast plus a message in the status box; an unexpected
error is logged with its traceback on the server and shown in one line, and the server keeps serving.

Element ids (``elem_id``) name the widgets for browser tests and custom CSS: ``prompt``, ``target``,
``edit-mode``, ``weight-0`` ... ``weight-N``, ``local-blend``, ``seed``, ``steps``, ``guidance``, ``upload``,
``upload-preview``, ``inversion``, ``pag-scale``, ``pag-strength``, ``head-set``, ``kernel-size``, ``radial``,
``size-factor``, ``decay``, ``entropy``, ``frames``, ``generate``, ``source``, ``edit``, ``heatmaps``,
``status``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from .handlers import (
    EDIT_MODES,
    INVERSION_METHODS,
    MAX_SEED,
    MAX_SIZE_FACTOR,
    MAX_STEPS,
    DemoEngine,
    DemoError,
    DemoRequest,
    integer_input,
)
from .handlers import prompt_words as _prompt_words

logger = logging.getLogger(__name__)

#: How many per-word weight sliders the form has (the first content words of the prompt get one each).
MAX_WORD_SLIDERS = 10
#: Default denoising steps in the form.
DEFAULT_STEPS = 20
#: Largest accepted upload in bytes at the HTTP level (Gradio refuses bigger files before any handler runs).
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
#: Pictures are shown at least this many pixels wide, so the outputs of tiny models are visible.
DISPLAY_MIN_SIZE = 256

_INTRO = (
    "Generate with **attention control**: edit by editing the prompt (Prompt-to-Prompt: swap words, add words, "
    "re-weight words), guide with perturbed attention (PAG / SoftPAG), make attention sparse, or generate beyond "
    "the model's native size. Upload an image to invert it and edit it the same way."
)


def _gradio() -> Any:
    # Gradio sends usage analytics by default; the demo must run offline and report nothing.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    return gr


def slider_updates(prompt: str, target: str, mode: str, shown: list[str] | None, *values: float) -> list[Any]:
    """New state and slider updates after the prompt, the edited prompt or the mode changed.

    The sliders follow the words of the prompt being weighted: the prompt itself for re-weighting, the edited
    prompt for a swap or refinement (whose words the extra weights apply to); none without an edit. A word that
    stays keeps its slider's value.
    """
    gr = _gradio()
    if mode == "reweight":
        words = _prompt_words(prompt, MAX_WORD_SLIDERS)
    elif mode in ("replace", "refine"):
        words = _prompt_words(target, MAX_WORD_SLIDERS)
    else:
        words = []
    previous = dict(zip(shown or [], values))
    updates = [
        gr.update(visible=True, label=word, value=previous.get(word, 1.0))
        if i < len(words)
        else gr.update(visible=False, value=1.0)
        for i, word in enumerate(words + [""] * (MAX_WORD_SLIDERS - len(words)))
    ]
    return [words, gr.update(visible=bool(words)), *updates]


def _css() -> str:
    return "#status textarea {font-family: ui-monospace, monospace; font-size: 0.85em}"


def build_demo(engine: DemoEngine) -> Any:
    """The ``gr.Blocks`` app for ``engine`` (not launched; see :func:`launch`)."""
    gr = _gradio()
    load_error = None
    try:
        video = engine.is_video()
        height, width = engine.native_size()
        model_line = f"Model: `{engine.model_name}` (native size {width}x{height})"
    except DemoError as exc:
        video, load_error = False, str(exc)
        model_line = f"Model: `{engine.model_name}`: **cannot be loaded**: {load_error}"

    with gr.Blocks(title="visattn editing demo") as demo:
        gr.Markdown(f"## visattn editing demo\n{_INTRO}\n\n{model_line}")
        shown_words = gr.State([])
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                prompt = gr.Textbox(label="Prompt", value="a red circle", elem_id="prompt")
                mode = gr.Radio(list(EDIT_MODES), value="none", label="Edit mode", elem_id="edit-mode")
                target = gr.Textbox(
                    label="Edited prompt (swap: same number of words; refine: words added or removed)",
                    visible=False,
                    elem_id="target",
                )
                with gr.Group(visible=False) as weight_group:
                    gr.Markdown("Word weights (1 leaves a word alone)")
                    sliders = [
                        gr.Slider(-2.0, 5.0, value=1.0, step=0.1, visible=False, elem_id=f"weight-{i}")
                        for i in range(MAX_WORD_SLIDERS)
                    ]
                local_blend = gr.Textbox(
                    label="Local-blend words (comma separated; only their region may change)",
                    visible=False,
                    elem_id="local-blend",
                )
                with gr.Row():
                    seed = gr.Number(value=0, precision=0, minimum=0, label="Seed", elem_id="seed")
                    steps = gr.Slider(1, MAX_STEPS, value=DEFAULT_STEPS, step=1, label="Steps", elem_id="steps")
                    guidance = gr.Slider(0.0, 20.0, value=7.5, step=0.5, label="Guidance (CFG)", elem_id="guidance")
                frames = gr.Slider(
                    1, 257, value=engine.frames or 49, step=1, label="Frames", visible=video, elem_id="frames"
                )
                with gr.Accordion("Real image: upload, invert, edit", open=False):
                    upload = gr.File(label="Image to edit", file_types=["image"], type="filepath", elem_id="upload")
                    with gr.Row():
                        preview = gr.Image(
                            label="What will be inverted", interactive=False, height=160, elem_id="upload-preview"
                        )
                        inversion = gr.Radio(
                            list(INVERSION_METHODS), value=INVERSION_METHODS[0], label="Inversion", elem_id="inversion"
                        )
                with gr.Accordion("Guidance: PAG / SoftPAG", open=False):
                    pag_scale = gr.Slider(0.0, 10.0, value=0.0, step=0.5, label="Scale (0: off)", elem_id="pag-scale")
                    pag_strength = gr.Slider(
                        0.0, 1.0, value=1.0, step=0.05, label="Strength (1: PAG, < 1: SoftPAG)", elem_id="pag-strength"
                    )
                    head_set = gr.File(
                        label="Saved head set (visattn hunt JSON)",
                        file_types=[".json"],
                        type="filepath",
                        elem_id="head-set",
                    )
                with gr.Accordion("Sparse attention", open=False):
                    kernel = gr.Slider(
                        0, 63, value=0, step=1, label="Neighborhood kernel size (0: off)", elem_id="kernel-size"
                    )
                    radial = gr.Checkbox(value=False, label="Radial attention (video models)", elem_id="radial")
                with gr.Accordion("Extrapolation beyond the native size", open=False):
                    size_factor = gr.Slider(
                        1.0, MAX_SIZE_FACTOR, value=1.0, step=0.25, label="Size (x native)", elem_id="size-factor"
                    )
                    decay = gr.Slider(
                        0.0,
                        1.0,
                        value=1.0,
                        step=0.05,
                        label="Decay outside the native window (1: off)",
                        elem_id="decay",
                    )
                    entropy = gr.Checkbox(value=False, label="Entropy scaling", elem_id="entropy")
                run_button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=3, min_width=320):
                with gr.Row():
                    source = gr.Image(label="Source", interactive=False, height=300, elem_id="source")
                    edit = gr.Image(label="Edit", interactive=False, height=300, elem_id="edit")
                gallery = gr.Gallery(
                    label="Attention per word", columns=4, height="auto", object_fit="contain", elem_id="heatmaps"
                )
                status = gr.Textbox(
                    label="Status",
                    value=load_error or "",
                    lines=3,
                    max_lines=12,
                    interactive=False,
                    elem_id="status",
                )

        # --- events --------------------------------------------------------------------------------------------
        def on_mode(selected: str) -> list[Any]:
            editing = selected in ("replace", "refine")
            return [gr.update(visible=editing), gr.update(visible=selected != "none")]

        mode.change(on_mode, [mode], [target, local_blend], queue=False)
        word_inputs = [prompt, target, mode, shown_words, *sliders]
        word_outputs = [shown_words, weight_group, *sliders]
        for source_widget in (prompt, target, mode):
            source_widget.change(slider_updates, word_inputs, word_outputs, queue=False)

        def on_upload(path: str | None) -> list[Any]:
            try:
                image = engine.check_upload(path)
            except DemoError as exc:
                gr.Warning(str(exc))
                # A refused file is removed from the form, so a run never picks it up and a new file can be chosen.
                return [None, None, f"upload refused: {exc}"]
            if image is None:
                return [gr.update(), None, ""]
            message = f"upload accepted: will be inverted at {image.width}x{image.height}"
            return [gr.update(), _enlarged(image), message]

        upload.upload(on_upload, [upload], [upload, preview, status])
        upload.clear(lambda: [None, ""], None, [preview, status], queue=False)

        def on_generate(*values: Any, progress: Any = gr.Progress()) -> list[Any]:  # noqa: B008 (Gradio's API)
            (
                prompt_v,
                target_v,
                mode_v,
                shown_v,
                *rest,
            ) = values
            slider_values, rest = rest[:MAX_WORD_SLIDERS], rest[MAX_WORD_SLIDERS:]
            (
                blend_v,
                seed_v,
                steps_v,
                guidance_v,
                frames_v,
                upload_v,
                inversion_v,
                pag_scale_v,
                pag_strength_v,
                head_set_v,
                kernel_v,
                radial_v,
                size_v,
                decay_v,
                entropy_v,
            ) = rest
            try:
                # Checked here, before anything else converts them: an API client may send any JSON value.
                seed_n = integer_input("seed", 0 if seed_v is None else seed_v, 0, MAX_SEED)  # empty box: 0
                steps_n = integer_input("steps", steps_v, 1, MAX_STEPS)
            except DemoError as exc:
                raise gr.Error(str(exc)) from None
            request = DemoRequest(
                prompt=prompt_v or "",
                seed=seed_n,
                steps=steps_n,
                guidance=float(guidance_v),
                edit_mode=mode_v,
                target=target_v or "",
                weights=dict(zip(shown_v or [], slider_values)),
                local_blend=blend_v or "",
                pag_scale=float(pag_scale_v),
                pag_strength=float(pag_strength_v),
                head_set=head_set_v or None,
                kernel_size=int(kernel_v),
                radial=bool(radial_v),
                size_factor=float(size_v),
                decay=float(decay_v),
                entropy_scaling=bool(entropy_v),
                image=upload_v or None,
                inversion=inversion_v,
                frames=int(frames_v) if video else None,
            )
            return run_request(engine, request, progress)

        inputs = [
            *word_inputs,
            local_blend,
            seed,
            steps,
            guidance,
            frames,
            upload,
            inversion,
            pag_scale,
            pag_strength,
            head_set,
            kernel,
            radial,
            size_factor,
            decay,
            entropy,
        ]
        run_button.click(on_generate, inputs, [source, edit, gallery, status], concurrency_id="generate")
    return demo


def run_request(engine: DemoEngine, request: DemoRequest, progress: Any = None) -> list[Any]:
    """Run ``request`` and return the four outputs ``[source, edit, gallery, status]``; errors become a warning
    toast and a status message (the images are cleared), never an exception."""
    gr = _gradio()

    def report(fraction: float, description: str) -> None:
        if progress is not None:
            progress(fraction, desc=description)

    try:
        result = engine.run(request, report)
    except DemoError as exc:
        gr.Warning(str(exc))
        return [None, None, [], f"error: {exc}"]
    except Exception as exc:  # a bug, not a bad request: keep the server up, log the traceback for the operator
        logger.exception("the demo failed on %r", request)
        gr.Warning(f"internal error: {type(exc).__name__}: {exc}")
        return [None, None, [], f"internal error: {type(exc).__name__}: {exc} (the server log has the details)"]
    gallery = [(_enlarged(picture), caption) for picture, caption in result.heatmaps]
    return [_enlarged(result.source), _enlarged(result.edit), gallery, result.summary()]


def _enlarged(picture: Any) -> Any:
    """Pictures smaller than :data:`DISPLAY_MIN_SIZE` (tiny test models) upscaled by an integer factor with
    nearest-neighbour sampling (pixels and map cells stay visible) so the page shows them; others as they are.
    The status box keeps the size that was generated."""
    from PIL import Image

    if not isinstance(picture, Image.Image) or max(picture.size) >= DISPLAY_MIN_SIZE:
        return picture
    factor = -(-DISPLAY_MIN_SIZE // max(picture.size))
    return picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)


def launch(
    engine: DemoEngine,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    concurrency: int = 1,
    block: bool = True,
    auth: tuple[str, str] | None = None,
) -> Any:
    """Build and start the demo server; returns the ``gr.Blocks`` (running in the background when ``block`` is
    False, for tests and notebooks: stop it with ``demo.close()``).

    Args:
        engine: the engine that runs requests.
        host: interface to bind; the loopback interface by default, so nothing is exposed to the network.
        port: TCP port; ``None`` lets Gradio pick from 7860 up.
        share: open a public ``gradio.live`` link (off unless asked for).
        concurrency: how many generations run at once; further requests wait in the queue. Runs on one
            pipeline are serialized by the engine, so values above 1 only let upload checks and other light
            events overlap a generation.
        auth: ``(user, password)``: Gradio's login page guards the demo (``None``: no login).
    """
    gr = _gradio()
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency={concurrency!r} is not allowed: must be an integer >= 1")
    demo = build_demo(engine)
    demo.queue(default_concurrency_limit=concurrency)
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        auth=auth,
        prevent_thread_lock=not block,
        max_file_size=MAX_UPLOAD_BYTES,
        show_error=False,
        quiet=not block,
        ssr_mode=False,
        mcp_server=False,
        theme=theme,
        css=_css(),
    )
    return demo
