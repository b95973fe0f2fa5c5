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
        self.cache = cache_root if isinstance(cache_root, FeatureCache) else FeatureCache(cache_root)
        self.device = device
        self.batch_size = batch_size
        self.progress = progress
        self.runtime = runtime  # what was asked for; each image encoder reports what it runs on
        overrides = dict(overrides or {})
        #: adapted encoders not built yet (Deferred): built on the first cache miss of their role
        self._deferred: dict[str, Deferred] = {r: e for r, e in overrides.items() if isinstance(e, Deferred)}
        self._encoders: dict[str, Any] = {r: e for r, e in overrides.items() if r not in self._deferred}
        self._overridden = frozenset(overrides)
        self._infos: dict[str, Any] = {}
        #: role -> GraphImageEncoder (a cached graph computes the features) or None (it does not)
        self._graphs: dict[str, Any] = {}

    # ---- encoders -------------------------------------------------------
    def _role(self, which: str) -> str:
        if which not in ("clip", "head"):
            raise ValueError(f"unknown feature space {which!r}; use 'clip' or 'head'")
        if which == "head" and self.shares_encoder():
            which = "clip"
        return f"{which}_image"

    def _build(self, role: str):
        """The encoder of ``role``, built once; image encoders are switched to the requested runtime
        (ONNX Runtime on CPU where the export works, graphs cached under ``<cache>/onnx``)."""
        if role not in self._encoders:
            log.info("building %s encoder of profile %s", role, getattr(self.profile, "name", "?"))
            self._encoders[role] = self.profile.build(role, device=self.device)
        enc = self._encoders[role]
        use_runtime = getattr(enc, "use_runtime", None)  # image encoders (torch-built)
        if use_runtime is not None and enc.runtime_requested != self.runtime:
            use_runtime(self.runtime, cache_dir=self.cache.root / "onnx")
        return enc

    def _computer(self, role: str):
        """What computes ``role``'s features: its built encoder when there is one; else, for a profile image
        encoder on CPU whose ONNX graph is cached (runtime auto or onnx), the graph alone
        (:class:`entrep.encoders.graph_encoder.GraphImageEncoder`: neither torch nor the model is loaded);
        else the encoder, built now."""
        if role in self._encoders or role in self._deferred:
            return self._encoder(role)
        if role not in self._graphs:
            self._graphs[role] = None
            if role != "clip_text" and self.runtime != "torch":
                from entrep.encoders.devices import resolve_device_type

                if resolve_device_type(self.device) == "cpu":
                    from entrep.encoders.graph_encoder import cached_graph_encoder

                    self._graphs[role] = cached_graph_encoder(self.info(role), self.cache.root / "onnx",
                                                              runtime=self.runtime)
                    if self._graphs[role] is not None:
                        log.info("encoder %s: runtime onnx from the cached graph %s (no torch model built)",
                                 self._graphs[role].name, self._graphs[role].onnx_graph)
        return self._graphs[role] or self._encoder(role)

    def graph_roles(self) -> list[str]:
        """Roles whose features are computed by a cached ONNX graph alone (no encoder built)."""
        return sorted(r for r, g in self._graphs.items() if g is not None)

    def _encoder(self, role: str):
        """The built encoder of ``role`` (a deferred adapted encoder is built first)."""
        if role in self._deferred and role not in self._encoders:
            self._encoders[role] = self._deferred[role].get()
        return self._build(role)

    def image_encoder(self, which: str):
        """The image encoder for "clip" (joint space) or "head" features, built once."""
        return self._encoder(self._role(which))

    def text_encoder(self):
        return self._encoder("clip_text")

    def info(self, role: str):
        """Name, dim and fingerprint of ``role``'s encoder (:class:`entrep.encoders.EncoderInfo`), without
        building it: from the built encoder when there is one, else from the profile's config and weights
        digest (:meth:`entrep.encoders.profiles.Profile.describe`)."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        if role not in self._infos:
            from entrep.encoders.config import EncoderInfo

            if role in self._encoders:
                enc = self._encoders[role]
                self._infos[role] = EncoderInfo(enc.config.name, int(enc.config.dim), enc.fingerprint)
            elif role in self._deferred:
                self._infos[role] = self._deferred[role].info
            elif getattr(self.profile, "describe", None) is not None:
                self._infos[role] = self.profile.describe(role, device=self.device,
                                                          build=lambda: self._encoder(role))
            else:  # a duck-typed profile that can only build
                enc = self._encoder(role)
                self._infos[role] = EncoderInfo(enc.config.name, int(enc.config.dim), enc.fingerprint)
        return self._infos[role]

    def built_roles(self) -> list[str]:
        """Roles whose encoder has been built so far (what a fully cached run keeps empty)."""
        return sorted(r for r in self._encoders if r not in self._overridden or r in self._deferred)

    def shares_encoder(self) -> bool:
        """One encoder serves both spaces (same encoder and pooling, none adapted)."""
        return bool(self.profile.head_shares_clip) and not self._overridden

    # ---- features -------------------------------------------------------
    def images(self, which: str, images: Sequence[ImageLike], view: str = "orig") -> np.ndarray:
        """Features of files (through the cache: the encoder is built only on a miss) or in-memory images."""
        role = self._role(which)
        if not images:
            return np.zeros((0, self.info(role).dim), dtype=np.float32)
        if all(isinstance(x, (str, Path)) for x in images):
            return self.cache.image_features(
                self.info(role), [Path(x) for x in images], view=view, batch_size=self.batch_size,
                progress=self.progress, build=lambda: self._computer(role))
        enc = self._computer(role)
        from entrep.data.augment import apply_view
        from entrep.data.images import load_rgb
        from entrep.features.cache import pixel_key

        from entrep.data.augment import parse_view

        # files and bytes decode as the cache's fill does (a large JPEG at the encoder's reduced scale)
        draft = getattr(enc, "draft_size", None) if parse_view(view)[0] == 0 else None
        pil = []
        for x in images:
            im = x if isinstance(x, Image.Image) else load_rgb(x, draft_size=draft)
            im = im.convert("RGB") if im.mode != "RGB" else im
            pil.append(im if view == "orig" else apply_view(im, view, key=pixel_key(im)))
        return enc.encode(pil, batch_size=self.batch_size, progress=False, normalize=True).astype(np.float32)

    def texts(self, texts: Sequence[str]) -> np.ndarray:
        """Text features through the cache: the text encoder is built only on a miss."""
        info = self.info("clip_text")
        if not texts:
            return np.zeros((0, info.dim), dtype=np.float32)
        return self.cache.text_features(info, list(texts), build=self.text_encoder)

    def file_hashes(self, paths: Sequence) -> list[str]:
        """sha256 of each file's bytes, remembered by the one content-hash memo."""
        return self.cache.file_hashes(paths)

    def describe(self) -> dict:
        """Names, dimensions and fingerprints of the encoders (what a model records and checks).

        Builds no encoder: fingerprints come from the encoders' configs and weights digests.
        """
        out: dict[str, Any] = {"profile": getattr(self.profile, "name", str(self.profile))}
        for key, role in (("clip_image", self._role("clip")), ("head_image", self._role("head")),
                          ("clip_text", "clip_text")):
            i = self.info(role)
            out[key] = {"name": i.name, "dim": i.dim, "fingerprint": i.fingerprint}
        return out


class Deferred:
    """An encoder known by its :class:`~entrep.encoders.EncoderInfo` and built by ``build()`` only when
    first needed (e.g. an adapted encoder of a loaded model, whose base encoder is costly to build)."""

    def __init__(self, info, build, *, source: Path | None = None) -> None:
        self.info = info
        self._build_fn = build
        self._built = None
        self.source = source  # the folder it is read from, when there is one

    @property
    def built(self) -> bool:
        return self._built is not None

    def get(self):
        if self._built is None:
            enc = self._build_fn()
            if enc.fingerprint != self.info.fingerprint:
                from entrep.errors import ModelError

                raise ModelError(f"{self.source or self.info.name}: the built encoder's fingerprint "
                                 f"{enc.fingerprint[:12]} differs from the recorded {self.info.fingerprint[:12]}")
            self._built = enc
        return self._built
