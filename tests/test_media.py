"""Tests for llava_vid.processing.media.load_image (all images built on the fly)."""

from __future__ import annotations

import base64
import io
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from llava_vid.processing.media import MAX_IMAGE_PIXELS, MediaError, load_image


def _px(im: Image.Image, xy: tuple[int, int]) -> tuple[int, int, int]:
    assert im.mode == "RGB"
    return tuple(int(v) for v in np.asarray(im)[xy[1], xy[0]])


def _save(im: Image.Image, path: Path, **kwargs: object) -> Path:
    im.save(path, **kwargs)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A valid-looking RGB PNG claiming width x height, a few dozen bytes long."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 16)  # some data; never decoded
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


# --------------------------------------------------------------------------- modes


def test_rgba_half_transparent_red_blends_onto_white(tmp_path: Path) -> None:
    im = Image.new("RGBA", (4, 3), (255, 0, 0, 128))
    im.putpixel((0, 0), (0, 0, 255, 255))  # opaque blue
    im.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black -> white
    out = load_image(_save(im, tmp_path / "a.png"))
    assert out.mode == "RGB" and out.size == (4, 3)
    # 255*128/255 + 255*127/255 = 255 ; 0 + 255*127/255 = 127
    assert _px(out, (2, 2)) == (255, 127, 127)
    assert _px(out, (0, 0)) == (0, 0, 255)
    assert _px(out, (1, 0)) == (255, 255, 255)


def test_la_blends_onto_white(tmp_path: Path) -> None:
    im = Image.new("LA", (2, 2), (0, 128))
    im.putpixel((1, 1), (200, 255))
    out = load_image(_save(im, tmp_path / "la.png"))
    assert _px(out, (0, 0)) == (127, 127, 127)
    assert _px(out, (1, 1)) == (200, 200, 200)


def _palette_image() -> Image.Image:
    im = Image.new("P", (3, 1))
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    im.putpixel((2, 0), 2)
    return im


def test_palette_without_transparency(tmp_path: Path) -> None:
    out = load_image(_save(_palette_image(), tmp_path / "p.png"))
    assert [_px(out, (x, 0)) for x in range(3)] == [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def test_palette_with_transparent_index(tmp_path: Path) -> None:
    path = _save(_palette_image(), tmp_path / "pt.png", transparency=1)
    with Image.open(path) as check:
        assert check.mode == "P" and "transparency" in check.info
    out = load_image(path)
    assert [_px(out, (x, 0)) for x in range(3)] == [(255, 0, 0), (255, 255, 255), (0, 0, 255)]


def test_palette_gif_with_transparency(tmp_path: Path) -> None:
    out = load_image(_save(_palette_image(), tmp_path / "pt.gif", transparency=0))
    assert [_px(out, (x, 0)) for x in range(3)] == [(255, 255, 255), (0, 255, 0), (0, 0, 255)]


def test_grayscale_l(tmp_path: Path) -> None:
    im = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8), "L")
    out = load_image(_save(im, tmp_path / "l.png"))
    assert [_px(out, (x, 0)) for x in range(3)] == [(0, 0, 0), (77, 77, 77), (255, 255, 255)]


def test_bilevel_1(tmp_path: Path) -> None:
    im = Image.new("1", (2, 1), 0)
    im.putpixel((1, 0), 1)
    out = load_image(_save(im, tmp_path / "one.png"))
    assert _px(out, (0, 0)) == (0, 0, 0)
    assert _px(out, (1, 0)) == (255, 255, 255)


@pytest.mark.parametrize("ext", ["png", "tiff"])
def test_16bit_grayscale_is_rescaled_not_clipped(tmp_path: Path, ext: str) -> None:
    values = np.array([[0, 32768, 65535, 256, 255]], dtype=np.uint16)
    im = Image.fromarray(values)
    assert im.mode == "I;16"
    path = _save(im, tmp_path / f"g16.{ext}")
    with Image.open(path) as check:
        assert check.mode.startswith("I")  # really stored/opened as high bit depth
    out = load_image(path)
    # PIL's convert("L") would clip: 32768 -> 255, 256 -> 255.
    assert [_px(out, (x, 0))[0] for x in range(5)] == [0, 128, 255, 1, 0]


