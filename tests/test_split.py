"""Splits: stratified, seeded, order-invariant, and no image (or copy of it) in two splits."""

from __future__ import annotations

import json
import random
import shutil
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from entrep.data.readers import read_dataset
from entrep.data.records import DataError, Dataset, Record
from entrep.data.split import split_dataset, write_splits
from entrep.errors import UserError
from entrep.taxonomy import ENT, Taxonomy

# Paper Table 1: ENTRep training release + public release, 1,857 images.
PAPER_COUNTS = {"nose-right": 453, "nose-left": 470, "ear-right": 200, "ear-left": 178,
                "vc-open": 239, "vc-closed": 209, "throat": 108}


def _tiny_png(path, i):
    """A 4x4 PNG whose pixels encode ``i``: every file has distinct bytes."""
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    a.reshape(-1)[:4] = np.frombuffer(int(i).to_bytes(4, "little"), dtype=np.uint8)
    Image.fromarray(a).save(path)


def _dataset(root, counts, name=lambda c, k: f"{c}_{k:04d}.png", tax=ENT) -> Dataset:
    root.mkdir(parents=True, exist_ok=True)
    recs, i = [], 0
    for c, n in counts.items():
        for k in range(n):
            p = root / name(c, k)
            _tiny_png(p, i)
            recs.append(Record(image=p.resolve(), label=c))
            i += 1
    return Dataset(records=recs, root=root.resolve(), taxonomy=tax, source=str(root))


def _names(splits):
    return {s: sorted(r.name for r in ds) for s, ds in splits.items()}


def _per_class(ds):
    return Counter(r.label for r in ds)


def test_paper_sizes_and_stratification(tmp_path):
    ds = _dataset(tmp_path / "imgs", PAPER_COUNTS)
    sp = split_dataset(ds, seed=0)
    assert {s: len(d) for s, d in sp.items()} == {"train": 1485, "val": 186, "test": 186}
    for c, n in PAPER_COUNTS.items():
        got = [_per_class(sp[s])[c] for s in ("train", "val", "test")]
        assert sum(got) == n
        for g, r in zip(got, (0.8, 0.1, 0.1)):
            assert abs(g - r * n) < 1, (c, got)
    names = [r.name for d in sp.values() for r in d]
    assert len(names) == len(set(names)) == 1857


def test_deterministic_seeded_and_order_invariant(tmp_path):
    ds = _dataset(tmp_path / "imgs", {"nose-left": 30, "ear-right": 20, "throat": 10})
    a = split_dataset(ds, seed=7)
    shuffled = Dataset(records=random.Random(1).sample(ds.records, len(ds)), root=ds.root, taxonomy=ENT)
    b = split_dataset(shuffled, seed=7)
    assert _names(a) == _names(b)
    assert [r.name for r in a["train"]] == [r.name for r in b["train"]]  # same order too
    assert _names(split_dataset(ds, seed=8)) != _names(a)
    assert a.info["seed"] == 7


def test_duplicates_and_groups_never_straddle(tmp_path):
    counts = {"nose-left": 40, "nose-right": 40}
    ds = _dataset(tmp_path / "imgs", counts)
    # byte-identical copies under other names, and a patient group via Record.group
    extra = []
    for k in range(0, 40, 4):
        src = tmp_path / "imgs" / f"nose-left_{k:04d}.png"
        dst = tmp_path / "imgs" / f"copy_of_{k}.png"
        shutil.copy(src, dst)
        extra.append(Record(image=dst.resolve(), label="nose-right"))  # even under another label
    recs = [Record(image=r.image, label=r.label, group="patient-A" if r.name.endswith(("1.png", "7.png")) else None)
            for r in ds.records] + extra
    ds = Dataset(records=recs, root=ds.root, taxonomy=ENT)
    for seed in range(5):
        sp = split_dataset(ds, seed=seed)
        where = {r.name: s for s, d in sp.items() for r in d}
        assert len(where) == len(recs)
        for k in range(0, 40, 4):
            assert where[f"copy_of_{k}.png"] == where[f"nose-left_{k:04d}.png"]
        assert len({where[r.name] for r in recs if r.group == "patient-A"}) == 1
        assert sp.info["groups"]["duplicate_sets"] == 10


@pytest.mark.parametrize("pattern", [r"^(\d+)_", r"^(?P<id>\d+)_\d+_"])
def test_group_pattern_keeps_patients_together(tmp_path, pattern):
    # hospital names: <patient>_<visit>_..._ImageNN.png ; 12 patients x 5 images
    ds = _dataset(tmp_path / "imgs", {"vc-open": 30, "vc-closed": 30},
                  name=lambda c, k: f"{1000 + k % 12}_{k // 12}_{c}_Image{k:02d}.png")
    sp = split_dataset(ds, seed=3, group_pattern=pattern)
    patient_splits: dict[str, set] = {}
    for s, d in sp.items():
        for r in d:
            patient_splits.setdefault(r.name.split("_")[0], set()).add(s)
    assert all(len(v) == 1 for v in patient_splits.values())
    assert len({s for v in patient_splits.values() for s in v}) >= 2  # groups are spread, not all in train
    assert sp.info["groups"]["n_groups"] == 12
    # without the pattern the same data is split image by image and patients straddle
    loose = split_dataset(ds, seed=3)
    straddle = {}
    for s, d in loose.items():
        for r in d:
            straddle.setdefault(r.name.split("_")[0], set()).add(s)
    assert any(len(v) > 1 for v in straddle.values())


