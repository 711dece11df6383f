"""Facts of the text-to-video transformers: one :class:`Family` record per class.

Argument positions follow each class's ``forward`` signature; ``text_position`` says where each joint sequence
puts the text (checked against the SDPA calls of the tiny models in :mod:`visattn.testing.coverage`).
"""

from __future__ import annotations

from .base import Argument, Family


def _video(
    name: str,
    classes: tuple[str, ...],
    timestep: int,
    text: int,
    layout: str = "BCFHW",
    text_position: str | None = None,
    **facts,
) -> Family:
    return Family(
        name,
        classes,
        layout=layout,
        timestep=Argument(("timestep",), timestep),
        text=Argument(("encoder_hidden_states",), text),
        text_position=text_position,
        video=True,
        **facts,
    )


VIDEO_MODEL_FAMILIES: tuple[Family, ...] = (
    _video("wan", ("WanTransformer3DModel",), timestep=1, text=2),
    _video("wan_vace", ("WanVACETransformer3DModel",), timestep=1, text=2),
    _video("wan_animate", ("WanAnimateTransformer3DModel",), timestep=1, text=2),
    _video("skyreels_v2", ("SkyReelsV2Transformer3DModel",), timestep=1, text=2),
    _video("chronoedit", ("ChronoEditTransformer3DModel",), timestep=1, text=2),
    # Helios prepends history latents to the video inside its self-attention: only its cross-attention is placed.
    _video("helios", ("HeliosTransformer3DModel",), timestep=1, text=2),
    _video("anyflow", ("AnyFlowTransformer3DModel",), timestep=1, text=3, layout="BFCHW"),
    _video(
        "cogvideox",
        ("CogVideoXTransformer3DModel",),
        timestep=2,
        text=1,
        layout="BFCHW",
        text_position="first",
        roles=(("", "joint"),),
    ),
    _video("consisid", ("ConsisIDTransformer3DModel",), timestep=2, text=1, layout="BFCHW", text_position="first"),
    _video("easyanimate", ("EasyAnimateTransformer3DModel",), timestep=1, text=3, text_position="first"),
    _video(
        "hunyuan_video",
        ("HunyuanVideoTransformer3DModel",),
        timestep=1,
        text=2,
        text_position="last",
        # The token refiner's attention (context_embedder) attends over text only.
        roles=(("^context_embedder", "text"), ("", "joint")),
    ),
    _video(
        "hunyuan_video15",
        ("HunyuanVideo15Transformer3DModel",),
        timestep=1,
        text=2,
        text_position="last",
        roles=(("^context_embedder", "text"),),
    ),
    # Framepack puts history latents before the video in its joint sequence: the text position does not place it.
    _video(
        "hunyuan_video_framepack",
        ("HunyuanVideoFramepackTransformer3DModel",),
        timestep=1,
        text=2,
        roles=(("^context_embedder", "text"),),
    ),
    _video("mochi", ("MochiTransformer3DModel",), timestep=2, text=1, text_position="last", timestep_reversed=True),
    _video("allegro", ("AllegroTransformer3DModel",), timestep=2, text=1),
    _video("latte", ("LatteTransformer3DModel",), timestep=1, text=2),
    _video("cosmos", ("CosmosTransformer3DModel",), timestep=1, text=2),
    _video("sana_video", ("SanaVideoTransformer3DModel",), timestep=2, text=1),
    _video("sana_wm", ("SanaWMTransformer3DModel",), timestep=1, text=2),
    _video("kandinsky5", ("Kandinsky5Transformer3DModel",), timestep=2, text=1, layout="BFHWC"),
    _video("kandinsky6", ("Kandinsky6Transformer3DModel",), timestep=3, text=1, layout="BFHWC"),
    _video("motif_video", ("MotifVideoTransformer3DModel",), timestep=1, text=2, text_position="last"),
    _video(
        "ltx",
        ("LTXVideoTransformer3DModel",),
        timestep=2,
        text=1,
        layout="packed",
        grid_reader="frames_height_width",
    ),
    _video(
        "ltx2",
        ("LTX2VideoTransformer3DModel",),
        timestep=4,
        text=2,
        layout="packed",
        grid_reader="frames_height_width",
    ),
)
