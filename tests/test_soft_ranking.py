"""Soft class-aware image search (cosine + alpha * class probability) and text search in the metric space."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from entrep.finetune.metric import DEFAULT_RANK_ALPHA, RANK_ALPHAS, class_bins, soft_class_rank
from entrep.retrieval.index import GalleryIndex
from entrep.retrieval.metrics import rank_with_ties, scores_from_ranks
from entrep.retrieval.search import soft_class_search
from entrep.taxonomy import Taxonomy

ENT = Taxonomy.ent()
BIN_OF_LABEL = {c: i for i, c in enumerate(ENT.classes)}
BIN_LABELS = [frozenset({c}) for c in ENT.classes]


def _gallery(n=240, dim=12, seed=0, unlabelled=0):
    """Seeded clustered unit vectors, one cluster per class, a few rows without a label."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ENT.n_classes, dim))
    y = rng.integers(0, ENT.n_classes, n)
    x = centres[y] + 1.2 * rng.standard_normal((n, dim))
    labels = [ENT.classes[c] for c in y]
    for i in range(unlabelled):
        labels[i] = None
    index = GalleryIndex(dim, kind="flat")
    index.add(x.astype(np.float32), [{"name": f"g{i}.png", "label": lbl} for i, lbl in enumerate(labels)])
    return index, centres, np.array([BIN_OF_LABEL.get(lbl, -1) for lbl in labels])


def _queries(centres, n_q=25, seed=1):
    rng = np.random.default_rng(seed)
    yq = rng.integers(0, ENT.n_classes, n_q)
    q = (centres[yq] + 1.2 * rng.standard_normal((n_q, centres.shape[1]))).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    # a mix of confident and unsure class probabilities
    conc = np.where(np.arange(n_q) % 2 == 0, 0.3, 5.0)
    P = np.stack([rng.dirichlet(np.full(ENT.n_classes, c)) for c in conc])
    return q, P, yq


def _brute_force(index, q, P, bins, alpha, k, exclude):
    sim = q @ index.vectors.T
    score = soft_class_rank(sim, P, bins, alpha)
    out = []
    for i in range(len(q)):
        s = score[i].copy()
        s[[j for j, gid in enumerate(index.ids) if gid in exclude[i]]] = -np.inf
        order = np.argsort(-s, kind="stable")
        out.append([int(index.ids[j]) for j in order[:k] if np.isfinite(s[j])])
    return out


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 2.0, 50.0])
@pytest.mark.parametrize("k", [1, 5, 12])
def test_candidate_search_equals_brute_force_soft_rank(alpha, k):
    index, centres, bins = _gallery(unlabelled=6)
    q, P, _ = _queries(centres)
    exclude = [{int(i)} if i % 3 == 0 else set() for i in range(len(q))]  # some queries exclude a row
    hits, scores = soft_class_search(index, q, k, P, BIN_OF_LABEL, BIN_LABELS, alpha, exclude_ids=exclude)
    truth = _brute_force(index, q, P, bins, alpha, k, exclude)
    assert [[h.id for h in row] for row in hits] == truth
    for row, s in zip(hits, scores):
        assert s == sorted(s, reverse=True)
        assert all(r >= h.score - 1e-9 for h, r in zip(row, s))  # the bonus is never negative


def test_candidate_search_equals_brute_force_at_the_group_level():
    index, centres, _ = _gallery(seed=3)
    q, P, _ = _queries(centres, seed=4)
    Pg, bin_of_class, group_labels = class_bins(ENT, P, "coarse")
    bin_of_label = {c: int(bin_of_class[j]) for j, c in enumerate(ENT.classes)}
    gbins = np.array([bin_of_label[m.label] for m in index.items])
    for alpha in (0.3, 3.0):
        hits, _ = soft_class_search(index, q, 8, Pg, bin_of_label, group_labels, alpha)
        assert [[h.id for h in row] for row in hits] == _brute_force(index, q, Pg, gbins, alpha, 8, [set()] * len(q))


def test_alpha_zero_is_pure_similarity_and_a_huge_alpha_is_the_hard_filter_for_confident_queries():
    index, centres, _ = _gallery(seed=5)
    q, _, yq = _queries(centres, seed=6)
    P = np.full((len(q), ENT.n_classes), 0.01 / (ENT.n_classes - 1))
    P[np.arange(len(q)), yq] = 0.99  # confident predictions
    plain = index.search(q, 10)
    zero, _ = soft_class_search(index, q, 10, P, BIN_OF_LABEL, BIN_LABELS, 0.0)
    assert [[h.id for h in r] for r in zero] == [[h.id for h in r] for r in plain]
    huge, _ = soft_class_search(index, q, 10, P, BIN_OF_LABEL, BIN_LABELS, 1000.0)
    for i, row in enumerate(huge):
        hard = index.search(q[i], 10, allowed={ENT.classes[yq[i]]})[0]
        assert [h.id for h in row[: len(hard)]] == [h.id for h in hard]


