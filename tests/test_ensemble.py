"""`entrep fit --ensemble K`: group-aware folds, averaged members, the ensemble folder, every command on it."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from entrep.cli import app
from entrep.data.records import Dataset, Record
from entrep.errors import EntrepError, UserError
from entrep.taxonomy import ENT, Taxonomy

runner = CliRunner()

TINY_CONFIG = "n_aug: 1\nhead: {max_epochs: 40, patience: 8}\nalign: {epochs: 60}\n"  # conftest.tiny_config


def _run(*args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


def _fails(*args) -> str:
    """The one-line error of a failing command (the CLI prints an EntrepError as one line, no traceback)."""
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code != 0 and isinstance(res.exception, EntrepError), res.output + repr(res.exception)
    assert "\n" not in str(res.exception)
    return str(res.exception)


@pytest.fixture(scope="module")
def fitted(tiny_data_dir, tmp_path_factory):
    """(model folder, `entrep fit` output): a 2-member ensemble fitted through the CLI, --val given."""
    root = tmp_path_factory.mktemp("ensemble")
    (root / "tiny.yaml").write_text(TINY_CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENTREP_CACHE", str(root / "cache"))
        res = _run("fit", "--data", tiny_data_dir, "--val", tiny_data_dir, "--out", root / "model",
                   "--config", root / "tiny.yaml", "--ensemble", 2)
    return root / "model", " ".join(res.output.split())


@pytest.fixture
def warm(fitted, monkeypatch):
    """The fitted ensemble's feature cache, so a test computes no feature the fit already did."""
    monkeypatch.setenv("ENTREP_CACHE", str(fitted[0].parent / "cache"))


@pytest.fixture(scope="module")
def model(fitted):
    from entrep.model import load_model

    return load_model(fitted[0], cache=fitted[0].parent / "cache")


def _images(tiny_data_dir, n=6):
    return sorted((tiny_data_dir / "imgs").glob("*.png"))[:n]


# ---- folds -------------------------------------------------------------------------------


def _patients(tmp_path, per_class=(7, 6), per_patient=2):
    """Two classes, ``per_class`` patients with ``per_patient`` distinct images, plus one exact copy
    of a patient-0 image under another patient id (the same content must stay in one fold)."""
    rng = np.random.default_rng(0)
    tax = Taxonomy(name="two", classes=("a", "b"))
    recs = []
    for c, n_patients in zip(tax.classes, per_class):
        for p in range(n_patients):
            for j in range(per_patient):
                path = tmp_path / f"{c}-{p}-{j}.png"
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(path)
                recs.append(Record(image=path, label=c, group=f"{c}-patient-{p}"))
    dup = tmp_path / "copy.png"
    shutil.copy(tmp_path / "a-0-0.png", dup)
    recs.append(Record(image=dup, label="a", group="someone-else"))
    return Dataset(records=recs, root=tmp_path, taxonomy=tax, source=str(tmp_path))


def test_folds_are_group_disjoint_stratified_and_seeded(tmp_path):
    from entrep.model.ensemble import ensemble_folds, image_groups

    ds = _patients(tmp_path)
    folds = ensemble_folds(ds, 3, seed=0)
    assert sorted(set(folds.tolist())) == [0, 1, 2]
    groups = image_groups(ds)
    for g in set(groups.tolist()):  # no group (patient, or same content) on both sides of any fold
        assert len(set(folds[groups == g].tolist())) == 1
    names = [r.image.name for r in ds.records]
    assert folds[names.index("copy.png")] == folds[names.index("a-0-0.png")]
    labels = np.array([r.label for r in ds.records])
    for i in range(3):  # stratified: every fold holds both classes, in about equal numbers
        counts = [int(np.sum((folds == i) & (labels == c))) for c in ("a", "b")]
        assert min(counts) >= 2, counts
    sizes = np.bincount(folds)
    assert sizes.max() - sizes.min() <= 3, sizes
    assert np.array_equal(folds, ensemble_folds(ds, 3, seed=0))
    assert not all(np.array_equal(folds, ensemble_folds(ds, 3, seed=s)) for s in (1, 2, 3))


def test_k_larger_than_a_class_groups_is_one_clear_error(tmp_path, tiny_data_dir):
    import entrep
    from entrep.model.ensemble import ensemble_folds

    ds = _patients(tmp_path)
    with pytest.raises(UserError, match=r"class 'b' has 6 independent image group\(s\), fewer than the 7 folds.*"
                                        r"--ensemble 6 or fewer"):
        ensemble_folds(ds, 7)
    with pytest.raises(UserError, match="K >= 2"):
        ensemble_folds(ds, 1)
    # through the API and the CLI, before any feature work (tiny data: throat has 5 images)
    with pytest.raises(UserError, match="'throat' has 5 independent"):
        entrep.fit(tiny_data_dir, ensemble=6)
    with pytest.raises(UserError, match="ensemble"):
        entrep.fit(tiny_data_dir, ensemble=0)
    out = _fails("fit", "--data", tiny_data_dir, "--out", tmp_path / "m", "--ensemble", 6)
    assert "class 'throat' has 5 independent image group(s)" in out and "--ensemble 5 or fewer" in out
    assert not (tmp_path / "m").exists()


