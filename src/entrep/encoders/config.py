"""Frozen configs: one per encoder, saying what its vectors mean and how images are prepared.

A config travels with the weights: the same preprocessing (size, mean/std,
resize mode) is used wherever the encoder runs, and every field goes into the
encoder's fingerprint so cached features never mix configurations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: bump when preprocessing or pooling code changes what vectors come out (part of every fingerprint)
ENCODER_CODE_VERSION = 2


@dataclass(frozen=True)
class ImageEncoderConfig:
    """What an image encoder produces and how it prepares images.

    ``image_size`` is (height, width). ``resize`` is ``"letterbox"``: the whole
    frame is scaled to fit and padded with black (the endoscope surround), so
    no side of the image is ever cropped away. ``pooling`` names how the
    feature map / patch tokens become one vector (see :mod:`entrep.encoders.pooling`);
    ``"proj"`` means the model's own projection head (CLIP joint space).
    ``width`` is the channel count one pooled block has (``dim`` = blocks x width).
    """

    name: str
    dim: int
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str
    pooling: str
    width: int = 0
    resize: str = "letterbox"
    interpolation: str = "bicubic"
    licence: str = ""
    architecture: str = ""
    options: tuple[tuple[str, Any], ...] = ()

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["image_size"] = list(self.image_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d["options"] = {k: v for k, v in self.options}
        return d


@dataclass(frozen=True)
class TextEncoderConfig:
    """What a text encoder produces. ``languages`` lists what it was trained on."""

    name: str
    dim: int
    weights: str
    max_tokens: int = 256
    languages: tuple[str, ...] = ("en",)
    pooling: str = "mean"
    licence: str = ""
    architecture: str = ""
    options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["languages"] = list(self.languages)
        d["options"] = {k: v for k, v in self.options}
        return d


def options_tuple(options: dict[str, Any] | None) -> tuple[tuple[str, Any], ...]:
    """Builder options as a sorted tuple (hashable, stable for fingerprints)."""
    out = []
    for k, v in sorted((options or {}).items()):
        if v is None:
            continue
        if isinstance(v, list):
            v = tuple(v)
        out.append((k, v))
    return tuple(out)


@dataclass(frozen=True)
class EncoderInfo:
    """What the feature cache and a model need of an encoder without building it: name, dim, fingerprint
    (and, when described from its registration, the ``config`` it would be built with; not compared)."""

    name: str
    dim: int
    fingerprint: str
    config: Any = field(default=None, compare=False, repr=False)


def encoder_fingerprint(config: ImageEncoderConfig | TextEncoderConfig | dict, weights_digest: str, precision: str,
                        kind: str) -> str:
    """The one fingerprint formula: sha256 over config, weights digest, effective precision, code version and
    encoder class name. A built encoder's ``fingerprint`` and the lazy :func:`entrep.encoders.describe_encoder`
    both call this, so they agree by construction."""
    import hashlib
    import json

    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)  # a saved config.to_dict() works too
    obj = {"config": cfg, "weights": weights_digest, "precision": precision,
           "code": ENCODER_CODE_VERSION, "kind": kind}
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
