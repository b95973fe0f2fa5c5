"""Challenge submissions: round trips for all three tracks, and every format violation is caught."""

from __future__ import annotations

import json
import logging
import zipfile

import numpy as np
import pytest

from entrep.data.records import DataError
from entrep.errors import UserError
from entrep.challenge.format import check_submission, read_query_csv, read_submission, unique_queries, write_submission

IMAGES = {"a.png", "b.png", "c.png", "d.png"}
CAPTION = "phù nề sụn phễu, edema of the arytenoid"  # non-ASCII must survive as is
TRACKS = {
    1: (["a.png", "b.png", "c.png"], {"a.png": 0, "b.png": 6, "c.png": 3}),
    2: (["a.png", "b.png"], {"a.png": "c.png", "b.png": "d.png"}),
    3: ([CAPTION, "a spur on the septum"], {CAPTION: "a.png", "a spur on the septum": "b.png"}),
}


def raw_zip(path, members: dict[str, bytes | str]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


@pytest.mark.parametrize("track", [1, 2, 3])
def test_round_trip_all_tracks(track, tmp_path):
    queries, answers = TRACKS[track]
    out = write_submission(track, answers, tmp_path / "sub.zip")
    assert check_submission(out, track, queries, image_names=IMAGES) == []
    assert read_submission(out) == answers
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
        assert names == [{1: "cls.json", 2: "i2i.json", 3: "t2i.json"}[track]]
        raw = z.read(names[0])
    assert json.loads(raw.decode("utf-8")) == answers
    if track == 3:
        assert CAPTION.encode("utf-8") in raw  # ensure_ascii=False: no \u escapes
    if track == 1:
        assert all(type(v) is int for v in json.loads(raw).values())


def test_custom_json_name_and_numpy_label_ids(tmp_path):
    out = write_submission(1, {"a.png": np.int64(2), "b.png": np.int32(5)}, tmp_path / "s.zip", json_name="answers.json")
    assert zipfile.ZipFile(out).namelist() == ["answers.json"]
    assert read_submission(out) == {"a.png": 2, "b.png": 5}
    assert check_submission(out, 1, ["a.png", "b.png"]) == []


def test_write_refuses_invalid_answers_and_writes_nothing(tmp_path):
    out = tmp_path / "s.zip"
    for track, answers, match in [
        (1, {"a.png": 7}, "0..6"),
        (1, {"a.png": -1}, "0..6"),
        (1, {"a.png": "nose-left"}, "integer label ids"),
        (1, {"a.png": 1.0}, "integer label ids"),
        (1, {"a.png": True}, "integer label ids"),
        (2, {"a.png": 3}, "file name"),
        (3, {"a caption": ""}, "file name"),
        (2, {}, "empty"),
        (4, {"a.png": "b.png"}, "track must be"),
    ]:
        with pytest.raises(UserError, match=match):
            write_submission(track, answers, out)
    with pytest.raises(UserError, match="json_name"):
        write_submission(2, {"a.png": "b.png"}, out, json_name="sub/x.json")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left behind


def test_rewrite_replaces_the_zip(tmp_path):
    out = tmp_path / "s.zip"
    write_submission(2, {"a.png": "b.png"}, out)
    write_submission(2, {"a.png": "c.png"}, out)
    assert read_submission(out) == {"a.png": "c.png"}


def problems_for(tmp_path, members, track=2, queries=("a.png", "b.png"), **kw):
    return check_submission(raw_zip(tmp_path / "x.zip", members), track, list(queries), **kw)


GOOD2 = json.dumps({"a.png": "c.png", "b.png": "d.png"})


def test_check_detects_structural_problems(tmp_path):
    assert check_submission(tmp_path / "missing.zip", 2, ["a.png"]) == [f"{tmp_path / 'missing.zip'}: file not found"]
    (tmp_path / "notzip.zip").write_text(GOOD2)
    assert "not a readable zip" in check_submission(tmp_path / "notzip.zip", 2, ["a.png"])[0]
    assert problems_for(tmp_path, {"sub.json": GOOD2}) == []

    (p,) = problems_for(tmp_path, {})
    assert "no JSON file at the zip root" in p
    (p,) = problems_for(tmp_path, {"results/sub.json": GOOD2})
    assert "inside a folder" in p and "results/sub.json" in p
    (p,) = problems_for(tmp_path, {"a.json": GOOD2, "b.json": GOOD2})
    assert "2 JSON files" in p
    (p,) = problems_for(tmp_path, {"sub.json": GOOD2, "readme.txt": "hi"})
    assert "unexpected entries" in p and "readme.txt" in p
    (p,) = problems_for(tmp_path, {"sub.json": GOOD2, "__MACOSX/._sub.json": "x"})
    assert "unexpected entries" in p


def test_check_detects_bad_json(tmp_path):
    (p,) = problems_for(tmp_path, {"sub.json": '{"a.png": "c.png",'})
    assert "malformed JSON" in p and "line 1" in p
    (p,) = problems_for(tmp_path, {"sub.json": json.dumps([["a.png", "c.png"]])})
    assert "one object" in p and "list" in p
    (p,) = problems_for(tmp_path, {"sub.json": "\u00e9".encode("latin-1")})
    assert "not UTF-8" in p
    (p,) = problems_for(tmp_path, {"sub.json": b"\xef\xbb\xbf" + GOOD2.encode()})
    assert "byte-order mark" in p
    (p,) = problems_for(tmp_path, {"sub.json": '{"a.png": "c.png", "b.png": "d.png", "a.png": "d.png"}'})
    assert "more than once" in p and "'a.png'" in p
    with pytest.raises(DataError, match="malformed JSON"):
        read_submission(raw_zip(tmp_path / "bad.zip", {"sub.json": "{"}))
    with pytest.raises(DataError, match="no JSON"):
        read_submission(raw_zip(tmp_path / "bad2.zip", {"x.txt": "{}"}))


def test_check_detects_missing_and_extra_queries(tmp_path):
    (p,) = problems_for(tmp_path, {"sub.json": json.dumps({"a.png": "c.png"})})
    assert "1 of 2 queries have no answer" in p and "'b.png'" in p
    (p,) = problems_for(tmp_path, {"sub.json": json.dumps({"a.png": "c.png", "b.png": "d.png", "z.png": "a.png"})})
    assert "not queries" in p and "'z.png'" in p
    # a query listed twice in the CSV is one key
    assert problems_for(tmp_path, {"sub.json": GOOD2}, queries=["a.png", "b.png", "a.png"]) == []


def test_check_detects_bad_values_per_track(tmp_path):
    t1 = {"sub.json": json.dumps({"a.png": 7, "b.png": "ear-left", "c.png": 2.0, "d.png": True})}
    problems = problems_for(tmp_path, t1, track=1, queries=["a.png", "b.png", "c.png", "d.png"])
    assert len(problems) == 2
    assert "0..6" in problems[1] and "'a.png': 7" in problems[1]
    assert "3 are not" in problems[0] and "'b.png': 'ear-left'" in problems[0]
    assert problems_for(tmp_path, {"sub.json": json.dumps({"a.png": 7})}, track=1, queries=["a.png"], n_classes=8) == []

    (p,) = problems_for(tmp_path, {"sub.json": json.dumps({"a.png": "c.png", "b.png": ["d.png"]})})
    assert "one retrieved image file name" in p
    (p,) = problems_for(tmp_path, {"sub.json": json.dumps({"a.png": "c.png", "b.png": "zz.png"})}, image_names=IMAGES)
    assert "not among the 4 test images" in p and "'zz.png'" in p
    # without image_names the name is not checked
    assert problems_for(tmp_path, {"sub.json": json.dumps({"a.png": "c.png", "b.png": "zz.png"})}) == []


def test_duplicate_queries_keep_order_and_warn(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="entrep.challenge.format")
    assert unique_queries(["b.png", "a.png", "b.png", "c.png", "a.png"]) == ["b.png", "a.png", "c.png"]
    assert "2 queries are listed more than once" in caplog.text and "'b.png'" in caplog.text
    csv = tmp_path / "i2i.csv"
    csv.write_text("q1.png\nq2.png\nq1.png\n", encoding="utf-8")  # no header: the first line is a query
    caplog.clear()
    assert read_query_csv(csv) == ["q1.png", "q2.png"]
    assert str(csv) in caplog.text and "'q1.png'" in caplog.text


def test_track1_accepts_label_ids_of_a_taxonomy_with_more_than_seven_classes(tmp_path):
    answers = {"a.png": 8, "b.png": 0}
    out = write_submission(1, answers, tmp_path / "t1.zip", n_classes=9)
    assert check_submission(out, 1, ["a.png", "b.png"], n_classes=9) == []
    assert check_submission(out, 1, ["a.png", "b.png"], n_classes=7)  # id 8 is out of range for 7 classes
