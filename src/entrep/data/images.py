"""Safe image loading, the one way entrep reads an image: every mode becomes 8-bit RGB.

- Only the documented formats are decoded (PNG, JPEG, BMP, TIFF, WebP). The
  file's first bytes are checked before any decoder runs, and Pillow is told
  to try only those formats: EPS, PDF, GIF, ... get one line, never a decoder.
- EXIF orientation is applied (``ImageOps.exif_transpose``), so training,
  prediction, thumbnails and the web page all see the image upright.
- On the encoding path (``draft_size``: the box the image will be letterboxed
  into) a JPEG at least twice that size is decoded by libjpeg at 1/2, 1/4 or
  1/8 scale (``Image.draft``), never below the size it will be scaled to:
  decoding a 640x480 frame for a 299x224 input then costs about half the CPU.
- Palette, grayscale, 16-bit (I;16 / I, scaled without a float64 copy),
  float, RGBA/LA (composited on black, the endoscope surround) become RGB.
- Truncated, empty or non-image files raise :class:`ImageError` naming the
  file; :func:`load_images` can skip them with a warning instead.
  Decompression bombs are refused (``MAX_PIXELS``).
"""

from __future__ import annotations

import hashlib
import io
import logging
from struct import error as struct_error
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from entrep.errors import EntrepError

log = logging.getLogger(__name__)

#: Largest image accepted, in pixels (about 16k x 11k). Endoscopy frames are 640x480.
MAX_PIXELS = 178_956_970
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
#: Pillow format names entrep decodes; nothing else reaches a decoder.
FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"BM", "BMP"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
#: Formats recognised only to name them in the refusal.
_REFUSED = ((b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"%PDF", "PDF"), (b"GIF8", "GIF"),
            (b"\x00\x00\x00\x0cjP", "JPEG 2000"), (b"<svg", "SVG"), (b"<?xml", "XML/SVG"),
            (b"\x00\x00\x01\x00", "ICO"), (b"8BPS", "PSD"))
_ROWS = 256  # rows per chunk when scaling 16-bit / float images


class ImageError(EntrepError, ValueError):
    """An image that cannot be used; the message names the file and the problem."""


def sniff_format(head: bytes) -> str | None:
    """The entrep format a file's first bytes announce (PNG, JPEG, BMP, TIFF, WEBP), or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for sig, fmt in _SIGNATURES:
        if head.startswith(sig):
            return fmt
    return None


def _refusal(label: str, head: bytes) -> ImageError:
    known = next((name for sig, name in _REFUSED if head.lstrip().startswith(sig)), None)
    if known is None and head[128:132] == b"DICM":
        known = "DICOM"
    what = f"a {known} file" if known else "not an image file entrep reads"
    return ImageError(f"{label}: {what}; entrep reads PNG, JPEG, BMP, TIFF and WebP images")


def _scaled_to_uint8(im: Image.Image) -> np.ndarray:
    """8-bit grey of a 16-bit/32-bit integer or float image, a few rows at a time (no float64 copy)."""
    a = np.asarray(im)
    out = np.empty(a.shape, dtype=np.uint8)
    if im.mode == "F":
        finite = a[np.isfinite(a)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        for r in range(0, a.shape[0], _ROWS):
            part = np.nan_to_num(a[r:r + _ROWS].astype(np.float32), nan=lo, posinf=hi, neginf=lo)
            out[r:r + _ROWS] = np.clip((part - lo) * scale + 0.5, 0, 255).astype(np.uint8)
        return out
    hi = 65535 if im.mode.startswith("I;16") or (a.size and int(a.max()) > 255) else 255
    for r in range(0, a.shape[0], _ROWS):
        part = np.clip(a[r:r + _ROWS].astype(np.int64), 0, hi)
        out[r:r + _ROWS] = ((part * 255 + hi // 2) // hi).astype(np.uint8)
    return out


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (16-bit scaled down, alpha on black)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_scaled_to_uint8(im), "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a malformed EXIF block: keep the pixels as stored
        log.debug("unreadable EXIF block ignored", exc_info=True)
        return 1


def upright(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag (rotate/mirror as the camera meant); no copy when upright."""
    if _orientation(im) == 1:
        return im
    return ImageOps.exif_transpose(im)


