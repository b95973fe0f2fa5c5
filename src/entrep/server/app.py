"""The local web app: a thin FastAPI layer over the entrep library, plus one static page.

Routes (OpenAPI schema at /openapi.json, readable reference at /docs):

- ``GET /``: the search page (static HTML/JS/CSS, nothing loaded from outside).
- ``GET /healthz``: model loaded, gallery size, kind and build-time recall@10, taxonomy classes.
- ``GET /api/classes``: classes and groups, for the filter dropdown.
- ``POST /api/classify``: upload an image -> label, group, side/state, confidence,
  which part decided (prototype or head), per-class probabilities.
- ``GET /api/search?q=&k=&filter=``: text -> gallery images.
- ``POST /api/search``: upload an image (+ k, filter) -> prediction + similar gallery images.
- ``GET /api/gallery/{id}/thumb``: a gallery image's thumbnail, by integer id only.
- ``GET /report``: the model's evaluation report (report.html), when it has one.

The model is loaded once and shared. Sync endpoints run in FastAPI's thread
pool; decoding and inference hold a bounded number of work slots and model
calls are serialised by one lock (see :mod:`entrep.server.state`), while
thumbnails and metadata are served without them. Text queries are embedded in
memory (:mod:`entrep.server.queries`), never written to the feature cache.
Middleware (:mod:`entrep.server.limits`) refuses other hosts (DNS rebinding),
cross-site browser requests and over-size bodies before any route runs.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image

from entrep.data.images import MAX_PIXELS
from entrep.errors import EntrepError, ModelError, UserError
from entrep.server.apidocs import render_api_docs
from entrep.server.hosts import HostPolicy, is_loopback
from entrep.server.limits import BodyLimit, HostCheck, SameOrigin, SecurityHeaders
from entrep.server.queries import DEFAULT_TEXT_QUERIES
from entrep.server.state import DEFAULT_MAX_CONCURRENT, DEFAULT_QUEUE_TIMEOUT_S, ServerState, label_parts

log = logging.getLogger(__name__)

__all__ = ["create_app", "is_loopback", "label_parts"]

DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Room for multipart boundaries and the small form fields around the file.
MULTIPART_OVERHEAD = 64 * 1024
#: Largest upload decoded, in pixels (about 8k x 6k; endoscopy frames are 640x480).
SERVER_MAX_PIXELS = min(MAX_PIXELS, 50_000_000)
K_MAX = 100
from entrep.retrieval.filters import FILTERS as IMAGE_FILTERS  # noqa: E402 - the one tuple of filter names
TEXT_FILTERS = ("none", "auto")

ERROR_RESPONSES = {
    400: {"description": "Bad input (e.g. empty, truncated or corrupt image, a field sent twice)"},
    403: {"description": "Cross-site request from another web page"},
    413: {"description": "Upload larger than the server's limit"},
    415: {"description": "Upload is not an image in a supported format"},
    422: {"description": "Missing or invalid field (e.g. no file, k out of range, unknown filter)"},
    503: {"description": "Server busy (every work slot taken for the queue timeout); retry"},
}


async def one_part_per_field(request: Request) -> None:
    """Refuse a multipart form that sends a field twice (two ``file`` parts would silently use the last)."""
    form = await request.form()
    seen: set[str] = set()
    for key, _value in form.multi_items():
        if key in seen:
            raise HTTPException(400, f"the form field {key!r} was sent more than once; send one image per request")
        seen.add(key)


def _static_dir() -> Path:
    return Path(str(resources.files("entrep.server") / "static"))


def _norm_filter(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def create_app(model, *, hide_names: bool = False, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_pixels: int = SERVER_MAX_PIXELS, report_dir: str | Path | None = None,
               host: str = "127.0.0.1", allow_hosts: tuple[str, ...] | list[str] = (),
               max_concurrent: int = DEFAULT_MAX_CONCURRENT, queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S,
               text_queries: int = DEFAULT_TEXT_QUERIES, warmup: bool = False) -> FastAPI:
    """Build the web app around a model folder (loaded once here) or an already loaded model.

    ``hide_names``: no gallery file names, paths or internal error details in any response.
    ``max_upload_bytes``: largest accepted image upload (larger -> 413, refused before reading).
    ``max_pixels``: largest decoded image (decompression-bomb guard).
    ``report_dir``: folder holding report.html (default: MODEL/report).
    ``host`` / ``allow_hosts``: the bind address and extra names; together they decide which
    ``Host`` headers are answered (:class:`entrep.server.hosts.HostPolicy`; ``"*"`` answers any).
    ``max_concurrent`` / ``queue_timeout_s``: requests decoding or inferring at once, and how long
    the others wait for a slot before 503.
    ``text_queries``: text-query vectors kept in memory (least recently used dropped).
    ``warmup``: run one inference at start-up so the first request is not slow.
    """
    if isinstance(model, (str, Path)):
        import entrep

        model = entrep.load(model)
    if max_upload_bytes < 1:
        raise UserError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
    state = ServerState(model, hide_names=hide_names, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels,
                        report_dir=Path(report_dir) if report_dir is not None else None,
                        max_concurrent=max_concurrent, queue_timeout_s=queue_timeout_s, text_queries=text_queries)
    policy = HostPolicy.for_bind(host, tuple(allow_hosts))
    if warmup:
        with state.inference():
            model.predict([Image.new("RGB", (64, 64), (90, 40, 40))])

    app = FastAPI(
        title="entrep",
        version=_version(),
        description="Classify and search ENT endoscopy images with a fitted entrep model. "
                    "Errors are JSON objects {\"detail\": \"...\"}.",
        docs_url=None, redoc_url=None,
    )
    app.state.entrep = state
    app.state.host_policy = policy
    # The last added runs first: security headers on everything, then the Host check, the
    # cross-site check, then the body limit.
    app.add_middleware(BodyLimit, max_body_bytes=max_upload_bytes + MULTIPART_OVERHEAD,
                       describe=state.describe_limit)
    app.add_middleware(SameOrigin)
    app.add_middleware(HostCheck, policy=policy)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=_static_dir()), name="static")

    def internal(request: Request, exc: Exception, what: str) -> JSONResponse:
        log.error("%s on %s: %s", what, request.url.path, exc, exc_info=not isinstance(exc, EntrepError))
        if state.hide_names or not isinstance(exc, EntrepError):  # details may name files on the server
            detail = f"{what} while answering this request (details are in the server's log)"
        else:
            detail = str(exc).splitlines()[0] if str(exc) else what
        return JSONResponse({"detail": detail}, status_code=500)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(ModelError)
    async def _model_error(request: Request, exc: ModelError):
        return internal(request, exc, "model error")

    @app.exception_handler(EntrepError)
    async def _entrep_error(request: Request, exc: EntrepError):
        if state.hide_names:
            return internal(request, exc, "error")
        return JSONResponse({"detail": str(exc).splitlines()[0]}, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        return internal(request, exc, "internal error")

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
               "gallery_size": state.gallery_size, "gallery": state.gallery_info,
               "report": state.has_report, "hide_names": state.hide_names,
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
    def classify(file: UploadFile = File(..., description="The image (PNG, JPEG, BMP, TIFF, WebP)."),
                 _one: None = Depends(one_part_per_field)):
        with state.work():
            image = state.read_upload(file)
            with state.inference():
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
        with state.work(), state.inference():
            res = search_text(state.searcher, q, k=k, filter=flt, hide_names=state.hide_names)
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
        _one: None = Depends(one_part_per_field),
    ):
        from entrep.retrieval.search import search_image

        k = k_form if k_form is not None else (k_query if k_query is not None else 10)
        flt = _norm_filter(filter_form) or _norm_filter(filter_query)
        if flt == "auto":
            raise HTTPException(422, "filter 'auto' is for text queries; for images use fine, coarse, none, "
                                     "a class or a group")
        state.require_gallery()
        with state.work():
            image = state.read_upload(file)
            with state.inference():
                res = search_image(model, image, k=k, filter=flt, hide_names=state.hide_names)
        return {"query": {"kind": "image", **({} if state.hide_names or not file.filename else {"image": file.filename})},
                "prediction": state.prediction(res["prediction"]), "filter": res.get("filter", flt),
                "ranking": res.get("ranking"), **({"alpha": res["alpha"]} if "alpha" in res else {}),
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

    from entrep.server.review_api import add_review_routes  # POST /api/review (docs/review.md)
    add_review_routes(app, state)
    return app


def _version() -> str:
    from entrep import __version__

    return __version__