def _wrong_but_unsure_case():
    """Query of nose-left predicted nose-right at 0.55: one very similar nose-left image, three weak nose-right ones."""
    index = GalleryIndex(2, kind="flat")
    angles = {"a.png": (0.10, "nose-left"), "b.png": (0.9, "nose-right"), "c.png": (1.0, "nose-right"),
              "d.png": (1.1, "nose-right"), "e.png": (1.4, "nose-left")}
    vecs = np.array([[np.cos(a), np.sin(a)] for a, _ in angles.values()], dtype=np.float32)
    index.add(vecs, [{"name": n, "label": lbl} for n, (_, lbl) in angles.items()])
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    P = np.zeros((1, ENT.n_classes))
    P[0, ENT.class_id("nose-right")], P[0, ENT.class_id("nose-left")] = 0.55, 0.45
    return index, q, P


def test_a_wrong_unsure_prediction_still_ranks_a_correct_class_image_first():
    index, q, P = _wrong_but_unsure_case()
    hard = index.search(q, 5, allowed={"nose-right"})[0]
    assert hard and all(h.label == "nose-right" for h in hard)  # the hard filter cannot return nose-left
    soft, _ = soft_class_search(index, q, 5, P, BIN_OF_LABEL, BIN_LABELS, 0.5)
    assert soft[0][0].label == "nose-left" and soft[0][0].name == "a.png"


def test_filtered_search_mrr_is_no_longer_its_recall_at_1():
    index, q, P = _wrong_but_unsure_case()
    # two queries: the unsure wrong one above, and a right, confident nose-right query near b/c/d
    q2 = np.array([[np.cos(1.0), np.sin(1.0)]], dtype=np.float32)
    P2 = np.zeros((1, ENT.n_classes))
    P2[0, ENT.class_id("nose-right")] = 0.95
    P2[0, ENT.class_id("nose-left")] = 0.05
    queries, probs, truth = np.concatenate([q, q2]), np.concatenate([P, P2]), ["nose-left", "nose-right"]

    def ranks(rows):
        return np.array([rank_with_ties(np.array([-j for j in range(len(r))], dtype=float),
                                        np.array([h.label == t for h in r])) for r, t in zip(rows, truth)])

    hard_rows = [index.search(queries[i], 5, allowed={"nose-right"})[0] for i in range(2)]
    hard = scores_from_ranks(ranks(hard_rows), (1, 5, 10))
    assert hard["mrr"] == hard["recall@1"]  # right class: rank 1; wrong class: never found
    # alpha where the unsure query's best match is second: MRR counts it, Recall@1 does not
    soft_rows, _ = soft_class_search(index, queries, 5, probs, BIN_OF_LABEL, BIN_LABELS, 4.0)
    soft = scores_from_ranks(ranks(soft_rows), (1, 5, 10))
    assert soft["recall@1"] == hard["recall@1"] and soft["mrr"] > soft["recall@1"]


# ---- through a fitted model --------------------------------------------------------------


