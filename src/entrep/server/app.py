"""The local web app: a thin FastAPI layer over the entrep library, plus one static page.

Routes (OpenAPI schema at /openapi.json, readable reference at /docs):

- ``GET /``: the search page (static HTML/JS/CSS, nothing loaded from outside).
- ``GET /healthz``: model loaded, gallery size, taxonomy classes.
- ``GET /api/classes``: classes and groups, for the filter dropdown.
- ``POST /api/classify``: upload an image -> label, group, side/state, confidence,
  which part decided (prototype or head), per-class probabilities.
- ``GET /api/search?q=&k=&filter=``: text -> gallery images.
- ``POST /api/search``: upload an image (+ k, filter) -> prediction + similar gallery images.
- ``GET /api/gallery/{id}/thumb``: a gallery image's thumbnail, by integer id only.
- ``GET /report``: the model's evaluation report (report.html), when it has one.

The model is loaded once and shared. Sync endpoints run in FastAPI's thread
pool; model calls are serialised by one lock (each call already uses torch's
intra-op threads, and the featurizer/feature cache are not written for
concurrent use), while thumbnails and metadata are served without it.
"""

from __future__ import annotations

import hashlib

import io
import logging
import re
import threading
from collections import OrderedDict
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image

from entrep.data.images import MAX_PIXELS, ImageError, load_rgb
from entrep.errors import EntrepError, ModelError, UserError
from entrep.server.apidocs import render_api_docs
from entrep.server.limits import BodyLimit, HostCheck, SecurityHeaders

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Room for multipart boundaries and the small form fields around the file.
MULTIPART_OVERHEAD = 64 * 1024
#: Largest upload decoded, in pixels (about 8k x 6k; endoscopy frames are 640x480).
SERVER_MAX_PIXELS = min(MAX_PIXELS, 50_000_000)
K_MAX = 100
THUMB_SIZE = 256
THUMB_CACHE_ITEMS = 2048
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
IMAGE_FILTERS = ("fine", "coarse", "none")
TEXT_FILTERS = ("none", "auto")

ERROR_RESPONSES = {
    400: {"description": "Bad input (e.g. empty, truncated or corrupt image)"},
    413: {"description": "Upload larger than the server's limit"},
    415: {"description": "Upload is not an image"},
    422: {"description": "Missing or invalid field (e.g. no file, k out of range, unknown filter)"},
}


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[\s_\-]+", name) if t]


def label_parts(taxonomy, label: str) -> dict[str, str | None]:
    """Side or state of a fine class within its group, derived from the taxonomy.

    The part of the class name that is not the group name: ``nose-left`` in
    group ``nose`` -> side ``left``; ``vc-open`` in group ``vc`` -> state ``open``.
    It is a *side* when the class has a mirror partner (laterality), else a
    *state*; both are None when the group has a single class (``throat``).
    """
    group = taxonomy.group_of(label)
    if len(taxonomy.members(group)) < 2:
        return {"side": None, "state": None}
    group_tokens = {t.lower() for t in _tokens(group)}
    rest = "-".join(t for t in _tokens(label) if t.lower() not in group_tokens) or label
    if label in taxonomy.mirrors:
        return {"side": rest, "state": None}
    return {"side": None, "state": rest}


def _meta(item: Any, key: str) -> Any:
    """A field of a gallery metadata row (GalleryItem or dict)."""
    if isinstance(item, dict):
        return item.get(key)
    return getattr(item, key, None)


class ServerState:
    """Everything the routes share: the model, its lock, limits and the thumbnail cache."""

    def __init__(self, model, *, hide_names: bool, max_upload_bytes: int, max_pixels: int,
                 report_dir: Path | None) -> None:
        self.model = model
        self.lock = threading.Lock()
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
    def has_report(self) -> bool:
        return self.report_file is not None and self.report_file.is_file()

    def describe_limit(self, limit: int | None = None) -> str:
        return f"upload too large: the limit is {self.max_upload_bytes / 1024 / 1024:.1f} MB per image"

    # ---- inputs -----------------------------------------------------------
    def read_image(self, upload: UploadFile) -> Image.Image:
        """Decode an uploaded image safely; HTTP 4xx with a one-line reason otherwise."""
        data = upload.file.read(self.max_upload_bytes + 1)
        if len(data) > self.max_upload_bytes:
            raise HTTPException(413, self.describe_limit(self.max_upload_bytes))
        name = "upload" if self.hide_names else (upload.filename or "upload")
        try:
            image = load_rgb(data, name=name, max_pixels=self.max_pixels)
            # the upload's content hash: search never returns the query itself when it is in the gallery
            image.info["sha256"] = hashlib.sha256(data).hexdigest()
            return image
        except ImageError as e:
            status = 415 if "not an image" in str(e) else 400
            raise HTTPException(status, str(e)) from None

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


