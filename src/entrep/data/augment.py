"""Deterministic augmentation views: the same image and view name always give the same pixels.

Views:

- ``orig``        the image as is
- ``flip``        horizontal mirror. The caller swaps the label with ``taxonomy.mirror_of``
                  (nose-left <-> nose-right): never a plain flip with the old label.
- ``augK``        K = 1, 2, ...: the paper's photometric/geometric jitter - a small rotation
                  (within +-10 degrees, black fill like the endoscope surround), a Gaussian blur
                  with random sigma, and brightness/contrast/saturation/hue jitter. Never a flip.
- ``augK-flip``   exactly the mirror image of ``augK``.

Parameters come from a numpy Generator seeded by sha256(key, view), where
``key`` is the image content hash, so a cached feature of a view can always be
recomputed identically. Resizing is left to the encoder (which letterboxes the
whole frame).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from entrep.errors import UserError

_VIEW = re.compile(r"^(orig|flip|aug([1-9][0-9]*)(-flip)?)$")

#: jitter ranges (the paper's augmentations, kept small: colour carries diagnosis in endoscopy)
MAX_ROTATION_DEG = 10.0
BLUR_SIGMA = (0.1, 1.5)
BRIGHTNESS = (0.8, 1.2)
CONTRAST = (0.8, 1.2)
SATURATION = (0.8, 1.2)
HUE = (-0.03, 0.03)


@dataclass(frozen=True)
class AugParams:
    """Drawn parameters of one ``augK`` view (useful for logs and tests)."""

    angle: float
    sigma: float
    brightness: float
    contrast: float
    saturation: float
    hue: float


def parse_view(view: str) -> tuple[int, bool]:
    """``view`` -> (K, flipped); K = 0 for orig/flip. UserError for unknown names."""
    m = _VIEW.match(str(view))
    if not m:
        raise UserError(f"unknown view {view!r}; use orig, flip, augK or augK-flip (K = 1, 2, ...)")
    if m.group(1) in ("orig", "flip"):
        return 0, m.group(1) == "flip"
    return int(m.group(2)), bool(m.group(3))


def is_flipped(view: str) -> bool:
    """True when the view mirrors the image (the label must be mirrored too)."""
    return parse_view(view)[1]


def list_views(n_aug: int, flip: bool = True) -> list[str]:
    """``orig`` [``flip``], then ``aug1`` [``aug1-flip``] ... ``augN`` [``augN-flip``]."""
    if n_aug < 0:
        raise UserError(f"number of augmentations must be >= 0, got {n_aug}")
    out = ["orig"] + (["flip"] if flip else [])
    for k in range(1, n_aug + 1):
        out += [f"aug{k}"] + ([f"aug{k}-flip"] if flip else [])
    return out


def view_seed(key: str, view: str) -> int:
    """64-bit seed from (key, augK); a flipped view shares its unflipped view's seed."""
    k, _ = parse_view(view)
    h = hashlib.sha256(f"{key}\x00aug{k}".encode()).digest()
    return int.from_bytes(h[:8], "little")


def draw_params(key: str, view: str) -> AugParams:
    """The jitter parameters of an ``augK`` view, reproducible from (key, view)."""
    rng = np.random.default_rng(view_seed(key, view))
    return AugParams(
        angle=float(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)),
        sigma=float(rng.uniform(*BLUR_SIGMA)),
        brightness=float(rng.uniform(*BRIGHTNESS)),
        contrast=float(rng.uniform(*CONTRAST)),
        saturation=float(rng.uniform(*SATURATION)),
        hue=float(rng.uniform(*HUE)),
    )


def _jitter(img: Image.Image, p: AugParams) -> Image.Image:
    """Colour jitter, blur, rotation - on PIL images (torchvision's PIL kernels are ~10x faster
    than its uint8-tensor ones on a CPU; the blur is PIL's, torchvision's converts to a tensor)."""
    import torchvision.transforms.v2.functional as F
    from torchvision.transforms import InterpolationMode

    x = img.convert("RGB")
    x = F.adjust_brightness(x, p.brightness)
    x = F.adjust_contrast(x, p.contrast)
    x = F.adjust_saturation(x, p.saturation)
    x = F.adjust_hue(x, p.hue)
    x = x.filter(ImageFilter.GaussianBlur(radius=p.sigma))  # PIL's radius is the standard deviation
    return F.rotate(x, p.angle, interpolation=InterpolationMode.BILINEAR, fill=[0, 0, 0])


def apply_view(img: Image.Image, view: str, *, key: str) -> Image.Image:
    """The ``view`` of ``img`` (see module docstring); ``key`` identifies the image content."""
    k, flipped = parse_view(view)
    out = img if k == 0 else _jitter(img, draw_params(key, view))
    if flipped:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out