# ---- the fitted ensemble ----------------------------------------------------------------------------


def test_fit_prints_one_stage_line_per_member_and_writes_the_folder(fitted, tiny_data_dir):
    path, out = fitted
    assert "member 1/2: training on 1 fold, validating on fold 1" in out
    assert "member 2/2: training on 1 fold, validating on fold 2" in out
    assert "saved ensemble of 2 models" in out and "on --val" in out
    meta = json.loads((path / "model.json").read_text())
    assert meta["format"] == "entrep-model" and meta["kind"] == "ensemble" and meta["k"] == 2
    assert meta["config"]["ensemble"] == 2
    tr = meta["training"]
    n = len(list((tiny_data_dir / "imgs").glob("*.png")))
    assert sum(f["n_images"] for f in tr["folds"]) == tr["n_train"] == n
    for m, f in zip(tr["members"], tr["folds"]):  # member i trains on the other folds, validates on fold i
        assert m["n_val"] == f["n_images"] and m["n_train"] == n - f["n_images"]
        assert 0.0 <= m["validation_accuracy"] <= 1.0
    assert set(tr["val"]) >= {"ensemble_accuracy", "member_accuracy", "mean_member_accuracy"}
    assert len(tr["val"]["member_accuracy"]) == 2
    for i in (0, 1):
        member = path / "members" / str(i)
        assert (member / "model.json").is_file() and (member / "arrays.npz").is_file()
        assert not (member / "gallery").exists()  # one gallery, the ensemble's
    assert (path / "gallery").is_dir()


def test_probabilities_are_the_mean_of_the_members(model, tiny_data_dir):
    imgs = _images(tiny_data_dir)
    feats = model.image_features(imgs)
    dec, _ = model.predict_features(feats)
    member_p = [m.predict_features(m.image_features(imgs))[0].fine_proba for m in model.members]
    assert np.allclose(dec.fine_proba, np.mean(member_p, axis=0), atol=1e-6)
    assert np.array_equal(dec.fine, np.argmax(np.mean(member_p, axis=0), axis=1))
    assert len({id(m.extractor) for m in model.members}) == 1  # features computed once for all members
    preds = model.predict(imgs)
    for p, row in zip(preds, dec.fine_proba):
        assert p["source"] == "ensemble" and p["label"] == ENT.class_name(int(np.argmax(row)))
        assert p["confidence"] == pytest.approx(float(row.max()), abs=1e-5)
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert p["group"] == ENT.group_of(p["label"])


def test_retrieval_cosine_is_the_mean_of_the_members_cosines(model, tiny_data_dir):
    feats = model.image_features(_images(tiny_data_dir))
    for space in ("joint", "head", "concat"):
        v = model.retrieval_vectors(feats, space)
        assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
        want = np.mean([(lambda x: x @ x.T)(m.retrieval_vectors(m.image_features(_images(tiny_data_dir)), space))
                        for m in model.members], axis=0)
        assert np.allclose(v @ v.T, want, atol=1e-5), space
    u = model.embed_texts(["a polyp in the left nose"])
    j = model.joint_images(feats.clip)
    want = np.mean([m.embed_texts(["a polyp in the left nose"]) @ m.joint_images(feats.clip).T for m in model.members],
                   axis=0)
    assert np.allclose(u @ j.T, want, atol=1e-5)


def test_save_load_round_trip_gives_identical_outputs(model, tiny_data_dir, tmp_path, warm):
    from entrep.model import EnsembleModel, load_model

    imgs = _images(tiny_data_dir)
    model.save(tmp_path / "copy")
    again = load_model(tmp_path / "copy", cache=model.cache)
    assert isinstance(again, EnsembleModel) and again.k == model.k
    assert again.predict(imgs) == model.predict(imgs)
    assert again.search_image(imgs[0], k=5) == model.search_image(imgs[0], k=5)
    assert again.search_text("a spur on the septum", k=5) == model.search_text("a spur on the septum", k=5)
    assert [m.path for m in again.members] == [tmp_path / "copy" / "members" / str(i) for i in range(model.k)]