def test_bad_arguments(tmp_path):
    ds = _dataset(tmp_path / "imgs", {"throat": 5})
    with pytest.raises(UserError, match="ratios"):
        split_dataset(ds, ratios=(0.5, 0.2, 0.2))
    with pytest.raises(UserError, match="invalid group pattern"):
        split_dataset(ds, group_pattern="(unclosed")
    with pytest.raises(DataError, match="matched no file name"):
        split_dataset(ds, group_pattern=r"^patient(\d+)")


def test_write_splits_reads_back(tmp_path):
    # ENTRep folder with captions; images outside the output folder -> absolute paths
    src = tmp_path / "train"
    data = _dataset(src / "imgs", {"nose-left": 10, "ear-left": 10})
    (src / "cls.json").write_text(json.dumps({r.name: r.label for r in data}))
    (src / "t2i.json").write_text(json.dumps({"a spur on the septum": "nose-left_0003.png"}))
    ds = read_dataset(src)
    sp = split_dataset(ds, seed=0)
    out = tmp_path / "splits"
    written = write_splits(sp, out)
    assert set(written) == {"train", "val", "test"}
    info = json.loads((out / "split.json").read_text())
    assert info["counts"]["train"] == {c: _per_class(sp["train"])[c] for c in ENT.classes}
    assert info["totals"] == {"train": 16, "val": 2, "test": 2} and info["seed"] == 0
    back = {s: read_dataset(out / f"{s}.jsonl") for s in written}
    for s in written:
        assert back[s].records == sp[s].records
    assert [q for d in back.values() for q in d.text_queries] == [("a spur on the septum", "nose-left_0003.png")]
    first = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert first["image"].startswith("/")

    # images under the output folder -> relative paths; custom taxonomy travels in taxonomy.json
    tax = Taxonomy(name="oto", classes=("normal", "effusion"))
    inner = _dataset(tmp_path / "proj" / "imgs", {"normal": 10, "effusion": 10}, tax=tax)
    write_splits(split_dataset(inner, seed=1), tmp_path / "proj")
    line = json.loads((tmp_path / "proj" / "val.jsonl").read_text().splitlines()[0])
    assert line["image"].startswith("imgs/")
    again = read_dataset(tmp_path / "proj" / "val.jsonl")
    assert again.taxonomy.classes == ("normal", "effusion") and all(r.image.is_file() for r in again)


def test_small_data_holdout_has_every_class_with_two_images(tmp_path):
    counts = {c: 2 for c in ENT.classes} | {"nose-left": 9}
    ds = _dataset(tmp_path / "imgs", counts)
    for seed in range(3):
        sp = split_dataset(ds, seed=seed, ratios=(0.9, 0.1, 0.0), require_every_class=True)
        assert set(_per_class(sp["val"])) == set(ENT.classes)
        assert set(_per_class(sp["train"])) == set(ENT.classes)
        assert len(sp["test"]) == 0


def test_a_class_its_groups_keep_out_of_a_part_is_named(tmp_path, caplog):
    ds = _dataset(tmp_path / "imgs", {"nose-left": 6, "throat": 2})
    # both throat images belong to one patient: they cannot be in train and val
    ds = Dataset(records=[Record(image=r.image, label=r.label, group="p1" if r.label == "throat" else None)
                          for r in ds.records], root=ds.root, taxonomy=ENT, source="mini")
    with pytest.raises(UserError, match=r"mini: 'throat' has no image in (train|val).*--val DATA"):
        split_dataset(ds, ratios=(0.5, 0.5, 0.0), require_every_class=True)
    sp = split_dataset(ds, ratios=(0.5, 0.5, 0.0))  # without the requirement: a warning
    assert len(sp["train"]) + len(sp["val"]) == 8 and "throat" in caplog.text


def test_split_folder_is_replaced_as_a_whole(tmp_path):
    ds = _dataset(tmp_path / "imgs", {"nose-left": 10, "nose-right": 10})
    out = tmp_path / "split"
    write_splits(split_dataset(ds, seed=0), out)
    (out / "notes.txt").write_text("mine")
    assert (out / "test.jsonl").read_text().strip()
    # a later run without a test part: no stale test.jsonl from the first run survives
    written = write_splits(split_dataset(ds, seed=1, ratios=(0.5, 0.5, 0.0)), out)
    assert set(written) == {"train", "val", "test"}
    assert (out / "test.jsonl").read_text() == ""
    assert (out / "notes.txt").read_text() == "mine"  # files entrep did not write are kept
    train = read_dataset(out / "train.jsonl")
    val = read_dataset(out / "val.jsonl")
    assert not {r.image for r in train} & {r.image for r in val}
    assert len(train) + len(val) == 20


def test_split_hashes_go_through_the_one_memo(tmp_path):
    from entrep.data.hashing import HashCache

    ds = _dataset(tmp_path / "imgs", {"ear-left": 5, "ear-right": 5})
    memo = HashCache(root=tmp_path / "memo")
    a = split_dataset(ds, seed=0, hashes=memo)
    assert memo.last_computed == 10
    b = split_dataset(ds, seed=0, hashes=memo)
    assert memo.last_reused == 10 and _names(a) == _names(b)


def test_a_split_folder_with_an_empty_part_audits_as_its_non_empty_parts(tmp_path):
    from entrep.data.audit import named_datasets

    ds = _dataset(tmp_path / "imgs", {"nose-left": 6, "throat": 6})
    write_splits(split_dataset(ds, ratios=(0.5, 0.5, 0.0)), tmp_path / "split")
    assert set(named_datasets([tmp_path / "split"])) == {"train", "val"}
