"""Image->image and text->image search over a model's gallery, and their evaluation.

Image->image follows the paper (section 6.1): the query's class is predicted
first and candidates are restricted to that class ("fine", the default), to
its group ("coarse"), or not at all ("none"); the query itself is never
returned. Text->image embeds the text in the joint space; it can be restricted
to the class the text names ("auto") or to a given class.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from entrep.errors import UserError
from entrep.retrieval.filters import FILTERS

log = logging.getLogger(__name__)


def _hit_dict(hit, hide_names: bool = False) -> dict:
    m = hit.metadata
    return {
        "image": None if hide_names else m.path,
        "name": None if hide_names else m.name,
        "id": int(hit.id),
        "score": round(float(hit.score), 6),
        "label": m.label,
        "group": m.group,
        "caption": m.caption,
    }


def _require_gallery(model):
    if model.gallery is None or len(model.gallery) == 0:
        raise UserError("the model has no gallery to search; build one with `entrep index --model M --gallery DATA`")
    return model.gallery


def allowed_labels(model, filter: str, predicted: str | None) -> set[str] | None:
    """Labels a candidate may carry under ``filter`` given the query's predicted class."""
    tax = model.taxonomy
    if filter == "none":
        return None
    if filter == "fine":
        return {predicted}
    if filter == "coarse":
        return set(tax.members(tax.group_of(predicted)))
    try:  # an explicit class name
        return {tax.normalise_label(filter)}
    except Exception:  # noqa: BLE001 - TaxonomyError; try a group name next
        pass
    if filter in tax.group_names:
        return set(tax.members(filter))
    raise UserError(f"unknown filter {filter!r}; use fine, coarse, none, a class ({', '.join(tax.classes)}) or a group")


def _content_hashes(model, images) -> list[str | None]:
    """Content hash of each query: files through the memo, uploads by the hash the server attached."""
    paths = [im for im in images if isinstance(im, (str, Path))]
    by_path = dict(zip(map(str, paths), model.file_hashes(paths))) if paths else {}
    return [by_path[str(im)] if isinstance(im, (str, Path)) else
            (im.info.get("sha256") if isinstance(im, Image.Image) else None) for im in images]


def image_hits(model, images, *, k: int = 10, filter: str | None = None, space: str | None = None,
               gallery=None, fallback: bool = False):
    """Batch image -> image search: ``(decision, predicted labels, hits per query)``.

    The one ranking rule: cosine in the model's retrieval space, candidates
    restricted by ``filter`` around each query's predicted class, and the query
    itself (any gallery row with the same content) never returned. With
    ``fallback`` a query whose filter leaves no candidate (a gallery without
    that class) is searched over every class, with a warning; submissions use
    it so that every query is answered.
    """
    gallery = gallery if gallery is not None else _require_gallery(model)
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    filter = filter or model.config.retrieval.filter
    images = list(images)
    feats = model.image_features(images)
    dec, _ = model.predict_features(feats)
    preds = [model.taxonomy.class_name(int(c)) for c in dec.fine]
    allowed = [allowed_labels(model, filter, p) for p in preds]
    q = model.retrieval_vectors(feats, space)
    by_hash: dict[str, set] = {}
    for m in gallery.items:
        by_hash.setdefault(m.content_hash, set()).add(m.id)
    exclude = [by_hash.get(h, set()) if h else set() for h in _content_hashes(model, images)]
    hits = gallery.search(q, k, allowed=None if filter == "none" else allowed, exclude_ids=exclude)
    if fallback:
        for i, h in enumerate(hits):
            if not h and allowed[i] is not None:
                log.warning("query %d: no candidate of class %s; searching all classes", i, sorted(allowed[i]))
                hits[i] = gallery.search(q[i : i + 1], k, exclude_ids=[exclude[i]])[0]
    return dec, preds, hits


def search_image(model, image: str | Path | Image.Image, *, k: int = 10, filter: str | None = None,
                 space: str | None = None, hide_names: bool = False) -> dict:
    """Similar gallery images for one query image. Returns {"prediction", "filter", "results"}."""
    filter = filter or model.config.retrieval.filter
    dec, preds, hits = image_hits(model, [image], k=k, filter=filter, space=space)
    return {
        "prediction": {"label": preds[0], "confidence": float(dec.confidence[0]),
                       "source": "prototype" if dec.from_prototype[0] else "head"},
        "filter": filter,
        "results": [_hit_dict(h, hide_names) for h in hits[0]],
    }


def search_text(model, text: str, *, k: int = 10, filter: str = "none", hide_names: bool = False) -> dict:
    """Gallery images matching a text query in the joint space."""
    gallery = _require_gallery(model)
    if not text or not text.strip():
        raise UserError("empty text query; type a finding such as 'a spur on the septum'")
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    labels = None
    if filter == "auto":
        labels = model.taxonomy.classes_named_in(text)
    elif filter != "none":
        labels = allowed_labels(model, filter, None)
    u = model.embed_texts([text.strip()])
    # text lives in the joint space; the gallery may be in concat/head space
    q = text_query_vector(model, u, gallery)
    # look deeper than k so the other side of the region can be found for diversify_sides
    hits = gallery.search(q, k + 50, allowed=[labels] if labels is not None else None)[0]
    order_kind = "score"
    if not model.taxonomy.names_a_side(text):
        order = diversify_sides([h.metadata.label for h in hits], model.taxonomy)
        if order[: k] != list(range(min(k, len(order)))):
            order_kind = "side-diversified"  # the other side's best hit moved up to second place
        hits = [hits[i] for i in order]
    return {"filter": filter, "classes": sorted(labels) if labels else None, "order": order_kind,
            "results": [_hit_dict(h, hide_names) for h in hits[:k]]}


