"""``POST /api/review``: review an uploaded short exam video or several frames (see docs/review.md).

The upload is either one video file (mp4, avi, mov, mkv; written to a private
temporary folder for PyAV, deleted after the answer) or several images, taken
in upload order as the exam's frames. The answer is the review document of
:func:`entrep.review.review` with the best frame of each site as a JPEG data
URI under ``best_frames``. With ``hide_names`` the frames are named by
position only.
"""

from __future__ import annotations

import base64
import logging
import tempfile
from pathlib import Path
from typing import List, Optional

from fastapi import File, Form, HTTPException, UploadFile

from entrep.review import Frame, review
from entrep.review.sources import VIDEO_SUFFIXES

log = logging.getLogger(__name__)

MAX_REVIEW_FRAMES = 600  # uploaded images per request (a video is sampled, so it has no such limit)


def _read_video(state, upload: UploadFile, folder: Path) -> Path:
    data = upload.file.read(state.max_upload_bytes + 1)
    if len(data) > state.max_upload_bytes:
        raise HTTPException(413, state.describe_limit(state.max_upload_bytes))
    if not data:
        raise HTTPException(400, "the uploaded video is empty")
    path = folder / f"upload{Path(upload.filename or 'upload.mp4').suffix.lower()}"
    path.write_bytes(data)
    return path


def _is_video(upload: UploadFile) -> bool:
    return Path(upload.filename or "").suffix.lower() in VIDEO_SUFFIXES or (
        (upload.content_type or "").startswith("video/"))


def add_review_routes(app, state) -> None:
    """Register ``POST /api/review`` on ``app``, sharing ``state``'s model, work slots and limits."""

    @app.post("/api/review", summary="Review a short exam: one video or several frames -> sites, best frames, missing",
              responses={400: {"description": "Empty, corrupt or mixed upload"},
                         413: {"description": "Upload larger than the server's limit"},
                         422: {"description": "Bad field (fps, unknown required site, ...)"}})
    def review_upload(
        files: List[UploadFile] = File(..., description="One video (mp4, avi, mov, mkv) or several frames in exam order."),
        fps: float = Form(2.0, gt=0, le=30, description="Frames per second sampled from a video."),
        require: Optional[str] = Form(None, description="Comma-separated required sites (default: every class)."),
    ):
        videos = [f for f in files if _is_video(f)]
        if videos and len(files) > 1:
            raise HTTPException(400, "send one video, or several images, not both")
        if len(files) > MAX_REVIEW_FRAMES:
            raise HTTPException(400, f"at most {MAX_REVIEW_FRAMES} frames per review; send a video instead")
        with state.work():
            if videos:
                with tempfile.TemporaryDirectory(prefix="entrep-review-") as tmp:
                    path = _read_video(state, videos[0], Path(tmp))
                    with state.inference():
                        result = review(state.model, path, fps=fps, require=require)
            else:
                frames = []
                for i, f in enumerate(files):
                    name = f"frame-{i}" if state.hide_names else (f.filename or f"frame-{i}")
                    frames.append(Frame(i, name, i / fps, state.read_image(f)))
                with state.inference():
                    result = review(state.model, frames, fps=fps, require=require)
        doc = dict(result.doc)
        if state.hide_names:
            doc["exam"] = "upload"
            names = {r["frame"]: f"frame-{r['index']}" for r in doc["frames"]}
            doc["frames"] = [dict(r, frame=names[r["frame"]]) for r in doc["frames"]]
            doc["sites"] = {s: dict(v, best_frame=names.get(v["best_frame"], v["best_frame"]))
                            for s, v in doc["sites"].items()}
            if doc.get("decode_error"):
                doc["decode_error"] = "decoding stopped early; the frames before were reviewed"
        doc["best_frames"] = {s: "data:image/jpeg;base64," + base64.b64encode(j).decode("ascii")
                              for s, j in result.thumbnails.items()}
        return doc
