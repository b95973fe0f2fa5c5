"""Exam review with a fitted tiny model: the Python API, the outputs on disk, the CLI and the web route."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from entrep.cli import app
from entrep.data.synthetic.exam import ExamSpec, write_exam
from entrep.errors import UserError
from entrep.review import REASONS, CleanseConfig, ReviewConfig, review, review_exam

runner = CliRunner()
SPEC = ExamSpec(route=("nose-left", "nose-right", "throat"), dwell_s=5.0, fps=2.0, defect_rate=0.3, seed=7)


@pytest.fixture(scope="module")
def exam_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("exam")
    write_exam(out, SPEC)
    return out


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    import entrep

    return entrep.load(tiny_model_dir)


def entrep_load(path):
    import entrep

    return entrep.load(path)


def _truth(exam_dir):
    return json.loads((exam_dir / "truth.json").read_text())["frames"]


def test_review_of_a_video_has_the_documented_schema(model, exam_dir, tmp_path):
    doc = review_exam(model, exam_dir / "exam.mp4", out=tmp_path / "rev")
    truth = _truth(exam_dir)
    assert doc["kind"] == "video" and doc["n_frames"] == len(truth)
    for row in doc["frames"]:
        assert {"frame", "time_s", "kept", "reason", "label", "confidence"} <= set(row)
        assert row["kept"] == (row["reason"] is None)
        assert (row["label"] is None) == (not row["kept"])
        if row["kept"]:
            assert row["label"] in model.taxonomy.classes and 0 <= row["confidence"] <= 1
    assert doc["n_kept"] == sum(r["kept"] for r in doc["frames"])
    assert sum(doc["dropped"].values()) == doc["n_frames"] - doc["n_kept"]
    assert set(doc["dropped"]) == set(REASONS)
    # every inserted dark / over-exposed / out-of-field frame is dropped for that reason
    for row, t in zip(doc["frames"], truth):
        if t["defect"] in ("dark", "overexposed", "out_of_field"):
            assert row["reason"] == t["defect"], (row, t)
    # sites: best frame is a kept frame labelled with the site, segments lie in the exam
    kept = {r["frame"]: r for r in doc["frames"] if r["kept"]}
    for site, s in doc["sites"].items():
        assert kept[s["best_frame"]]["label"] == site and kept[s["best_frame"]]["time_s"] == s["time_s"]
        assert all(0 <= a <= b <= truth[-1]["time_s"] for a, b in s["segments"])
    assert doc["required"] == list(model.taxonomy.classes)
    assert doc["missing"] == [c for c in model.taxonomy.classes if c not in doc["sites"]]
    # the exam shows 3 of 7 sites: at least the 4 never shown are missing, and it is not complete
    assert set(doc["missing"]) >= {"ear-left", "ear-right", "vc-open", "vc-closed"} - set(doc["sites"])
    assert not doc["complete"]
    # outputs on disk
    assert json.loads((tmp_path / "rev" / "review.json").read_text()) == doc
    html = (tmp_path / "rev" / "review.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html and "https://" not in html
    for site in doc["sites"]:
        assert (tmp_path / "rev" / "best" / f"{site}.jpg").is_file()


def test_smoothing_flickers_less_than_single_frames(model, exam_dir):
    doc = review_exam(model, exam_dir / "exam.mp4")
    kept = [r for r in doc["frames"] if r["kept"]]
    changes = lambda key: sum(a[key] != b[key] for a, b in zip(kept, kept[1:]))  # noqa: E731
    assert changes("label") <= changes("raw_label")
    raw = review_exam(model, exam_dir / "exam.mp4", config=ReviewConfig(smoothing="none"))
    assert [r["label"] for r in raw["frames"]] == [r["raw_label"] if r["kept"] else None for r in raw["frames"]]


def test_folder_and_in_memory_frames_review_the_same(model, exam_dir):
    folder = review_exam(model, exam_dir / "frames", require="nose-left,throat")
    assert folder["kind"] == "frames" and folder["required"] == ["nose-left", "throat"]
    imgs = [Image.open(p).convert("RGB") for p in sorted((exam_dir / "frames").glob("*.png"))]
    mem = review(model, imgs, require=["nose-left", "throat"]).doc
    assert [r["reason"] for r in mem["frames"]] == [r["reason"] for r in folder["frames"]]
    assert [r["label"] for r in mem["frames"]] == [r["label"] for r in folder["frames"]]
    with pytest.raises(UserError, match="not classes"):
        review_exam(model, exam_dir / "frames", require="nose-middle")


def test_html_escapes_names(model, tmp_path):
    from entrep.review.html import render_review_html

    frames = tmp_path / "f"
    frames.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 48), (200, 90, 70)).save(frames / f"<b>x{i}.png")
    res = review(model, frames, config=ReviewConfig(cleanse=CleanseConfig(min_sharpness=0)))
    html = render_review_html(res.doc, res.thumbnails)
    assert "<b>x" not in html and "&lt;b&gt;x" in html


def test_cli_review_and_calibrate(tiny_model_dir, exam_dir, tmp_path):
    good = [exam_dir / "frames" / f"frame_{t['frame']:05d}.png" for t in _truth(exam_dir) if t["defect"] is None]
    res = runner.invoke(app, ["review-calibrate", *map(str, good), "--out", str(tmp_path / "rc.yaml")])
    assert res.exit_code == 0, res.output
    from entrep.review import load_review_config, review_exam

    cfg = load_review_config(tmp_path / "rc.yaml")
    assert 0 < cfg.cleanse.min_sharpness and 0 < cfg.cleanse.dark_brightness and 0 < cfg.cleanse.min_tissue
    doc = review_exam(entrep_load(tiny_model_dir), exam_dir / "frames", config=cfg)
    truth = _truth(exam_dir)
    assert all(r["kept"] for r, t in zip(doc["frames"], truth) if t["defect"] is None)
    res = runner.invoke(app, ["review", str(exam_dir / "exam.mp4"), "--model", str(tiny_model_dir),
                              "--out", str(tmp_path / "out"), "--json", str(tmp_path / "r.json"),
                              "--require", "nose-left,ear-left"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["required"] == ["nose-left", "ear-left"] and "ear-left" in doc["missing"]
    assert "missing" in res.output and "ear-left" in res.output
    assert (tmp_path / "out" / "review.html").is_file()


def test_cli_review_bad_exam_is_one_line(tiny_model_dir, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 2048)
    res = runner.invoke(app, ["review", str(bad), "--model", str(tiny_model_dir)])
    assert res.exit_code != 0
    assert "broken.mp4: cannot open" in str(res.exception)


def test_web_review_of_frames_and_video(tiny_model_dir, exam_dir):
    from fastapi.testclient import TestClient

    from entrep.server.app import create_app

    client = TestClient(create_app(tiny_model_dir), base_url="http://127.0.0.1")
    pngs = sorted((exam_dir / "frames").glob("*.png"))[:8]
    files = [("files", (p.name, p.read_bytes(), "image/png")) for p in pngs]
    r = client.post("/api/review", files=files, data={"require": "nose-left"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["n_frames"] == 8 and doc["frames"][0]["frame"] == pngs[0].name
    assert doc["required"] == ["nose-left"]
    for site, uri in doc["best_frames"].items():
        assert site in doc["sites"] and uri.startswith("data:image/jpeg;base64,")
    video = (exam_dir / "exam.mp4").read_bytes()
    r = client.post("/api/review", files=[("files", ("exam.mp4", video, "video/mp4"))], data={"fps": "1"})
    assert r.status_code == 200, r.text
    assert r.json()["kind"] == "video" and r.json()["n_frames"] == len(_truth(exam_dir)) // 2
    r = client.post("/api/review", files=[("files", ("exam.mp4", b"junk" * 100, "video/mp4"))])
    assert r.status_code == 422 and "cannot open" in r.json()["detail"]
    mixed = [("files", ("exam.mp4", video, "video/mp4")), files[0]]
    assert client.post("/api/review", files=mixed).status_code == 400
