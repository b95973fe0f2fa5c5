"""Synthetic ENT endoscopy generator: exact ENTRep layouts, determinism, realism constraints."""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from entrep.data.synthetic import (
    CLASS_REGION,
    FINDINGS,
    TABLE1_COUNTS,
    Nuisance,
    allocate,
    generate,
    make_plan,
    render_image,
    sample_findings,
)
from entrep.data.synthetic.findings import CLASS_PHRASE, caption_en, compatible, finding, is_normal
from entrep.errors import UserError
from entrep.taxonomy import ENT

N = 28
PUBLIC_N = 14
SEED = 3


def _load_json_strict(path: Path):
    """Parse JSON, failing on duplicate keys (a dict would silently keep the last)."""

    def hook(pairs):
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), f"duplicate keys in {path}"
        return dict(pairs)

    return json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=hook)


def _files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "data"
    summary = generate(out, n=N, seed=SEED, public=True, public_n=PUBLIC_N, workers=1)
    return out, summary


# ---------------------------------------------------------------- training layout
def test_training_layout_is_exact(data):
    out, summary = data
    assert sorted(p.name for p in out.iterdir()) == ["cls.json", "i2i.json", "imgs", "public", "queries", "t2i.json"]
    cls = _load_json_strict(out / "cls.json")
    assert set(cls) == _files(out / "imgs")
    assert len(cls) == N == summary["n_images"]
    assert all(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.png", k) for k in cls)
    assert set(cls.values()) <= set(ENT.classes)
    assert Counter(cls.values()) == {c: k for c, k in summary["counts"].items() if k}
    assert summary["counts"] == allocate(N, TABLE1_COUNTS)


def test_i2i_pairs_are_symmetric_and_exist(data):
    out, summary = data
    cls = _load_json_strict(out / "cls.json")
    i2i = _load_json_strict(out / "i2i.json")
    assert len(i2i) == 2 * summary["n_pairs"] >= 2
    for a, b in i2i.items():
        assert a != b and a in cls and b in cls
        assert i2i[b] == a, "i2i.json must hold both directions of every pair"
        assert ENT.group_of(cls[a]) == ENT.group_of(cls[b]), "a pair shares a finding, so an anatomical region"


def test_i2i_pairs_share_a_finding_and_rates_match_the_real_files():
    plan = make_plan(400, 11)
    spec = {s.name: s for s in plan.train}
    assert len(plan.pairs) == round(141 / 1291 * 400 / 2)  # ~11% of images in i2i.json
    assert 0.04 < len(plan.captions) / 400 < 0.07  # ~5.5% of images get a caption
    for a, b in plan.pairs:
        assert set(spec[a].findings) & set(spec[b].findings)
    cross = [(a, b) for a, b in plan.pairs if spec[a].label != spec[b].label]
    assert cross, "pairs may cross sides/states as in the real data"


def test_t2i_captions_are_unique_and_describe_their_image(data):
    out, summary = data
    cls = _load_json_strict(out / "cls.json")
    t2i = _load_json_strict(out / "t2i.json")  # strict: duplicate captions would fail
    assert len(t2i) == summary["n_captions"] >= 1
    spec = {s.name: s for s in make_plan(N, SEED, public=True, public_n=PUBLIC_N).train}
    assert {n: s.label for n, s in spec.items()} == cls
    for caption, image in t2i.items():
        assert image in cls
        assert "," not in caption and "\n" not in caption, "captions stay CSV-safe"
        s = spec[image]
        assert caption in (caption_en(s.findings), f"{caption_en(s.findings)} {CLASS_PHRASE[s.label]}")


# ---------------------------------------------------------------- queries
def test_query_csvs_have_no_header_and_match_answers(data):
    out, summary = data
    q = out / "queries"
    assert sorted(p.name for p in q.iterdir()) == ["answers.json", "cls.csv", "i2i.csv", "imgs", "t2i.csv"]
    answers = _load_json_strict(q / "answers.json")
    imgs = _files(q / "imgs")
    assert len(imgs) == max(3, round(0.1 * N)) == summary["queries"]["n_images"]

    rows = {k: list(csv.reader(io.StringIO((q / f"{k}.csv").read_text(encoding="utf-8")))) for k in ("cls", "i2i", "t2i")}
    for k, r in rows.items():
        assert r and all(len(row) == 1 for row in r), f"{k}.csv must hold one value per line"
    cls_q = [row[0] for row in rows["cls"]]
    assert cls_q[0] in imgs, "the first line is a query, not a header"
    assert set(cls_q) == imgs == set(answers["cls"])
    assert all(ENT.class_name(v) for v in answers["cls"].values())

    i2i_q = [row[0] for row in rows["i2i"]]
    assert i2i_q and i2i_q[0] in imgs and set(i2i_q) == set(answers["i2i"])
    for query, target in answers["i2i"].items():
        assert target in imgs and target != query
        assert answers["cls"][target] == answers["cls"][query]
    cls_train = _load_json_strict(out / "cls.json")
    for query, target in answers["i2i_train"].items():
        assert target in cls_train and ENT.class_id(cls_train[target]) == answers["cls"][query]

    t2i_q = [row[0] for row in rows["t2i"]]
    assert t2i_q and set(t2i_q) == set(answers["t2i"])
    assert all(v in imgs for v in answers["t2i"].values())


def test_queries_can_be_left_out(tmp_path):
    s = generate(tmp_path / "d", n=7, seed=0, queries=False, workers=1)
    assert not (tmp_path / "d" / "queries").exists() and s["queries"] is None
    assert s["counts"] == {c: 1 for c in ENT.classes}


# ---------------------------------------------------------------- public release
def test_public_release_format_and_case_hazard(data):
    out, summary = data
    pub = out / "public"
    records = _load_json_strict(pub / "data.json")
    assert isinstance(records, list) and len(records) == PUBLIC_N == summary["public"]["n_images"]
    on_disk = _files(pub) - {"data.json"}
    assert len(on_disk) == PUBLIC_N
    by_lower = {n.lower(): n for n in on_disk}
    mismatched = []
    patients = Counter()
    en_vocab = {f.en: f for fs in FINDINGS.values() for f in fs}
    for r in records:
        assert set(r) == {"Path", "Classification", "Type", "Description", "DescriptionEN"}
        assert re.fullmatch(r"\d{8}_\d{18}_\d{3}_image\d{2}\.png", r["Path"]), r["Path"]
        assert r["Classification"] in ENT.classes
        en = r["DescriptionEN"].split("\r\n")
        vi = r["Description"].split("\r\n")
        assert len(en) == len(vi) >= 1 and all(e in en_vocab for e in en)
        assert [en_vocab[e].vi for e in en] == vi
        assert r["Type"] == ("normal" if is_normal(en) else "abnormal")
        if r["Path"] not in on_disk:
            disk = by_lower[r["Path"].lower()]
            assert disk == r["Path"].replace("_image", "_Image")
            mismatched.append(r["Path"])
        patients[r["Path"].split("_")[0]] += 1
    assert 1 <= len(mismatched) == summary["public"]["n_case_mismatch"] < PUBLIC_N / 2
    assert max(patients.values()) >= 2, "several images share a patient id prefix"
    multi = [r for r in records if "\r\n" in r["Description"]]
    assert multi, "some descriptions hold several findings separated by CRLF"
    vi_text = "".join(r["Description"] for r in records)
    assert re.search(r"[ạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹđ]", vi_text), "Vietnamese with diacritics"
    assert "\\r\\n" in (pub / "data.json").read_text(encoding="utf-8")


def test_vietnamese_vocabulary_has_diacritics():
    for region, fs in FINDINGS.items():
        assert len(fs) >= 4
        for f in fs:
            assert f.vi and f.vi != f.en and not f.vi.isascii(), (region, f.en)
    assert finding("a spur on the septum").vi == "gai vách ngăn"
    assert finding("the tympanic membrane is intact").vi == "màng nhĩ còn nguyên vẹn"
    assert finding("edema of the vocal folds").vi == "phù nề dây thanh"


def test_sample_findings_are_compatible_and_from_the_region():
    rng = np.random.default_rng(0)
    for region in FINDINGS:
        vocab = [f.en for f in FINDINGS[region]]
        for _ in range(50):
            fs = sample_findings(region, rng)
            assert 1 <= len(fs) <= 3 and set(fs) <= set(vocab) and compatible(region, fs)
            assert list(fs) == sorted(fs, key=vocab.index)
    assert not compatible("ear", ["the tympanic membrane is intact", "perforation of the tympanic membrane"])


# ---------------------------------------------------------------- images
def test_images_are_640x480_rgb_png_on_black(data):
    out, _ = data
    paths = sorted((out / "imgs").glob("*.png"))[:8] + sorted((out / "public").glob("*.png"))[:2]
    for p in paths:
        im = Image.open(p)
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (640, 480)
        a = np.asarray(im)
        for corner in (a[:12, :12], a[:12, -12:], a[-12:, :12], a[-12:, -12:]):
            assert corner.max() == 0, f"{p.name}: corners must be black"
        centre = a[200:280, 280:360].reshape(-1, 3).astype(float)
        assert centre.mean() > 30, f"{p.name}: the field of view is lit"
        fov = a.reshape(-1, 3)[a.reshape(-1, 3).max(1) > 0].astype(float)
        assert 0.35 < len(fov) / (640 * 480) < 0.75  # a circle of radius ~185-245 px
        assert fov[:, 0].mean() > fov[:, 2].mean(), f"{p.name}: tissue is reddish"


def test_render_image_contract_and_errors():
    rng = np.random.default_rng(0)
    a = render_image("throat", ["tonsillar hypertrophy"], rng)
    assert a.shape == (480, 640, 3) and a.dtype == np.uint8
    with pytest.raises(UserError, match="unknown class"):
        render_image("nose-up", [], rng)
    with pytest.raises(UserError, match="not in the 'ear' vocabulary"):
        render_image("ear-left", ["a spur on the septum"], rng)


def _neutral(label: str, findings: list[str], seed: int) -> np.ndarray:
    return render_image(label, findings, np.random.default_rng(seed), nuisance=Nuisance.neutral()).astype(float)


def test_findings_are_visible():
    perf = [_neutral("ear-left", ["perforation of the tympanic membrane"], s) for s in range(4)]
    intact = [_neutral("ear-left", ["the tympanic membrane is intact"], s) for s in range(4)]
    dark = lambda im: (im[140:340, 200:440].max(2) < 60).mean()  # noqa: E731 - inside the membrane
    assert min(map(dark, perf)) > 0.02 > max(map(dark, intact))
    glottis = lambda im: (im[200:330, 270:370].max(2) < 25).mean()  # noqa: E731
    opened = [glottis(_neutral("vc-open", ["normal vocal folds"], s)) for s in range(4)]
    closed = [glottis(_neutral("vc-closed", ["normal vocal folds"], s)) for s in range(4)]
    assert min(opened) > 3 * max(closed)


# ---------------------------------------------------------------- laterality
def test_right_side_is_the_exact_mirror_of_the_left():
    for left, findings in (("nose-left", ["a spur on the septum"]), ("ear-left", ["the cone of light is visualized"])):
        right = ENT.mirror_of(left)
        for seed in (1, 2):
            a = _neutral(left, findings, seed)
            b = _neutral(right, findings, seed)
            assert np.abs(a[:, ::-1] - b).max() <= 1
            assert np.abs(a - b).mean() > 5, "the two sides differ before flipping"


def test_anatomy_sides_follow_clinical_convention():
    # nose: the septum (pale, smooth, near the scope) is on the image's right in the LEFT cavity
    diff = [(lambda g: g[:, 330:540].mean() - g[:, 100:310].mean())(_neutral("nose-left", sample_findings(
        "nose", np.random.default_rng(s)), 100 + s).mean(2)) for s in range(6)]
    assert min(diff) > 0
    # ear: the cone of light points to 7 o'clock (lower left) in a LEFT ear, 5 o'clock in a RIGHT ear
    for label, sign in (("ear-left", 1), ("ear-right", -1)):
        d = []
        for s in range(6):
            g = _neutral(label, ["the cone of light is visualized"], 200 + s).mean(2)
            d.append(g[280:370, 210:300].mean() - g[280:370, 340:430].mean())
        assert sign * np.mean(d) > 5


@pytest.fixture(scope="module")
def nose_sides():
    """40 nose-left and 40 nose-right images with full random nuisance."""
    imgs, y = [], []
    for i in range(80):
        label = ("nose-left", "nose-right")[i % 2]
        rng = np.random.default_rng([SEED, 77, i])
        imgs.append(render_image(label, sample_findings("nose", rng), rng))
        y.append(i % 2)
    return imgs, np.array(y)


def _cv_accuracy(X: np.ndarray, y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(clf, X, y, cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean())


def test_side_is_not_readable_from_colour_statistics(nose_sides):
    imgs, y = nose_sides
    feats = []
    for a in imgs:
        px = a.reshape(-1, 3)
        px = px[px.max(1) > 0]
        hist = [np.bincount(px[:, c] >> 5, minlength=8) / len(px) for c in range(3)]  # 8 bins per channel
        feats.append(np.concatenate([px.mean(0) / 255, px.std(0) / 255, *hist]))
    assert _cv_accuracy(np.array(feats), y) < 0.65


def test_side_is_readable_from_spatial_layout(nose_sides):
    imgs, y = nose_sides
    X = np.array([np.asarray(Image.fromarray(a).convert("L").resize((16, 12), Image.BILINEAR), float).ravel() / 255
                  for a in imgs])
    assert _cv_accuracy(X, y) > 0.75


# ---------------------------------------------------------------- proportions
def test_allocation_follows_table1():
    assert allocate(1857, TABLE1_COUNTS) == TABLE1_COUNTS
    assert list(allocate(1857, TABLE1_COUNTS)) == list(ENT.classes)
    for n in (14, 28, 60, 100, 333):
        counts = allocate(n, TABLE1_COUNTS)
        assert sum(counts.values()) == n and min(counts.values()) >= 2
        for c, k in counts.items():
            exact = n * TABLE1_COUNTS[c] / 1857
            assert abs(k - exact) < 1 or k == 2
    assert sum(allocate(5, TABLE1_COUNTS).values()) == 5
    assert min(allocate(9, TABLE1_COUNTS).values()) == 1


# ---------------------------------------------------------------- determinism and safety
def test_same_seed_gives_identical_bytes_whatever_the_workers(data, tmp_path):
    out, _ = data
    again = tmp_path / "again"
    generate(again, n=N, seed=SEED, public=True, public_n=PUBLIC_N, workers=2)
    a = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    b = sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert a == b
    for rel in a:
        assert (out / rel).read_bytes() == (again / rel).read_bytes(), rel


def test_different_seed_gives_different_data():
    p3, p4 = make_plan(N, SEED), make_plan(N, SEED + 1)
    assert {s.name for s in p3.train}.isdisjoint({s.name for s in p4.train})
    a = render_image("nose-left", ["pale mucosa"], np.random.default_rng([SEED, 0, 0]))
    b = render_image("nose-left", ["pale mucosa"], np.random.default_rng([SEED + 1, 0, 0]))
    assert not np.array_equal(a, b)


def test_refuses_to_overwrite_unless_forced(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty.*--force"):
        generate(out, n=7, seed=0, queries=False)
    assert (out / "keep.txt").read_text() == "mine"
    generate(out, n=7, seed=0, queries=False, force=True, workers=1)
    assert not (out / "keep.txt").exists() and len(_files(out / "imgs")) == 7
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        generate(f, n=7)
    for bad in ({"n": 0}, {"seed": -1}, {"public_n": 0}, {"workers": 0}):
        with pytest.raises(UserError):
            generate(tmp_path / "bad", **{"n": 7, **bad})
    assert not (tmp_path / "bad").exists()


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    import entrep.data.synthetic.layout as layout

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(layout, "write_layout", boom)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "d", n=7, seed=0, workers=1)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- CLI
def test_cli_synth_writes_and_summarises(tmp_path):
    from typer.testing import CliRunner

    from entrep.cli import app

    runner = CliRunner()
    out = tmp_path / "cli"
    res = runner.invoke(app, ["synth", str(out), "--n", "14", "--seed", "5", "--workers", "1", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["n_images"] == 14 and summary["counts"] == allocate(14, TABLE1_COUNTS)
    assert (out / "queries" / "answers.json").exists()
    res = runner.invoke(app, ["synth", str(out), "--n", "14"])
    assert res.exit_code != 0 and isinstance(res.exception, UserError)
    res = runner.invoke(app, ["synth", str(out), "--n", "7", "--force", "--no-queries", "--workers", "1"])
    assert res.exit_code == 0
    assert "nose-left" in res.output and "i2i.json" in res.output


def test_reader_reads_the_layouts(data):
    readers = pytest.importorskip("entrep.data.readers")
    out, _ = data
    ds = readers.read_dataset(out)
    assert len(ds) == N and {r.label for r in ds} <= set(ENT.classes)
    assert len(ds.text_queries) == len(_load_json_strict(out / "t2i.json"))
    pub = readers.read_dataset(out / "public")
    assert len(pub) == PUBLIC_N, "case-mismatched files are found, not dropped"
    assert readers.read_queries(out / "queries" / "cls.csv") == (out / "queries" / "cls.csv").read_text().split()
    assert all(CLASS_REGION[r.label] for r in pub)
