"""Tests for load_image: every input kind, pixel mode and broken file it must handle.

All fixtures are made here with Pillow (or by hand, for huge headers); nothing is downloaded.
"""

import io
import random
import struct
import zlib

import pytest
from PIL import Image, features

from cogvlm_lite.images import MAX_BYTES, MAX_PIXELS, ImageError, load_image

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims `width` x `height` 1-bit pixels but holds almost no data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + chunk(b"IEND", b"")
    )


def close(a, b, tol=8):
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


# --- inputs ---------------------------------------------------------------------------------


def test_path_input_is_fully_loaded_and_independent_of_the_file(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (5, 3), RED).save(path)
    from_str = load_image(str(path))
    out = load_image(path)
    path.unlink()
    assert out.mode == "RGB" and out.size == (5, 3)
    assert out.getpixel((4, 2)) == RED
    assert from_str.tobytes() == out.tobytes()


def test_bytes_and_bytearray_input():
    data = encode(Image.new("RGB", (6, 4), BLUE), "PNG")
    for value in (data, bytearray(data)):
        out = load_image(value)
        assert out.size == (6, 4) and out.mode == "RGB" and out.getpixel((0, 0)) == BLUE


def test_pil_input_is_not_modified():
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    out = load_image(image)
    assert out is not image
    assert image.mode == "RGBA" and image.getpixel((0, 0)) == (0, 0, 0, 0)
    assert out.getpixel((0, 0)) == WHITE
    rgb = Image.new("RGB", (2, 2), RED)
    assert load_image(rgb) is not rgb


@pytest.mark.parametrize("value", [123, None, [1, 2, 3], {"path": "x.png"}, 1.5])
def test_wrong_type(value):
    with pytest.raises(TypeError, match="PIL.Image.Image, a file path or the bytes"):
        load_image(value)


def test_one_pixel_image_is_valid(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("L", (1, 1), 7).save(path)
    out = load_image(path)
    assert out.size == (1, 1) and out.mode == "RGB" and out.getpixel((0, 0)) == (7, 7, 7)


# --- errors ---------------------------------------------------------------------------------


def test_missing_path_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "cat.jpg"
    with pytest.raises(ImageError, match="not found") as info:
        load_image(path)
    assert str(path) in str(info.value)
    with pytest.raises(ImageError, match="is a URL"):
        load_image("https://example.com/cat.jpg")
    with pytest.raises(ImageError, match="is a URL"):
        load_image("data:image/png;base64," + "A" * 5000)
    with pytest.raises(ImageError, match="cannot use"):
        load_image("x" * 5000 + ".png")  # a name too long for the file system


def test_directory_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="not a file"):
        load_image(tmp_path)


