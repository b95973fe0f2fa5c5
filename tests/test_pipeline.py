"""fit / evaluate / predict / index / search / submit on tiny synthetic data, through the library and the CLI."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from entrep.cli import app
from entrep.model import load_model
from entrep.taxonomy import ENT, Taxonomy

runner = CliRunner()


def _run(*args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


# ---- label swap for flipped training views ---------------------------------


def test_flipped_views_carry_the_mirror_label_for_every_taxonomy():
    from entrep.model.train import view_labels

    y = np.arange(7)
    flipped = [ENT.class_name(i) for i in view_labels(y, "aug2-flip", ENT)]
    assert flipped == ["nose-left", "nose-right", "ear-left", "ear-right", "vc-open", "vc-closed", "throat"]
    assert view_labels(y, "aug1", ENT).tolist() == y.tolist()
    knee = Taxonomy(name="k", classes=("hip", "knee left", "knee right"), groups={"hip": "hip", "knee left": "knee", "knee right": "knee"},
                    mirrors={"knee left": "knee right", "knee right": "knee left"})
    assert view_labels(np.array([0, 1, 2]), "flip", knee).tolist() == [0, 2, 1]
    flat = Taxonomy(name="f", classes=("a", "b"))
    assert view_labels(np.array([0, 1]), "flip", flat).tolist() == [0, 1]


# ---- the fitted tiny model ----------------------------------------------------


def test_evaluate_json_has_the_guide_schema(tiny_model_dir, tiny_data_dir, tmp_path):
    out = tmp_path / "ev.json"
    _run("evaluate", "--model", tiny_model_dir, "--data", tiny_data_dir, "--json", out, "--report", tmp_path / "rep")
    ev = json.loads(out.read_text())
    assert ev["n_images"] > 0
    cls = ev["classification"]
    for level in ("fine", "coarse"):
        for k in ("accuracy", "macro_f1", "weighted_f1", "per_class"):
            assert k in cls[level]
    assert set(cls["fine"]["per_class"]) == set(ENT.classes)
    assert set(cls["fine"]["per_class"]["nose-left"]) >= {"precision", "recall", "f1", "support"}
    assert {"prototype", "baseline", "hybrid"} <= set(cls["systems"]) <= {"prototype", "baseline", "hybrid", "policy"}
    pol = ev["policy"]
    assert pol["chosen"] in pol["validation"]  # every candidate's validation score, and the chosen one
    best_component = max(pol["validation"][n] for n in pol["validation"] if not n.startswith("hybrid("))
    assert pol["validation"][pol["chosen"]] >= best_component
    assert set(cls["systems"]["hybrid"]) == {"fine", "coarse"}
    for task in ("i2i", "t2i"):
        for k in ("recall@1", "recall@5", "recall@10", "mrr"):
            assert 0.0 <= ev["retrieval"][task]["class"][k] <= 1.0
    assert "pair" in ev["retrieval"]["i2i"]  # the synthetic data has i2i pairs
    # the model learned something: far above chance (1/7) on its own training data
    assert cls["fine"]["accuracy"] > 0.6
    assert (tmp_path / "rep" / "report.html").is_file()


def test_predict_json_schema_and_source(tiny_model_dir, tiny_data_dir):
    imgs = sorted((tiny_data_dir / "imgs").glob("*.png"))[:3]
    res = _run("predict", "--model", tiny_model_dir, *imgs, "--json")
    preds = json.loads(res.stdout)
    assert len(preds) == 3
    for p in preds:
        assert set(p) == {"image", "label", "label_id", "group", "confidence", "source"}
        assert ENT.class_name(p["label_id"]) == p["label"]
        assert p["group"] == ENT.group_of(p["label"])
        assert p["source"] in ("prototype", "head")
        assert 0.0 <= p["confidence"] <= 1.0


def test_save_load_round_trip_gives_identical_predictions(tiny_model_dir, tiny_data_dir, tmp_path):
    from entrep.model import load_model, save_model

    imgs = sorted((tiny_data_dir / "imgs").glob("*.png"))[:6]
    m1 = load_model(tiny_model_dir)
    p1 = m1.predict(imgs)
    save_model(m1, tmp_path / "copy")
    p2 = load_model(tmp_path / "copy").predict(imgs)
    assert p1 == [dict(p, image=str(i)) for p, i in zip(p2, imgs)]
    assert len(load_model(tmp_path / "copy").gallery) == len(m1.gallery)


def test_predict_errors_are_one_line_naming_the_file(tiny_model_dir, tmp_path):
    from entrep.model import load_model
    from entrep.data.images import ImageError

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    res = runner.invoke(app, ["predict", "--model", str(tiny_model_dir), str(bad)])
    assert res.exit_code != 0 and isinstance(res.exception, ImageError)
    assert "broken.png" in str(res.exception) and "\n" not in str(res.exception)
    from entrep.errors import ModelError

    with pytest.raises(ModelError, match="model.json missing"):
        load_model(tmp_path)


def test_model_reads_grayscale_and_rgba_images(tiny_model_dir, tiny_data_dir, tmp_path):
    from entrep.model import load_model

    src = sorted((tiny_data_dir / "imgs").glob("*.png"))[0]
    im = Image.open(src)
    im.convert("L").save(tmp_path / "gray.png")
    im.convert("RGBA").save(tmp_path / "rgba.png")
    preds = load_model(tiny_model_dir).predict([tmp_path / "gray.png", tmp_path / "rgba.png"])
    assert all(p["label"] in ENT.classes for p in preds)


def test_image_search_filters_to_the_predicted_class_and_excludes_the_query(tiny_model_dir, tiny_data_dir):
    from entrep.model import load_model
    from entrep.retrieval.search import search_image

    m = load_model(tiny_model_dir)
    cls = json.loads((tiny_data_dir / "cls.json").read_text())
    query = next(n for n, lbl in cls.items() if lbl == "nose-left")
    res = search_image(m, tiny_data_dir / "imgs" / query, k=5, ranking="hard")
    pred = res["prediction"]["label"]
    assert res["results"], "the gallery has other images of the class"
    assert all(h["label"] == pred for h in res["results"])  # a hard filter: nose-left never returns nose-right
    assert query not in [h["name"] for h in res["results"]]
    coarse = search_image(m, tiny_data_dir / "imgs" / query, k=50, filter="coarse", ranking="hard")
    assert {h["group"] for h in coarse["results"]} == {ENT.group_of(pred)}
    scores = [h["score"] for h in coarse["results"]]
    assert scores == sorted(scores, reverse=True)


def test_search_cli_text_and_image(tiny_model_dir, tiny_data_dir):
    res = _run("search", "--model", tiny_model_dir, "--text", "the tympanic membrane is intact", "-k", "4", "--json")
    hits = json.loads(res.stdout)
    assert len(hits) == 4 and set(hits[0]) == {"image", "score", "label"}
    img = sorted((tiny_data_dir / "imgs").glob("*.png"))[0]
    hits = json.loads(_run("search", "--model", tiny_model_dir, "--image", img, "--json").stdout)
    assert hits and str(img) not in [h["image"] for h in hits]
    res = runner.invoke(app, ["search", "--model", str(tiny_model_dir), "--text", "   "])
    assert res.exit_code != 0 and "empty text query" in str(res.exception)


def test_text_search_auto_filter_uses_the_class_named(tiny_model_dir):
    from entrep.model import load_model
    from entrep.retrieval.search import search_text

    assert ENT.classes_named_in("a perforation in the left ear") == {"ear-left"}
    assert ENT.classes_named_in("nasal polyp") == {"nose-left", "nose-right"}
    assert ENT.classes_named_in("a spur on the septum") is None
    res = search_text(load_model(tiny_model_dir), "left ear, intact membrane", k=3, filter="auto")
    assert all(h["label"] == "ear-left" for h in res["results"])


def test_index_adds_and_removes_without_rebuilding(tiny_model_dir, tiny_data_dir, tmp_path):
    from entrep.model import load_model

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    imgs = sorted((tiny_data_dir / "imgs").glob("*.png"))
    for p in imgs[:5]:
        shutil.copy(p, gallery / p.name)
    _run("index", "--model", model_dir, "--gallery", gallery, "--rebuild")
    g = load_model(model_dir).gallery
    assert len(g) == 5
    ids_before = set(g.ids.tolist())
    (gallery / imgs[0].name).unlink()
    shutil.copy(imgs[7], gallery / imgs[7].name)
    res = _run("index", "--model", model_dir, "--gallery", gallery)
    assert "1 added, 1 removed" in res.output
    g2 = load_model(model_dir).gallery
    assert len(g2) == 5 and len(ids_before & set(g2.ids.tolist())) == 4  # unchanged rows keep their ids
    assert all(it.label in ENT.classes for it in g2.items)  # unlabelled gallery: predicted labels


def test_submissions_for_all_three_tracks(tiny_model_dir, tiny_data_dir, tmp_path):
    from entrep.data.readers import read_queries
    from entrep.challenge.format import check_submission, read_submission

    q = tiny_data_dir / "queries"
    names = {p.name for p in (q / "imgs").glob("*.png")}
    for track, csv in ((1, "cls.csv"), (2, "i2i.csv"), (3, "t2i.csv")):
        out = tmp_path / f"track{track}.zip"
        _run("submit", "--model", tiny_model_dir, "--track", track, "--queries", q / csv, "--images", q / "imgs", "--out", out)
        queries = read_queries(q / csv)
        assert check_submission(out, track, queries, image_names=names if track > 1 else None) == []
        with zipfile.ZipFile(out) as z:
            assert len(z.namelist()) == 1 and "/" not in z.namelist()[0]
        sub = read_submission(out)
        assert list(sub) == list(dict.fromkeys(queries))  # every query, the first line included
        if track == 1:
            assert all(isinstance(v, int) and 0 <= v <= 6 for v in sub.values())
        if track == 2:
            assert all(k != v for k, v in sub.items())  # the query itself is never the answer


def test_submit_names_a_missing_query_image(tiny_model_dir, tiny_data_dir, tmp_path):
    csv = tmp_path / "cls.csv"
    csv.write_text("no_such_image.png\n")
    res = runner.invoke(app, ["submit", "--model", str(tiny_model_dir), "--track", "1", "--queries", str(csv),
                              "--images", str(tiny_data_dir / "queries" / "imgs"), "--out", str(tmp_path / "s.zip")])
    assert res.exit_code != 0 and "no_such_image.png" in str(res.exception)
    assert not (tmp_path / "s.zip").exists()


# ---- a user taxonomy: 4 flat classes in folders with spaces --------------------


def test_flat_user_taxonomy_from_class_folders(tmp_path):
    from entrep.model import load_model, save_model
    from entrep.config import AlignConfig, FitConfig, HeadConfig
    from entrep.data.readers import read_dataset
    from entrep.data.synthetic import render_image
    from entrep.model.train import fit

    source = {"normal ear": "ear-left", "acute otitis media": "nose-left", "ear wax": "vc-open", "perforated drum": "throat"}
    rng = np.random.default_rng(0)
    for cls, look in source.items():
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(render_image(look, [], rng)).save(tmp_path / "data" / cls / f"{i}.png")
    ds = read_dataset(tmp_path / "data")
    assert not ds.taxonomy.hierarchical and set(ds.taxonomy.classes) == set(source)
    cfg = FitConfig(n_aug=0, head=HeadConfig(max_epochs=30, patience=5), align=AlignConfig(epochs=40), val_fraction=0.25)
    model = fit(ds, config=cfg)
    assert model.parts.group_head is None and model.parts.within_heads == {}
    save_model(model, tmp_path / "m")
    m = load_model(tmp_path / "m")
    ev, _ = m.evaluate(ds)
    assert "coarse" not in ev["classification"] and set(ev["classification"]["systems"]["hybrid"]) == {"fine"}
    assert ev["classification"]["fine"]["accuracy"] > 0.5
    pred = m.predict([tmp_path / "data" / "ear wax" / "0.png"])[0]
    assert pred["label"] in source and pred["group"] == pred["label"]


def test_side_free_finding_returns_both_sides_in_the_top_two(tiny_model_dir):
    from entrep.model import load_model
    from entrep.retrieval.search import search_text

    res = search_text(load_model(tiny_model_dir), "a spur on the septum", k=2)
    labels = [h["label"] for h in res["results"]]
    assert len(labels) == 2
    if labels[0] in ("nose-left", "nose-right"):
        assert set(labels) == {"nose-left", "nose-right"}


# ---- the public API and the model format -------------------------------------------


def test_public_api_session_load_predict_search(tiny_model_dir, tiny_data_dir, tmp_path):
    import entrep

    m = entrep.load(tiny_model_dir, cache=tmp_path / "cache")
    assert isinstance(m, entrep.EntrepModel)
    img = sorted((tiny_data_dir / "imgs").glob("*.png"))[0]
    assert m.predict([img])[0]["label"] in ENT.classes
    assert (tmp_path / "cache").is_dir()  # the cache root passed in is the one used, no environment needed
    hits = m.search_text("left ear", k=3)["results"]
    assert len(hits) == 3
    assert m.search_image(img, k=2)["results"]


def test_resaving_a_model_keeps_the_files_a_user_put_in_its_folder(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    (model_dir / "NOTES.txt").write_text("trained on the 2026 archive")
    (model_dir / "extra").mkdir()
    (model_dir / "extra" / "a.yaml").write_text("k: v")
    load_model(model_dir).save()
    assert (model_dir / "NOTES.txt").read_text() == "trained on the 2026 archive"
    assert (model_dir / "extra" / "a.yaml").is_file()
    assert load_model(model_dir).policy is not None


def test_models_of_format_version_1_fail_with_one_line_saying_to_refit(tiny_model_dir, tmp_path):
    from entrep.errors import ModelError

    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    meta = json.loads((old / "model.json").read_text())
    (old / "model.json").write_text(json.dumps({"format": "entrep-model", "version": 1, "components": meta["state"]["parts"]}))
    with pytest.raises(ModelError, match="version 1 .*refit") as e:
        load_model(old)
    assert "\n" not in str(e.value)
    (old / "model.json").write_text(json.dumps({"format": "entrep-model", "version": 2, "state": {"parts": 3}}))
    with pytest.raises(ModelError, match="refit"):
        load_model(old)


def test_config_taxonomy_key_is_read(tmp_path):
    from entrep.model import fit_model

    (tmp_path / "tax.yaml").write_text("name: two\nclasses: [alpha, beta]\n")
    (tmp_path / "cfg.yaml").write_text(f"taxonomy: {tmp_path / 'tax.yaml'}\nn_aug: 0\n")
    (tmp_path / "m.jsonl").write_text('{"image": "x.png", "label": "gamma"}\n')
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    from entrep.errors import EntrepError

    with pytest.raises(EntrepError, match="gamma"):  # the label is checked against the config's taxonomy
        fit_model(tmp_path / "m.jsonl", config=tmp_path / "cfg.yaml")


def test_gallery_group_is_the_taxonomy_group_not_the_patient_key(tiny_model_dir, tmp_path):
    from entrep.data.records import Dataset, Record
    from entrep.retrieval.gallery import build_gallery

    m = load_model(tiny_model_dir)
    src = m.gallery.items[:2]
    ds = Dataset(records=[Record(image=Path(it.path), label=it.label, group="patient-17") for it in src],
                 root=tmp_path, taxonomy=m.taxonomy)
    m.gallery = None
    build_gallery(m, ds)
    assert [it.group for it in m.gallery.items] == [ENT.group_of(it.label) for it in src]
