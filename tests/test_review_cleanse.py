"""Exam review without a model: cleansing, calibration, smoothing, sites, frame sources, synthetic exams."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from entrep.data.records import DataError
from entrep.data.synthetic.exam import DEFECTS, ExamSpec, exam_frames, sites_in, write_exam
from entrep.errors import UserError
from entrep.review import CleanseConfig, FrameSource, ReviewConfig, calibrate, drop_reason, frame_quality, smooth
from entrep.review.sites import completeness, segments, site_summaries
from entrep.review.smooth import ema_smooth, hmm_smooth

SHORT = ExamSpec(route=("nose-left", "throat", "ear-right"), dwell_s=4.0, fps=2.0, defect_rate=0.4, seed=3)


@pytest.fixture(scope="module")
def short_exam(tmp_path_factory):
    out = tmp_path_factory.mktemp("exam")
    truth = write_exam(out, SHORT)
    return out, truth["frames"]


def _cleanse(frames):
    prev, reasons = None, []
    cfg = CleanseConfig()
    for im in frames:
        q = frame_quality(im, cfg)
        r = drop_reason(q, prev, cfg)
        prev = q if r is None else prev
        reasons.append(r)
    return reasons


def test_synthetic_exam_has_every_defect_and_ground_truth(short_exam):
    out, truth = short_exam
    assert len(truth) == 3 * 8
    assert {t["defect"] for t in truth} == {None, "dark", "overexposed", "out_of_field"}
    assert all(t["site"] is None for t in truth if t["defect"] == "out_of_field")
    assert sites_in(truth) == ["nose-left", "throat", "ear-right"]
    assert sorted(p.name for p in (out / "frames").iterdir())[0] == "frame_00000.png"
    assert (out / "exam.mp4").stat().st_size > 0
    assert json.loads((out / "truth.json").read_text())["frames"] == truth
    # the same seed gives the same exam
    again = [f.truth() for f in exam_frames(SHORT)]
    assert again == truth


def test_cleansing_names_the_defect_of_every_inserted_frame():
    spec = ExamSpec(route=("nose-right", "vc-open", "ear-left"), dwell_s=8.0, fps=2.0, defect_rate=0.5, seed=11)
    frames = list(exam_frames(spec))
    reasons = _cleanse([Image.fromarray(f.image) for f in frames])
    truth = [f.defect for f in frames]
    assert {d for d in truth if d} == set(DEFECTS)  # this seed inserts every kind
    for d in DEFECTS:
        hits = [r == d for t, r in zip(truth, reasons) if t == d]
        assert np.mean(hits) >= 0.8, (d, hits)
    good = [r is None for t, r in zip(truth, reasons) if t is None]
    assert np.mean(good) >= 0.9


def test_calibration_sets_thresholds_from_good_frames():
    frames = [Image.fromarray(f.image) for f in exam_frames(ExamSpec(dwell_s=2.0, defect_rate=0.0, seed=5))]
    cfg = calibrate(frames)
    qs = [frame_quality(im) for im in frames]
    assert cfg.min_sharpness <= min(q.sharpness for q in qs)
    assert cfg.dark_brightness <= min(q.brightness for q in qs)
    assert all(drop_reason(q, None, cfg) is None for q in qs)  # good frames stay
    dark = Image.fromarray((np.asarray(frames[0]) * 0.05).astype(np.uint8))
    assert drop_reason(frame_quality(dark), None, cfg) == "dark"
    with pytest.raises(UserError, match="at least 5"):
        calibrate(frames[:3])


def test_review_config_rejects_unknown_and_bad_settings():
    with pytest.raises(UserError, match="unknown cleansing thresholds"):
        ReviewConfig.from_dict({"cleanse": {"dakr_brightness": 3}})
    with pytest.raises(UserError, match="unknown review settings"):
        ReviewConfig.from_dict({"smoothnig": "hmm"})
    with pytest.raises(UserError, match="unknown smoothing"):
        ReviewConfig(smoothing="kalman")
    cfg = ReviewConfig.from_dict({"cleanse": {"min_sharpness": 3}, "require": "nose-left, throat"})
    assert cfg.cleanse.min_sharpness == 3.0 and cfg.require == ("nose-left", "throat")


def _noisy_sequence(seed=0):
    """20 frames of class 0 then 20 of class 1, with two isolated wrong frames."""
    rng = np.random.default_rng(seed)
    truth = np.array([0] * 20 + [1] * 20)
    p = np.full((40, 3), 0.1)
    p[np.arange(40), truth] = 0.8
    p[5] = [0.1, 0.1, 0.8]  # a flicker to a third class
    p[30] = [0.8, 0.1, 0.1]  # a flicker back
    p += rng.uniform(0, 0.02, p.shape)
    return p / p.sum(1, keepdims=True), truth, np.arange(40) * 0.5


def test_hmm_removes_flicker_but_keeps_the_real_change():
    p, truth, t = _noisy_sequence()
    assert (p.argmax(1) != truth).sum() == 2
    s = hmm_smooth(p, t)
    assert (s.argmax(1) == truth).all()
    assert np.allclose(s.sum(1), 1.0, atol=1e-5)
    # unsmoothed is the identity
    assert np.allclose(smooth(p, t, "none"), p, atol=1e-6)


def test_ema_is_causal():
    p, _, t = _noisy_sequence()
    full = ema_smooth(p, t)
    part = ema_smooth(p[:10], t[:10])
    assert np.allclose(full[:10], part)
    with pytest.raises(UserError):
        smooth(p, t, "median")


def test_sites_segments_best_frame_and_completeness():
    labels = ["a", "a", "b", "b", "a"]
    times = [0.0, 0.5, 1.0, 1.5, 2.0]
    assert segments(labels, times) == {"a": [[0.0, 0.5], [2.0, 2.0]], "b": [[1.0, 1.5]]}
    conf = np.array([0.9, 0.9, 0.5, 0.55, 0.95])
    sharp = np.array([0.9, 0.5, 0.5, 0.5, 0.3])
    s = site_summaries(["f0", "f1", "f2", "f3", "f4"], times, labels, conf, sharp)
    assert s["a"]["best_frame"] == "f0" and s["a"]["frames"] == 3  # 0.81 beats 0.285
    assert s["b"]["best_frame"] == "f3" and s["b"]["time_s"] == 1.5
    missing, weak = completeness(s, ["a", "b", "c"], ["a", "b", "c"], low_confidence=0.6, min_frames=2)
    assert missing == ["c"] and weak == ["b"]
    with pytest.raises(UserError, match="not classes"):
        completeness(s, ["nose-middle"], ["a", "b"], low_confidence=0.6, min_frames=1)


def test_folder_frames_sort_naturally_and_read_times(tmp_path):
    im = Image.new("RGB", (64, 48), (200, 80, 60))
    for name in ("f_10.png", "f_2.png", "f_1.png"):
        im.save(tmp_path / name)
    src = FrameSource(tmp_path, fps=4.0)
    assert [(f.name, f.time_s) for f in src] == [("f_1.png", 0.0), ("f_2.png", 0.25), ("f_10.png", 0.5)]
    (tmp_path / "t").mkdir()
    im.save(tmp_path / "t" / "cap_3.5s.png")
    assert [f.time_s for f in FrameSource(tmp_path / "t")] == [3.5]


def test_video_is_sampled_at_the_requested_rate(short_exam):
    out, truth = short_exam
    every = list(FrameSource(out / "exam.mp4", fps=2.0))
    assert len(every) == len(truth)
    half = list(FrameSource(out / "exam.mp4", fps=1.0))
    assert [f.time_s for f in half] == [float(i) for i in range(len(truth) // 2)]
    assert half[3].image.size == (640, 480)


def test_truncated_video_keeps_what_was_decoded_and_says_where(tmp_path):
    write_exam(tmp_path, SHORT, frames=False, container_format="mkv")
    data = (tmp_path / "exam.mkv").read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    src = FrameSource(cut)
    frames = list(src)
    assert 0 < len(frames) < 24
    assert src.error is not None and "decoding stopped at" in src.error and "cut.mkv" in src.error


def test_unreadable_inputs_say_what_is_wrong(tmp_path):
    bad = tmp_path / "junk.mp4"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(DataError, match="junk.mp4: cannot open"):
        list(FrameSource(bad))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not a video"):
        FrameSource(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        FrameSource(tmp_path / "empty")
    with pytest.raises(UserError, match="no such file"):
        FrameSource(tmp_path / "missing.mp4")