def diversify_sides(ranked_labels: list, taxonomy) -> list[int]:
    """Reorder a ranking so the mirror class of the top hit appears second.

    A finding such as "a spur on the septum" says nothing about the side, so
    the best guess is the right region with both sides near the top rather
    than the first few hits all from one side. Only the first mirror-class
    hit moves up; everything else keeps its order.
    """
    order = list(range(len(ranked_labels)))
    if len(order) < 2 or ranked_labels[0] is None:
        return order
    mirror = taxonomy.mirror_of(ranked_labels[0])
    if mirror == ranked_labels[0] or ranked_labels[1] == mirror:
        return order
    for pos in range(2, len(order)):
        if ranked_labels[pos] == mirror:
            order.insert(1, order.pop(pos))
            break
    return order


def side_diversified_scores(scores: np.ndarray, labels: np.ndarray, taxonomy) -> np.ndarray:
    """Cosine ``scores`` with :func:`diversify_sides` applied: a copy where only the moved hit's score changes.

    The mirror-class hit that the diversified ranking moves to second place is
    scored just above the old second place (never above the top hit), so every
    other item keeps its cosine score and ties among them still rank
    pessimistically.
    """
    order = np.argsort(-scores, kind="stable")
    new = diversify_sides(list(labels[order]), taxonomy)
    if len(new) < 3 or new[1] == 1:  # nothing moved
        return scores
    moved_pos = new[1]  # position in ``order`` of the hit that moved up
    out = np.array(scores, copy=True)
    top, second = out[order[0]], out[order[1]]
    out[order[moved_pos]] = min(np.nextafter(second, np.array(np.inf, dtype=out.dtype)), top)
    return out


def text_query_vector(model, u: np.ndarray, gallery) -> np.ndarray:
    """Map a joint-space text vector into the gallery's space.

    For the concat space the text fills the joint block and leaves the head
    block at zero, so scores are the joint-space cosine (scaled).
    """
    space = model.config.retrieval.space
    if space == "joint":
        return u
    if space == "concat":
        pad = np.zeros((u.shape[0], gallery.dim - u.shape[1]), dtype=np.float32)
        return np.concatenate([u, pad], axis=1)
    raise UserError("text search needs a joint or concat gallery space; this model indexes head features only")


# ---------------------------------------------------------------------------
# evaluation (leave-one-out over the evaluated data)
# ---------------------------------------------------------------------------


def _scores_from_rankings(score_rows: list[np.ndarray], rel_rows: list[np.ndarray]) -> dict:
    """Recall@1/5/10 and MRR from full score rows; ties ranked pessimistically."""
    from entrep.retrieval.metrics import rank_with_ties, scores_from_ranks

    ranks = [int(rank_with_ties(s, r)) if len(s) else 0 for s, r in zip(score_rows, rel_rows)]
    return scores_from_ranks(np.array(ranks, dtype=np.int64), (1, 5, 10))


def evaluate_retrieval(model, data, feats, dec) -> dict:
    """Recall@1/5/10 and MRR, class and exact-pair relevance, leave-one-out over ``data``.

    Candidate labels are the data's own (a labelled gallery); the query's class
    is the model's prediction. i2i is reported under the model's filter, and in
    ``i2i_by_filter`` under each of fine / coarse / none.
    """
    tax = model.taxonomy
    recs = data.records
    n = len(recs)
    labels = np.array([r.label for r in recs], dtype=object)
    names = np.array([r.name for r in recs], dtype=object)
    name_set = set(names)
    pred = np.array([tax.class_name(int(i)) for i in dec.fine], dtype=object)
    vecs = model.retrieval_vectors(feats)
    S = vecs @ vecs.T
    by_filter = {}
    for flt in FILTERS:
        cls_s, cls_r, pair_s, pair_r = [], [], [], []
        for i in range(n):
            allowed = np.ones(n, dtype=bool)
            allowed[i] = False
            al = allowed_labels(model, flt, pred[i])
            if al is not None:
                allowed &= np.isin(labels, list(al))
            s = S[i, allowed]
            cls_s.append(s)
            cls_r.append(labels[allowed] == labels[i])
            p = recs[i].pair
            if p and p in name_set and p != recs[i].name:
                pair_s.append(s)
                pair_r.append(names[allowed] == p)
        entry = {"class": _scores_from_rankings(cls_s, cls_r)}
        if pair_s:
            entry["pair"] = _scores_from_rankings(pair_s, pair_r)
        by_filter[flt] = entry
    result: dict = {"i2i": by_filter[model.config.retrieval.filter], "i2i_by_filter": by_filter,
                    "i2i_filter": model.config.retrieval.filter, "space": model.config.retrieval.space}
    queries = [(t, nm) for t, nm in data.text_queries if nm in name_set]
    source = "t2i captions"
    if not queries:
        queries = [(r.text, r.name) for r in recs if r.text]
        source = "image captions"
    if queries:
        U = model.embed_texts([t for t, _ in queries])
        joint = model.joint_images(feats.clip)
        T = U @ joint.T
        idx = {nm: i for i, nm in enumerate(names)}
        cls_s, cls_r, pair_s, pair_r = [], [], [], []
        for qi, (text, nm) in enumerate(queries):
            target = idx[nm]
            s = T[qi]
            if not tax.names_a_side(text):  # same ranking rule as search_text
                s = side_diversified_scores(s, labels, tax)
            cls_s.append(s)
            cls_r.append(labels == labels[target])
            pair_s.append(s)
            pair_r.append(names == nm)
        result["t2i"] = {"class": _scores_from_rankings(cls_s, cls_r), "pair": _scores_from_rankings(pair_s, pair_r),
                         "queries_from": source}
    return result

