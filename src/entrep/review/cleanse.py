"""Frame cleansing: informativeness scores of one frame and the reason it is dropped, if any.

Scores are computed on a half-size grey copy (a 640x480 frame is read at 320x240):

- ``brightness``: the 95th percentile of luma (0-255). A frame whose brightest
  part is dim is ``dark``.
- ``saturated``: the share of lit pixels at luma >= 250. Above the threshold a
  frame is ``overexposed`` (a washed-out field, not a specular highlight).
- ``tissue``: the share of the frame that is lit and reddish (red above the
  mean of green and blue by ``tissue_chroma``): mucosa, tympanic membrane rims
  and vocal folds in their red surround. A frame with too little is
  ``out_of_field`` (the scope outside the patient, or pointing at nothing).
- ``sharpness``: the variance of the Laplacian (:func:`scipy.ndimage.laplace`)
  inside the field of view, away from its rim (the black-to-lit edge is sharp
  in every frame and would hide blur). Below the threshold a frame is ``blurred``.
- ``phash``: the perceptual hash (:func:`imagehash.phash`, the audit's
  near-duplicate measure) at 256 bits: successive frames of a moving scope
  often share all 64 bits of the audit's hash. A frame within ``duplicate_bits``
  of the previous KEPT frame is a ``duplicate`` (a camera held still).

Reasons are checked in that order; the first that applies is the frame's reason.
:func:`calibrate` sets the thresholds from frames known to be good.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Iterable, Mapping

import imagehash
import numpy as np
from PIL import Image
from scipy import ndimage

from entrep.errors import UserError

log = logging.getLogger(__name__)

HASH_SIZE = 16  # a 256-bit pHash: the audit's 64 bits cannot tell a still camera from slow motion
REASONS = ("dark", "overexposed", "out_of_field", "blurred", "duplicate")


@dataclass(frozen=True)
class CleanseConfig:
    """Thresholds of the cleansing step (see the module docstring for each score)."""

    dark_brightness: float = 45.0  # drop when the 95th luma percentile is below this
    overexposed_share: float = 0.2  # drop when more of the lit field than this is saturated
    min_tissue: float = 0.08  # drop when less of the frame than this is lit tissue
    min_sharpness: float = 9.0  # drop when the Laplacian variance inside the field is below this
    duplicate_bits: int = 6  # drop when the pHash is within this many bits of the previous kept frame
    black_level: float = 16.0  # luma below this is outside the field of view
    tissue_chroma: float = 12.0  # red minus mean(green, blue) that makes a pixel "tissue"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise UserError(f"cleansing threshold {f.name} must be a number >= 0, got {v!r}")
        if self.overexposed_share > 1 or self.min_tissue > 1:
            raise UserError("cleansing thresholds overexposed_share and min_tissue are shares in [0, 1]")

    @classmethod
    def from_dict(cls, d: Mapping, *, source: str = "config") -> "CleanseConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"{source}: unknown cleansing thresholds {sorted(unknown)}; known are {sorted(known)}")
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: (int(v) if types[k] in (int, "int") else float(v)) for k, v in d.items()})
        except (TypeError, ValueError) as e:
            raise UserError(f"{source}: bad cleansing threshold ({e})") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FrameQuality:
    """The informativeness scores of one frame."""

    brightness: float
    saturated: float
    tissue: float
    sharpness: float
    phash: int

    def to_dict(self) -> dict:
        return {"brightness": round(self.brightness, 2), "saturated": round(self.saturated, 4),
                "tissue": round(self.tissue, 4), "sharpness": round(self.sharpness, 2)}


def _half(image: Image.Image) -> Image.Image:
    k = max(1, min(image.size) // 240)
    return image.reduce(k) if k > 1 else image


def frame_quality(image: Image.Image, config: CleanseConfig = CleanseConfig()) -> FrameQuality:
    """Scores of one RGB frame (any size; read at about 320x240)."""
    small = _half(image.convert("RGB"))
    rgb = np.asarray(small, dtype=np.float32)
    luma = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    lit = luma >= config.black_level
    n_lit = int(lit.sum())
    brightness = float(np.percentile(luma, 95))
    saturated = float((luma[lit] >= 250).sum() / n_lit) if n_lit else 0.0
    chroma = rgb[..., 0] - 0.5 * (rgb[..., 1] + rgb[..., 2])
    tissue = float(np.mean(lit & (chroma >= config.tissue_chroma)))
    inner = ndimage.binary_erosion(lit, iterations=4)
    if inner.sum() >= 64:
        lap = ndimage.laplace(luma)
        sharpness = float(lap[inner].var())
    else:
        sharpness = 0.0
    bits = imagehash.phash(small, hash_size=HASH_SIZE).hash.flatten()
    return FrameQuality(brightness, saturated, tissue, sharpness, int.from_bytes(np.packbits(bits).tobytes(), "big"))


def hamming(a: int, b: int) -> int:
    return int((a ^ b).bit_count())


def drop_reason(q: FrameQuality, previous_kept: FrameQuality | None, config: CleanseConfig) -> str | None:
    """Why a frame is dropped (one of :data:`REASONS`), or None to keep it."""
    if q.brightness < config.dark_brightness:
        return "dark"
    if q.saturated > config.overexposed_share:
        return "overexposed"
    if q.tissue < config.min_tissue:
        return "out_of_field"
    if q.sharpness < config.min_sharpness:
        return "blurred"
    if previous_kept is not None and hamming(q.phash, previous_kept.phash) <= config.duplicate_bits:
        return "duplicate"
    return None


def sharpness_score(sharpness: float, config: CleanseConfig) -> float:
    """Sharpness mapped to (0, 1): 0.5 at the blur threshold, towards 1 for much sharper frames."""
    ref = max(config.min_sharpness, 1e-6)
    return float(sharpness / (sharpness + ref))


def calibrate(images: Iterable[Image.Image], *, base: CleanseConfig = CleanseConfig(),
              margin: float = 0.5) -> CleanseConfig:
    """Thresholds from frames known to be good: each a ``margin`` of the good frames' 5th percentile.

    Dark, tissue and blur thresholds are ``margin`` x the 5th percentile of the good frames'
    brightness, tissue share and sharpness; the saturation threshold is the 95th percentile of
    their saturated share divided by ``margin`` (at least ``base``'s). The duplicate distance and
    the colour constants stay those of ``base``.
    """
    qs = [frame_quality(im, base) for im in images]
    if len(qs) < 5:
        raise UserError(f"calibration needs at least 5 good frames, got {len(qs)}")
    if not 0 < margin <= 1:
        raise UserError(f"calibration margin must be in (0, 1], got {margin}")

    flagged = sum(drop_reason(q, None, base) is not None for q in qs)
    if flagged > 0.1 * len(qs):
        log.warning("%d of %d calibration frames fail the current thresholds (dark, blurred, ...); "
                    "calibrate on good frames only, or the new thresholds will keep bad ones", flagged, len(qs))

    def p(vals, q):
        return float(np.percentile(np.asarray(vals, np.float64), q))

    return dataclasses.replace(
        base,
        dark_brightness=round(margin * p([q.brightness for q in qs], 5), 3),
        overexposed_share=round(min(1.0, max(base.overexposed_share, p([q.saturated for q in qs], 95) / margin)), 4),
        min_tissue=round(margin * p([q.tissue for q in qs], 5), 4),
        min_sharpness=round(margin * p([q.sharpness for q in qs], 5), 3),
    )
