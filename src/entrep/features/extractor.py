"""The only path from images and texts to feature arrays: encoders of one profile + the feature cache.

An :class:`Extractor` owns the encoders of one profile (built lazily, once, and
only when a cache miss needs them) and the on-disk feature cache. Files go
through the cache (computed once per encoder + weights + view + image
content); in-memory images (uploads, video frames) are encoded directly, with
the same view parameters a file of the same pixels gets. ``overrides`` put an
adapted (fine-tuned) encoder, with a fingerprint of its own, in place of a
profile's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

ImageLike = Path | str | Image.Image
ROLES = ("clip_image", "head_image", "clip_text")
from entrep.config import RUNTIMES  # auto | torch | onnx


class Extractor:
    """Encoders of a profile plus the feature cache.

    ``which`` is "clip" (the joint image-text space: prototypes, retrieval) or
    "head" (the features the MLP heads read). When both name the same encoder
    with the same pooling (and neither is adapted), it is built and computed once.
    """

    def __init__(self, profile, *, cache_root: str | Path | None = None, device: str | None = None,
                 batch_size: int = 32, progress: bool = False, runtime: str = "auto",
                 overrides: Mapping[str, Any] | None = None) -> None:
        from entrep.errors import UserError
        from entrep.features.cache import FeatureCache

        if runtime not in RUNTIMES:
            raise UserError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")

        unknown = set(overrides or {}) - {"clip_image", "head_image"}
        if unknown:
            raise ValueError(f"overrides for unknown roles {sorted(unknown)}; use clip_image or head_image")
        self.profile = profile
        self.cache = FeatureCache(cache_root)
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        self.runtime = runtime  # what was asked for; each image encoder reports what it runs on
        self._encoders: dict[str, Any] = dict(overrides or {})
        self._overridden = frozenset(overrides or {})

    # ---- encoders -------------------------------------------------------
    def _role(self, which: str) -> str:
        if which not in ("clip", "head"):
            raise ValueError(f"unknown feature space {which!r}; use 'clip' or 'head'")
        if which == "head" and self.shares_encoder():
            which = "clip"
        return f"{which}_image"

    def _build(self, role: str):
        if role not in self._encoders:
            log.info("building %s encoder of profile %s", role, getattr(self.profile, "name", "?"))
            self._encoders[role] = self.profile.build(role, device=self.device)
        return self._encoders[role]

    def image_encoder(self, which: str):
        """The image encoder for "clip" (joint space) or "head" features, built once."""
        return self._build(self._role(which))

    def text_encoder(self):
        return self._build("clip_text")

    def shares_encoder(self) -> bool:
        """One encoder serves both spaces (same encoder and pooling, none adapted)."""
        return bool(self.profile.head_shares_clip) and not self._overridden

    # ---- features -------------------------------------------------------
    def images(self, which: str, images: Sequence[ImageLike], view: str = "orig") -> np.ndarray:
        enc = self.image_encoder(which)
        if not images:
            return np.zeros((0, enc.config.dim), dtype=np.float32)
        if all(isinstance(x, (str, Path)) for x in images):
            return self.cache.image_features(
                enc, [Path(x) for x in images], view=view, batch_size=self.batch_size, progress=self.progress)
        from entrep.data.augment import apply_view
        from entrep.data.images import load_rgb
        from entrep.features.cache import pixel_key

        pil = []
        for x in images:
            im = x if isinstance(x, Image.Image) else load_rgb(x)
            im = im.convert("RGB") if im.mode != "RGB" else im
            pil.append(im if view == "orig" else apply_view(im, view, key=pixel_key(im)))
        return enc.encode(pil, batch_size=self.batch_size, progress=False, normalize=True).astype(np.float32)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        enc = self.text_encoder()
        if not texts:
            return np.zeros((0, enc.config.dim), dtype=np.float32)
        return self.cache.text_features(enc, list(texts))

    def file_hashes(self, paths: Sequence) -> list[str]:
        """sha256 of each file's bytes, remembered by the one content-hash memo."""
        return self.cache.file_hashes(paths)

    def describe(self) -> dict:
        """Names, dimensions and fingerprints of the encoders (what a model records and checks)."""
        out: dict[str, Any] = {"profile": getattr(self.profile, "name", str(self.profile))}
        for which in ("clip", "head"):
            enc = self.image_encoder(which)
            out[f"{which}_image"] = {"name": enc.config.name, "dim": enc.config.dim, "fingerprint": enc.fingerprint}
        t = self.text_encoder()
        out["clip_text"] = {"name": t.config.name, "dim": t.config.dim, "fingerprint": t.fingerprint}
        return out
