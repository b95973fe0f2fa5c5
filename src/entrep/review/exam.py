"""Review one exam: stream its frames, cleanse, classify the kept ones in batches, smooth, summarise sites.

Only the current batch of kept frames is held as images; per frame the review
keeps its scores and class probabilities, and per site a few candidate
thumbnails (the frames with the highest raw confidence x sharpness), so a
one-hour video at 2 fps (7,200 frames) needs a few megabytes. See docs/review.md.
"""

from __future__ import annotations

import heapq
import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from PIL import Image

from entrep.data.images import load_rgb
from entrep.review.cleanse import REASONS, FrameQuality, drop_reason, frame_quality, sharpness_score
from entrep.review.config import ReviewConfig, parse_sites
from entrep.review.sites import completeness, site_summaries
from entrep.review.smooth import smooth
from entrep.review.sources import Frame, FrameSource

log = logging.getLogger(__name__)

SCHEMA = "entrep.review/1"


@dataclass
class ExamReview:
    """The review document (the JSON of docs/review.md), the best frames' JPEG thumbnails by site, and
    the kept frames' unsmoothed class probabilities (rows in the order of the kept frames) and times."""

    doc: dict
    thumbnails: dict[str, bytes] = field(default_factory=dict)
    probabilities: np.ndarray | None = None
    times: np.ndarray | None = None


class _Candidates:
    """The ``k`` best (score, frame) per class seen so far, with their thumbnails."""

    def __init__(self, k: int, thumb_px: int) -> None:
        self.k, self.px = k, thumb_px
        self.heaps: dict[int, list[tuple[float, int, bytes]]] = {}

    def offer(self, cls: int, score: float, pos: int, image: Image.Image) -> None:
        h = self.heaps.setdefault(cls, [])
        if len(h) >= self.k and score <= h[0][0]:
            return
        item = (score, pos, _jpeg(image, self.px))
        heapq.heappush(h, item) if len(h) < self.k else heapq.heapreplace(h, item)

    def images(self) -> dict[int, bytes]:
        """Kept-frame position -> thumbnail, over every class."""
        return {pos: jpg for h in self.heaps.values() for _, pos, jpg in h}


def _jpeg(image: Image.Image, px: int) -> bytes:
    im = image.copy()
    im.thumbnail((px, px))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _sequence(images: Sequence, fps: float) -> Iterator[Frame]:
    for i, x in enumerate(images):
        if isinstance(x, Frame):
            yield x
        elif isinstance(x, Image.Image):
            name = getattr(x, "filename", None) or f"frame-{i}"
            yield Frame(i, Path(name).name, i / fps, x.convert("RGB"))
        else:
            yield Frame(i, Path(x).name, i / fps, load_rgb(x))


