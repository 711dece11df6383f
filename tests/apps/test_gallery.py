"""The evaluation's example-image gallery and the labelled image grid it is drawn with."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visattn.charts import image_grid, stack_vertically
from visattn.eval.gallery import Gallery, filmstrip, short_caption


def solid(value: int, side: int = 16) -> np.ndarray:
    """A block of one colour that no text can have (text is drawn in greys)."""
    image = np.empty((side, side, 3), dtype=np.uint8)
    image[...] = (value, 255 - value, 77)
    return image


def where(pixels: np.ndarray, value: int) -> np.ndarray:
    return (pixels == (value, 255 - value, 77)).all(axis=-1)


def test_image_grid_places_each_image_at_the_cell_height_in_its_row_and_column():
    grid = image_grid(
        [[solid(10), solid(200)], [solid(90), None]],
        column_titles=["source", "edit"],
        row_labels=["first", "second"],
        notes=[["a", "b"], ["c", None]],
        title="title",
        cell=32,
        pad=4,
    )
    pixels = np.asarray(grid)
    assert grid.mode == "RGB" and grid.width >= 2 * 32 + 3 * 4
    # every image is drawn as a solid 32 x 32 block (nearest-neighbour scaling keeps it solid)
    for value in (10, 200, 90):
        ys, xs = np.nonzero(where(pixels, value))
        assert ys.max() - ys.min() + 1 == 32 and xs.max() - xs.min() + 1 == 32
    # the second row sits below the first, and the empty cell stays white
    first = np.nonzero(where(pixels, 10))[0].min()
    second = np.nonzero(where(pixels, 90))[0].min()
    assert second > first + 32


def test_image_grid_gives_a_wide_image_a_wide_column_and_checks_its_labels():
    wide = np.zeros((8, 40, 3), dtype=np.uint8)
    grid = image_grid([[wide, solid(5, 8)]], cell=16, pad=0)
    assert grid.width >= 80 + 16
    with pytest.raises(ValueError, match="row_labels has 1 entries; the grid has 2 rows"):
        image_grid([[wide], [wide]], row_labels=["only one"])
    with pytest.raises(ValueError, match="uint8"):
        image_grid([[np.zeros((4, 4, 3), dtype=np.float32)]])
    with pytest.raises(ValueError, match="cell=2"):
        image_grid([[wide]], cell=2)


def test_stack_vertically_keeps_every_part():
    parts = [Image.new("RGB", (10, 5), "red"), Image.new("RGB", (20, 7), "blue")]
    stacked = stack_vertically(parts, pad=3)
    assert stacked.size == (20, 15)
    with pytest.raises(ValueError, match="at least one"):
        stack_vertically([])


def test_filmstrip_shows_evenly_spaced_frames_from_first_to_last():
    clip = np.stack([solid(v, 4) for v in (0, 50, 100, 150, 200, 250, 30)])
    strip = filmstrip(clip, frames=3)
    assert strip.shape == (4, 3 * 4 + 2, 3)
    assert [int(strip[0, x, 0]) for x in (0, 5, 10)] == [0, 150, 30]
    assert filmstrip(solid(7)).shape == (16, 16, 3)  # an image stays as it is
    with pytest.raises(ValueError, match="clip must be"):
        filmstrip(np.zeros((2, 4, 4)))


def test_gallery_keeps_the_first_samples_per_section_and_draws_every_section():
    gallery = Gallery(samples=2, cell=16)
    images = [solid(v) for v in (10, 20, 30)]
    gallery.add("swap", "source", images, rows=["a", "b", "c"], notes=["x", "y", "z"])
    gallery.add("swap", "edit", images, rows=["a", "b", "c"])
    gallery.add("video", "1x", [np.stack([solid(1), solid(2)])], rows=["clip"])
    assert gallery.sections == ["swap", "video"]
    picture = gallery.render("title")
    pixels = np.asarray(picture)
    # two samples kept per column: values 10 and 20 drawn twice (source and edit), 30 never
    assert where(pixels, 30).sum() == 0
    assert where(pixels, 10).sum() == 2 * 16 * 16
    with pytest.raises(ValueError, match="fewer labels"):
        gallery.add("swap", "more", images, rows=["a"])


def test_an_empty_or_disabled_gallery_draws_nothing():
    assert Gallery().render() is None
    off = Gallery(samples=0)
    off.add("swap", "source", [solid(1)], rows=["a"])
    assert off.render() is None and off.sections == []
    with pytest.raises(ValueError, match="samples=-1"):
        Gallery(samples=-1)


def test_short_caption_keeps_every_attribute():
    assert short_caption("a small red circle at the top left on a blue background") == (
        "small red circle, top left, on blue"
    )
    assert short_caption("a red circle moving right on a gray background") == "red circle, moving right, on gray"
