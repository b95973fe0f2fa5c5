"""Exam-review benchmark on synthetic exams (not run by CI).

    python benchmarks/bench_review.py --json OUT.json [--minutes 5] [--model MODEL] [--train-n 420] [--seed 0]

Writes a synthetic exam video (every ENT site in clinical order, 30% defective
frames, 2 fps) lasting ``--minutes``, fits a small offline-profile model on
synthetic training data unless ``--model`` is given, reviews the video and
reports: cleansing precision/recall per reason, per-frame site accuracy of
the kept frames (raw, HMM-smoothed, EMA-smoothed), sites found vs missing, and
frames per second (decode + cleanse + classify + smooth) with the real-time factor.
Synthetic exams are far easier than real endoscopy: these figures check the
pipeline, not the method. docs/review.md records the figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def precision_recall(truth: list, pred: list, reasons) -> dict:
    out = {}
    for r in reasons:
        tp = sum(t == r and p == r for t, p in zip(truth, pred))
        fp = sum(t != r and p == r for t, p in zip(truth, pred))
        fn = sum(t == r and p != r for t, p in zip(truth, pred))
        out[r] = {"precision": round(tp / (tp + fp), 4) if tp + fp else None,
                  "recall": round(tp / (tp + fn), 4) if tp + fn else None, "support": tp + fn}
    kept_t = [t is None for t in truth]
    kept_p = [p is None for p in pred]
    out["good_frames_kept"] = round(sum(a and b for a, b in zip(kept_t, kept_p)) / max(1, sum(kept_t)), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", required=True, type=Path, help="write the figures here")
    ap.add_argument("--minutes", type=float, default=5.0, help="exam length")
    ap.add_argument("--model", type=Path, default=None, help="a fitted model (default: fit one on synthetic data)")
    ap.add_argument("--train-n", type=int, default=420, help="synthetic training images when fitting")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-review-") as tmp:
        figures = run(args, Path(tmp))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


def run(args, work: Path) -> dict:
    import entrep
    from entrep.data.synthetic import generate
    from entrep.data.synthetic.exam import DEFAULT_ROUTE, ExamSpec, sites_in, write_exam
    from entrep.review import REASONS, review, smooth

    t0 = time.perf_counter()
    if args.model is None:
        generate(work / "train", n=args.train_n, seed=args.seed + 100, queries=False)
        model = entrep.fit(work / "train", out=work / "model", cache=work / "cache")
        fit_s = round(time.perf_counter() - t0, 1)
    else:
        model, fit_s = entrep.load(args.model), None
    dwell = args.minutes * 60 / len(DEFAULT_ROUTE)
    spec = ExamSpec(dwell_s=dwell, fps=2.0, defect_rate=0.3, seed=args.seed)
    t1 = time.perf_counter()
    truth = write_exam(work / "exam", spec, frames=False)["frames"]
    gen_s = round(time.perf_counter() - t1, 1)

    t2 = time.perf_counter()
    res = review(model, work / "exam" / "exam.mp4", fps=2.0)
    review_s = time.perf_counter() - t2
    doc = res.doc
    assert doc["n_frames"] == len(truth), (doc["n_frames"], len(truth))

    cleansing = precision_recall([t["defect"] for t in truth], [r["reason"] for r in doc["frames"]], REASONS)
    kept = [i for i, r in enumerate(doc["frames"]) if r["kept"]]
    site_truth = [truth[i]["site"] for i in kept]
    classes = list(model.taxonomy.classes)
    scored = [j for j, s in enumerate(site_truth) if s is not None]

    def accuracy(proba: np.ndarray) -> float:
        lab = [classes[int(k)] for k in proba.argmax(1)]
        return round(float(np.mean([lab[j] == site_truth[j] for j in scored])), 4) if scored else float("nan")

    def switches(proba: np.ndarray) -> int:
        lab = proba.argmax(1)
        return int((lab[1:] != lab[:-1]).sum())

    per_frame = {}
    for method in ("none", "hmm", "ema"):
        p = smooth(res.probabilities, res.times, method)
        per_frame[method] = {"accuracy": accuracy(p), "label_changes": switches(p)}
    shown = sites_in(truth)
    return {
        "exam": {"minutes": args.minutes, "frames": len(truth), "fps": 2.0, "defect_rate": 0.3,
                 "sites_shown": shown, "generate_s": gen_s},
        "model": {"path": str(args.model) if args.model else "fitted", "train_n": args.train_n, "fit_s": fit_s},
        "cleansing": cleansing,
        "dropped": doc["dropped"],
        "per_frame_site_accuracy": per_frame,
        "true_site_changes": len(shown) - 1,
        "sites": {"found": list(doc["sites"]), "missing": doc["missing"], "low_confidence": doc["low_confidence"],
                  "found_correctly": sorted(set(doc["sites"]) & set(shown)),
                  "false_sites": sorted(set(doc["sites"]) - set(shown))},
        "speed": {"review_s": round(review_s, 1), "frames_per_s": round(len(truth) / review_s, 2),
                  "realtime_factor": round(args.minutes * 60 / review_s, 2)},
    }


if __name__ == "__main__":
    main()
