"""GalleryIndex: add / remove / filtered search / save-load for every kind, tiny and empty galleries."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

import entrep.retrieval.index as index_mod
from entrep.errors import ModelError, UserError
from entrep.retrieval.index import GalleryIndex, GalleryItem, Hit

KINDS = ["flat", "hnsw", "ivf"]
LABELS = ["nose-left", "nose-right", "ear-left", "ear-right", "vc-open", "vc-closed", "throat"]


def clustered(n: int, d: int = 16, *, seed: int = 0, n_clusters: int = 12, spread: float = 0.35) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, d))
    x = centres[rng.integers(0, n_clusters, n)] + spread * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def meta(n: int, start: int = 0) -> list[dict]:
    return [{"path": f"/gallery/imgs/img{i:04d}.png", "label": LABELS[i % 7], "group": f"p{i // 10}",
             "caption": f"finding {i}", "content_hash": f"h{i}"} for i in range(start, start + n)]


def build(kind: str, n: int = 400, d: int = 16, **kw) -> tuple[GalleryIndex, np.ndarray]:
    x = clustered(n, d)
    g = GalleryIndex(d, kind=kind, **kw)
    g.add(x, meta(n))
    return g, x


def exact_top(g: GalleryIndex, q: np.ndarray, k: int, allowed_rows=None) -> list[int]:
    rows = np.arange(len(g)) if allowed_rows is None else np.asarray(allowed_rows)
    s = g.vectors[rows] @ (q / np.linalg.norm(q))
    order = np.lexsort((g.ids[rows], -s))[:k]
    return g.ids[rows][order].tolist()


# ---- basics ---------------------------------------------------------------
def test_add_assigns_incremental_ids_and_keeps_rows_aligned():
    g, x = build("flat", n=20)
    assert len(g) == 20 and g.ids.tolist() == list(range(20))
    np.testing.assert_allclose(g.vectors, x, atol=1e-6)
    item = g.metadata_for([7])[0]
    assert item == GalleryItem(id=7, path="/gallery/imgs/img0007.png", name="img0007.png", label=LABELS[0],
                               group="p0", caption="finding 7", content_hash="h7")
    hits = g.search(x[7], 3)[0]
    assert isinstance(hits[0], Hit) and hits[0].id == 7 and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].metadata.name == hits[0].name == "img0007.png" and hits[0].label == LABELS[0]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_vectors_are_l2_normalised_and_read_only():
    g = GalleryIndex(4, kind="flat")
    g.add(np.array([[3.0, 4.0, 0, 0], [0, 0, 0, 2.0]]), [{"name": "a.png"}, {"path": "/x/b.png"}])
    np.testing.assert_allclose(g.vectors, [[0.6, 0.8, 0, 0], [0, 0, 0, 1]], atol=1e-6)
    with pytest.raises(ValueError):
        g.vectors[0, 0] = 5
    assert [it.name for it in g.items] == ["a.png", "b.png"] and g.items[0].path == "a.png"
    hit = g.search(np.array([0.0, 0, 0, 10.0]), 1)[0][0]
    assert hit.name == "b.png" and hit.score == pytest.approx(1.0)  # query normalised too: cosine score


def test_ids_are_never_reused_after_removal():
    g, x = build("flat", n=5)
    assert g.remove([4]) == [4]
    assert g.add(x[:2], meta(2, start=10)) == [5, 6]
    assert g.ids.tolist() == [0, 1, 2, 3, 5, 6] and g.next_id == 7


def test_accepts_records_and_gallery_items_as_metadata(tmp_path):
    from entrep.data.records import Record

    g = GalleryIndex(8, kind="flat")
    rec = Record(image=tmp_path / "imgs" / "r.png", label="throat", text="a caption", group="p9")
    old = GalleryItem(id=99, path="/a/q.png", name="q.png", label="ear-left")
    ids = g.add(clustered(2, 8), [rec, old])
    a, b = g.metadata_for(ids)
    assert (a.name, a.label, a.caption, a.path) == ("r.png", "throat", "a caption", str(rec.image))
    # a record's group is a patient/visit key, not the taxonomy group the gallery's "group" means
    assert a.group != "p9"
    assert b.id == 1 and b.label == "ear-left"  # the id is assigned by the index, not taken from the item


def test_bad_input_gives_clear_errors():
    g, x = build("flat", n=10)
    with pytest.raises(UserError, match="dimension 16"):
        g.search(np.ones((2, 8), np.float32), 3)
    with pytest.raises(UserError, match="dimension 16"):
        g.add(np.ones((1, 9)), meta(1))
    with pytest.raises(UserError, match="metadata"):
        g.add(x[:3], meta(2))
    with pytest.raises(UserError, match="all zeros"):
        g.add(np.zeros((1, 16)), meta(1))
    with pytest.raises(UserError, match="NaN"):
        g.search(np.full((1, 16), np.nan), 3)
    with pytest.raises(UserError, match="unknown keys"):
        g.add(x[:1], [{"path": "a.png", "lable": "throat"}])
    with pytest.raises(UserError, match="k must be"):
        g.search(x[:1], 0)
    with pytest.raises(UserError, match="unknown gallery ids"):
        g.metadata_for([12345])
    with pytest.raises(UserError, match="unknown index kind"):
        GalleryIndex(16, kind="lsh")


# ---- every kind: add/remove/search, tiny and empty --------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_empty_gallery_and_empty_batch(kind):
    g = GalleryIndex(16, kind=kind)
    assert len(g) == 0
    assert g.search(clustered(3), 5) == [[], [], []]
    assert g.search(np.zeros((0, 16), np.float32), 5) == []
    assert g.search([], 5) == []
    g.add(clustered(2), meta(2))
    g.remove([0, 1])
    assert len(g) == 0 and g.search(clustered(1), 5) == [[]]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_galleries_return_every_row(kind, n):
    g, x = build(kind, n=n)
    hits = g.search(x, 10)
    assert all(sorted(h.id for h in hs) == list(range(n)) for hs in hits)
    assert [hs[0].id for hs in hits] == list(range(n))
    only = g.search(x[:1], 10, exclude_ids=[{0}])[0]
    assert sorted(h.id for h in only) == list(range(1, n))


def test_tiny_ivf_falls_back_to_flat_with_a_log_line(caplog):
    caplog.set_level(logging.INFO, logger="entrep.retrieval")
    g, _ = build("ivf", n=3)
    assert g.requested_kind == "ivf" and g.kind == "flat"
    assert "IVF needs at least" in caplog.text


def test_small_ivf_reduces_nlist(caplog):
    caplog.set_level(logging.INFO, logger="entrep.retrieval")
    g, _ = build("ivf", n=200)
    assert g.kind == "ivf" and g.params["nlist"] == 200 // 39  # 4*sqrt(200)=57 lists would get 3 points each
    assert "nlist reduced" in caplog.text


@pytest.mark.parametrize("kind", KINDS)
def test_remove_by_id_and_name_then_search_never_returns_removed(kind):
    g, x = build(kind, n=300)
    removed = g.remove([3, 10, "img0042.png"])
    assert removed == [3, 10, 42] and len(g) == 297
    res = g.search(x[[3, 10, 42, 50]], 20)
    assert not {h.id for hs in res for h in hs} & {3, 10, 42}
    assert res[3][0].id == 50  # the rows left still map to the right ids (IVF: no id-map drift)
    for j in range(0, 297, 37):  # every kept row still finds itself first
        i = int(g.ids[j])
        assert g.search(x[i], 1)[0][0].id == i
    with pytest.raises(UserError, match="not in the gallery"):
        g.remove([3])
    assert g.remove(["nope.png", 11], missing_ok=True) == [11]


@pytest.mark.parametrize("kind", KINDS)
def test_k_larger_than_gallery_returns_all(kind):
    g, x = build(kind, n=90)
    hits = g.search(x[:2], 500)
    assert [len(h) for h in hits] == [90, 90]
    assert sorted(h.id for h in hits[0]) == list(range(90))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_add_after_build_without_rebuild(kind):
    g, x = build(kind, n=200)
    before = g._faiss
    new = g.add(clustered(5, seed=9), meta(5, start=500))
    assert g._faiss is before  # added in place
    assert new == [200, 201, 202, 203, 204]
    assert g.search(clustered(5, seed=9)[2], 1)[0][0].id == 202


# ---- filtering --------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("approximate", [False, True])
def test_filters_never_return_filtered_or_excluded_rows(kind, approximate, monkeypatch):
    if approximate:  # force the approximate structure + IDSelector path instead of the exact scan
        monkeypatch.setattr(index_mod, "EXACT_FILTER_FRACTION", 0.0)
    g, x = build(kind, n=420)
    g.remove([0, 1, 2, 200])  # HNSW rebuilds; exact scans must still map storage rows to the right ids
    rng = np.random.default_rng(1)
    qi = rng.choice(np.arange(3, 420), size=12, replace=False)
    q = x[qi] + 0.05 * rng.normal(size=(12, 16)).astype(np.float32)
    labels = np.array([it.label for it in g.items])
    per_query_labels = [{LABELS[j % 7]} for j in range(12)]
    excl = [set(rng.choice(420, size=30, replace=False).tolist()) | {int(i)} for i in qi]
    k = 15
    res = g.search(q, k, allowed=per_query_labels, exclude_ids=excl)
    for j, hits in enumerate(res):
        allowed_rows = np.flatnonzero((labels == LABELS[j % 7]) & ~np.isin(g.ids, list(excl[j])))
        assert len(hits) == k
        assert all(h.label == LABELS[j % 7] and h.id not in excl[j] for h in hits)
        assert len({h.id for h in hits}) == k
        if kind == "flat" or not approximate:  # a filter allowing 1/7 of the rows is answered exactly
            assert [h.id for h in hits] == exact_top(g, q[j], k, allowed_rows)


@pytest.mark.parametrize("kind", KINDS)
def test_selective_filter_still_fills_k(kind, monkeypatch):
    # HNSW graph search with a selector keeping 0.5% of rows comes back short; the index must search exactly
    monkeypatch.setattr(index_mod, "EXACT_FILTER_FRACTION", 0.0)
    g, x = build(kind, n=800)
    keep = np.zeros(800, bool)
    keep[[5, 77, 300, 640]] = True
    hits = g.search(x[400], 10, allowed=keep)[0]
    assert sorted(h.id for h in hits) == [5, 77, 300, 640]
    assert [h.id for h in hits] == exact_top(g, x[400], 10, np.flatnonzero(keep))


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_short_approximate_results_are_completed_exactly(kind, monkeypatch):
    # an approximate search that misses allowed rows (a graph walk that never reaches them) must not shorten results
    g, x = build(kind, n=300)
    real = g._faiss_search

    def lossy(q, k, mask, *, exact, frac=1.0):
        scores, ids = real(q, k, mask, exact=exact, frac=frac)
        if not exact:
            ids = ids.copy()
            ids[:, 1:] = -1
        return scores, ids

    monkeypatch.setattr(g, "_faiss_search", lossy)
    for allowed in (None, g.label_mask(LABELS[:4])):
        hits = g.search(x[7], 10, allowed=allowed, exclude_ids=[{7}])[0]
        rows = np.flatnonzero(allowed) if allowed is not None else None
        rows = [r for r in (rows if rows is not None else range(300)) if r != 7]
        assert [h.id for h in hits] == exact_top(g, x[7], 10, rows)


def test_allowed_forms_mask_callable_labels_and_2d():
    g, x = build("flat", n=70)
    q = x[:3]
    by_label = g.search(q, 5, allowed={"throat"})
    by_call = g.search(q, 5, allowed=lambda it: it.label == "throat")
    by_mask = g.search(q, 5, allowed=g.label_mask(["throat"]))
    by_2d = g.search(q, 5, allowed=np.tile(g.label_mask(["throat"]), (3, 1)))
    ids = [[h.id for h in hs] for hs in by_label]
    assert all(len(r) == 5 for r in ids)
    assert ids == [[h.id for h in hs] for hs in by_call] == [[h.id for h in hs] for hs in by_mask] == \
        [[h.id for h in hs] for hs in by_2d]
    assert all(g.metadata_for(r)[0].label == "throat" for r in ids)
    mixed = g.search(q, 3, allowed=[None, {"ear-left"}, lambda it: it.group == "p1"])
    assert mixed[0][0].id == 0
    assert all(h.label == "ear-left" for h in mixed[1]) and all(h.metadata.group == "p1" for h in mixed[2])
    assert g.search(q[:1], 5, allowed=np.zeros(70, bool)) == [[]]
    assert g.search(q[:1], 5, allowed={"no-such-label"}) == [[]]
    with pytest.raises(UserError, match="entries but there are 3 queries"):
        g.search(q, 5, allowed=["throat"])
    with pytest.raises(UserError, match="allowed\\[0\\]"):
        g.search(q, 5, allowed=["throat", None, None])
    with pytest.raises(UserError, match="bool array of shape"):
        g.search(q, 5, allowed=np.ones(69, bool))
    with pytest.raises(UserError, match="exclude_ids"):
        g.search(q, 5, exclude_ids=[1, 2, 3])


def test_exclude_one_set_for_all_queries():
    g, x = build("flat", n=30)
    res = g.search(x[:4], 30, exclude_ids={0, 1, 2, 3})
    assert all(len(hs) == 26 and not {h.id for h in hs} & {0, 1, 2, 3} for hs in res)


# ---- kind choice and approximation report ------------------------------------
def test_auto_kind_switches_at_threshold(caplog):
    assert GalleryIndex(8).auto_threshold == 100_000
    caplog.set_level(logging.INFO, logger="entrep.retrieval")
    g = GalleryIndex(16, kind="auto", auto_threshold=150)
    g.add(clustered(100), meta(100))
    assert g.kind == "flat" and g.build_report is None
    g.add(clustered(60, seed=3), meta(60, start=100))
    assert g.kind == index_mod.AUTO_APPROX_KIND and g.build_report is not None
    assert "switching index from flat" in caplog.text
    assert g.search(clustered(60, seed=3)[10], 1)[0][0].id == 110


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_build_reports_recall_against_exact(kind, caplog):
    caplog.set_level(logging.INFO, logger="entrep.retrieval")
    g, _ = build(kind, n=1500, d=16)
    r = g.build_report
    assert r.kind == kind and r.n == 1500 and r.n_sample == 200 and r.params == g.params
    assert r.recall_at_10 >= 0.9
    assert r.approx_ms_per_query > 0 and r.exact_ms_per_query > 0
    assert "recall@10 vs exact" in caplog.text


def test_build_report_recall_matches_an_independent_count():
    # unclustered data, 38 lists, 1 probed: a poor index whose recall the report must measure honestly
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1500, 16)).astype(np.float32)
    g = GalleryIndex(16, kind="ivf", nprobe=1, report_queries=60, target_recall=None)
    g.add(x, meta(1500))
    r = g.build_report
    rows = np.sort(np.random.default_rng(g.seed).choice(1500, size=60, replace=False))
    xn = g.vectors
    hits = 0
    for row in rows:
        s = xn @ xn[row]
        s[row] = -np.inf
        exact = set(np.argsort(-s)[:10].tolist())
        _, found = g._faiss.search(xn[row : row + 1], 11)  # ids == rows: nothing removed
        got = [int(i) for i in found[0] if i >= 0 and i != row][:10]
        hits += len(exact & set(got))
    assert r.recall_at_10 == pytest.approx(hits / 600)
    assert r.recall_at_10 < 0.9


# ---- save / load --------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, tmp_path):
    g, x = build(kind, n=300)
    g.remove([5, 6])
    q = clustered(8, seed=4)
    before = g.search(q, 7, allowed={"nose-left", "throat"}, exclude_ids=[{1}] * 8)
    g.save(tmp_path / "gal")
    h = GalleryIndex.load(tmp_path / "gal")
    after = h.search(q, 7, allowed={"nose-left", "throat"}, exclude_ids=[{1}] * 8)
    assert [[(a.id, a.score, a.metadata) for a in hs] for hs in before] == \
        [[(a.id, a.score, a.metadata) for a in hs] for hs in after]
    assert h.kind == g.kind and h.params == g.params and h.next_id == g.next_id == 300
    assert h.items == g.items and np.array_equal(h.vectors, g.vectors)
    assert h.build_report == g.build_report
    assert h.add(clustered(1, seed=7), meta(1, start=900)) == [300]
    h.remove([7])
    assert 7 not in {hit.id for hit in h.search(x[7], 5)[0]}


def test_save_load_empty_gallery(tmp_path):
    GalleryIndex(16, kind="ivf").save(tmp_path / "empty")
    g = GalleryIndex.load(tmp_path / "empty")
    assert len(g) == 0 and g.requested_kind == "ivf" and g.search(clustered(1), 3) == [[]]


def test_failed_save_keeps_the_previous_folder(tmp_path, monkeypatch):
    g, x = build("flat", n=20)
    g.save(tmp_path / "gal")
    g.add(clustered(3, seed=2), meta(3, start=20))

    def boom(*a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(index_mod.faiss, "write_index", boom)
    with pytest.raises(OSError):
        g.save(tmp_path / "gal")
    assert len(GalleryIndex.load(tmp_path / "gal")) == 20
    assert [p.name for p in tmp_path.iterdir()] == ["gal"]


def test_load_errors_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="no gallery index folder"):
        GalleryIndex.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="gallery.json is missing"):
        GalleryIndex.load(tmp_path / "empty")
    g, _ = build("flat", n=10)
    folder = g.save(tmp_path / "gal")
    meta_path = folder / "gallery.json"
    good = json.loads(meta_path.read_text())

    meta_path.write_text(json.dumps({**good, "version": 99}))
    with pytest.raises(ModelError, match="version 99"):
        GalleryIndex.load(folder)
    meta_path.write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        GalleryIndex.load(folder)
    meta_path.write_text(json.dumps({**good, "n": 11}))
    with pytest.raises(ModelError, match="do not match"):
        GalleryIndex.load(folder)
    meta_path.write_text(json.dumps(good))
    (folder / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot read FAISS index"):
        GalleryIndex.load(folder)
    (folder / "index.faiss").unlink()
    with pytest.raises(ModelError, match="missing"):
        GalleryIndex.load(folder)


def test_single_query_search_restores_the_faiss_thread_setting():
    import faiss

    g, x = build("hnsw", n=50)
    before = faiss.omp_get_max_threads()
    g.search(x[:1], 3)  # runs on one thread
    g.search(np.repeat(x, 1, axis=0), 3)  # a batch uses the configured threads
    assert faiss.omp_get_max_threads() == before


def test_failed_add_leaves_the_index_unchanged(monkeypatch):
    g = GalleryIndex(16, kind="auto", auto_threshold=30)
    g.add(clustered(20), meta(20))

    def boom(*args, **kwargs):
        raise MemoryError("out of memory")

    monkeypatch.setattr(g, "_build", boom)  # crossing the threshold triggers a rebuild, which fails
    with pytest.raises(MemoryError):
        g.add(clustered(60, seed=1), meta(60, start=20))
    assert len(g) == 20 and g.next_id == 20 and len(g.items) == 20 and g.kind == "flat"
    assert g.search(clustered(20)[3], 1)[0][0].id == 3


@pytest.mark.parametrize("kind, weak", [("ivf", {"nprobe": 1}), ("hnsw", {"hnsw_m": 4, "ef_construction": 8, "ef_search": 4})])
def test_search_effort_is_raised_until_target_recall(kind, weak, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger="entrep.retrieval")
    x = np.random.default_rng(5).normal(size=(1500, 16)).astype(np.float32)
    untuned = GalleryIndex(16, kind=kind, target_recall=None, **weak)
    untuned.add(x, meta(1500))
    g = GalleryIndex(16, kind=kind, target_recall=0.95, **weak)
    g.add(x, meta(1500))
    assert untuned.build_report.recall_at_10 < 0.95 <= g.build_report.recall_at_10
    key = "nprobe" if kind == "ivf" else "efSearch"
    assert g.params[key] > untuned.params[key] and g.build_report.params == g.params
    assert f"{key} " in caplog.text
    g.save(tmp_path / "g")
    assert GalleryIndex.load(tmp_path / "g").measure_approximation().recall_at_10 == g.build_report.recall_at_10


def as_json_gallery(folder, version: int) -> None:
    """Rewrite a saved gallery folder in the layout of format versions 1-2: the metadata as one JSON list."""
    meta_path = folder / "gallery.json"
    meta = json.loads(meta_path.read_text())
    items = [it.to_json() for it in GalleryIndex.load(folder).items]
    for name in ("rows.npy", "rows.sqlite"):
        (folder / name).unlink()
    meta.pop("labels")
    meta_path.write_text(json.dumps({**meta, "version": version, "items": items}))


@pytest.mark.parametrize("kind", KINDS)
def test_vectors_are_saved_once_and_version_1_folders_still_load(kind, tmp_path, caplog):
    g, x = build(kind, n=120)
    g.remove([3, 50])
    folder = g.save(tmp_path / "gal")
    # no second copy of the vectors: FAISS holds them (rows.* hold ids, label codes and metadata)
    assert sorted(p.name for p in folder.iterdir()) == ["gallery.json", "index.faiss", "rows.npy", "rows.sqlite"]
    np.testing.assert_allclose(GalleryIndex.load(folder).vectors, np.delete(x, [3, 50], axis=0), atol=1e-6)
    # a folder written by the previous layout: version 1 with JSON metadata and a vectors.npy copy
    as_json_gallery(folder, 1)
    np.save(folder / "vectors.npy", g.vectors)
    caplog.set_level(logging.INFO, logger="entrep.retrieval")
    old = GalleryIndex.load(folder)
    assert "converted in memory" in caplog.text
    assert old.items == g.items and np.array_equal(old.vectors, g.vectors) and old.kind == g.kind
    assert [h.id for h in old.search(x[7], 5)[0]] == [h.id for h in g.search(x[7], 5)[0]]
