"""The editing demo in a real browser: the app served on a free loopback port, driven by headless Chromium.

Uses Playwright's sync API with the system's Chromium (Debian's ``chromium`` package; no browser download):
``VISATTN_CHROMIUM`` names another executable. Skipped, with the reason, when Gradio, Playwright or Chromium is
missing. Screenshots are written under pytest's temporary folder and, when ``VISATTN_ARTIFACTS`` is set, to that
folder too (CI keeps them as artifacts).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import zlib
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the demo needs Gradio (pip install 'visattn[app]')")
sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need Playwright (pip install playwright)")


def chromium_executable() -> str | None:
    candidates = [os.environ.get("VISATTN_CHROMIUM"), "chromium", "chromium-browser", "/usr/bin/chromium"]
    for candidate in candidates:
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


CHROMIUM = chromium_executable()
if CHROMIUM is None:
    pytest.skip("no Chromium executable (apt-get install chromium, or set VISATTN_CHROMIUM)", allow_module_level=True)

# One generation of the tiny model takes well under a second; these bound page loads and runs on a busy machine.
TIMEOUT_MS = 30_000


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    from visattn.app.handlers import DemoEngine
    from visattn.app.ui import launch
    from visattn.tiny import tiny_pipeline

    port = free_port()
    demo = launch(DemoEngine(pipeline=tiny_pipeline("unet")), port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1300})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(server)
    page.wait_for_selector("#prompt textarea")
    yield page
    context.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> list[Path]:
    folders = [tmp_path_factory.mktemp("screenshots")]
    if os.environ.get("VISATTN_ARTIFACTS"):
        folders.append(Path(os.environ["VISATTN_ARTIFACTS"]))
        folders[-1].mkdir(parents=True, exist_ok=True)
    return folders


def screenshot(page, artifacts: list[Path], name: str) -> None:
    data = page.screenshot(full_page=True)
    for folder in artifacts:
        (folder / f"{name}.png").write_bytes(data)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


def status(page) -> str:
    return page.input_value("#status textarea")


def wait_for_status(page, prefix: str) -> str:
    page.wait_for_function("prefix => document.querySelector('#status textarea').value.startsWith(prefix)", arg=prefix)
    return status(page)


def generate(page) -> str:
    """Click Generate and wait for the run to finish; returns the status text."""
    page.evaluate("document.querySelector('#status textarea').value = ''")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#status textarea').value !== ''")
    return status(page)


def loaded_images(page, selector: str, at_least: int = 1) -> int:
    """Wait until ``at_least`` images under ``selector`` have really loaded (decoded, non-empty); their count."""
    count = (
        f"[...document.querySelectorAll({selector + ' img'!r})].filter(e => e.complete && e.naturalWidth > 0).length"
    )
    page.wait_for_function(f"{count} >= {at_least}")
    return page.evaluate(count)


def captions(page) -> list[str]:
    return [text.strip() for text in page.locator("#heatmaps .caption-label").all_inner_texts()]


def set_slider(page, elem_id: str, value: float) -> None:
    field = page.locator(f"#{elem_id} input[type=number]")
    field.fill(str(value))
    field.press("Enter")


def test_edit_then_reweight(page, artifacts):
    page.fill("#prompt textarea", "a red circle")
    page.get_by_label("replace").check()
    page.fill("#target textarea", "a blue circle")
    page.fill("#local-blend textarea", "circle")
    assert generate(page).startswith("32x32 in ")
    assert loaded_images(page, "#source") == 1 and loaded_images(page, "#edit") == 1
    assert captions(page) == ["source: red", "source: circle", "edit: blue", "edit: circle"]
    assert loaded_images(page, "#heatmaps", 4) >= 4
    assert '"mode": "replace"' in status(page)
    screenshot(page, artifacts, "demo-replace")

    page.get_by_label("reweight").check()
    # One slider per content word of the prompt being re-weighted (in replace mode they showed the target's).
    sync_api.expect(page.locator("#weight-0")).to_contain_text("red")
    sync_api.expect(page.locator("#weight-1")).to_contain_text("circle")
    assert not page.is_visible("#weight-2")
    set_slider(page, "weight-0", 3)
    text = generate(page)
    assert '"reweight": {"red": 3.0}' in text
    assert "edit: red (x3)" in captions(page)
    assert loaded_images(page, "#edit") == 1
    screenshot(page, artifacts, "demo-reweight")


def test_progress_is_shown_while_generating(page, artifacts):
    set_slider(page, "steps", 60)
    page.click("#generate")
    # Gradio shows the description passed to gr.Progress over the outputs while the event runs.
    page.wait_for_selector("text=/generating: step \\d+\\/60/")
    screenshot(page, artifacts, "demo-progress")
    assert wait_for_status(page, "32x32 in ")


def png_bomb(path: Path) -> Path:
    """A tiny PNG whose header declares 30000 x 30000 pixels (a decompression bomb, as Pillow sees it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    )
    return path