def fit_size(image_size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of an image of ``image_size`` (w, h) scaled to fit ``box`` (w, h), aspect kept."""
    (iw, ih), (bw, bh) = image_size, box
    s = min(bw / iw, bh / ih)
    return max(1, min(bw, round(iw * s))), max(1, min(bh, round(ih * s)))


def _draft(im: Image.Image, box: tuple[int, int]) -> None:
    """Let a JPEG decode at the smallest 1/2^k scale still at least the size it will be fitted to in ``box``.

    The fit is computed upright: for a 90-degree EXIF orientation (5-8) the stored
    frame's width and height are swapped first, and the request swapped back.
    Other formats ignore ``draft``.
    """
    if im.format not in ("JPEG", "MPO"):
        return
    bw, bh = box
    turned = _orientation(im) in (5, 6, 7, 8)
    w, h = im.size
    nw, nh = fit_size((h, w) if turned else (w, h), (bw, bh))
    im.draft("RGB", (nh, nw) if turned else (nw, nh))


def load_rgb(source: str | Path | bytes, *, name: str | None = None, max_pixels: int = MAX_PIXELS,
             draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Open an image file (or bytes) fully and return it upright (EXIF orientation) as 8-bit RGB.

    Only PNG, JPEG, BMP, TIFF and WebP are decoded; anything else is refused
    from its first bytes. Raises :class:`ImageError` with a one-line message
    naming the file. ``draft_size`` (width, height): the box the caller will
    letterbox the image into; a JPEG at least twice the fitted size is then decoded
    at reduced scale (1/2, 1/4 or 1/8), never smaller than that size. Without it
    the image comes back at full size.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<upload>")
    if draft_size is not None and (len(draft_size) != 2 or min(draft_size) < 1):
        raise ValueError(f"draft_size must be (width, height) >= 1, got {draft_size}")
    if isinstance(source, bytes):
        if not source:
            raise ImageError(f"{label}: empty file")
        head = source[:160]
        fp = io.BytesIO(source)
    else:
        p = Path(source)
        try:
            if not p.exists():
                raise ImageError(f"{label}: file not found")
            if p.is_dir():
                raise ImageError(f"{label}: is a folder, not an image")
            if p.stat().st_size == 0:
                raise ImageError(f"{label}: empty file")
            with open(p, "rb") as f:
                head = f.read(160)
        except OSError as e:
            raise ImageError(f"{label}: cannot read file ({e.strerror or e})") from None
        fp = p
    if sniff_format(head) is None:
        raise _refusal(label, head)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp, formats=list(FORMATS)) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(f"{label}: image too large ({w}x{h} pixels; limit {max_pixels})")
                if draft_size is not None:
                    _draft(im, draft_size)
                im.load()
                out = to_rgb(upright(im))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{label}: refused as a decompression bomb (over {max_pixels} pixels)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: corrupt image (its header is not valid {sniff_format(head)})") from None
    except OSError as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower() or "premature" in msg.lower() or "broken" in msg.lower():
            raise ImageError(f"{label}: truncated or corrupt image ({msg})") from None
        raise ImageError(f"{label}: cannot read image ({msg})") from None
    except (SyntaxError, ValueError, TypeError, IndexError, struct_error) as e:  # Pillow, for some corrupt headers
        raise ImageError(f"{label}: corrupt image ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if out.size[0] == 0 or out.size[1] == 0:
        raise ImageError(f"{label}: image has zero size")
    return out


def load_rgb_bytes(data: bytes, *, name: str = "<upload>", max_pixels: int = MAX_PIXELS) -> Image.Image:
    """:func:`load_rgb` for uploaded bytes; ``name`` is used in messages."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageError(f"{name}: expected image bytes, got {type(data).__name__}")
    return load_rgb(bytes(data), name=name, max_pixels=max_pixels)


class UploadedImage(bytes):
    """An image's validated bytes (e.g. a web upload), standing in for its file.

    Encoders decode it exactly as they decode a file (:func:`load_rgb` with their
    ``draft_size``), so an uploaded image gets the same vector as the same file on
    disk. ``sha256`` is its content hash (what search uses to leave the query itself
    out of its results).
    """

    def __new__(cls, data: bytes) -> "UploadedImage":
        obj = super().__new__(cls, data)
        obj.sha256 = hashlib.sha256(obj).hexdigest()
        return obj


def load_images(paths: Iterable[str | Path], *, skip_bad: bool = False) -> tuple[list[Image.Image], list[int]]:
    """Load many images. Returns (images, indices of the paths loaded).

    With ``skip_bad`` an unreadable file is logged as a warning and skipped;
    otherwise the first one raises :class:`ImageError`.
    """
    images: list[Image.Image] = []
    kept: list[int] = []
    for i, p in enumerate(paths):
        try:
            images.append(load_rgb(p))
            kept.append(i)
        except ImageError as e:
            if not skip_bad:
                raise
            log.warning("skipped %s", e)
    return images, kept


def is_image_file(path: Path) -> bool:
    """A visible file whose suffix is one of the documented image formats."""
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
