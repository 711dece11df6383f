"""visattn eval's edits of an upload (issue 28 item 3): one per inversion, the background change in 0-255 units."""

from __future__ import annotations

from visattn.edit import INVERSIONS
from visattn.eval import upload_edit
from visattn.eval.config import EvalConfig
from visattn.eval.generation import EvalContext, ImageModel
from visattn.tiny import tiny_pipeline


def test_every_inversion_is_measured_and_reported():
    config = EvalConfig.quick(samples=1)
    ctx = EvalContext(config, image=ImageModel(tiny_pipeline("unet"), steps=2), progress=False)
    done = []
    result = upload_edit.run(ctx, "prompt_to_prompt", done.append)
    assert sum(done) == upload_edit.count(config) == len(INVERSIONS)
    assert result["bar"] == 3.0
    for inversion in INVERSIONS:
        measured = result[inversion]
        assert measured["n"] == 1 and len(measured["samples"]) == 1
        change = measured["background_change_255"]
        assert change is None or 0.0 <= change <= 255.0
    text = upload_edit.markdown(result)
    assert all(f"| {inversion} |" in text for inversion in INVERSIONS) and "the bar: 3" in text
    assert list(upload_edit.headline(result)) == ["upload background change (worst inversion, /255)"]