def test_cli_predict_evaluate_index_search_on_an_ensemble(fitted, tiny_data_dir, tmp_path, warm):
    path = tmp_path / "model"
    shutil.copytree(fitted[0], path)
    imgs = _images(tiny_data_dir, 3)
    preds = json.loads(_run("predict", "--model", path, *imgs, "--json").stdout)
    assert len(preds) == 3 and all(p["source"] == "ensemble" and p["label"] in ENT.classes for p in preds)
    ev_path = tmp_path / "ev.json"
    res = _run("evaluate", "--model", path, "--data", tiny_data_dir, "--json", ev_path, "--report", tmp_path / "rep")
    assert "ensemble(mean of 2)" in res.output
    ev = json.loads(ev_path.read_text())
    cls = ev["classification"]
    assert {"ensemble", "prototype", "baseline", "member-1", "member-2"} == set(cls["systems"])
    assert cls["fine"] == cls["systems"]["ensemble"]["fine"] and "coarse" in cls
    assert cls["fine"]["accuracy"] > 0.6  # far above chance (1/7) on its own training data
    assert ev["ensemble"]["k"] == 2 and len(ev["ensemble"]["member_accuracy"]) == 2
    for task in ("i2i", "t2i"):
        assert 0.0 <= ev["retrieval"][task]["class"]["recall@1"] <= 1.0
    assert (tmp_path / "rep" / "report.html").is_file()
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for p in _images(tiny_data_dir, 5):
        shutil.copy(p, gallery / p.name)
    assert "5 images" in " ".join(_run("index", "--model", path, "--gallery", gallery, "--rebuild").output.split())
    from entrep.model import load_model

    assert len(load_model(path).gallery) == 5
    hits = json.loads(_run("search", "--model", path, "--text", "a spur on the septum", "-k", 3, "--json").stdout)
    assert 1 <= len(hits) <= 3 and all(h["label"] in ENT.classes for h in hits)
    hits = json.loads(_run("search", "--model", path, "--image", imgs[0], "-k", 3, "--json").stdout)
    assert all(h["image"] != str(imgs[0]) for h in hits)


def test_submit_serve_and_review_take_an_ensemble(fitted, model, tiny_data_dir, tmp_path, warm):
    from fastapi.testclient import TestClient

    from entrep.challenge.format import check_submission, read_submission
    from entrep.data.readers import read_queries
    from entrep.review import review_exam
    from entrep.server.app import create_app

    q = tiny_data_dir / "queries"
    names = {p.name for p in (q / "imgs").glob("*.png")}
    for track, csv in ((1, "cls.csv"), (2, "i2i.csv"), (3, "t2i.csv")):
        out = tmp_path / f"track{track}.zip"
        _run("submit", "--model", fitted[0], "--track", track, "--queries", q / csv, "--images", q / "imgs", "--out", out)
        queries = read_queries(q / csv)
        assert check_submission(out, track, queries, image_names=names if track > 1 else None) == []
        assert list(read_submission(out)) == list(dict.fromkeys(queries))
        with zipfile.ZipFile(out) as z:
            assert len(z.namelist()) == 1
    img = _images(tiny_data_dir, 1)[0]
    with TestClient(create_app(model), base_url="http://127.0.0.1") as c:
        r = c.post("/api/classify", files={"file": (img.name, img.read_bytes(), "image/png")})
        assert r.status_code == 200, r.text
        assert r.json()["label"] == model.predict([img])[0]["label"]
        r = c.get("/api/search", params={"q": "a spur on the septum", "k": 3})
        assert r.status_code == 200 and len(r.json()["results"]) == 3
    frames = [Image.open(p).convert("RGB") for p in _images(tiny_data_dir, 4)]
    doc = review_exam(model, frames)
    kept = [row for row in doc["frames"] if row["kept"]]
    assert kept and all(row["label"] in ENT.classes for row in kept)


def test_partial_or_corrupt_ensemble_folder_is_one_clear_line(fitted, tiny_data_dir, tmp_path, warm):
    from entrep.model import load_model

    img = _images(tiny_data_dir, 1)[0]
    partial = tmp_path / "partial"
    shutil.copytree(fitted[0], partial)
    shutil.rmtree(partial / "members" / "1")
    with pytest.raises(EntrepError, match=r"ensemble of 2 lacks members/1/model.json"):
        load_model(partial)
    assert "lacks members/1/model.json" in _fails("predict", "--model", partial, img)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(fitted[0], corrupt)
    (corrupt / "members" / "0" / "arrays.npz").write_bytes(b"not a zip")
    assert "members/0/arrays.npz: missing or corrupt" in _fails("predict", "--model", corrupt, img)
    bad_k = tmp_path / "bad-k"
    shutil.copytree(fitted[0], bad_k)
    meta = json.loads((bad_k / "model.json").read_text())
    (bad_k / "model.json").write_text(json.dumps({**meta, "k": "two"}))
    assert "ensemble size k='two'" in _fails("predict", "--model", bad_k, img)