def test_16bit_big_endian_pil_input() -> None:
    im = Image.frombytes("I;16B", (3, 1), struct.pack(">HHH", 0, 32768, 65535))
    out = load_image(im)
    assert [_px(out, (x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_32bit_int_mode_i_treated_as_16bit(tmp_path: Path) -> None:
    im = Image.fromarray(np.array([[0, 32768, 65535, 70000, -5]], dtype=np.int32))
    assert im.mode == "I"
    out = load_image(_save(im, tmp_path / "i32.tiff"))
    assert [_px(out, (x, 0))[0] for x in range(5)] == [0, 128, 255, 255, 0]


def test_float_mode_f_clipped(tmp_path: Path) -> None:
    im = Image.fromarray(np.array([[-3.0, 0.4, 127.6, 300.0]], dtype=np.float32))
    assert im.mode == "F"
    out = load_image(_save(im, tmp_path / "f.tiff"))
    assert [_px(out, (x, 0))[0] for x in range(4)] == [0, 0, 128, 255]


def test_cmyk_tiff(tmp_path: Path) -> None:
    im = Image.new("CMYK", (3, 1))
    im.putpixel((0, 0), (0, 255, 255, 0))  # red
    im.putpixel((1, 0), (0, 0, 0, 0))  # white
    im.putpixel((2, 0), (0, 0, 0, 255))  # black
    out = load_image(_save(im, tmp_path / "c.tiff"))
    assert [_px(out, (x, 0)) for x in range(3)] == [(255, 0, 0), (255, 255, 255), (0, 0, 0)]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    im = Image.new("CMYK", (16, 16), (255, 0, 255, 0))  # green
    out = load_image(_save(im, tmp_path / "c.jpg", quality=95))
    r, g, b = _px(out, (8, 8))
    assert r < 10 and g > 245 and b < 10


def test_ycbcr_lab_hsv_pil_inputs() -> None:
    red = Image.new("RGB", (2, 2), (255, 0, 0))
    assert _px(load_image(red.convert("YCbCr")), (0, 0)) == pytest.approx((255, 0, 0), abs=2)
    assert _px(load_image(red.convert("HSV")), (0, 0)) == pytest.approx((255, 0, 0), abs=2)
    lab_white = Image.new("LAB", (1, 1), (255, 128, 128))
    assert _px(load_image(lab_white), (0, 0)) == pytest.approx((255, 255, 255), abs=2)


def test_premultiplied_rgba_pil_input() -> None:
    im = Image.new("RGBa", (1, 1), (128, 0, 0, 128))  # premultiplied half red
    assert _px(load_image(im), (0, 0)) == (255, 127, 127)


# --------------------------------------------------------------------------- EXIF


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 10, 8))  # red block at stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(im, tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)

    out = load_image(path)
    assert out.mode == "RGB"
    assert out.size == (20, 40)
    # Rotating 90 degrees clockwise moves the top-left corner to the top-right.
    r, g, b = _px(out, (17, 3))
    assert r > 200 and g < 50 and b < 50
    r, g, b = _px(out, (2, 3))  # top-left is now blue
    assert r < 50 and b > 200
    r, g, b = _px(out, (10, 30))
    assert r < 50 and b > 200


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"
    with pytest.raises(MediaError, match="not found") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(MediaError, match="directory") as info:
        load_image(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "fake.png"
    path.write_text("this is not an image\n")
    with pytest.raises(MediaError, match="not a recognised image") as info:
        load_image(str(path))
    assert str(path) in str(info.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(MediaError, match="empty") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_truncated_png(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)  # noise so the PNG does not compress to nothing
    full = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, "PNG")
    data = full.getvalue()
    path = tmp_path / "trunc.png"
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(MediaError, match="cannot decode") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert "truncated" in str(info.value).lower()
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # global left alone


def test_empty_bytes() -> None:
    with pytest.raises(MediaError, match="<bytes>.*empty"):
        load_image(b"")


def test_garbage_bytes() -> None:
    with pytest.raises(MediaError, match="<bytes>.*not a recognised"):
        load_image(b"definitely not an image")


@pytest.mark.parametrize("url", ["http://example.com/cat.jpg", "HTTPS://example.com/cat.png"])
def test_url_is_refused(url: str) -> None:
    with pytest.raises(MediaError, match="URLs are not fetched") as info:
        load_image(url)
    assert url in str(info.value)
    assert "download" in str(info.value)


def test_unsupported_type() -> None:
    with pytest.raises(TypeError):
        load_image(123)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- bombs


def test_decompression_bomb_png_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(40000, 40000))
    assert path.stat().st_size < 200
    pil_limit = Image.MAX_IMAGE_PIXELS

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may leak out as a warning
        with pytest.raises(MediaError) as info:
            load_image(path)
    elapsed = time.perf_counter() - start

    msg = str(info.value)
    assert str(path) in msg
    assert "40000x40000" in msg
    assert f"{MAX_IMAGE_PIXELS:,}" in msg
    assert elapsed < 0.5
    assert Image.MAX_IMAGE_PIXELS == pil_limit  # global left alone


def test_pil_bomb_warning_is_converted_not_leaked() -> None:
    # 10000^2 = 100 MP: above PIL's default warning threshold (89.5 MP), so PIL
    # warns inside Image.open; with a lower max_pixels that must become a
    # MediaError naming the size, and no warning may escape.
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < 10000 * 10000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(MediaError, match=r"<bytes>.*10000x10000.*max_pixels=50,000,000"):
            load_image(_png_header_only(10000, 10000), max_pixels=50_000_000)


def test_custom_max_pixels_checked_before_decoding(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (20, 10)), tmp_path / "small.png")
    with pytest.raises(MediaError, match=r"20x10.*max_pixels=199"):
        load_image(path, max_pixels=199)
    assert load_image(path, max_pixels=200).size == (20, 10)


# --------------------------------------------------------------------------- inputs


def test_bytes_input() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (5, 4), (10, 20, 30)).save(buf, "PNG")
    out = load_image(buf.getvalue())
    assert out.mode == "RGB" and out.size == (5, 4)
    assert _px(out, (4, 3)) == (10, 20, 30)
    assert load_image(bytearray(buf.getvalue())).size == (5, 4)


def test_data_uri_input() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (3, 3), (1, 2, 3)).save(buf, "PNG")
    uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    assert _px(load_image(uri), (1, 1)) == (1, 2, 3)


def test_pil_input_is_not_modified() -> None:
    src = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    out = load_image(src)
    assert out is not src
    assert src.mode == "RGBA"
    assert _px(out, (0, 0)) == (255, 255, 255)

    rgb = Image.new("RGB", (2, 2), (9, 8, 7))
    out = load_image(rgb)
    assert out is not rgb and _px(out, (1, 1)) == (9, 8, 7)


def test_lazy_pil_file_input_and_file_handles_closed(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (6, 6), (40, 50, 60)), tmp_path / "x.png")
    with Image.open(path) as lazy:
        out = load_image(lazy)
    assert _px(out, (5, 5)) == (40, 50, 60)  # usable after the source was closed

    out = load_image(path)
    assert getattr(out, "fp", None) is None  # no file handle kept by the result
    path.unlink()  # would fail on Windows if a handle were still open
    assert _px(out, (0, 0)) == (40, 50, 60)
