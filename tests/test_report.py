"""Paper-layout tables, figures and the written report folder (Markdown, HTML, PNG, JSON)."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from entrep.errors import UserError
from entrep.report import plots
from entrep.report.html import scrub_names, write_report
from entrep.report.metrics import fine_and_coarse_summary
from entrep.report.document import report_markdown
from entrep.report.tables import (
    classification_table,
    comparison_table,
    retrieval_table,
    threshold_table,
)
from entrep.taxonomy import ENT, Taxonomy


# ---- fixtures -----------------------------------------------------------------
def _paper_table4() -> dict:
    """The paper's Table 4 (prototype, fine labels) in the summary schema."""
    rows = {
        "ear-left": (0.5385, 0.7778, 0.6364, 18),
        "ear-right": (0.6923, 0.4500, 0.5455, 20),
        "nose-left": (0.5000, 0.7021, 0.5841, 47),
        "nose-right": (0.4500, 0.1957, 0.2727, 46),
        "throat": (0.5000, 0.8000, 0.6154, 10),
        "vc-closed": (0.6087, 0.6667, 0.6364, 21),
        "vc-open": (0.7727, 0.7083, 0.7391, 24),
    }
    return {
        "accuracy": 0.5591,
        "macro_f1": 0.5756,
        "weighted_f1": 0.5356,
        "per_class": {c: dict(zip(("precision", "recall", "f1", "support"), v)) for c, v in rows.items()},
        "macro_avg": {"precision": 0.5803, "recall": 0.6144, "f1": 0.5756, "support": 186},
        "weighted_avg": {"precision": 0.5595, "recall": 0.5591, "f1": 0.5356, "support": 186},
        "n": 186,
    }


def _brief(acc: float, mf1: float, wf1: float) -> dict:
    return {"accuracy": acc, "macro_f1": mf1, "weighted_f1": wf1}


def _tiny_evaluation(seed: int = 0, n: int = 40) -> tuple[dict, list[str], list[str]]:
    """A small but complete evaluation built from seeded predictions on ENT labels."""
    rng = np.random.default_rng(seed)
    y = list(rng.choice(ENT.classes, size=n))
    def noisy(p):
        return [ENT.mirror_of(c) if rng.random() < p else c for c in y]
    hybrid_pred = noisy(0.1)
    systems = {
        "prototype": fine_and_coarse_summary(y, noisy(0.4), ENT),
        "baseline": {"fine": fine_and_coarse_summary(y, noisy(0.2), ENT)["fine"]},
        "hybrid": fine_and_coarse_summary(y, hybrid_pred, ENT),
    }
    ev = {
        "n_images": n,
        "classification": {**systems["hybrid"], "systems": systems},
        "retrieval": {
            "i2i": {"class": {"recall@1": 0.9, "recall@5": 0.95, "recall@10": 0.97, "mrr": 0.92, "n_queries": n},
                    "pair": {"recall@1": 0.55, "recall@5": 0.8, "recall@10": 0.9, "mrr": 0.66, "n_queries": 12}},
            "t2i": {"class": {"recall@1": 0.85, "recall@5": 0.9, "recall@10": 0.93, "mrr": 0.88, "n_queries": 30}},
        },
        "hybrid": {"threshold": 0.99, "tuned_threshold": 0.93, "flip_tta": True, "deferred_fraction": 0.5,
                   "results_at_thresholds": {"0.99": systems["hybrid"], "0.93": fine_and_coarse_summary(y, noisy(0.15), ENT)}},
        "model": {"profile": "offline", "encoders": {"clip_image": "effnet-lite0", "clip_text": "minilm-l6"},
                  "taxonomy": ENT.to_dict(), "trained_on": "/secure/site/P0042_visits/train"},
        "data": {"source": "/secure/site/P0042_visits/test.jsonl", "n_images": n,
                 "class_counts": {c: y.count(c) for c in ENT.classes}},
    }
    return ev, y, hybrid_pred


