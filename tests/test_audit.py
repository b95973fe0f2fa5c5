"""Audit: exact/near duplicates, leakage between splits, label conflicts, unreadable files, CLI."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance
from typer.testing import CliRunner

from entrep.cli import app
from entrep.data.audit import hamming_pairs, audit_datasets
from entrep.data.records import DataError, Dataset, Record, write_manifest
from entrep.taxonomy import ENT

ENTREP = Path(sys.executable).with_name("entrep")


def _smooth_png(path, seed, size=(160, 120)):
    """A smooth random picture (like a photo, unlike white noise) so pHash is meaningful."""
    path.parent.mkdir(parents=True, exist_ok=True)
    small = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(path)
    return path


def _ds(paths_labels, root):
    return Dataset(records=[Record(image=Path(p).resolve(), label=l) for p, l in paths_labels], root=root)


def _two_splits(tmp_path, n=6):
    """train/test datasets of distinct images; returns (train_paths, test_paths)."""
    tr = [_smooth_png(tmp_path / "train" / f"t{i}.png", seed=i) for i in range(n)]
    te = [_smooth_png(tmp_path / "test" / f"q{i}.png", seed=100 + i) for i in range(n)]
    return tr, te


def _labels(n):
    return [ENT.classes[i % len(ENT.classes)] for i in range(n)]


def test_clean_datasets_are_ok(tmp_path):
    tr, te = _two_splits(tmp_path)
    rep = audit_datasets({"train": _ds(zip(tr, _labels(6)), tmp_path), "test": _ds(zip(te, _labels(6)), tmp_path)})
    assert rep.ok and not rep.exact and not rep.near and not rep.leakage
    js = rep.to_json()
    assert js["ok"] is True and js["counts"]["images"] == 12
    assert "clean" in rep.summary()


def test_byte_identical_copy_across_splits_is_leakage(tmp_path):
    tr, te = _two_splits(tmp_path)
    leaked = tmp_path / "test" / "renamed_copy.png"
    shutil.copy(tr[2], leaked)
    named = {"train": _ds(zip(tr, _labels(6)), tmp_path),
             "val": _ds([(_smooth_png(tmp_path / "val" / "v.png", seed=55), "throat")], tmp_path),
             "test": _ds(list(zip(te, _labels(6))) + [(leaked, _labels(6)[2])], tmp_path)}
    rep = audit_datasets(named)
    assert not rep.ok
    assert len(rep.exact) == 1 and {m.name for m in rep.exact[0].members} == {"t2.png", "renamed_copy.png"}
    assert len(rep.leakage) == 1 and rep.leakage[0].datasets == ["test", "train"]
    assert not rep.conflicts
    js = rep.to_json()
    assert js["counts"]["leakage_groups"] == 1
    assert {(m["dataset"], m["file"]) for m in js["leakage"][0]["members"]} == {
        ("train", "t2.png"), ("test", "renamed_copy.png")}
    assert "test <-> train: 1 group" in rep.summary()


def test_near_duplicate_reencoded_and_brightened(tmp_path):
    tr, te = _two_splits(tmp_path)
    im = Image.open(tr[4]).convert("RGB")
    buf = io.BytesIO()
    ImageEnhance.Brightness(im).enhance(1.06).save(buf, "JPEG", quality=85)
    near = tmp_path / "test" / "near.jpg"
    near.write_bytes(buf.getvalue())
    rep = audit_datasets({"train": _ds(zip(tr, _labels(6)), tmp_path),
                          "test": _ds(list(zip(te, _labels(6))) + [(near, _labels(6)[4])], tmp_path)})
    assert not rep.exact
    assert len(rep.near) == 1
    g = rep.near[0]
    assert {m.name for m in g.members} == {"t4.png", "near.jpg"}
    assert g.evidence == ["phash"] and g.max_distance <= 4
    assert rep.leakage == [g] and not rep.ok
    js = rep.to_json()["near_duplicates"][0]
    assert js["kind"] == "near" and js["datasets"] == ["test", "train"] and js["evidence"] == ["phash"]


def test_lookalike_with_different_detail_is_not_near(tmp_path):
    """Same layout, different lesion: pHash alone is within 4 bits, the thumbnail check rejects it."""
    a = _smooth_png(tmp_path / "a.png", seed=3)
    px = np.asarray(Image.open(a)).copy()
    px[20:50, 30:70] = np.random.default_rng(99).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    b = tmp_path / "b.png"
    Image.fromarray(px).save(b)
    named = {"train": _ds([(a, "nose-left")], tmp_path), "test": _ds([(b, "nose-left")], tmp_path)}
    loose = audit_datasets(named, min_correlation=None)
    assert len(loose.near) == 1 and loose.near[0].max_distance <= 4  # pHash alone calls it a duplicate
    assert audit_datasets(named).ok and not audit_datasets(named).near


def test_class_conflict_and_within_dataset_duplicate(tmp_path):
    tr, _ = _two_splits(tmp_path)
    same = tmp_path / "train" / "other_name.png"
    shutil.copy(tr[0], same)
    dup = tmp_path / "train" / "dup_same_label.png"
    shutil.copy(tr[1], dup)
    recs = list(zip(tr, _labels(6))) + [(same, "ear-left"), (dup, _labels(6)[1])]
    rep = audit_datasets({"train": _ds(recs, tmp_path)})
    assert len(rep.exact) == 2 and not rep.leakage
    assert len(rep.conflicts) == 1
    assert rep.conflicts[0].labels == sorted({_labels(6)[0], "ear-left"})
    assert not rep.ok and "class conflicts (identical content, different labels): 1" in rep.summary()
    # a within-dataset duplicate with one label alone does not fail the audit
    assert audit_datasets({"train": _ds(list(zip(tr, _labels(6))) + [(dup, _labels(6)[1])], tmp_path)}).ok


def test_same_pixels_different_bytes_is_exact(tmp_path):
    tr, _ = _two_splits(tmp_path)
    resaved = tmp_path / "resaved.png"
    Image.open(tr[3]).save(resaved, compress_level=0)  # other bytes, identical pixels
    assert resaved.read_bytes() != tr[3].read_bytes()
    rep = audit_datasets({"train": _ds(zip(tr, _labels(6)), tmp_path), "test": _ds([(resaved, "x")], tmp_path)})
    assert len(rep.exact) == 1 and rep.leakage


def test_unreadable_listed_and_names_hidden(tmp_path):
    tr, _ = _two_splits(tmp_path)
    bad = tmp_path / "train" / "17090495_230727_Image05.png"
    bad.write_bytes(b"not a png")
    rep = audit_datasets({"train": _ds(list(zip(tr, _labels(6))) + [(bad, "throat")], tmp_path)}, hide_names=True)
    assert not rep.ok and len(rep.unreadable) == 1
    text = json.dumps(rep.to_json()) + rep.summary()
    assert "17090495" not in text
    hidden = rep.to_json()["unreadable"][0]["file"]
    assert hidden.startswith("img-") and hidden in rep.summary()
    assert rep.to_json()["unreadable"][0]["error"].startswith(hidden)
    again = audit_datasets({"train": _ds([(bad, "throat")], tmp_path)}, hide_names=True)
    assert again.to_json()["unreadable"][0]["file"] == hidden  # stable across runs
    shown = audit_datasets({"train": _ds([(bad, "throat")], tmp_path)})
    assert shown.to_json()["unreadable"][0]["file"] == bad.name


def test_embedding_near_duplicates_and_shape_check(tmp_path):
    tr, te = _two_splits(tmp_path, n=4)
    named = {"train": _ds(zip(tr, _labels(4)), tmp_path), "test": _ds(zip(te, _labels(4)), tmp_path)}
    rng = np.random.default_rng(0)
    e_tr = rng.normal(size=(4, 16)).astype(np.float32)
    e_te = rng.normal(size=(4, 16)).astype(np.float32)
    e_te[1] = e_tr[3] * 2 + 0.001  # same direction: cosine ~1
    rep = audit_datasets(named, embeddings={"train": e_tr, "test": e_te})
    assert len(rep.near) == 1 and rep.near[0].evidence == ["embedding"]
    assert {m.name for m in rep.near[0].members} == {"t3.png", "q1.png"}
    with pytest.raises(DataError, match="shape"):
        audit_datasets(named, embeddings={"train": e_tr, "test": e_te[:3]})


def test_hamming_search_matches_brute_force_and_scales():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**63, 2000, dtype=np.uint64)
    h[1500] = h[3] ^ np.uint64(0b1011)  # distance 3
    h[1700] = h[1500]  # distance 0
    t = time.perf_counter()
    pairs = hamming_pairs(h, 4)
    assert time.perf_counter() - t < 5.0  # 2 million pairs, vectorised
    assert {(a, b) for a, b, _ in pairs} == {(3, 1500), (3, 1700), (1500, 1700)}
    assert {d for *_, d in pairs} == {0, 3}


# ---------------------------------------------------------------- CLI
def _split_folder(tmp_path, leak: bool):
    tr, te = _two_splits(tmp_path)
    if leak:
        shutil.copy(tr[0], tmp_path / "test" / "sneaky.png")
        te = te + [tmp_path / "test" / "sneaky.png"]
    out = tmp_path / "splits"
    write_manifest(out / "train.jsonl", _ds(zip(tr, _labels(6)), tmp_path).records)
    write_manifest(out / "test.jsonl", _ds(zip(te, _labels(len(te))), tmp_path).records)
    return out


def test_cli_audit_exit_codes_and_json(tmp_path):
    runner = CliRunner()
    clean = _split_folder(tmp_path / "a", leak=False)
    res = runner.invoke(app, ["audit", str(clean)])
    assert res.exit_code == 0, res.output
    assert "clean" in res.stdout

    leaky = _split_folder(tmp_path / "b", leak=True)
    out_json = tmp_path / "report.json"
    res = runner.invoke(app, ["audit", str(leaky), "--json", str(out_json), "--hide-names"])
    assert res.exit_code == 1, res.output
    js = json.loads(out_json.read_text())
    assert js["ok"] is False and js["leakage"][0]["datasets"] == ["test", "train"]
    assert js["names_hidden"] is True and "sneaky" not in out_json.read_text()


def test_cli_skip_bad_skips_missing_but_reports_unreadable(tmp_path):
    tr, _ = _two_splits(tmp_path)
    (tmp_path / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    man = tmp_path / "m.jsonl"
    rows = [{"image": str(p), "label": "throat"} for p in tr]
    rows += [{"image": "train/broken.png", "label": "throat"}, {"image": "train/gone.png", "label": "throat"}]
    man.write_text("\n".join(json.dumps(r) for r in rows))
    runner = CliRunner()
    res = runner.invoke(app, ["audit", str(man)])
    assert res.exit_code != 0 and "gone.png" in str(res.exception)
    res = runner.invoke(app, ["audit", str(man), "--skip-bad", "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 1, res.output
    js = json.loads((tmp_path / "r.json").read_text())
    assert [u["file"] for u in js["unreadable"]] == ["broken.png"] and js["counts"]["images"] == 7


def test_cli_split_writes_manifests(tmp_path):
    src = tmp_path / "data"
    for c in ("nose left", "throat"):
        for k in range(10):
            _smooth_png(src / c / f"{k}.png", seed=hash((c, k)) % 10_000, size=(16, 12))
    res = CliRunner().invoke(app, ["split", str(src), "--out", str(tmp_path / "sp"), "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert "nose-left" in res.output and "train.jsonl" in res.output
    info = json.loads((tmp_path / "sp" / "split.json").read_text())
    assert info["totals"] == {"train": 16, "val": 2, "test": 2}
    res = CliRunner().invoke(app, ["audit", str(tmp_path / "sp")])
    assert res.exit_code == 0, res.output


def test_main_reports_bad_input_as_one_line(tmp_path):
    if not ENTREP.exists():
        pytest.skip("entrep console script not installed")
    (tmp_path / "cls.json").write_text("{broken")
    (tmp_path / "imgs").mkdir()
    proc = subprocess.run([str(ENTREP), "audit", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "cls.json" in lines[0] and "line 1" in lines[0]


def test_audit_byte_hashes_go_through_the_one_memo(tmp_path):
    from entrep.data.hashing import HashCache

    tr, te = _two_splits(tmp_path, n=3)
    shutil.copy(tr[0], tmp_path / "test" / "copy.png")
    named = {"train": _ds(zip(tr, _labels(3)), tmp_path),
             "test": _ds(list(zip(te, _labels(3))) + [(tmp_path / "test" / "copy.png", _labels(3)[0])], tmp_path)}
    memo = HashCache(root=tmp_path / "memo")
    first = audit_datasets(named, hashes=memo)
    assert memo.last_computed == 7
    again = audit_datasets(named, hashes=memo)
    assert memo.last_reused == 7
    assert len(first.leakage) == len(again.leakage) == 1
