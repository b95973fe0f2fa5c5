"""The one worker function of the distributor seam: image rows -> feature rows, through the Extractor and its cache.

Both engines run :class:`EmbedWorker`: the local engine in this process, the
Ray engine once per actor (one encoder per actor). A batch is a dict of
equal-length numpy columns (Ray Data's ``numpy`` batch format): ``row_id``,
``path``, ``name``, ``label`` ("" when unlabelled), ``caption`` ("" when none).
The worker adds ``content_hash`` and the vectors: ``clip`` always, ``head``
when the head encoder differs from the clip encoder, ``head_flip`` when
``spec.flips``, ``text`` (NaN rows without a caption) and ``has_text`` when
``spec.texts``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: the metadata columns every input batch carries
ROW_COLUMNS = ("row_id", "shard", "path", "name", "label", "caption")


@dataclass(frozen=True)
class EmbedSpec:
    """What a worker builds and computes; picklable, so a Ray actor can rebuild the same extractor.

    ``profile`` is a profile name, file or :class:`~entrep.encoders.profiles.Profile`;
    ``model`` (a model folder) wins over it and brings the model's adapted encoders.
    ``runtime`` (auto, torch, onnx) is the image encoders' runtime in every worker, so local
    and Ray workers run the same one; None: the model's config, or auto for a profile.
    """

    profile: Any = "offline"
    model: str | None = None
    cache: str | None = None
    device: str | None = None
    batch_size: int = 32
    view: str = "orig"
    flips: bool = False
    texts: bool = True
    runtime: str | None = None

    def build_extractor(self):
        """The Extractor this spec names (loads the model when ``model`` is set)."""
        if self.model is not None:
            import entrep

            return entrep.load(self.model, cache=self.cache, device=self.device, runtime=self.runtime).extractor
        from entrep.encoders.profiles import get_profile
        from entrep.features import Extractor

        return Extractor(get_profile(self.profile), cache_root=self.cache, device=self.device,
                         batch_size=self.batch_size, runtime=self.runtime or "auto")


def embed_batch(extractor, batch: dict[str, np.ndarray], *, view: str = "orig", flips: bool = False,
                texts: bool = True) -> dict[str, np.ndarray]:
    """Feature columns for one batch of rows (the input columns are passed through)."""
    paths = [Path(str(p)) for p in batch["path"]]
    out = {k: np.asarray(batch[k]) for k in ROW_COLUMNS if k in batch}
    out["content_hash"] = np.array(extractor.file_hashes(paths), dtype=str)
    clip = extractor.images("clip", paths, view)
    out["clip"] = np.asarray(clip, dtype=np.float32)
    if not extractor.shares_encoder():
        out["head"] = np.asarray(extractor.images("head", paths, view), dtype=np.float32)
    if flips:
        out["head_flip"] = np.asarray(extractor.images("head", paths, "flip"), dtype=np.float32)
    if texts:
        captions = [str(c) for c in batch["caption"]]
        has = np.array([bool(c.strip()) for c in captions], dtype=bool)
        dim = extractor.describe()["clip_text"]["dim"]
        vec = np.full((len(paths), dim), np.nan, dtype=np.float32)
        if has.any():
            idx = np.flatnonzero(has)
            vec[idx] = extractor.texts([captions[i] for i in idx])
        out["text"], out["has_text"] = vec, has
    return out


class EmbedWorker:
    """Callable class for ``map_batches``: builds its extractor once, then embeds batch after batch."""

    def __init__(self, spec: EmbedSpec) -> None:
        self.spec = spec
        self.extractor = spec.build_extractor()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        s = self.spec
        return embed_batch(self.extractor, batch, view=s.view, flips=s.flips, texts=s.texts)
