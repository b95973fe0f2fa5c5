"""Answer the three ENTRep challenge tracks with a fitted model and write the submission zip.

Track 1 classifies every query image. Tracks 2 and 3 search a gallery made of
the images in the test folder (the query image itself excluded); gallery labels
are the model's predictions, used by Track 2's class-aware ranking (soft by
default: cosine + alpha * the query's probability of the gallery image's class).
Track 3 searches the joint block of the gallery (any space with one: joint,
concat, metric). Every query
is answered or the command stops with an error naming the query: nothing is
silently dropped.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from entrep.data.records import DataError, Dataset, Record
from entrep.errors import UserError

log = logging.getLogger(__name__)


def _resolve_query_images(names: list[str], images: Path) -> list[Path]:
    """Find each query image in the folder; case-insensitive fallback (_imageNN vs _ImageNN)."""
    if not images.is_dir():
        raise UserError(f"{images}: --images must be a folder holding the test images")
    lower = {p.name.lower(): p for p in images.iterdir() if p.is_file()}
    out, missing = [], []
    for n in names:
        p = images / n
        if p.is_file():
            out.append(p)
        elif n.lower() in lower:
            out.append(lower[n.lower()])
        else:
            missing.append(n)
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise DataError(f"{images}: query images not found: {', '.join(missing[:3])}{more}")
    return out


def _check_readable(paths: list[Path]) -> None:
    from entrep.data.images import load_rgb

    for p in paths:
        load_rgb(p)  # ImageError names the file


def _adhoc_gallery(model, folder: Path):
    """A temporary index over the test images with predicted labels."""
    from entrep.retrieval.gallery import gallery_rows
    from entrep.retrieval.gallery import images_in_folder
    from entrep.retrieval.index import GalleryIndex

    files = images_in_folder(folder)
    if not files:
        raise DataError(f"{folder}: no images to search")
    _check_readable(files)
    ds = Dataset(records=[Record(image=p.resolve()) for p in files], root=folder, taxonomy=model.taxonomy)
    vecs, meta = gallery_rows(model, ds)
    index = GalleryIndex(vecs.shape[1])
    index.add(vecs, meta)
    return index


def make_submission(model, track: int, queries_csv: Path, images: Path, out: Path, *, filter: str | None = None) -> dict:
    from entrep.data.readers import read_queries
    from entrep.retrieval.search import image_hits, text_query_vector
    from entrep.challenge.format import check_submission, unique_queries, write_submission

    queries = read_queries(queries_csv)
    if not queries:
        raise DataError(f"{queries_csv}: no queries")
    uniq = unique_queries(queries, source=queries_csv)
    summary: dict = {"n_queries": len(uniq)}
    if track == 1:
        paths = _resolve_query_images(uniq, images)
        _check_readable(paths)
        preds = model.predict(paths)
        answers = {q: int(p["label_id"]) for q, p in zip(uniq, preds)}
        names = None
    else:
        gallery = _adhoc_gallery(model, images)
        summary["gallery"] = len(gallery)
        names = {m.name for m in gallery.items}
        if track == 2:
            paths = _resolve_query_images(uniq, images)
            _check_readable(paths)
            # the one image-search rule (soft class ranking by default); a hard class filter that
            # leaves nothing falls back to every class
            hits = image_hits(model, paths, k=1, filter=filter, gallery=gallery, fallback=True).hits
        else:
            empty = [t for t in uniq if not t.strip()]
            if empty:
                raise DataError(f"{queries_csv}: empty caption on a query line")
            u = model.embed_texts(uniq)
            qv = text_query_vector(model, u, gallery)
            hits = gallery.search(qv.astype(np.float32), 1)
        answers = {}
        for qname, h in zip(uniq, hits):
            if not h:
                raise UserError(f"query {qname!r}: the gallery has no other image to return")
            answers[qname] = h[0].metadata.name
    n_classes = model.taxonomy.n_classes  # Track 1 ids index the model's own taxonomy, not the 7 ENT classes
    write_submission(track, answers, out, n_classes=n_classes)
    problems = check_submission(out, track, uniq, image_names=names, n_classes=n_classes)
    if problems:
        raise UserError(f"{out}: the written submission failed its own format check: {problems[0]}")
    return summary
