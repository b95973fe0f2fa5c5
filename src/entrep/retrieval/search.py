"""Image->image and text->image search over a model's gallery, and their evaluation.

Image->image follows the paper (section 6.1): the query's class is predicted
first. With ``retrieval.ranking: soft`` (the default) the filter "fine" (or
"coarse") ranks every gallery image by ``cosine + alpha * p_q(class of g)``
(group probabilities for "coarse"; alpha tuned on validation at fit time), so a
wrong but unsure prediction still finds the right class; with ``ranking: hard``
candidates are restricted to the predicted class or group. "none" is pure
cosine, and a named class or group is always a hard filter. The query itself
is never returned. Text->image embeds the text in the joint space; it can be
restricted to the class the text names ("auto") or to a given class.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from entrep.errors import ModelError, UserError
from entrep.retrieval.filters import FILTERS
from entrep.retrieval.store import Hit

#: soft ranking's unfiltered candidate pool is CANDIDATE_FACTOR * k rows (docs/retrieval.md)
CANDIDATE_FACTOR = 4
SOFT_FILTERS = ("fine", "coarse")  # the filters that soft ranking turns into a class-probability bonus

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
    """Content hash of each query: files through the memo, bytes (uploads) by their own hash,
    decoded images by the hash the caller attached (``info["sha256"]``), if any."""
    paths = [im for im in images if isinstance(im, (str, Path))]
    by_path = dict(zip(map(str, paths), model.file_hashes(paths))) if paths else {}

    def one(im) -> str | None:
        if isinstance(im, (str, Path)):
            return by_path[str(im)]
        if isinstance(im, bytes):
            return getattr(im, "sha256", None) or hashlib.sha256(im).hexdigest()
        return im.info.get("sha256") if isinstance(im, Image.Image) else None

    return [one(im) for im in images]


class ImageHits(NamedTuple):
    """What :func:`image_hits` returns: the decision, predicted labels, and per query its hits
    (``Hit.score`` = cosine in the retrieval space) with their ranking scores, best first."""

    decision: object
    predicted: list
    hits: list
    rank_scores: list  # per query, one ranking score per hit (the cosine itself unless soft-ranked)
    ranking: str  # "soft" or "hard" (what ordered the hits; "none" filters are pure cosine either way)


def check_gallery_dim(model, gallery, dim: int, space: str | None = None) -> None:
    """ModelError when the gallery's vectors are not those of the model's retrieval space (e.g. an old metric gallery)."""
    if gallery.dim != dim:
        space = space or model.config.retrieval.space
        raise ModelError(f"{model.path or 'model'}: the gallery holds {gallery.dim}-d vectors but retrieval space "
                         f"{space!r} gives {dim}-d ones (a gallery built by an older entrep, or for another space); "
                         f"re-index it: entrep index --model {model.path or 'MODEL'} --gallery DATA --rebuild")


def _rescaled(hits: list[list[Hit]], scale: float) -> list[list[Hit]]:
    if scale == 1.0:
        return hits
    return [[Hit(h.id, float(h.score) * scale, h.metadata) for h in row] for row in hits]


def soft_class_search(gallery, q: np.ndarray, k: int, proba: np.ndarray, bin_of_label: dict, bin_labels: list,
                      alpha: float, *, exclude_ids=None, scale: float = 1.0,
                      factor: int = CANDIDATE_FACTOR) -> tuple[list[list[Hit]], list[list[float]]]:
    """Top ``k`` by ``cosine + alpha * proba[q, bin of g]`` over the whole gallery, from a small candidate set.

    ``proba``: (Q, B) probability of each bin (class or group) per query; ``bin_of_label``:
    gallery label -> bin id (labels not in it get no bonus); ``bin_labels[b]``: the label set of
    bin ``b``; ``scale`` turns index scores into cosines (:meth:`EntrepModel.score_scale`).

    Candidates: the top ``M = factor * k`` rows by cosine, plus the top ``k`` rows of each bin in
    decreasing order of the query's probability, until the ``k``-th best candidate score is at
    least ``cos_M + alpha * p_next`` (``cos_M``: the M-th cosine; ``p_next``: the largest
    probability of a bin not yet searched). That bound makes the result exact: a row outside
    the candidates is either in a searched bin (then ``k`` candidates of its bin have the same
    bonus and a higher cosine) or not (then its cosine is at most ``cos_M`` and its bonus at most
    ``alpha * p_next``). When every bin is searched and the bound still fails (unlabelled rows),
    the query is scanned exactly. Returns (hits with cosine scores, ranking scores), best first.
    """
    if alpha < 0:
        raise UserError(f"soft ranking needs alpha >= 0, got {alpha}")
    n_q = len(q)
    if n_q == 0:
        return [], []
    n = len(gallery)
    excl = exclude_ids if exclude_ids is not None else [set() for _ in range(n_q)]
    m = max(k, factor * k)
    base = _rescaled(gallery.search(q, m, exclude_ids=excl), scale)
    P = np.asarray(proba, dtype=np.float64)
    order = np.argsort(-P, axis=1, kind="stable")
    cands: list[dict[int, Hit]] = [{h.id: h for h in row} for row in base]
    complete = [len(row) < m for row in base]  # fewer than M came back: every allowed row is a candidate
    cos_m = [row[-1].score if row else -np.inf for row in base]
    next_bin = [0] * n_q

    def bonus(i: int, h: Hit) -> float:
        b = bin_of_label.get(h.metadata.label)
        return alpha * P[i, b] if b is not None else 0.0

    def kth_score(i: int) -> float:
        s = sorted((h.score + bonus(i, h) for h in cands[i].values()), reverse=True)
        return s[k - 1] if len(s) >= k else -np.inf

    pending = [i for i in range(n_q) if not complete[i] and alpha != 0.0]
    while pending:
        want: dict[int, list[int]] = {}
        scan = []
        for i in pending:
            r = next_bin[i]
            p_next = P[i, order[i, r]] if r < P.shape[1] else 0.0
            if kth_score(i) >= cos_m[i] + alpha * p_next:
                continue  # exact: nothing outside the candidates can enter the top k
            if r < P.shape[1]:
                want.setdefault(int(order[i, r]), []).append(i)
                next_bin[i] = r + 1
            else:
                scan.append(i)
        for b, members in want.items():
            rows = _rescaled(gallery.search(q[members], k, allowed=set(bin_labels[b]),
                                            exclude_ids=[excl[i] for i in members]), scale)
            for i, row in zip(members, rows):
                cands[i].update({h.id: h for h in row})
        for i in scan:
            log.debug("soft ranking: query %d needs an exact scan (rows without a class)", i)
            row = _rescaled(gallery.search(q[i : i + 1], n, exclude_ids=[excl[i]]), scale)[0]
            cands[i] = {h.id: h for h in row}
        pending = sorted(i for members in want.values() for i in members)  # re-check those that grew
    hits, scores = [], []
    for i in range(n_q):
        ranked = sorted(cands[i].values(), key=lambda h: (-(h.score + bonus(i, h)), h.id))[:k]
        hits.append(ranked)
        scores.append([float(h.score + bonus(i, h)) for h in ranked])
    return hits, scores


def image_hits(model, images, *, k: int = 10, filter: str | None = None, space: str | None = None,
               gallery=None, fallback: bool = False, ranking: str | None = None) -> ImageHits:
    """Batch image -> image search: :class:`ImageHits` (decision, predicted labels, hits per query, ...).

    The one ranking rule: cosine in the model's retrieval space; for ``filter``
    fine / coarse either the soft class-probability bonus (``ranking`` soft, the
    config's default; see :func:`soft_class_search`) or a hard restriction to the
    predicted class or group (``ranking`` hard); a named class or group is always
    a hard restriction. The query itself (any gallery row with the same content)
    is never returned. With ``fallback`` a query whose hard filter leaves no
    candidate (a gallery without that class) is searched over every class, with
    a warning; submissions use it so that every query is answered.
    """
    from entrep.finetune.metric import class_bins

    gallery = gallery if gallery is not None else _require_gallery(model)
    if k < 1:
        raise UserError(f"k must be >= 1, got {k}")
    filter = filter or model.config.retrieval.filter
    ranking = ranking or model.config.retrieval.ranking
    if ranking not in ("soft", "hard"):
        raise UserError(f"unknown ranking {ranking!r}; use soft or hard")
    images = list(images)
    feats = model.image_features(images)
    dec, _ = model.predict_features(feats)
    preds = [model.taxonomy.class_name(int(c)) for c in dec.fine]
    allowed = [allowed_labels(model, filter, p) for p in preds]
    q = model.image_query_vectors(feats, space)
    check_gallery_dim(model, gallery, q.shape[1], space)
    scale = model.score_scale("image", space)
    hashes = _content_hashes(model, images)
    by_hash = gallery.ids_for_hashes(hashes)  # a query's own image is never its own hit; no full row read
    exclude = [by_hash.get(h, set()) if h else set() for h in hashes]
    if ranking == "soft" and filter in SOFT_FILTERS:
        P, bin_of_class, bin_labels = class_bins(model.taxonomy, dec.fine_proba, filter)
        bin_of_label = {c: int(bin_of_class[j]) for j, c in enumerate(model.taxonomy.classes)}
        hits, scores = soft_class_search(gallery, q, k, P, bin_of_label, bin_labels, model.rank_alpha(filter),
                                         exclude_ids=exclude, scale=scale)
        return ImageHits(dec, preds, hits, scores, "soft")
    hits = _rescaled(gallery.search(q, k, allowed=None if filter == "none" else allowed, exclude_ids=exclude), scale)
    if fallback:
        for i, h in enumerate(hits):
            if not h and allowed[i] is not None:
                log.warning("query %d: no candidate of class %s; searching all classes", i, sorted(allowed[i]))
                hits[i] = _rescaled(gallery.search(q[i : i + 1], k, exclude_ids=[exclude[i]]), scale)[0]
    return ImageHits(dec, preds, hits, [[float(x.score) for x in row] for row in hits], "hard")


def search_image(model, image: "str | Path | bytes | Image.Image", *, k: int = 10, filter: str | None = None,
                 space: str | None = None, hide_names: bool = False, ranking: str | None = None) -> dict:
    """Similar gallery images for one query image. Returns {"prediction", "filter", "ranking", "results"}.

    Each result's ``score`` is its cosine similarity; ``rank_score`` is what ordered it
    (cosine + alpha * class probability under soft ranking, else the cosine).
    """
    filter = filter or model.config.retrieval.filter
    res = image_hits(model, [image], k=k, filter=filter, space=space, ranking=ranking)
    dec, preds = res.decision, res.predicted
    soft = res.ranking == "soft"
    return {
        "prediction": {"label": preds[0], "confidence": float(dec.confidence[0]),
                       "source": "prototype" if dec.from_prototype[0] else "head"},
        "filter": filter,
        "ranking": res.ranking if filter in SOFT_FILTERS else "hard" if filter != "none" else "none",
        **({"alpha": model.rank_alpha(filter)} if soft else {}),
        "results": [{**_hit_dict(h, hide_names), "rank_score": round(float(r), 6)}
                    for h, r in zip(res.hits[0], res.rank_scores[0])],
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
    # text lives in the joint space; the gallery may be in concat/metric space (the joint block)
    q = text_query_vector(model, u, gallery)
    # look deeper than k so the other side of the region can be found for diversify_sides
    hits = gallery.search(q, k + 50, allowed=[labels] if labels is not None else None)
    hits = _rescaled(hits, model.score_scale("text"))[0]  # scores are joint-space cosines
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
    """Map joint-space text vectors into the gallery's space.

    concat rows are ``[joint ; head] / sqrt(2)``: the text fills the joint block and leaves the
    head block at zero. metric rows are ``[metric ; joint] / sqrt(2)``: the text fills the joint
    block. Either way the index scores joint-space cosine / sqrt(2) (rescaled by
    :meth:`EntrepModel.score_scale`), so text ranks exactly as in the joint space.
    """
    space = model.config.retrieval.space
    u = np.asarray(u, dtype=np.float32)
    if space == "joint":
        check_gallery_dim(model, gallery, u.shape[1])
        return u
    if space == "concat":
        pad = np.zeros((u.shape[0], gallery.dim - u.shape[1]), dtype=np.float32)
        return np.concatenate([u, pad], axis=1)
    if space == "metric":
        metric_dim = model.metric_dim
        check_gallery_dim(model, gallery, metric_dim + u.shape[1])
        return np.concatenate([np.zeros((u.shape[0], metric_dim), dtype=np.float32), u], axis=1)
    raise UserError("text search needs a joint, concat or metric gallery space; this model indexes head features only")


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
    probabilities are the model's (``dec``). ``i2i`` is reported under the model's
    rule (filter + ranking); ``i2i_by_filter`` under each hard filter fine / coarse /
    none; ``i2i_by_ranking`` (and, for the configured level, ``i2i_hard`` / ``i2i_soft``,
    rows of the report's retrieval table) compares hard and soft ranking for fine and coarse
    (soft: full ranking by cosine + alpha * p_q(class or group of g), the rule that
    :func:`soft_class_search` reproduces exactly).
    """
    from entrep.finetune.metric import class_bins

    tax = model.taxonomy
    recs = data.records
    n = len(recs)
    labels = np.array([r.label for r in recs], dtype=object)
    names = np.array([r.name for r in recs], dtype=object)
    name_set = set(names)
    pred = np.array([tax.class_name(int(i)) for i in dec.fine], dtype=object)
    S = (model.image_query_vectors(feats) @ model.retrieval_vectors(feats).T) * model.score_scale("image")

    def scores(rows) -> dict:
        """rows: per query (score row over all items, allowed mask) -> class / pair scores."""
        cls_s, cls_r, pair_s, pair_r = [], [], [], []
        for i, (s_i, allowed) in enumerate(rows):
            s = s_i[allowed]
            cls_s.append(s)
            cls_r.append(labels[allowed] == labels[i])
            p = recs[i].pair
            if p and p in name_set and p != recs[i].name:
                pair_s.append(s)
                pair_r.append(names[allowed] == p)
        entry = {"class": _scores_from_rankings(cls_s, cls_r)}
        if pair_s:
            entry["pair"] = _scores_from_rankings(pair_s, pair_r)
        return entry

    def not_self(i: int) -> np.ndarray:
        allowed = np.ones(n, dtype=bool)
        allowed[i] = False
        return allowed

    by_filter = {}
    for flt in FILTERS:
        rows = []
        for i in range(n):
            allowed = not_self(i)
            al = allowed_labels(model, flt, pred[i])
            if al is not None:
                allowed &= np.isin(labels, list(al))
            rows.append((S[i], allowed))
        by_filter[flt] = scores(rows)
    soft, alphas = {}, {}
    cid = np.array([tax.class_id(lbl) for lbl in labels])
    for flt in SOFT_FILTERS:
        P, bin_of_class, _ = class_bins(tax, dec.fine_proba, flt)
        alphas[flt] = model.rank_alpha(flt)
        R = S + alphas[flt] * P[:, bin_of_class[cid]]
        soft[flt] = scores([(R[i], not_self(i)) for i in range(n)])
    flt, ranking = model.config.retrieval.filter, model.config.retrieval.ranking
    chosen = soft[flt] if ranking == "soft" and flt in SOFT_FILTERS else by_filter[flt]
    result: dict = {"i2i": chosen, "i2i_by_filter": by_filter, "i2i_filter": flt,
                    "i2i_ranking": ranking if flt in SOFT_FILTERS else "none",
                    "i2i_by_ranking": {"hard": {f: by_filter[f] for f in SOFT_FILTERS}, "soft": soft,
                                       "alpha": alphas},
                    "space": model.config.retrieval.space}
    if flt in SOFT_FILTERS:  # flat rows the report's retrieval table shows beside i2i
        result["i2i_hard"], result["i2i_soft"] = by_filter[flt], soft[flt]
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

