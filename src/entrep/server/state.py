"""What the routes share: the model, its lock, the work slots that bound memory, limits and caches.

Memory and CPU are bounded by *work slots*: every request that decodes an
upload or runs the model holds one slot from reading the upload until its
answer is ready. At most ``max_concurrent`` requests decode or infer at once
(each decoded image is at most ``max_pixels`` RGB pixels); the rest wait up to
``queue_timeout_s`` for a slot and then get 503 with ``Retry-After``. A decoded
upload is shrunk to at most ``MAX_DECODED_SIDE`` pixels a side at once; a JPEG sent to predict or
search stays bytes, which the model decodes at reduced scale as it does its files. Model
calls inside a slot are serialised by one lock (the encoders spread one call
over all cores already, and they are not written for concurrent use).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

from fastapi import HTTPException, UploadFile
from PIL import Image

from entrep.data.images import ImageError, UploadedImage, load_rgb, sniff_format
from entrep.errors import UserError
from entrep.server.queries import DEFAULT_TEXT_QUERIES, ServedModel, TextQueryVectors

log = logging.getLogger(__name__)

THUMB_SIZE = 256
THUMB_CACHE_ITEMS = 2048
DEFAULT_MAX_CONCURRENT = 2
DEFAULT_QUEUE_TIMEOUT_S = 30.0
#: Decoded uploads larger than this (longest side, pixels) are shrunk at once: the encoders read
#: 224-448 px, and a 49-megapixel RGB copy per flip/hash would otherwise stay alive for the request.
MAX_DECODED_SIDE = 2048
#: the box :meth:`ServerState.read_upload` checks a JPEG's decoding in (1/8 scale for any real frame)
VALIDATE_BOX = (8, 8)


def label_parts(taxonomy, label: str) -> dict[str, str | None]:
    """Side or state of a fine class, as the page shows it (the taxonomy derives it: ``Taxonomy.label_parts``)."""
    parts = taxonomy.label_parts(label)
    return {"side": parts["side"], "state": parts["state"]}


def _meta(item: Any, key: str) -> Any:
    """A field of a gallery metadata row (GalleryItem or dict)."""
    if isinstance(item, dict):
        return item.get(key)
    return getattr(item, key, None)


class ServerState:
    """Everything the routes share: the model, its lock, work slots, limits and the caches."""

    def __init__(self, model, *, hide_names: bool, max_upload_bytes: int, max_pixels: int,
                 report_dir: Path | None, max_concurrent: int = DEFAULT_MAX_CONCURRENT,
                 queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S, text_queries: int = DEFAULT_TEXT_QUERIES) -> None:
        if max_concurrent < 1:
            raise UserError(f"max_concurrent must be >= 1, got {max_concurrent}")
        self.model = model
        self.searcher = ServedModel(model, TextQueryVectors(model, text_queries))
        self.lock = threading.Lock()
        self.max_concurrent = int(max_concurrent)
        self.queue_timeout_s = float(queue_timeout_s)
        self._slots = threading.BoundedSemaphore(self.max_concurrent)
        self.hide_names = hide_names
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_pixels = int(max_pixels)
        if report_dir is None and model.path is not None:
            report_dir = Path(model.path) / "report"
        self.report_file = (Path(report_dir) / "report.html") if report_dir is not None else None
        self._thumbs: OrderedDict[int, tuple[bytes, str]] = OrderedDict()
        self._thumb_lock = threading.Lock()

    # ---- facts ------------------------------------------------------------
    @property
    def taxonomy(self):
        return self.model.taxonomy

    @property
    def gallery_size(self) -> int:
        g = self.model.gallery
        return 0 if g is None else len(g)

    @property
    def gallery_info(self) -> dict | None:
        """What /healthz says about the gallery: kind, size, where its vectors live, and the build-time recall@10
        against exact search of an approximate index (None for an exact one); None without a gallery."""
        g = self.model.gallery
        if g is None:
            return None
        approx = getattr(g, "approximation", None)
        return {"size": len(g), "kind": g.kind, "vector_storage": getattr(g, "vector_storage", None),
                "recall_at_10": None if not approx else approx.get("recall_at_10"), "approximation": approx}

    @property
    def has_report(self) -> bool:
        return self.report_file is not None and self.report_file.is_file()

    def describe_limit(self, limit: int | None = None) -> str:
        return f"upload too large: the limit is {self.max_upload_bytes / 1024 / 1024:.1f} MB per image"

    # ---- bounded work -----------------------------------------------------
    @contextlib.contextmanager
    def work(self) -> Iterator[None]:
        """Hold one work slot (decode + inference); 503 when none frees up within the queue timeout."""
        if not self._slots.acquire(timeout=self.queue_timeout_s):
            raise HTTPException(503, f"server busy: {self.max_concurrent} requests are being processed; "
                                     "retry shortly", headers={"Retry-After": "1"})
        try:
            yield
        finally:
            self._slots.release()

    @contextlib.contextmanager
    def inference(self) -> Iterator[None]:
        with self.lock:
            yield

    # ---- inputs -----------------------------------------------------------
    def _read_bytes(self, upload: UploadFile) -> tuple[bytes, str]:
        """(bytes, name for messages) of an upload within the size limit; HTTP 413 otherwise."""
        data = upload.file.read(self.max_upload_bytes + 1)
        if len(data) > self.max_upload_bytes:
            raise HTTPException(413, self.describe_limit(self.max_upload_bytes))
        return data, "upload" if self.hide_names else (upload.filename or "upload")

    def _decode(self, data: bytes, name: str, *, draft_size: tuple[int, int] | None = None) -> Image.Image:
        try:
            return load_rgb(data, name=name, max_pixels=self.max_pixels, draft_size=draft_size)
        except ImageError as e:  # not a format entrep reads -> 415 (no decoder ran); damaged -> 400
            raise HTTPException(415 if data and sniff_format(data[:64]) is None else 400, str(e)) from None

    def _decoded(self, data: bytes, name: str) -> Image.Image:
        image = self._decode(data, name)
        if max(image.size) > MAX_DECODED_SIDE:
            image.thumbnail((MAX_DECODED_SIDE, MAX_DECODED_SIDE), Image.Resampling.LANCZOS)
        # the upload's content hash: search never returns the query itself when it is in the gallery
        image.info["sha256"] = hashlib.sha256(data).hexdigest()
        return image

    def read_upload(self, upload: UploadFile) -> UploadedImage | Image.Image:
        """An uploaded image for predict and search (call inside :meth:`work`); HTTP 4xx with a one-line reason.

        A JPEG stays bytes (checked by a decode at 1/8 scale, which still reads the whole
        stream): the model decodes it as it decodes its files, at each encoder's reduced
        scale, so it gets the vector its file gets. Other formats cannot be decoded at
        reduced scale and come back decoded, as from :meth:`read_image` (the same vector
        as the file's up to ``MAX_DECODED_SIDE`` pixels a side).
        """
        data, name = self._read_bytes(upload)
        if sniff_format(data[:64]) != "JPEG":
            return self._decoded(data, name)
        self._decode(data, name, draft_size=VALIDATE_BOX)
        return UploadedImage(data)

    def read_image(self, upload: UploadFile) -> Image.Image:
        """Decode an uploaded image safely (call inside :meth:`work`); HTTP 4xx with a one-line reason otherwise."""
        return self._decoded(*self._read_bytes(upload))

    def require_gallery(self) -> None:
        if self.gallery_size == 0:
            raise HTTPException(409, "this model has no gallery to search; build one with "
                                     "`entrep index --model MODEL --gallery DATA`")

    # ---- outputs ----------------------------------------------------------
    def prediction(self, pred: dict, filename: str | None = None) -> dict:
        """A prediction with group and side/state; no file name when names are hidden."""
        label = pred["label"]
        out = {"label": label, "label_id": pred.get("label_id", self.taxonomy.class_id(label)),
               "group": pred.get("group") or self.taxonomy.group_of(label), **label_parts(self.taxonomy, label),
               "confidence": float(pred["confidence"]), "source": pred["source"]}
        if "probabilities" in pred:
            out["probabilities"] = pred["probabilities"]
        if filename and not self.hide_names:
            out["image"] = filename
        return out

    def hit(self, h: dict) -> dict:
        """A search result with its thumbnail URL; ids, labels, scores, captions only when names are hidden."""
        out = {"id": int(h["id"]), "score": float(h["score"]), "label": h.get("label"), "group": h.get("group"),
               "caption": h.get("caption"), "thumb": f"/api/gallery/{int(h['id'])}/thumb"}
        if "rank_score" in h:  # image search: what ordered the hit (cosine + alpha * class probability when soft)
            out["rank_score"] = float(h["rank_score"])
        if not self.hide_names:
            out["name"] = h.get("name")
            out["image"] = h.get("image")
        return out

    # ---- thumbnails -------------------------------------------------------
    def thumbnail(self, item_id: int) -> tuple[bytes, str]:
        """JPEG thumbnail bytes and ETag of gallery row ``item_id`` (HTTP 404 when unknown or missing)."""
        with self._thumb_lock:
            cached = self._thumbs.get(item_id)
            if cached is not None:
                self._thumbs.move_to_end(item_id)
                return cached
        gallery = self.model.gallery
        if gallery is None:
            raise HTTPException(404, f"no gallery image with id {item_id} (this model has no gallery)")
        try:
            meta = gallery.metadata_for([item_id])[0]
        except (UserError, KeyError, IndexError):
            raise HTTPException(404, f"no gallery image with id {item_id}") from None
        path = Path(str(_meta(meta, "path") or ""))
        if not path.is_absolute() and self.model.path is not None:
            path = Path(self.model.path) / path
        try:
            im = load_rgb(path)
        except ImageError as e:
            log.warning("thumbnail of gallery id %d: %s", item_id, e)
            raise HTTPException(404, f"gallery image {item_id} is missing or unreadable on the server") from None
        im.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85, optimize=True)
        tag = _meta(meta, "content_hash") or _meta(meta, "hash") or str(int(path.stat().st_mtime_ns))
        out = (buf.getvalue(), f'"{item_id}-{str(tag)[:16]}"')
        with self._thumb_lock:
            self._thumbs[item_id] = out
            while len(self._thumbs) > THUMB_CACHE_ITEMS:
                self._thumbs.popitem(last=False)
        return out
