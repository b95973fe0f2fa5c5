"""Turn images and texts into the feature arrays the models need, through the cache.

A :class:`Featurizer` owns the encoders of one profile (built lazily, once) and
the on-disk feature cache. Files go through the cache (computed once per
encoder + weights + view + image content); in-memory images (uploads) are
encoded directly.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

ImageLike = Path | str | Image.Image


class Featurizer:
    """Encoders of a profile plus the feature cache.

    ``which`` is "clip" (the joint image-text space: prototypes, retrieval) or
    "head" (the features the MLP heads read). When both name the same encoder
    with the same pooling, it is built and computed once.
    """

    def __init__(self, profile, *, cache_root: str | Path | None = None, device: str | None = None,
                 batch_size: int = 32, progress: bool = False) -> None:
        from entrep.features import FeatureCache

        self.profile = profile
        self.cache = FeatureCache(cache_root)
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        self._image: dict[str, object] = {}
        self._text = None

    # ---- encoders -------------------------------------------------------
    def image_encoder(self, which: str):
        """The image encoder for "clip" (joint space) or "head" features, built once."""
        if which not in ("clip", "head"):
            raise ValueError(f"unknown feature space {which!r}; use 'clip' or 'head'")
        if which == "head" and self.shares_encoder():
            which = "clip"
        if which not in self._image:
            log.info("building %s image encoder of profile %s", which, self.profile.name)
            self._image[which] = self.profile.build(f"{which}_image", device=self.device)
        return self._image[which]

    def text_encoder(self):
        if self._text is None:
            self._text = self.profile.build("clip_text", device=self.device)
        return self._text

    def shares_encoder(self) -> bool:
        return self.profile.head_shares_clip

    # ---- features -------------------------------------------------------
    def images(self, which: str, images: Sequence[ImageLike], view: str = "orig") -> np.ndarray:
        enc = self.image_encoder(which)
        if not images:
            return np.zeros((0, enc.config.dim), dtype=np.float32)
        if all(isinstance(x, (str, Path)) for x in images):
            return self.cache.image_features(
                enc, [Path(x) for x in images], view=view, batch_size=self.batch_size, progress=self.progress
            )
        from entrep.data.augment import apply_view
        from entrep.data.images import load_rgb

        pil = []
        for x in images:
            im = x if isinstance(x, Image.Image) else load_rgb(x)
            key = hashlib.sha256(im.tobytes()).hexdigest()
            pil.append(apply_view(im, view, key=key) if view != "orig" else im)
        return enc.encode(pil, batch_size=self.batch_size, progress=False, normalize=True).astype(np.float32)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        enc = self.text_encoder()
        if not texts:
            return np.zeros((0, enc.config.dim), dtype=np.float32)
        return self.cache.text_features(enc, list(texts))

    def describe(self) -> dict:
        out = {"profile": getattr(self.profile, "name", str(self.profile))}
        for which in ("clip", "head"):
            enc = self.image_encoder(which)
            out[f"{which}_image"] = {"name": enc.config.name, "dim": enc.config.dim, "fingerprint": enc.fingerprint}
        t = self.text_encoder()
        out["clip_text"] = {"name": t.config.name, "dim": t.config.dim, "fingerprint": t.fingerprint}
        return out
