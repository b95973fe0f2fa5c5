"""A single model vs a K-member ensemble (`entrep fit --ensemble K`) on the same held-out test split.

    python benchmarks/bench_ensemble.py [--n 400] [--k 3] [--seed 0] [--config FILE] [--json OUT]

Generates ``--n`` synthetic images (entrep.synth), splits them 80/10/10
(grouped, stratified, seeded), fits a single model on train (validation: the
val split) and a K-member ensemble on train (members validate on their own
folds; the val split only scores them), then evaluates both on the test split:
fine and coarse accuracy, macro F1, image->image Recall@1 (class relevance,
the model's filter, leave-one-out over the test split), fit seconds (each fit
with its own empty feature cache, so both pay for their features) and predict
ms per image (warm: features cached, after one untimed call; cold: the first call on an empty
cache, encoders built). The load average is recorded at the start: timings on a busy machine
are noisy.
Prints one JSON line and writes it to ``--json OUT``. Not run by CI.

Synthetic data is far easier than real endoscopy: these scores check that the
pipeline works end to end, not how good the method is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path


def _scores(ev: dict) -> dict:
    cls = ev["classification"]
    out = {"fine_accuracy": round(cls["fine"]["accuracy"], 4), "fine_macro_f1": round(cls["fine"]["macro_f1"], 4),
           "i2i_recall@1": round(ev["retrieval"]["i2i"]["class"]["recall@1"], 4)}
    if "coarse" in cls:
        out["coarse_accuracy"] = round(cls["coarse"]["accuracy"], 4)
        out["coarse_macro_f1"] = round(cls["coarse"]["macro_f1"], 4)
    return out


def _predict_ms(model_dir: Path, images: list, cache: Path, *, warm: bool) -> float:
    """ms per image of ``predict`` over ``images``; warm: after one untimed call (features cached,
    torch initialised); cold: the first call on an empty cache (encoders built, features computed)."""
    from entrep.model import load_model

    model = load_model(model_dir, cache=cache)
    if warm:
        model.predict(images)
    t0 = time.perf_counter()
    model.predict(images)
    return round(1000 * (time.perf_counter() - t0) / len(images), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=400, help="synthetic images (default 400)")
    ap.add_argument("--k", type=int, default=3, help="ensemble members (default 3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", type=Path, default=None, help="training config YAML/JSON (default: entrep's defaults)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    from entrep.config import load_config
    from entrep.data.readers import read_dataset
    from entrep.data.split import split_dataset
    from entrep.data.synthetic import generate
    from entrep.model import fit_model

    cfg = load_config(args.config).replace(seed=args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ensemble-"))
    try:
        generate(tmp / "data", n=args.n, seed=args.seed, queries=False)
        parts = split_dataset(read_dataset(tmp / "data"), seed=args.seed)
        train, val, test = parts["train"], parts["val"], parts["test"]
        images = [r.image for r in test.records]
        figures: dict = {"n": args.n, "k": args.k, "seed": args.seed,
                         "n_train": len(train), "n_val": len(val), "n_test": len(test),
                         "cpus": len(os.sched_getaffinity(0)), "loadavg": os.getloadavg(),
                         "note": "synthetic data: checks the pipeline, not the method"}
        for name, k in (("single", 1), ("ensemble", args.k)):
            cache = tmp / f"cache-{name}"
            t0 = time.perf_counter()
            model = fit_model(train, val=val, config=cfg.replace(ensemble=k), cache=cache, out=tmp / name)
            fit_s = time.perf_counter() - t0
            ev, _ = model.evaluate(test)
            figures[name] = {**_scores(ev), "fit_s": round(fit_s, 1),
                             "predict_ms_per_image_warm": _predict_ms(tmp / name, images, cache, warm=True),
                             "predict_ms_per_image_cold": _predict_ms(tmp / name, images, tmp / f"cold-{name}",
                                                                      warm=False)}
            if k > 1:
                figures[name]["member_fine_accuracy"] = [round(a, 4) for a in ev["ensemble"]["member_accuracy"]]
                figures[name]["val"] = model.training.get("val")
        print(json.dumps(figures))
        if args.json:
            from entrep.io import write_json_atomic

            write_json_atomic(args.json, figures)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
