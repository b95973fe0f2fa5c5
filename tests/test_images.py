"""load_rgb, the one way images are read: formats, odd modes, EXIF orientation, bad files."""

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from entrep.data.images import FORMATS, ImageError, load_rgb, load_rgb_bytes, sniff_format


def _png(mode_array, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mode_array, mode).save(buf, "PNG") if mode else Image.fromarray(mode_array).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "TIFF", "WEBP"])
def test_documented_formats_decode_to_rgb(tmp_path, fmt):
    p = tmp_path / f"a.{fmt.lower()}"
    Image.new("RGB", (12, 8), (200, 30, 40)).save(p, fmt)
    im = load_rgb(p)
    assert im.mode == "RGB" and im.size == (12, 8)
    assert sniff_format(p.read_bytes()[:16]) == fmt and fmt in FORMATS


@pytest.mark.parametrize("data,what", [
    (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "PostScript/EPS"),
    (b"%PDF-1.4\n1 0 obj\n", "PDF"),
    (b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "GIF"),
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG"),
    (b"hello, not an image", "not an image file"),
])
def test_other_formats_are_refused_before_any_decoder(tmp_path, monkeypatch, data, what):
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a))
    p = tmp_path / "x.png"
    p.write_bytes(data)
    with pytest.raises(ImageError, match=rf"x.png: .*{what}.*PNG, JPEG, BMP, TIFF and WebP"):
        load_rgb(p)
    with pytest.raises(ImageError, match="upload"):
        load_rgb_bytes(data)
    assert opened == []


def test_a_real_gif_is_refused(tmp_path):
    p = tmp_path / "anim.gif"
    Image.new("P", (4, 4)).save(p, "GIF")
    with pytest.raises(ImageError, match="GIF file"):
        load_rgb(p)


def test_16_bit_png_scales_to_8_bit():
    a = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    im = load_rgb_bytes(_png(a))
    assert np.asarray(im)[0, :, 0].tolist() == [0, 1, 255, 128]


def test_large_16_bit_png_converts_without_a_float64_copy():
    # 2000x2000 16-bit: the decoded image is 8 MB; a float64 copy alone would be 32 MB
    a = (np.arange(2000 * 2000, dtype=np.uint32) % 65536).astype(np.uint16).reshape(2000, 2000)
    data = _png(a)
    tracemalloc.start()
    im = load_rgb_bytes(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert im.size == (2000, 2000)
    assert peak < 24 * 2**20, f"peak {peak / 2**20:.1f} MiB"


def test_float_and_palette_and_alpha_modes():
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], dtype=np.float32), "F")
    assert np.asarray(load_rgb_bytes(_tiff(f)))[0, :, 0].tolist() == [0, 128, 255, 0]
    la = Image.new("LA", (2, 2), (255, 0))  # fully transparent white -> black surround
    buf = io.BytesIO()
    la.save(buf, "PNG")
    assert np.asarray(load_rgb_bytes(buf.getvalue())).max() == 0


def _tiff(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "TIFF")
    return buf.getvalue()


@pytest.mark.parametrize("orientation,expect_size,left_pixel", [(1, (6, 2), (255, 0, 0)), (2, (6, 2), (0, 0, 255)),
                                                                (6, (2, 6), None), (8, (2, 6), None)])
def test_exif_orientation_is_applied(orientation, expect_size, left_pixel):
    a = np.zeros((2, 6, 3), dtype=np.uint8)
    a[:, :3] = (255, 0, 0)  # red on the left as stored
    a[:, 3:] = (0, 0, 255)
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "PNG", exif=exif)
    out = load_rgb_bytes(buf.getvalue())
    assert out.size == expect_size
    if left_pixel is not None:  # orientation 2 = mirrored: what was stored on the right is the left side
        assert tuple(np.asarray(out)[0, 0]) == left_pixel


def test_truncated_empty_missing_and_bomb(tmp_path):
    good = _png(np.zeros((64, 64, 3), dtype=np.uint8) + 7)
    with pytest.raises(ImageError, match="truncated|corrupt"):
        load_rgb_bytes(good[: len(good) // 2], name="half.png")
    with pytest.raises(ImageError, match="empty file"):
        load_rgb_bytes(b"")
    with pytest.raises(ImageError, match="nope.png: file not found"):
        load_rgb(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="too large"):
        load_rgb_bytes(good, max_pixels=100)
    with pytest.raises(ImageError, match="expected image bytes"):
        load_rgb_bytes("a string")