def test_empty_file_and_empty_bytes(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty") as info:
        load_image(path)
    assert str(path) in str(info.value)
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")


def test_random_bytes_and_text_are_not_images(tmp_path):
    with pytest.raises(ImageError, match="not an image"):
        load_image(random.Random(0).randbytes(2000))
    path = tmp_path / "notes.png"
    path.write_text("hello, I am not a picture")
    with pytest.raises(ImageError, match="not an image"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files(tmp_path, fmt):
    noise = Image.effect_noise((64, 64), 60).convert("RGB")  # noise: compresses poorly
    data = encode(noise, fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(path)
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])
    # A lazily opened PIL image of the same file fails the same way.
    with Image.open(path) as lazy, pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(lazy)


def test_zero_size_image():
    with pytest.raises(ImageError, match="empty"):
        load_image(Image.new("RGB", (0, 0)))
    with pytest.raises(ImageError, match="0x5"):
        load_image(Image.new("RGB", (0, 5)))


def test_too_many_pixels_checked_before_decoding(tmp_path):
    # 8000 x 8000 = 64M pixels: over our limit, under Pillow's own bomb check.
    path = tmp_path / "big.png"
    path.write_bytes(png_header_only(8000, 8000))
    assert path.stat().st_size < 1000
    with pytest.raises(ImageError, match="8000x8000 = 64,000,000 pixels, more than the limit"):
        load_image(path)
    # 20000 x 20000 = 400M pixels: Pillow refuses to even open it; still an ImageError.
    with pytest.raises(ImageError, match=r"more pixels than the limit of 40,000,000; resize it"):
        load_image(png_header_only(20000, 20000))
    # A smaller limit applies to small images too.
    with pytest.raises(ImageError, match="more than the limit of 99"):
        load_image(Image.new("RGB", (10, 10)), max_pixels=99)
    assert load_image(Image.new("RGB", (10, 10)), max_pixels=100).size == (10, 10)
    assert MAX_PIXELS == 40_000_000


def test_file_too_large(tmp_path):
    path = tmp_path / "huge.jpg"
    with open(path, "wb") as f:
        f.truncate(MAX_BYTES + 1)  # sparse: no real disk use
    with pytest.raises(ImageError, match="more than the limit of"):
        load_image(path)
    data = encode(Image.new("RGB", (8, 8)), "PNG")
    with pytest.raises(ImageError, match="bytes, more than the limit"):
        load_image(data, max_bytes=len(data) - 1)


# --- modes ----------------------------------------------------------------------------------


def test_rgba_transparent_goes_on_white():
    image = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    image.putpixel((1, 0), (255, 0, 0, 128))
    out = load_image(encode(image, "PNG"))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == WHITE
    assert close(out.getpixel((1, 0)), (255, 127, 127), tol=2)


def test_la_and_pa_go_on_white():
    la = Image.new("LA", (1, 1), (0, 0))
    assert load_image(la).getpixel((0, 0)) == WHITE
    assert load_image(encode(la, "PNG")).getpixel((0, 0)) == WHITE


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(fmt):
    image = Image.new("P", (2, 1), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    image.putpixel((1, 0), 1)
    out = load_image(encode(image, fmt, transparency=0))
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == WHITE  # transparent black -> white, not black
    assert out.getpixel((1, 0)) == RED


def test_palette_without_transparency():
    image = Image.new("P", (1, 1), 1)
    image.putpalette([0, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    assert load_image(encode(image, "PNG")).getpixel((0, 0)) == BLUE


@pytest.mark.parametrize(("mode", "value", "expected"), [("L", 100, 100), ("1", 1, 255)])
def test_greyscale_and_bilevel(mode, value, expected):
    out = load_image(encode(Image.new(mode, (3, 3), value), "PNG"))
    assert out.mode == "RGB" and out.getpixel((1, 1)) == (expected,) * 3


def test_cmyk_jpeg():
    data = encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = load_image(data)
    assert out.mode == "RGB" and close(out.getpixel((4, 4)), RED)


def test_16_bit_png_is_scaled_not_clipped():
    image = Image.new("I;16", (3, 1))
    for x, value in enumerate((0, 32768, 65535)):
        image.putpixel((x, 0), value)
    data = encode(image, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = load_image(data)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert close(out.getpixel((1, 0)), (128, 128, 128), tol=1)  # clipping would give white
    assert out.getpixel((2, 0)) == WHITE


def test_32_bit_int_and_float_images():
    wide = Image.new("I", (2, 1))
    wide.putpixel((0, 0), 32768)
    wide.putpixel((1, 0), 65535)
    assert close(load_image(wide).getpixel((0, 0)), (128, 128, 128), tol=1)
    assert load_image(Image.new("I", (1, 1), 100)).getpixel((0, 0)) == (100, 100, 100)
    assert load_image(Image.new("F", (1, 1), 0.5)).getpixel((0, 0)) == (128, 128, 128)
    assert load_image(Image.new("F", (1, 1), 200.0)).getpixel((0, 0)) == (200, 200, 200)
    assert load_image(Image.new("F", (1, 1), 1e9)).getpixel((0, 0)) == WHITE


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animation_gives_first_frame(fmt):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow was built without WebP")
    frames = [Image.new("RGB", (8, 8), c) for c in (RED, BLUE, (0, 255, 0))]
    options = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, **options)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    out = load_image(data)
    assert out.mode == "RGB" and close(out.getpixel((4, 4)), RED)


@pytest.mark.parametrize(
    ("orientation", "corner"),
    [(1, "top-left"), (6, "top-right"), (8, "bottom-left"), (3, "bottom-right")],
)
def test_exif_orientation_is_applied(tmp_path, orientation, corner):
    stored = Image.new("RGB", (40, 20), WHITE)
    stored.paste(RED, (0, 0, 8, 8))  # mark the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.jpg"
    stored.save(path, quality=95, exif=exif.tobytes())
    out = load_image(path)
    w, h = out.size
    assert (w, h) == ((20, 40) if orientation in (6, 8) else (40, 20))
    x = 2 if "left" in corner else w - 3
    y = 2 if "top" in corner else h - 3
    assert close(out.getpixel((x, y)), RED, tol=30)
    assert close(out.getpixel((w - 1 - x, h - 1 - y)), WHITE, tol=30)