def _embeddings(labels: list[str], seed: int = 0, dim: int = 16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = {c: rng.normal(size=dim) * 4 for c in sorted(set(labels))}
    return np.stack([centres[c] + rng.normal(size=dim) for c in labels]).astype(np.float32)


def _png_ok(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    assert im.format == "PNG"
    assert np.asarray(im.convert("L"), dtype=float).std() > 5  # not blank
    return im


# ---- tables -------------------------------------------------------------------
def test_classification_table_reproduces_paper_table4_layout():
    t = classification_table(_paper_table4(), "Prototype classification report over fine-grained labels")
    md = t.markdown()
    assert md.startswith("Prototype classification report over fine-grained labels (accuracy: 55.91%).\n")
    assert "| Class | Precision | Recall | F1-score | Support |" in md
    assert "| ear-left | 0.5385 | 0.7778 | 0.6364 | 18 |" in md
    assert "| nose-right | 0.4500 | 0.1957 | 0.2727 | 46 |" in md
    lines = [l for l in md.splitlines() if l.startswith("| ") and ":---" not in l]
    assert lines[-2] == "| Macro Avg | 0.5803 | 0.6144 | 0.5756 | 186 |"
    assert lines[-1] == "| Weighted Avg | 0.5595 | 0.5591 | 0.5356 | 186 |"
    assert len(lines) == 1 + 7 + 2 and t.n_summary == 2


def test_comparison_table_paper_table9_and_missing_systems():
    ev = {"classification": {"systems": {
        "hybrid": {"fine": _brief(0.9409, 0.9442, 0.9410)},
        "prototype": {"fine": _brief(0.5591, 0.5756, 0.5356), "coarse": _brief(0.9086, 0.8542, 0.9179)},
        "baseline": {"fine": _brief(0.9140, 0.9124, 0.9135)},
    }}}
    md = comparison_table(ev).markdown()
    rows = [l for l in md.splitlines() if l.startswith("| ") and "Model" not in l and ":---" not in l]
    assert rows == [  # paper order, whatever the dict order
        "| Prototype | 55.91% | 0.5756 | 0.5356 |",
        "| Baseline head | 91.40% | 0.9124 | 0.9135 |",
        "| Hybrid model | 94.09% | 0.9442 | 0.9410 |",
    ]
    coarse = comparison_table(ev, "coarse")
    assert [r[0] for r in coarse.rows] == ["Prototype"]
    del ev["classification"]["systems"]["baseline"]
    assert [r[0] for r in comparison_table(ev).rows] == ["Prototype", "Hybrid model"]
    assert comparison_table({}) is None
    assert comparison_table({"classification": {"fine": _paper_table4()}}) is None


def test_retrieval_table_rows_only_for_present_parts():
    ev, _, _ = _tiny_evaluation()
    t = retrieval_table(ev)
    assert t.header == ("Task", "Relevance", "Recall@1", "Recall@5", "Recall@10", "MRR", "Queries")
    assert t.rows == (
        ("Image-to-Image", "class", "0.9000", "0.9500", "0.9700", "0.9200", "40"),
        ("Image-to-Image", "pair", "0.5500", "0.8000", "0.9000", "0.6600", "12"),
        ("Text-to-Image", "class", "0.8500", "0.9000", "0.9300", "0.8800", "30"),
    )
    assert retrieval_table({"retrieval": {"t2i": {}}}) is None
    assert retrieval_table({}) is None
    only_r1 = retrieval_table({"retrieval": {"i2i": {"class": {"recall@1": 0.5}}}})
    assert only_r1.rows == (("Image-to-Image", "class", "0.5000", "–", "–"),)


def test_threshold_table_marks_used_and_tuned():
    ev, _, _ = _tiny_evaluation()
    t = threshold_table(ev)
    notes = {r[0]: r[-1] for r in t.rows}
    assert notes == {"0.99": "used", "0.93": "tuned"}
    assert "Coarse accuracy" in t.header
    assert threshold_table({"hybrid": {"threshold": 0.9}}) is None


def test_report_markdown_skips_absent_parts():
    md = report_markdown({"classification": {"fine": _paper_table4()}})
    assert "Final model classification report over fine-grained labels (accuracy: 55.91%)." in md
    for absent in ("## Comparison", "## Retrieval", "## Hybrid rule", "coarse"):
        assert absent not in md
    assert "no classification or retrieval results" in report_markdown({})


def test_report_markdown_numbers_tables_in_order_and_hides_paths():
    ev, _, _ = _tiny_evaluation()
    md = report_markdown(ev)
    numbers = [int(m) for m in re.findall(r"^Table (\d+):", md, flags=re.M)]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 8
    assert md.index("## Comparison") < md.index("## Classification reports") < md.index("## Retrieval")
    assert "/secure/site" not in md and "test.jsonl" in md


# ---- figures -------------------------------------------------------------------
def test_confusion_png_is_a_real_picture():
    im = _png_ok(plots.confusion_png([[5, 1], [0, 3]], ["ear-left", "ear-right"], title="t"))
    assert im.width > 200 and im.height > 200
    with pytest.raises(UserError):
        plots.confusion_png([[1, 2]], ["a", "b"])
    with pytest.raises(UserError, match="not among"):
        plots.confusion_png_from_predictions(["a"], ["z"], ["a", "b"])


def test_tsne_projection_seeded_clamped_and_subsampled():
    labels = [c for c in ENT.classes for _ in range(6)]  # 42 points
    X = _embeddings(labels)
    p1 = plots.tsne_project(X, seed=3, max_points=30)
    p2 = plots.tsne_project(X, seed=3, max_points=30)
    assert p1.subsampled and len(p1.index) == 30 and p1.n_total == 42
    np.testing.assert_array_equal(p1.index, p2.index)
    np.testing.assert_allclose(p1.coords, p2.coords)
    assert p1.perplexity < 30 / 3
    small = plots.tsne_project(X[:7], seed=0)
    assert small.perplexity < 7 / 3 and small.coords.shape == (7, 2)
    with pytest.raises(UserError, match="at least"):
        plots.tsne_project(X[:3])
    with pytest.raises(UserError, match="NaN"):
        plots.tsne_project(np.full((8, 4), np.nan))


def test_label_colours_pair_mirror_classes_in_one_hue_family():
    cols = plots.label_colours(ENT.classes, dict(ENT.groups))
    assert len(set(cols.values())) == len(ENT.classes)
    flat = plots.label_colours(["a", "b", "c"])
    assert len(set(flat.values())) == 3


# ---- the written report -----------------------------------------------------------
def _data_uris(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_write_report_writes_self_contained_html_md_png_json(tmp_path):
    ev, y, pred = _tiny_evaluation()
    ev["predictions"] = [{"image": "/secure/site/P0042_visit3_left.png", "label": "nose-left"}]
    X = _embeddings(y)
    out = tmp_path / "report"
    paths = write_report(
        out, ev,
        confusions={"hybrid-fine": (y, pred, ENT.classes), "head only": (y, y, ENT.classes)},
        embeddings={"image": (X, y, [ENT.group_of(c) for c in y])},
    )
    assert paths["markdown"] == out / "report.md" and paths["html"] == out / "report.html"
    # a confusion matrix for every summary (3 systems: 5 levels) + the extra one, comparison, t-SNE
    assert set(paths["figures"]) >= {"comparison", "confusion:hybrid-fine", "confusion:prototype-coarse",
                                     "confusion:baseline-fine", "confusion:head only", "tsne:image"}
    for p in paths["figures"].values():
        assert p.parent == out / "figures"
        _png_ok(p.read_bytes())
    assert not list(out.rglob("*.tmp")), "atomic writes leave no temporaries"

    page = paths["html"].read_text(encoding="utf-8")
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', page), "no external resources"
    assert "<link" not in page and "<script" not in page and "@import" not in page
    assert "<style>" in page
    inlined = _data_uris(page)
    assert len(inlined) == len(paths["figures"])
    for data in inlined:
        _png_ok(data)
    # comparison table first, then the per-class tables, then retrieval
    assert page.index("Comparison of the classifiers") < page.index("Prototype classification report") \
        < page.index("Retrieval performance")
    hyb = ev["classification"]["systems"]["hybrid"]["fine"]
    assert f"{100 * hyb['accuracy']:.2f}%" in page
    assert "Threshold tuned on held-out data: 0.93." in page

    md = paths["markdown"].read_text(encoding="utf-8")
    for key, p in paths["figures"].items():
        assert f"](figures/{p.name})" in md
    # no paths or image names leak anywhere
    for text in (page, md, paths["json"].read_text()):
        assert "P0042" not in text and "/secure" not in text
    saved = json.loads(paths["json"].read_text())
    assert saved["classification"]["systems"]["hybrid"]["fine"] == hyb
    assert saved["predictions"][0]["image"] == "[hidden]"


def test_write_report_flat_taxonomy_and_bare_evaluation(tmp_path):
    flat = Taxonomy(name="otoscopy", classes=("normal", "effusion", "perforation"))
    rng = np.random.default_rng(1)
    y = list(rng.choice(flat.classes, size=24))
    pred = [c if rng.random() < 0.8 else "normal" for c in y]
    summary = fine_and_coarse_summary(y, pred, flat)
    ev = {"n_images": 24, "classification": {**summary, "systems": {"prototype": summary, "hybrid": summary}}}
    paths = write_report(tmp_path / "r", ev, embeddings={"image": (_embeddings(y), y, None)})
    md = paths["markdown"].read_text()
    assert "coarse" not in md.lower() and "## Retrieval" not in md
    assert "Prototype classification report over fine-grained labels" in md
    _png_ok(paths["figures"]["tsne:image"].read_bytes())

    bare = write_report(tmp_path / "bare", {})
    assert bare["figures"] == {}
    assert "no classification or retrieval results" in bare["html"].read_text()


def test_write_report_rejects_a_file_as_folder(tmp_path):
    f = tmp_path / "x"
    f.write_text("")
    with pytest.raises(UserError, match="existing file"):
        write_report(f, {})
    with pytest.raises(UserError, match="mapping"):
        write_report(tmp_path / "y", [1, 2])


def test_scrub_names_hides_images_and_paths_but_keeps_numbers():
    obj = {"source": "/a/b/c.jsonl", "errors": {"p17_x.JPG": "nose-left"}, "acc": 0.5,
           "weights": "hf-hub:microsoft/BiomedCLIP", "items": ["img.png", "ok"]}
    assert scrub_names(obj) == {"source": "c.jsonl", "errors": {}, "acc": 0.5,
                                "weights": "hf-hub:microsoft/BiomedCLIP", "items": ["[hidden]", "ok"]}
