"""Safe image loading: every mode becomes 8-bit RGB, bad files give one clear line.

Palette, grayscale, 16-bit, RGBA/LA (composited on black, the endoscope
surround) all become RGB. Truncated, empty or non-image files raise
:class:`ImageError` naming the file; :func:`load_images` can skip them with a
warning instead. Decompression bombs are refused (``MAX_PIXELS``).
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image, UnidentifiedImageError

from entrep.errors import EntrepError

log = logging.getLogger(__name__)

#: Largest image accepted, in pixels (about 16k x 11k). Endoscopy frames are 640x480.
MAX_PIXELS = 178_956_970
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageError(EntrepError, ValueError):
    """An image that cannot be used; the message names the file and the problem."""


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (16-bit scaled down, alpha on black)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255.0
        return Image.fromarray(np.nan_to_num(a).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")


def load_rgb(source: str | Path | bytes, *, name: str | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open an image file (or bytes) fully and return it as 8-bit RGB.

    Raises :class:`ImageError` with a one-line message naming the file.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<upload>")
    if isinstance(source, bytes):
        if not source:
            raise ImageError(f"{label}: empty file")
        fp = io.BytesIO(source)
    else:
        p = Path(source)
        if not p.exists():
            raise ImageError(f"{label}: file not found")
        if p.is_dir():
            raise ImageError(f"{label}: is a folder, not an image")
        if p.stat().st_size == 0:
            raise ImageError(f"{label}: empty file")
        fp = p
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(f"{label}: image too large ({w}x{h} pixels; limit {max_pixels})")
                im.load()
                out = to_rgb(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{label}: refused as a decompression bomb (over {max_pixels} pixels)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image file (unrecognised format)") from None
    except OSError as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower() or "premature" in msg.lower() or "broken" in msg.lower():
            raise ImageError(f"{label}: truncated or corrupt image ({msg})") from None
        raise ImageError(f"{label}: cannot read image ({msg})") from None
    except (SyntaxError, ValueError) as e:  # PIL raises these for some corrupt headers
        raise ImageError(f"{label}: corrupt image ({e})") from None
    if out.size[0] == 0 or out.size[1] == 0:
        raise ImageError(f"{label}: image has zero size")
    return out


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
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