def test_bad_uploads_get_a_message_and_the_server_keeps_serving(page, artifacts, tmp_path):
    page.click("text=Real image: upload, invert, edit")
    upload = page.locator("#upload input[type=file]")

    fake = tmp_path / "holiday.png"
    fake.write_text("not an image at all")
    upload.set_input_files(str(fake))
    assert "is not an image" in wait_for_status(page, "upload refused")
    page.wait_for_selector("text=/is not an image/")  # the warning toast
    screenshot(page, artifacts, "demo-upload-not-an-image")

    upload.set_input_files(str(png_bomb(tmp_path / "bomb.png")))
    page.wait_for_function("document.querySelector('#status textarea').value.includes('decompression bomb')")
    screenshot(page, artifacts, "demo-upload-bomb")

    from PIL import Image

    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "photo.png")
    upload.set_input_files(str(tmp_path / "photo.png"))
    assert "inverted at 32x32" in wait_for_status(page, "upload accepted")
    assert loaded_images(page, "#upload-preview") == 1
    page.get_by_label("replace").check()
    page.fill("#target textarea", "a blue circle")
    set_slider(page, "steps", 3)
    assert generate(page).startswith("32x32 in ")  # inverted, then edited
    assert loaded_images(page, "#source") == 1 and loaded_images(page, "#edit") == 1
    screenshot(page, artifacts, "demo-upload-edit")


def panel_label(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} [data-testid='block-label']").inner_text().strip()


def test_prompt_to_prompt_controls_sheet_and_downloads(page, artifacts):
    # The schedule and the blend threshold appear with an edit mode, beside the local-blend words.
    assert not page.is_visible("#cross-steps")
    page.fill("#prompt textarea", "a red circle")
    page.get_by_label("replace").check()
    page.fill("#target textarea", "a blue circle")
    page.fill("#local-blend textarea", "circle")
    for elem_id in ("cross-steps", "self-steps", "blend-threshold"):
        sync_api.expect(page.locator(f"#{elem_id}")).to_be_visible()
    set_slider(page, "cross-steps", 0.5)
    set_slider(page, "self-steps", 0.2)
    set_slider(page, "blend-threshold", 0.5)
    text = generate(page)
    assert '"cross_steps": 0.5' in text and '"self_steps": 0.2' in text
    assert '"local_blend": {"words": ["circle"], "threshold": 0.5}' in text
    assert (panel_label(page, "source"), panel_label(page, "edit")) == ("source", "edit")
    assert loaded_images(page, "#maps-sheet") == 1  # the labelled sheet of per-word maps
    # Downloads: the source, the edit and the sheet, as PNGs.
    page.wait_for_function("document.querySelectorAll('#downloads a').length >= 3")
    names = page.locator("#downloads a").evaluate_all("links => links.map(a => a.getAttribute('download') || a.href)")
    assert any(name.endswith("-source.png") for name in names) and any(name.endswith("-maps.png") for name in names), (
        names
    )
    screenshot(page, artifacts, "demo-p2p-controls")


def test_pag_layers_inversion_default_and_no_radial_box_on_an_image_model(page, artifacts):
    page.click("text=Guidance: PAG / SoftPAG")
    # The layer choices are the loaded model's: its default (the mid block), then its UNet levels.
    sync_api.expect(page.locator("#pag-layers")).to_contain_text("mid (default)")
    page.locator("#pag-layers input").click()
    page.get_by_role("option", name="up blocks").click()
    page.locator("#pag-layers input").press("Tab")  # closes the list
    sync_api.expect(page.locator("#pag-layers")).to_contain_text("up blocks")
    set_slider(page, "pag-scale", 2)
    sync_api.expect(page.locator("#pag-scale input[type=number]")).to_have_value("2")
    text = generate(page)
    assert '"layers": ["mid", "up"]' in text
    assert (panel_label(page, "source"), panel_label(page, "edit")) == ("without effects", "with effects")
    assert loaded_images(page, "#maps-sheet") == 1
    screenshot(page, artifacts, "demo-pag-layers")

    page.click("text=Sparse attention")
    sync_api.expect(page.locator("#kernel-size")).to_be_visible()
    assert not page.is_visible("#radial")  # Radial Attention is for video models only
    page.click("text=Real image: upload, invert, edit")
    assert page.get_by_label("ddim").is_checked()  # the same default as visattn edit --inversion
    screenshot(page, artifacts, "demo-sparse-and-inversion")


def test_examples_fill_the_form_with_toy_captions(page, artifacts):
    example = "a large green triangle in the center on a black background"
    page.locator("#examples").get_by_text("swap green -> yellow").click()
    sync_api.expect(page.locator("#prompt textarea")).to_have_value(example)
    sync_api.expect(page.locator("#target textarea")).to_have_value(example.replace("green", "yellow"))
    sync_api.expect(page.locator("#local-blend textarea")).to_have_value("triangle")
    screenshot(page, artifacts, "demo-examples")