def test_fit_tunes_alpha_and_it_survives_save_and_load(tiny_model_dir, tmp_path, caplog):
    from entrep.model import load_model

    m = load_model(tiny_model_dir)
    tuning = m.rank_tuning
    assert set(tuning["alpha"]) == {"fine", "coarse"}
    assert all(a in RANK_ALPHAS for a in tuning["alpha"].values())
    table = dict((a, v) for a, v in tuning["validation_mrr"]["fine"])
    assert table[tuning["alpha"]["fine"]] == max(table.values())
    m.save(tmp_path / "again")
    again = load_model(tmp_path / "again")
    assert again.rank_tuning == tuning and again.rank_alpha("fine") == m.rank_alpha("fine")
    # a model saved before alpha was tuned loads with the documented default, said once at DEBUG
    meta = json.loads((tmp_path / "again" / "model.json").read_text())
    del meta["state"]["rank_tuning"]
    (tmp_path / "again" / "model.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.DEBUG, logger="entrep.model.model"):
        old = load_model(tmp_path / "again")
    assert old.rank_alpha("fine") == DEFAULT_RANK_ALPHA == old.rank_alpha("coarse")
    assert sum("default alpha" in r.getMessage() for r in caplog.records) == 1


def test_model_search_ranks_softly_and_named_classes_stay_hard(tiny_model_dir, tiny_data_dir):
    from entrep.model import load_model

    m = load_model(tiny_model_dir)
    query = sorted((tiny_data_dir / "imgs").glob("*.png"))[0]
    soft = m.search_image(query, k=len(m.gallery))
    assert soft["ranking"] == "soft" and soft["alpha"] == m.rank_alpha("fine")
    r = [h["rank_score"] for h in soft["results"]]
    assert r == sorted(r, reverse=True) and query.name not in [h["name"] for h in soft["results"]]
    assert len({h["label"] for h in soft["results"]}) > 1  # every class is ranked, not only the predicted one
    # the wiring: the model's query vector, its class probabilities and alpha, brute force over the gallery
    feats = m.image_features([query])
    proba = m.predict_features(feats)[0].fine_proba
    bins = np.array([m.taxonomy.class_id(it.label) for it in m.gallery.items])
    brute = soft_class_rank(m.image_query_vectors(feats) @ m.gallery.vectors.T, proba, bins, m.rank_alpha("fine"))[0]
    brute[[Path(it.path).name == query.name for it in m.gallery.items]] = -np.inf
    top = [int(m.gallery.ids[j]) for j in np.argsort(-brute, kind="stable")[:10]]
    assert [h["id"] for h in soft["results"][:10]] == top
    named = m.search_image(query, k=50, filter="ear-left")
    assert named["ranking"] == "hard" and {h["label"] for h in named["results"]} == {"ear-left"}


def _metric_space_model(tiny_model_dir, tiny_data_dir):
    """The tiny model with a quickly fitted metric head and retrieval space metric; gallery re-indexed."""
    import dataclasses

    from entrep.finetune import MetricHead
    from entrep.model import load_model

    m = load_model(tiny_model_dir)
    paths = [it.path for it in m.gallery.items]
    feats = m.image_features(paths, flips=False)
    y = np.array([m.taxonomy.class_id(it.label) for it in m.gallery.items])
    m.parts.metric_head = MetricHead(dim=24, epochs=2, seed=0).fit([feats.clip, feats.head], y, m.taxonomy)
    m.config = m.config.replace(retrieval=dataclasses.replace(m.config.retrieval, space="metric"))
    old_gallery = m.gallery
    m.index(tiny_data_dir)  # the old concat-space gallery has the wrong width: rebuilt, with a warning
    assert m.gallery is not old_gallery and m.gallery.dim == 24 + m.joint_images(feats.clip[:1]).shape[1]
    return m, paths, feats


def test_metric_space_text_search_ranks_as_the_joint_space_and_images_as_metric_cosine(tiny_model_dir, tiny_data_dir):
    m, paths, feats = _metric_space_model(tiny_model_dir, tiny_data_dir)
    by_path = {str(p): i for i, p in enumerate(paths)}
    text = "the left ear: the tympanic membrane is intact"  # names a side: no side diversification
    res = m.search_text(text, k=10)["results"]
    u = m.embed_texts([text])[0]
    joint = m.joint_images(feats.clip) @ u
    order = np.argsort(-joint, kind="stable")[:10]
    assert [by_path[h["image"]] for h in res] == list(order)
    assert np.allclose([h["score"] for h in res], joint[order], atol=1e-5)  # reported as joint cosine
    # image queries: pure metric cosine (filter none: no class bonus), the query itself left out
    q = paths[0]
    hits = m.search_image(q, k=10, filter="none")["results"]
    metric = m.metric_vectors(feats)
    cos = metric @ metric[0]
    cos[0] = -np.inf
    order = np.argsort(-cos, kind="stable")[:10]
    assert [by_path[h["image"]] for h in hits] == list(order)
    assert np.allclose([h["score"] for h in hits], cos[order], atol=1e-5)


def test_metric_space_track_3_and_an_old_metric_gallery_says_reindex(tiny_model_dir, tiny_data_dir, tmp_path):
    from entrep.errors import ModelError
    from entrep.retrieval.search import text_query_vector

    m, paths, feats = _metric_space_model(tiny_model_dir, tiny_data_dir)
    u = m.embed_texts(["a spur on the septum"])
    hit = m.gallery.search(text_query_vector(m, u, m.gallery), 1)[0][0]
    assert hit.id == m.gallery.ids[int(np.argmax(m.joint_images(feats.clip) @ u[0]))]
    old = GalleryIndex(24, kind="flat")  # metric vectors only, as entrep wrote them before the joint block
    old.add(m.metric_vectors(feats), [{"path": str(p)} for p in paths])
    m.gallery = old
    with pytest.raises(ModelError, match="re-index"):
        m.search_text("a spur on the septum", k=3)
    with pytest.raises(ModelError, match="re-index"):
        m.search_image(paths[0], k=3)
