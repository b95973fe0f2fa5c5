"""Galleries of millions, on small seeded data: IVF-PQ with exact re-ranking, memory-mapped vectors, the SQLite
metadata store, old JSON galleries, and the auto thresholds lowered so every kind is reached in seconds."""

from __future__ import annotations

import json
import logging

import faiss
import numpy as np
import pytest

import entrep.retrieval.backend as backend
from entrep.errors import ModelError, UserError
from entrep.retrieval.index import GalleryIndex

LABELS = ["nose-left", "nose-right", "ear-left", "ear-right", "vc-open", "vc-closed", "throat"]
D = 32


def clustered(n: int, *, seed: int = 0, n_clusters: int = 40, spread: float = 0.6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(n_clusters, D))
    c = rng.integers(0, n_clusters, n)
    x = centres[c] + spread * rng.normal(size=(n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), c


def meta(c: np.ndarray) -> list[dict]:
    return [{"path": f"imgs/img{i:05d}.png", "label": LABELS[int(k) % 7], "content_hash": f"h{i}"}
            for i, k in enumerate(c)]


@pytest.fixture(scope="module")
def pq():
    x, c = clustered(3000)
    g = GalleryIndex(D, kind="auto", auto_threshold=500, auto_pq_threshold=2000)
    g.add(x, meta(c))
    return g, x, c


def exact(x: np.ndarray, q: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[set[int]]:
    s = q @ x.T
    if allowed is not None:
        s[:, ~allowed] = -np.inf
    return [set(np.argsort(-r, kind="stable")[:k].tolist()) for r in s]


def test_auto_picks_flat_ivf_then_ivfpq_by_size():
    for n, kind in ((400, "flat"), (1000, "ivf"), (2500, "ivfpq")):
        x, c = clustered(n)
        g = GalleryIndex(D, kind="auto", auto_threshold=500, auto_pq_threshold=2000, target_recall=None)
        g.add(x, meta(c))
        assert g.kind == kind
    with pytest.raises(UserError, match="auto_pq_threshold"):
        GalleryIndex(D, auto_threshold=100, auto_pq_threshold=50)


def test_ivfpq_holds_only_codes_and_reranks_to_exact_scores(pq):
    g, x, _ = pq
    assert g.kind == "ivfpq" and g.vector_storage == "memory"
    p = g.params
    assert p["m"] == D // 4 and 1 <= p["nbits"] <= 8 and p["nlist"] >= 2
    q, _ = clustered(50, seed=1)
    hits = g.search(q, 10)
    truth = exact(x, q, 10)
    recall = np.mean([len({h.id for h in hs} & t) / 10 for hs, t in zip(hits, truth)])
    assert recall >= 0.95
    # re-ranked against the float vectors: scores are exact cosines, best first
    for j, hs in enumerate(hits):
        assert np.allclose([h.score for h in hs], x[[h.id for h in hs]] @ q[j], atol=1e-5)
        assert [h.score for h in hs] == sorted((h.score for h in hs), reverse=True)
    r = g.build_report
    assert r.kind == "ivfpq" and r.recall_at_10 >= 0.95 and g.approximation["recall_at_10"] == r.recall_at_10
    assert "recall@10 vs exact" in str(r) and "under the wide filter" in str(r)
    f = r.filtered  # recall under class filters of about 1/7 and 4/7 of the gallery, re-ranking included
    assert set(f) == {"narrow", "wide"} and len(f["narrow"]["labels"]) == 1 and len(f["wide"]["labels"]) >= 3
    assert f["narrow"]["fraction"] < 0.3 and 0.4 < f["wide"]["fraction"] < 0.75
    assert all(v["recall_at_10"] >= 0.95 for v in f.values())


@pytest.mark.parametrize("exact_scan_rows", [0, 10_000])  # 0: the PQ path with an IDSelector; else an exact scan
@pytest.mark.parametrize("labels", [{"throat"}, set(LABELS[:4])])  # ~1/7 and ~4/7 of the gallery
def test_ivfpq_filters_never_return_a_filtered_out_row(pq, monkeypatch, exact_scan_rows, labels):
    monkeypatch.setattr(backend, "EXACT_SCAN_ROWS", exact_scan_rows)
    g, x, c = pq
    allowed = np.isin(np.array([LABELS[int(k) % 7] for k in c]), sorted(labels))
    q, _ = clustered(40, seed=2)
    hits = g.search(q, 10, allowed=labels, exclude_ids=[{0, 1}] * len(q))
    assert all(len(hs) == 10 for hs in hits)
    assert all(h.label in labels and h.id not in (0, 1) for hs in hits for h in hs)
    truth = exact(x, q, 10, allowed & ~np.isin(np.arange(len(x)), [0, 1]))
    assert np.mean([len({h.id for h in hs} & t) / 10 for hs, t in zip(hits, truth)]) >= 0.95


def test_ivfpq_removals_remove_and_survive_save_load(tmp_path):
    x, c = clustered(2600, seed=3)
    g = GalleryIndex(D, kind="ivfpq")
    g.add(x, meta(c))
    gone = g.remove([5, 17, "img00042.png"])
    assert gone == [5, 17, 42] and len(g) == 2597
    for hs in g.search(x[[5, 17, 42]], 10):
        assert not {5, 17, 42} & {h.id for h in hs}
    np.testing.assert_allclose(g.vectors, np.delete(x, [5, 17, 42], axis=0), atol=1e-6)
    g.save(tmp_path / "gal")
    h = GalleryIndex.load(tmp_path / "gal")
    assert h.kind == "ivfpq" and h.vector_storage == "memory-mapped" and len(h) == 2597
    assert h.items == g.items and h.params == g.params and h.build_report == g.build_report
    q, _ = clustered(20, seed=4)
    a, b = g.search(q, 10, allowed={"throat"}), h.search(q, 10, allowed={"throat"})
    assert [[(t.id, t.score, t.metadata) for t in r] for r in a] == [[(t.id, t.score, t.metadata) for t in r] for r in b]
    # vectors once: the memory-mapped float file; the FAISS file holds PQ codes only
    v = np.load(tmp_path / "gal" / "vectors.npy", mmap_mode="r")
    assert v.shape == (2597, D) and v.dtype == np.float32
    fi = faiss.read_index(str(tmp_path / "gal" / "index.faiss"))
    assert isinstance(fi, faiss.IndexIVFPQ) and fi.code_size < D * 4
    # a loaded gallery takes additions and removals (the map becomes an in-memory copy) and saves again
    assert h.add(x[:2], meta(c[:2])) == [2600, 2601]
    h.remove([2600, 100])
    assert 100 not in {t.id for t in h.search(x[100], 10)[0]}
    h.save(tmp_path / "gal")
    again = GalleryIndex.load(tmp_path / "gal")
    assert len(again) == 2597 and again.ids[-1] == 2601 and 100 not in set(again.ids.tolist())


def test_ivfpq_vector_file_problems_say_rebuild(tmp_path):
    x, c = clustered(2600, seed=5)
    g = GalleryIndex(D, kind="ivfpq", target_recall=None)
    g.add(x, meta(c))
    folder = g.save(tmp_path / "gal")
    np.save(folder / "vectors.npy", x[:10])
    with pytest.raises(ModelError, match="rebuild it with `entrep index`") as e:
        GalleryIndex.load(folder)
    assert "vectors.npy" in str(e.value) and "\n" not in str(e.value)
    (folder / "vectors.npy").unlink()
    with pytest.raises(ModelError, match="vector file is missing"):
        GalleryIndex.load(folder)


NAMES = ["ảnh nội soi mũi trái.png", "tai phải <b>viêm</b> & 'mủ' \"cấp\".png", "họng; DROP TABLE rows;--.jpg",
         "a\\b%_?.png"]


def test_metadata_store_round_trips_vietnamese_and_markup(tmp_path):
    x, _ = clustered(4, seed=6)
    g = GalleryIndex(D)
    g.add(x, [{"path": f"ca bệnh/{n}", "name": n, "label": "nose-left", "group": "mũi",
               "caption": "Vách ngăn lệch <script>alert(1)</script>\nđoạn 2 ✓", "content_hash": f"é{i}"}
              for i, n in enumerate(NAMES)])
    h = GalleryIndex.load(g.save(tmp_path / "gal"))
    assert h.items == g.items and [it.name for it in h.items] == NAMES
    assert h.metadata_for([3, 1]) == [g.items[3], g.items[1]]
    assert h.ids_for_names([NAMES[1], "absent.png"]) == [1]
    assert h.ids_for_hashes(["é2", "é0", None, "zz"]) == {"é2": {2}, "é0": {0}}
    assert h.remove(NAMES[2]) == [2] and h.ids_for_names([NAMES[2]]) == []
    with pytest.raises(UserError, match="not in the gallery"):
        h.remove("nowhere.png")
    hit = h.search(x[1], 1)[0][0]
    assert hit.id == 1 and hit.name == NAMES[1] and hit.metadata.caption.startswith("Vách ngăn")


def test_json_gallery_loads_converted_and_broken_ones_say_rebuild(tmp_path, caplog):
    x, c = clustered(60, seed=7)
    g = GalleryIndex(D)
    g.add(x, meta(c))
    g.remove([4])
    folder = g.save(tmp_path / "gal")
    meta_path = folder / "gallery.json"
    m = json.loads(meta_path.read_text())
    for name in ("rows.npy", "rows.sqlite"):
        (folder / name).unlink()
    old = {k: v for k, v in m.items() if k != "labels"}
    meta_path.write_text(json.dumps({**old, "version": 2, "items": [it.to_json() for it in g.items]}))
    caplog.set_level(logging.INFO, logger="entrep.retrieval")
    h = GalleryIndex.load(folder)
    assert "converted in memory" in caplog.text and h.items == g.items
    assert [t.id for t in h.search(x[7], 3)[0]] == [t.id for t in g.search(x[7], 3)[0]]
    h.save(folder)  # written in the current layout
    assert (folder / "rows.sqlite").is_file() and GalleryIndex.load(folder).items == g.items
    meta_path.write_text(json.dumps({**old, "version": 2, "items": [{"id": "x"}]}))
    with pytest.raises(ModelError, match="rebuild it with `entrep index`") as e:
        GalleryIndex.load(folder)
    assert "\n" not in str(e.value)


def test_missing_or_corrupt_store_files_say_rebuild(tmp_path):
    x, c = clustered(30, seed=8)
    g = GalleryIndex(D)
    g.add(x, meta(c))
    folder = g.save(tmp_path / "gal")
    (folder / "rows.sqlite").write_bytes(b"not a database" * 10)
    with pytest.raises(ModelError, match="rows.sqlite: unreadable gallery metadata"):
        GalleryIndex.load(folder)
    (folder / "rows.sqlite").unlink()
    with pytest.raises(ModelError, match="metadata file is missing"):
        GalleryIndex.load(folder)
    g.save(folder)
    np.save(folder / "rows.npy", np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(ModelError, match="rows.npy.*do not match"):
        GalleryIndex.load(folder)


def test_server_state_reports_the_gallery_kind_and_recall(pq):
    from types import SimpleNamespace

    from entrep.server.state import ServerState

    g = pq[0]
    model = SimpleNamespace(gallery=g, path=None)
    state = ServerState(model, hide_names=True, max_upload_bytes=1024, max_pixels=10_000, report_dir=None)
    info = state.gallery_info
    assert info["size"] == len(g) and info["kind"] == "ivfpq" and info["vector_storage"] == "memory"
    assert info["recall_at_10"] == g.build_report.recall_at_10 and info["approximation"]["filtered"]["wide"]
    x, c = clustered(50, seed=9)
    flat = GalleryIndex(D)
    flat.add(x, meta(c))
    model.gallery = flat
    assert state.gallery_info["kind"] == "flat" and state.gallery_info["recall_at_10"] is None
    model.gallery = None
    assert state.gallery_info is None


def test_ivfpq_effort_is_raised_until_target_recall(caplog):
    caplog.set_level(logging.INFO, logger="entrep.retrieval")
    x, c = clustered(2600, seed=10, n_clusters=8, spread=1.5)
    g = GalleryIndex(D, kind="ivfpq", nprobe=1, target_recall=0.99)
    g.add(x, meta(c))
    r = g.build_report
    worst = min([r.recall_at_10] + [f["recall_at_10"] for f in r.filtered.values()])
    assert worst >= 0.99 and g.params["nprobe"] > 1 and "IVF-PQ recall below 0.99" in caplog.text
    assert g.params["rerank_min"] <= backend.RERANK_MAX and r.params == g.params
