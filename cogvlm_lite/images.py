"""Loading user images: one function that turns a PIL image, a path or file bytes into RGB.

`load_image` is what the model, the command line, the web UI and the API call on anything a user
hands over. It decodes the whole image up front, applies the EXIF orientation, puts transparent
areas on white, scales 16-bit and float images to 8 bits, takes the first frame of an animation,
and refuses files that are missing, empty, corrupt, too big or not images with an `ImageError`
that says what is wrong and what to do.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_PIXELS: int = 40_000_000  # width * height; guards against decompression bombs
MAX_BYTES: int = 50 * 1024 * 1024  # largest image file accepted, in bytes

# What Pillow raises on bad image data; Image.DecompressionBombError is not an OSError.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class ImageError(ValueError):
    """An image that cannot be used; the message says what is wrong and what to do."""


def load_image(
    image: Image.Image | str | os.PathLike | bytes,
    max_pixels: int = MAX_PIXELS,
    *,
    max_bytes: int = MAX_BYTES,
) -> Image.Image:
    """Return `image` as a new, fully decoded RGB image, upright as its EXIF says.

    `image` is a PIL image (its current frame is used), a path to an image file, or the bytes of
    one (an animation gives its first frame). Images with more than `max_pixels` pixels and
    files over `max_bytes` bytes are refused before they are decoded.
    Raises `ImageError` for anything that is not a usable image and `TypeError` for other inputs.
    """
    if isinstance(image, Image.Image):
        return _prepare(image, "the image", max_pixels)
    if isinstance(image, (bytes, bytearray)):
        name = "the image data"
        return _prepare(_open(bytes(image), name, max_bytes), name, max_pixels)
    if isinstance(image, (str, os.PathLike)):
        path = os.fsdecode(image)
        name = f"image file {path!r}"
        return _prepare(_open(_read(path, max_bytes), name, max_bytes), name, max_pixels)
    raise TypeError(
        "load_image takes a PIL.Image.Image, a file path or the bytes of an image file, "
        f"not {type(image).__name__}; decode base64 or data URLs to bytes first"
    )


def _read(path: str, max_bytes: int) -> bytes:
    """The bytes of the file at `path`, after checking it exists and is not too large."""
    if path.startswith(("http://", "https://", "data:")):
        raise ImageError(
            f"{path[:60]!r} is a URL, not a file path; download it or decode the data URL to "
            "bytes and pass those"
        )
    file = Path(path).expanduser()
    try:
        is_file = file.is_file()
        exists = is_file or file.exists()
        size = file.stat().st_size if is_file else 0
    except (OSError, ValueError) as e:  # e.g. a name too long for the file system
        raise ImageError(f"cannot use {path[:200]!r} as an image path: {e}; check it") from e
    if not exists:
        raise ImageError(f"image file not found: {path!r}; check the path")
    if not is_file:
        raise ImageError(f"{path!r} is not a file; give the path of an image file")
    if size > max_bytes:
        raise ImageError(
            f"image file {path!r} is {size:,} bytes, more than the limit of {max_bytes:,}; "
            "use a smaller or more compressed file"
        )
    try:
        return file.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read image file {path!r}: {e}; check its permissions") from e


def _open(data: bytes, name: str, max_bytes: int) -> Image.Image:
    """Identify `data` as an image and read its header, without decoding the pixels."""
    if not data:
        raise ImageError(f"{name} is empty (0 bytes); give a complete image file")
    if len(data) > max_bytes:
        raise ImageError(
            f"{name} is {len(data):,} bytes, more than the limit of {max_bytes:,}; "
            "use a smaller or more compressed file"
        )
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise ImageError(
            f"{name} is not an image in a format Pillow recognises; "
            "give a PNG, JPEG, WebP, GIF, BMP or TIFF file"
        ) from e
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name} has far more pixels than the limit of {MAX_PIXELS:,}; resize it "
                         "first") from e
    except _DECODE_ERRORS as e:
        raise ImageError(f"{name} is corrupt ({e}); re-export or re-download it") from e


def _prepare(image: Image.Image, name: str, max_pixels: int) -> Image.Image:
    """Check the size, decode fully, apply the EXIF orientation and convert to RGB."""
    width, height = image.size
    if width == 0 or height == 0:
        raise ImageError(f"{name} is empty ({width}x{height} pixels); give a non-empty image")
    if width * height > max_pixels:
        raise ImageError(
            f"{name} is {width}x{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,}; resize it first"
        )
    try:
        image.load()  # animated images: this is the first frame
        upright = ImageOps.exif_transpose(image)  # a new image, even with no EXIF
    except _DECODE_ERRORS as e:
        raise ImageError(
            f"{name} is truncated or corrupt and cannot be decoded ({e}); "
            "re-export or re-download it"
        ) from e
    return _to_rgb(upright, name)


def _to_rgb(image: Image.Image, name: str) -> Image.Image:
    """Convert any Pillow mode to RGB, putting transparent areas on white."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        image = _to_8bit(image)
        mode = image.mode
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise ImageError(
            f"{name} has pixel mode {mode!r}, which cannot be converted to RGB ({e}); "
            "save it as an 8-bit RGB or greyscale image"
        ) from e


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale a 16/32-bit integer or float greyscale image to 8-bit 'L'.

    'I;16*' images span 0..65535. 'I' images are read as 16-bit when any value is above 255 (as
    Pillow opens some 16-bit files) and as 8-bit otherwise; values outside 0..65535 are clipped.
    'F' images are read as 0..1 when every value is in that range, else as 0..255, clipped.
    """
    if image.mode.startswith("I;16"):
        values = np.asarray(image).astype(np.uint32)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8))
    if image.mode == "I":
        values = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        if values.max() > 255:
            values = (values * 255 + 32767) // 65535
        return Image.fromarray(values.astype(np.uint8))
    values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
    if values.min() >= 0.0 and values.max() <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
