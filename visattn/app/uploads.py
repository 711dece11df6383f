"""Checking an uploaded image before any model sees it: not an image, too many pixels, decompression bombs.

A web demo decodes files chosen by strangers, so every upload goes through :func:`open_upload` first:

* the file size is bounded before anything is read (``max_bytes``);
* the header is read lazily (``Image.open`` decodes no pixel data) and the pixel count is compared with
  ``max_pixels`` before the pixels are decoded;
* Pillow's own decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``: a warning above it, an error above twice
  it) is turned into an error, so a bomb is refused instead of merely logged, and a PNG text chunk that inflates
  past Pillow's limit (a ``ValueError`` inside the PNG reader) is refused the same way;
* a truncated or damaged file is reported as such.

Every refusal is an :class:`UploadError` whose message is written for the person who uploaded the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

#: Default pixel limit of an upload: 4096 x 4096. The demo resizes every upload to the model's size, so larger
#: images only cost memory and decoding time.
DEFAULT_MAX_PIXELS = 4096 * 4096
#: Default size limit of an uploaded file in bytes (32 MiB).
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


class UploadError(ValueError):
    """An upload the demo refuses; the message says why, for the person who uploaded it."""


def _megabytes(count: int) -> str:
    return f"{count / (1024 * 1024):.1f} MiB"


def open_upload(
    path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_BYTES
) -> Image.Image:
    """Open an uploaded image safely and return it as an RGB image (first frame of an animation).

    Args:
        path: the uploaded file.
        max_pixels: largest accepted ``width * height``.
        max_bytes: largest accepted file size.

    Raises:
        UploadError: no such file, an empty or too large file, not an image Pillow can read, more than
            ``max_pixels`` pixels, a decompression bomb, or damaged image data.
        ValueError: ``max_pixels`` or ``max_bytes`` is not a positive integer.
    """
    for name, value in (("max_pixels", max_pixels), ("max_bytes", max_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is not allowed: must be a positive integer")
    path = Path(path)
    if not path.is_file():
        raise UploadError(f"the upload {path.name!r} is not a file the server can read")
    size = path.stat().st_size
    if size == 0:
        raise UploadError(f"the upload {path.name!r} is empty")
    if size > max_bytes:
        raise UploadError(f"the upload {path.name!r} is {_megabytes(size)}; the limit is {_megabytes(max_bytes)}")
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a server must refuse those too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)  # reads the header only: the size is known before any pixel is decoded
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise UploadError(f"the upload {path.name!r} was refused as a decompression bomb: {exc}") from None
        except UnidentifiedImageError:
            raise UploadError(
                f"the upload {path.name!r} is not an image (PNG, JPEG, WebP, GIF, BMP or TIFF expected)"
            ) from None
        except ValueError as exc:
            # PngImagePlugin raises ValueError for a text chunk that inflates past MAX_TEXT_CHUNK.
            raise UploadError(f"the upload {path.name!r} was refused (a decompression bomb?): {exc}") from None
        except (OSError, SyntaxError) as exc:
            raise UploadError(f"the upload {path.name!r} could not be read as an image: {exc}") from None
        with image:
            width, height = image.size
            if width * height > max_pixels:
                raise UploadError(
                    f"the upload {path.name!r} is {width}x{height} = {width * height:,} pixels; the limit is "
                    f"{max_pixels:,} pixels, so resize it first"
                )
            try:
                image.load()
                return _to_rgb(image)
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise UploadError(f"the upload {path.name!r} was refused as a decompression bomb: {exc}") from None
            except ValueError as exc:
                raise UploadError(f"the upload {path.name!r} was refused (a decompression bomb?): {exc}") from None
            except (OSError, SyntaxError) as exc:
                raise UploadError(f"the upload {path.name!r} is damaged or truncated: {exc}") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, upright (EXIF orientation applied), transparency composited over white."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def fit_to_size(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` centre-cropped to the aspect ratio of ``width x height`` and resized to it (Lanczos).

    Cropping instead of stretching keeps shapes undistorted for the inversion; the crop keeps the centre.
    """
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is not allowed: must be a positive integer")
    return ImageOps.fit(image.convert("RGB"), (width, height), method=Image.Resampling.LANCZOS)
