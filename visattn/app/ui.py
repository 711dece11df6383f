"""The Gradio Blocks interface of the editing demo (``visattn demo``); the work is done by :mod:`.handlers`.

This module turns widgets into a :class:`~visattn.app.handlers.DemoRequest` and the result back into widgets.
Every problem with a request (a bad upload, a word that is not in the prompt, a model that cannot be loaded,
settings the model cannot run) becomes a ``gr.Warning`` toast plus a message in the status box; an unexpected
error is logged with its traceback on the server and shown in one line, and the server keeps serving.

Element ids (``elem_id``) name the widgets for browser tests and custom CSS: ``prompt``, ``target``,
``edit-mode``, ``weight-0`` ... ``weight-N``, ``local-blend``, ``blend-threshold``, ``blend-subtract``,
``blend-variant``, ``blend-radius``, ``blend-subtract-threshold``, ``cross-steps``,
``self-steps``, ``seed``, ``steps``, ``guidance``, ``upload``, ``upload-preview``, ``inversion``, ``pag-scale``,
``pag-strength``, ``pag-layers``, ``head-set``, ``kernel-size``, ``radial`` (video models only),
``size-factor``, ``decay``, ``entropy``, ``frames``, ``examples``, ``generate``, ``source``, ``edit``,
``maps-sheet``, ``heatmaps``, ``downloads``, ``status``.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..defaults import DEFAULT_MODEL, guidance_defaults, reweight_defaults
from .handlers import (
    BLEND_VARIANTS,
    DEFAULT_BLEND_RADIUS,
    DEFAULT_BLEND_THRESHOLD,
    DEFAULT_CROSS_STEPS,
    DEFAULT_SELF_STEPS,
    EDIT_MODES,
    INVERSION_METHODS,
    MAX_DEMO_BLEND_RADIUS,
    MAX_SEED,
    MAX_SIZE_FACTOR,
    MAX_STEPS,
    MAX_WEIGHT,
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
#: Largest weight a word slider offers (the handlers accept up to MAX_WEIGHT; 0 removes a word, never below): the
#: whole accepted range, since on the default toy model a word's weight shows from about
#: :func:`visattn.defaults.reweight_defaults`' ``weight`` (the guidance sweep's re-weighting table).
SLIDER_MAX_WEIGHT = MAX_WEIGHT
#: How a Python caller of :func:`launch` gets a public link.
PYTHON_SHARE_HINT = "To create a public link, pass share=True to visattn.app.ui.launch()."
#: The panels' labels before the first run: what each panel shows in either kind of run.
PANEL_LABELS = ("source / without effects", "edit / with effects")
#: PAG's scale in the examples: the default toy model's measured one (:func:`visattn.defaults.guidance_defaults`).
TOY_PAG_SCALE: float = guidance_defaults(DEFAULT_MODEL)["pag"]["scale"]
#: Re-weighting that shows on the default toy model (:func:`visattn.defaults.reweight_defaults`).
TOY_REWEIGHT: dict[str, float] = reweight_defaults(DEFAULT_MODEL)
#: Example runs in the default toy model's caption grammar (README, "The toy models and their captions"): one
#: object, a colour, a shape, a place and a background, each a word the model was trained on. Columns: prompt,
#: edit mode, edited prompt, local-blend words, PAG scale.
TOY_EXAMPLES: list[list[Any]] = [
    ["a small red circle at the top left on a blue background", "none", "", "", 0.0],
    [
        "a large green triangle in the center on a black background",
        "replace",
        "a large yellow triangle in the center on a black background",
        "triangle",
        0.0,
    ],
    [
        "a large yellow circle at the bottom right on a gray background",
        "replace",
        "a large red circle at the bottom right on a gray background",
        "",
        0.0,
    ],
    ["a small red circle at the top left on a blue background", "reweight", "", "", 0.0],
    ["a large green triangle in the center on a black background", "none", "", "", TOY_PAG_SCALE],
]
#: What each example's button says (the table of five columns does not fit the page).
TOY_EXAMPLE_LABELS: list[str] = [
    "generate: a small red circle, top left, blue background",
    "swap green -> yellow, blend on the triangle",
    "swap yellow -> red circle, bottom right",
    f"re-weight: then move a word's slider (red to {TOY_REWEIGHT['weight']:g}, or to {TOY_REWEIGHT['weaken']:g})",
    f"PAG scale {TOY_PAG_SCALE:g} beside the plain generation",
]

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
    pag_choices: list[tuple[str, str]] = []
    try:
        video = engine.is_video()
        video_family = engine.is_video_family()
        height, width = engine.native_size()
        model_line = f"Model: `{engine.model_name}` (native size {width}x{height})"
        pag_choices = engine.pag_layer_choices()
    except DemoError as exc:
        video = video_family = False
        load_error = str(exc)
        model_line = f"Model: `{engine.model_name}`: **cannot be loaded**: {load_error}"

    # Gradio copies served files into its cache: delete copies older than a day, checked hourly.
    with gr.Blocks(title="visattn editing demo", delete_cache=(3600, 86400)) as demo:
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
                        gr.Slider(0.0, SLIDER_MAX_WEIGHT, value=1.0, step=0.1, visible=False, elem_id=f"weight-{i}")
                        for i in range(MAX_WORD_SLIDERS)
                    ]
                with gr.Group(visible=False) as p2p_group:
                    local_blend = gr.Textbox(
                        label="Local-blend words (comma separated; only their region may change)",
                        elem_id="local-blend",
                    )
                    blend_threshold = gr.Slider(
                        0.05,
                        0.95,
                        value=DEFAULT_BLEND_THRESHOLD,
                        step=0.05,
                        label="Blend threshold (lower: a larger region may change)",
                        elem_id="blend-threshold",
                    )
                    blend_subtract = gr.Textbox(
                        label="Local-blend exceptions (comma separated; their region keeps the source)",
                        elem_id="blend-subtract",
                    )
                    with gr.Accordion("Local-blend options", open=False):
                        blend_variant = gr.Radio(
                            list(BLEND_VARIANTS),
                            value="authors",
                            label="Blend: the authors' (latents, after each step) or prediction (nothing outside "
                            "the region changes)",
                            elem_id="blend-variant",
                        )
                        blend_radius = gr.Slider(
                            0,
                            MAX_DEMO_BLEND_RADIUS,
                            value=DEFAULT_BLEND_RADIUS,
                            step=1,
                            label="Blend radius (max-pooling of the words' maps; larger: wider margins)",
                            elem_id="blend-radius",
                        )
                        blend_subtract_threshold = gr.Slider(
                            0.05,
                            0.95,
                            value=DEFAULT_BLEND_THRESHOLD,
                            step=0.05,
                            label="Exceptions threshold (lower: a larger region keeps the source)",
                            elem_id="blend-subtract-threshold",
                        )
                    cross_steps = gr.Slider(
                        0.0,
                        1.0,
                        value=DEFAULT_CROSS_STEPS,
                        step=0.05,
                        label="Cross replace steps: fraction of the schedule with the source's cross-attention",
                        elem_id="cross-steps",
                    )
                    self_steps = gr.Slider(
                        0.0,
                        1.0,
                        value=DEFAULT_SELF_STEPS,
                        step=0.05,
                        label="Self replace steps: fraction of the schedule with the source's self-attention",
                        elem_id="self-steps",
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
                            list(INVERSION_METHODS),
                            value=INVERSION_METHODS[0],
                            label="Inversion (ddim, the default of visattn edit too, keeps the background best)",
                            elem_id="inversion",
                        )
                with gr.Accordion("Guidance: PAG / SoftPAG", open=False):
                    pag_scale = gr.Slider(0.0, 10.0, value=0.0, step=0.5, label="Scale (0: off)", elem_id="pag-scale")
                    pag_strength = gr.Slider(
                        0.0, 1.0, value=1.0, step=0.05, label="Strength (1: PAG, < 1: SoftPAG)", elem_id="pag-strength"
                    )
                    pag_layers = gr.Dropdown(
                        choices=pag_choices,
                        value=[value for label, value in pag_choices if label.endswith("(default)")],
                        multiselect=True,
                        label="Layers PAG perturbs (from this model; empty: its default)",
                        elem_id="pag-layers",
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
                    # Radial Attention acts on video models only: an image model's form does not offer it.
                    radial = gr.Checkbox(value=False, label="Radial attention", visible=video_family, elem_id="radial")
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
                    # PNG, not Gradio's default WebP: what is shown is what was generated (enlarged).
                    source = gr.Image(
                        label=PANEL_LABELS[0], interactive=False, height=300, format="png", elem_id="source"
                    )
                    edit = gr.Image(label=PANEL_LABELS[1], interactive=False, height=300, format="png", elem_id="edit")
                sheet = gr.Image(label="Per-word attention maps", interactive=False, format="png", elem_id="maps-sheet")
                gallery = gr.Gallery(
                    label="Attention per word", columns=4, height="auto", object_fit="contain", elem_id="heatmaps"
                )
                downloads = gr.File(
                    label="Downloads: PNGs with their parameters (text chunks; JSON sidecars beside them)",
                    file_count="multiple",
                    interactive=False,
                    elem_id="downloads",
                )
                status = gr.Textbox(
                    label="Status",
                    value=load_error or "",
                    lines=3,
                    max_lines=12,
                    interactive=False,
                    elem_id="status",
                )

        # Below the form, full width: a click fills prompt, mode, edited prompt, blend words and PAG scale.
        with gr.Column(elem_id="examples"):
            gr.Examples(
                TOY_EXAMPLES,
                [prompt, mode, target, local_blend, pag_scale],
                example_labels=TOY_EXAMPLE_LABELS,
                label="Examples (captions the default toy model knows: one object, its size, colour, shape, place "
                "and the background)",
            )

        # --- events --------------------------------------------------------------------------------------------
        def on_mode(selected: str) -> list[Any]:
            editing = selected in ("replace", "refine")
            return [gr.update(visible=editing), gr.update(visible=selected != "none")]

        mode.change(on_mode, [mode], [target, p2p_group], queue=False)
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

        # The form's fields after the word sliders, by name; FORM_FIELDS orders them, here and in API calls.
        fields = {
            "local_blend": local_blend,
            "blend_threshold": blend_threshold,
            "blend_subtract": blend_subtract,
            "blend_variant": blend_variant,
            "blend_radius": blend_radius,
            "blend_subtract_threshold": blend_subtract_threshold,
            "cross_steps": cross_steps,
            "self_steps": self_steps,
            "seed": seed,
            "steps": steps,
            "guidance": guidance,
            "frames": frames,
            "upload": upload,
            "inversion": inversion,
            "pag_scale": pag_scale,
            "pag_strength": pag_strength,
            "pag_layers": pag_layers,
            "head_set": head_set,
            "kernel_size": kernel,
            "radial": radial,
            "size_factor": size_factor,
            "decay": decay,
            "entropy_scaling": entropy,
        }

        def on_generate(*values: Any, progress: Any = gr.Progress()) -> list[Any]:  # noqa: B008 (Gradio's API)
            prompt_v, target_v, mode_v, shown_v, *rest = values
            slider_values, rest = rest[:MAX_WORD_SLIDERS], rest[MAX_WORD_SLIDERS:]
            try:
                # Checked here, before anything else converts them: an API client may send any JSON value.
                request = form_request(
                    prompt_v, target_v, mode_v, dict(zip(shown_v or [], slider_values)), dict(zip(FORM_FIELDS, rest))
                )
            except DemoError as exc:
                raise gr.Error(str(exc)) from None
            if not video:
                request.frames = None
            return run_request(engine, request, progress)

        inputs = [*word_inputs, *(fields[name] for name in FORM_FIELDS)]
        outputs = [source, edit, gallery, sheet, downloads, status]
        run_button.click(on_generate, inputs, outputs, concurrency_id="generate")
    return demo


#: The form's fields after the prompt, edited prompt, mode and word sliders, in the order the Generate event takes
#: them (and :func:`form_request` reads them).
FORM_FIELDS: tuple[str, ...] = (
    "local_blend",
    "blend_threshold",
    "cross_steps",
    "self_steps",
    "seed",
    "steps",
    "guidance",
    "frames",
    "upload",
    "inversion",
    "pag_scale",
    "pag_strength",
    "pag_layers",
    "head_set",
    "kernel_size",
    "radial",
    "size_factor",
    "decay",
    "entropy_scaling",
    # Last: added after the others, so API clients that send the earlier fields by position keep working.
    "blend_subtract",
    "blend_variant",
    "blend_radius",
    "blend_subtract_threshold",
)


def form_request(
    prompt: str | None, target: str | None, mode: str, weights: dict[str, Any], fields: dict[str, Any]
) -> DemoRequest:
    """The :class:`DemoRequest` of one press of Generate: the form's values as Gradio hands them over.

    Seed and step count are checked first (an API client may send any JSON value); the rest is checked by the
    engine, which names the field it refuses.

    Raises:
        DemoError: a seed or step count that is not a whole number in range.
    """
    seed_v = fields["seed"]
    seed = integer_input("seed", 0 if seed_v is None else seed_v, 0, MAX_SEED)  # an empty box is seed 0
    steps = integer_input("steps", fields["steps"], 1, MAX_STEPS)
    frames = fields["frames"]
    return DemoRequest(
        prompt=prompt or "",
        seed=seed,
        steps=steps,
        guidance=float(fields["guidance"]),
        edit_mode=mode,
        target=target or "",
        weights=weights,
        local_blend=fields["local_blend"] or "",
        blend_threshold=fields["blend_threshold"],
        blend_subtract=fields.get("blend_subtract") or "",
        blend_variant=fields.get("blend_variant") or "authors",
        blend_radius=fields.get("blend_radius", DEFAULT_BLEND_RADIUS),
        blend_subtract_threshold=fields.get("blend_subtract_threshold", DEFAULT_BLEND_THRESHOLD),
        cross_steps=fields["cross_steps"],
        self_steps=fields["self_steps"],
        pag_scale=float(fields["pag_scale"]),
        pag_strength=float(fields["pag_strength"]),
        pag_layers=list(fields["pag_layers"] or []) or None,
        head_set=fields["head_set"] or None,
        kernel_size=int(fields["kernel_size"]),
        radial=bool(fields["radial"]),
        size_factor=float(fields["size_factor"]),
        decay=float(fields["decay"]),
        entropy_scaling=bool(fields["entropy_scaling"]),
        image=fields["upload"] or None,
        inversion=fields["inversion"],
        frames=None if frames is None else int(frames),
    )


def run_request(engine: DemoEngine, request: DemoRequest, progress: Any = None) -> list[Any]:
    """Run ``request`` and return the six outputs ``[source, edit, gallery, sheet, downloads, status]``: the two
    panels as ``gr.update``s that also set their labels ("source" / "edit", "without effects" / "with effects"),
    the per-word gallery, the labelled sheet of maps, the PNGs to download. Errors become a warning toast and a
    status message (the outputs are cleared), never an exception."""
    gr = _gradio()

    def report(fraction: float, description: str) -> None:
        if progress is not None:
            progress(fraction, desc=description)

    try:
        result = engine.run(request, report)
    except DemoError as exc:
        gr.Warning(str(exc))
        return [*_cleared(gr), f"error: {exc}"]
    except Exception as exc:  # a bug, not a bad request: keep the server up, log the traceback for the operator
        logger.exception("the demo failed on %r", request)
        gr.Warning(f"internal error: {type(exc).__name__}: {exc}")
        message = f"internal error: {type(exc).__name__}: {exc} (the server log has the details)"
        return [*_cleared(gr), message]
    gallery = [(_enlarged(picture), caption) for picture, caption in result.heatmaps]
    first, second = result.labels
    return [
        gr.update(value=_enlarged(result.source), label=first),
        gr.update(value=_enlarged(result.edit), label=second or PANEL_LABELS[1]),
        gallery,
        result.sheet,
        result.files or None,
        result.summary(),
    ]


def _cleared(gr: Any) -> list[Any]:
    """The outputs before the status of a failed run: nothing shown, the panels' labels back to the defaults."""
    return [
        gr.update(value=None, label=PANEL_LABELS[0]),
        gr.update(value=None, label=PANEL_LABELS[1]),
        [],
        None,
        None,
    ]


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
    share_hint: str | None = PYTHON_SHARE_HINT,
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
        share_hint: printed under the local URL when ``share`` is off: how to get a public link where the demo is
            started from (``visattn demo`` says ``--share``); ``None`` prints nothing.
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
        prevent_thread_lock=True,  # blocks below, after the start-up lines
        max_file_size=MAX_UPLOAD_BYTES,
        show_error=False,
        # Gradio's own start-up lines tell a CLI user to edit launch(); the demo prints its own (startup_lines).
        quiet=True,
        ssr_mode=False,
        mcp_server=False,
        theme=theme,
        css=_css(),
    )
    if block:
        for line in startup_lines(demo.local_url, demo.share_url, None if share else share_hint):
            print(line, flush=True)
        demo.block_thread()
    return demo


def startup_lines(local_url: str | None, share_url: str | None, share_hint: str | None) -> list[str]:
    """What the server prints once it listens: where to open the demo, and how to share it (``share_hint``,
    written for the way the demo was started) when it is not shared yet."""
    lines = [f"* Running on local URL:  {local_url}"]
    if share_url:
        lines.append(f"* Running on public URL: {share_url}")
    elif share_hint:
        lines.append(f"* {share_hint}")
    return lines