def _static_dir() -> Path:
    return Path(str(resources.files("entrep.server") / "static"))


def _norm_filter(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def create_app(model, *, hide_names: bool = False, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_pixels: int = SERVER_MAX_PIXELS, report_dir: str | Path | None = None,
               allowed_hosts: list[str] | tuple[str, ...] | None = LOOPBACK_HOSTS, warmup: bool = False) -> FastAPI:
    """Build the web app around a model folder (loaded once here) or an already loaded model.

    ``hide_names``: no gallery file names or paths in any response.
    ``max_upload_bytes``: largest accepted image upload (larger -> 413, refused before reading).
    ``max_pixels``: largest decoded image (decompression-bomb guard).
    ``report_dir``: folder holding report.html (default: MODEL/report).
    ``allowed_hosts``: Host headers served (loopback names by default, which blocks DNS-rebinding
    pages from reading results); ``None`` or ``["*"]`` serves any host.
    ``warmup``: run one inference at start-up so the first request is not slow.
    """
    if isinstance(model, (str, Path)):
        from entrep.model import load_model

        model = load_model(model)
    if max_upload_bytes < 1:
        raise UserError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
    state = ServerState(model, hide_names=hide_names, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels,
                        report_dir=Path(report_dir) if report_dir is not None else None)
    if warmup:
        with state.lock:
            model.predict([Image.new("RGB", (64, 64), (90, 40, 40))])

    app = FastAPI(
        title="entrep",
        version=_version(),
        description="Classify and search ENT endoscopy images with a fitted entrep model. "
                    "Errors are JSON objects {\"detail\": \"...\"}.",
        docs_url=None, redoc_url=None,
    )
    app.state.entrep = state
    # The last added runs first: security headers on everything, then the Host check, then the body limit.
    app.add_middleware(BodyLimit, max_body_bytes=max_upload_bytes + MULTIPART_OVERHEAD,
                       describe=state.describe_limit)
    if allowed_hosts and "*" not in allowed_hosts:
        app.add_middleware(HostCheck, allowed_hosts=list(allowed_hosts))
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=_static_dir()), name="static")

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(ModelError)
    async def _model_error(request: Request, exc: ModelError):
        log.error("model error on %s: %s", request.url.path, exc)
        return JSONResponse({"detail": str(exc)}, status_code=500)

    @app.exception_handler(EntrepError)
    async def _entrep_error(request: Request, exc: EntrepError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    # ---- page ------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(_static_dir() / "index.html", media_type="text/html",
                            headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def api_docs():
        return HTMLResponse(render_api_docs(app.openapi()))

    # ---- facts -----------------------------------------------------------
    @app.get("/healthz", summary="Model loaded, gallery size, taxonomy classes")
    def healthz():
        tax = state.taxonomy
        out = {"status": "ok", "model_loaded": True, "taxonomy": tax.name, "classes": list(tax.classes),
               "groups": list(tax.group_names) if tax.groups else [], "hierarchical": tax.hierarchical,
               "gallery_size": state.gallery_size, "report": state.has_report, "hide_names": state.hide_names,
               "max_upload_bytes": state.max_upload_bytes, "max_k": K_MAX,
               "profile": getattr(model.profile, "name", None)}
        if not state.hide_names and model.path is not None:
            out["model"] = "/".join(Path(model.path).resolve().parts[-2:])  # e.g. "demo/model"
        return out

    @app.get("/api/classes", summary="Classes and groups (for the filter dropdown)")
    def classes():
        tax = state.taxonomy
        return {
            "classes": [{"name": c, "id": i, "group": tax.group_of(c), **label_parts(tax, c)}
                        for i, c in enumerate(tax.classes)],
            "groups": [{"name": g, "classes": list(tax.members(g))} for g in tax.group_names] if tax.groups else [],
            "image_filters": {"default": model.config.retrieval.filter, "options": list(IMAGE_FILTERS)},
            "text_filters": {"default": "none", "options": list(TEXT_FILTERS)},
        }

    # ---- inference -------------------------------------------------------
    @app.post("/api/classify", summary="Classify one uploaded image", responses=ERROR_RESPONSES)
    def classify(file: UploadFile = File(..., description="The image (PNG, JPEG, BMP, TIFF, WebP).")):
        image = state.read_image(file)
        with state.lock:
            pred = model.predict([image])[0]
        return state.prediction(pred, file.filename)

    @app.get("/api/search", summary="Text -> gallery images", responses=ERROR_RESPONSES)
    def search_by_text(
        q: str = Query(..., min_length=1, max_length=1000, description="A finding, e.g. 'a spur on the septum'."),
        k: int = Query(10, ge=1, le=K_MAX, description="Number of results."),
        filter: str | None = Query(None, description="none (default), auto (the class the text names), "
                                                      "a class or a group."),
    ):
        from entrep.retrieval.search import search_text

        flt = _norm_filter(filter) or "none"
        if flt in ("fine", "coarse"):
            raise HTTPException(422, f"filter {flt!r} needs an image query; for text use none, auto, "
                                     "a class or a group")
        state.require_gallery()
        with state.lock:
            res = search_text(model, q, k=k, filter=flt, hide_names=state.hide_names)
        return {"query": {"kind": "text", "text": q}, "filter": res.get("filter", flt),
                "classes": res.get("classes"), "order": res.get("order", "score"),
                "results": [state.hit(h) for h in res["results"]]}

    @app.post("/api/search", summary="Image -> prediction + similar gallery images", responses=ERROR_RESPONSES)
    def search_by_image(
        file: UploadFile = File(..., description="The query image."),
        k_form: int | None = Form(None, alias="k", ge=1, le=K_MAX, description="Number of results (form field)."),
        filter_form: str | None = Form(None, alias="filter", description="Form field; see the query parameter."),
        k_query: int | None = Query(None, alias="k", ge=1, le=K_MAX, description="Number of results (default 10)."),
        filter_query: str | None = Query(None, alias="filter",
                                         description="fine (the predicted class; default), coarse (its group), "
                                                     "none, a class or a group."),
    ):
        from entrep.retrieval.search import search_image

        k = k_form if k_form is not None else (k_query if k_query is not None else 10)
        flt = _norm_filter(filter_form) or _norm_filter(filter_query)
        if flt == "auto":
            raise HTTPException(422, "filter 'auto' is for text queries; for images use fine, coarse, none, "
                                     "a class or a group")
        state.require_gallery()
        image = state.read_image(file)
        with state.lock:
            res = search_image(model, image, k=k, filter=flt, hide_names=state.hide_names)
        return {"query": {"kind": "image", **({} if state.hide_names or not file.filename else {"image": file.filename})},
                "prediction": state.prediction(res["prediction"]), "filter": res.get("filter", flt),
                "results": [state.hit(h) for h in res["results"]]}

    @app.get("/api/gallery/{item_id}/thumb", summary="Thumbnail of a gallery image, by gallery id",
             response_class=Response, responses={200: {"content": {"image/jpeg": {}}},
                                                 404: {"description": "No gallery image with that id"}})
    def thumb(item_id: int, request: Request):
        data, etag = state.thumbnail(item_id)
        headers = {"Cache-Control": "private, max-age=86400", "ETag": etag}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(content=data, media_type="image/jpeg", headers=headers)

    @app.get("/report", summary="The model's evaluation report (HTML)", response_class=HTMLResponse,
             responses={404: {"description": "The model has no report"}})
    def report():
        if not state.has_report:
            raise HTTPException(404, "this model has no evaluation report (MODEL/report/report.html); write one "
                                     "with `entrep evaluate --model MODEL --data DATA --report DIR` and start "
                                     "`entrep serve --report DIR`")
        return FileResponse(state.report_file, media_type="text/html", headers={"Cache-Control": "no-cache"})

    return app


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("entrep")
    except Exception:  # noqa: BLE001 - not installed (running from a source tree)
        return "0"


def is_loopback(host: str) -> bool:
    """True when ``host`` only accepts connections from this machine."""
    import ipaddress

    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False