def review(model, exam, *, fps: float = 2.0, require: Sequence[str] | str | None = None,
           config: ReviewConfig | None = None, progress: bool = False) -> ExamReview:
    """Review ``exam`` with ``model``.

    ``exam`` is a video file, a folder of frames, or a sequence of frames in exam order: image
    paths, PIL images (timed ``i / fps``) or :class:`~entrep.review.sources.Frame` objects.
    """
    cfg = config or ReviewConfig()
    t0 = time.perf_counter()
    if isinstance(exam, (str, Path)):
        source: Any = FrameSource(exam, fps=fps)
        kind, exam_name, frames, expected = source.kind, Path(exam).name, iter(source), source.expected
    else:
        exam = list(exam)
        source, kind, exam_name, frames, expected = None, "frames", "upload", _sequence(exam, fps), len(exam)
    tax = model.taxonomy
    classes = list(tax.classes)
    if isinstance(require, str):
        require = parse_sites(require)
    required = list(require) if require is not None else list(cfg.require or classes)

    rows: list[dict] = []
    kept_rows: list[int] = []
    kept_q: list[FrameQuality] = []
    probs: list[np.ndarray] = []
    cands = _Candidates(cfg.candidates, cfg.thumb_px)
    batch: list[tuple[int, Image.Image]] = []

    def classify() -> None:
        if not batch:
            return
        feats = model.image_features([im for _, im in batch], flips=True)
        dec, _ = model.predict_features(feats)
        p = np.asarray(dec.fine_proba, np.float32)
        for (pos, im), pr in zip(batch, p):
            sharp = sharpness_score(kept_q[pos].sharpness, cfg.cleanse)
            for c in np.argsort(pr)[::-1][:2]:
                cands.offer(int(c), float(pr[c]) * sharp, pos, im)
        probs.append(p)
        batch.clear()

    from tqdm.auto import tqdm

    with tqdm(total=expected, unit="frame", desc="reviewing", disable=not progress, leave=False) as bar:
        prev: FrameQuality | None = None
        for fr in frames:
            q = frame_quality(fr.image, cfg.cleanse)
            reason = drop_reason(q, prev, cfg.cleanse)
            rows.append({"frame": fr.name, "index": fr.index, "time_s": round(fr.time_s, 3), "kept": reason is None,
                         "reason": reason, "label": None, "confidence": None, "quality": q.to_dict()})
            if reason is None:
                prev = q
                batch.append((len(kept_rows), fr.image))
                kept_rows.append(len(rows) - 1)
                kept_q.append(q)
                if len(batch) >= cfg.batch_size:
                    classify()
            bar.update(1)
            bar.set_postfix(kept=len(kept_rows), refresh=False)
        classify()

    raw = np.concatenate(probs) if probs else np.zeros((0, len(classes)), np.float32)
    times = np.array([rows[i]["time_s"] for i in kept_rows], np.float64)
    method = cfg.smoothing
    post = smooth(raw, times, method, switch_rate=cfg.switch_rate)
    lab_i, conf = post.argmax(1) if len(post) else np.zeros(0, int), post.max(1) if len(post) else np.zeros(0)
    raw_i = raw.argmax(1) if len(raw) else np.zeros(0, int)
    labels = [classes[int(i)] for i in lab_i]
    for k, r in enumerate(kept_rows):
        rows[r].update(label=labels[k], confidence=round(float(conf[k]), 4),
                       raw_label=classes[int(raw_i[k])], raw_confidence=round(float(raw[k].max()), 4))

    thumbs_by_pos = cands.images()
    eligible = np.array([k in thumbs_by_pos for k in range(len(kept_rows))], bool)
    sharp = np.array([sharpness_score(q.sharpness, cfg.cleanse) for q in kept_q])
    names = [rows[r]["frame"] for r in kept_rows]
    sites = site_summaries(names, times, labels, conf, sharp, eligible)
    missing, weak = completeness(sites, required, classes, low_confidence=cfg.low_confidence,
                                 min_frames=cfg.min_frames)
    pos_of = {names[k]: k for k in range(len(names))}
    thumbnails = {s: thumbs_by_pos[pos_of[v["best_frame"]]] for s, v in sites.items()
                  if pos_of[v["best_frame"]] in thumbs_by_pos}
    dropped = {r: sum(1 for row in rows if row["reason"] == r) for r in REASONS}
    seconds = time.perf_counter() - t0
    doc = {
        "schema": SCHEMA,
        "exam": exam_name,
        "kind": kind,
        "fps": fps if kind == "video" else None,
        "n_frames": len(rows),
        "n_kept": len(kept_rows),
        "dropped": dropped,
        "decode_error": source.error if source is not None else None,
        "smoothing": method,
        "classes": classes,
        "required": required,
        "sites": {s: sites[s] for s in classes if s in sites},
        "missing": missing,
        "low_confidence": weak,
        "complete": not missing and not weak,
        "settings": cfg.to_dict(),
        "timing": {"seconds": round(seconds, 3), "frames_per_s": round(len(rows) / seconds, 2) if seconds else None},
        "frames": rows,
    }
    return ExamReview(doc, thumbnails, raw, times)


def review_exam(model, exam, *, fps: float = 2.0, require: Sequence[str] | str | None = None,
                out: str | Path | None = None, progress: bool = False, config: ReviewConfig | None = None) -> dict:
    """Review an exam and return the review document; with ``out``, also write review.json, review.html
    and the best frame of every site (best/SITE.jpg) there."""
    result = review(model, exam, fps=fps, require=require, config=config, progress=progress)
    if out is not None:
        write_review(out, result)
    return result.doc


def write_review(out: str | Path, result: ExamReview) -> Path:
    """Write ``review.json``, the self-contained ``review.html`` and ``best/*.jpg`` into ``out``."""
    from entrep.io import write_bytes_atomic, write_json_atomic, write_text_atomic
    from entrep.review.html import render_review_html, site_file_name

    out = Path(out)
    (out / "best").mkdir(parents=True, exist_ok=True)
    for site, jpg in result.thumbnails.items():
        write_bytes_atomic(out / "best" / site_file_name(site), jpg)
    write_json_atomic(out / "review.json", result.doc)
    write_text_atomic(out / "review.html", render_review_html(result.doc, result.thumbnails))
    return out
