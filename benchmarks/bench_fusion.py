"""Prototype fusion benchmark: the paper's linear fusion vs slerp, measured (issue 10 item 2; not run by CI).

    python benchmarks/bench_fusion.py --n 1857 --caption-rate 0.5 --json OUT.json [--out DIR] [--seed 0]

Synthetic ENTRep data (``entrep.data.synthetic.generate``), split 80/10/10
(stratified, the paper's), fitted with the ``offline-fast`` profile
(EfficientNet-Lite0) once per value of ``FitConfig.fusion``: ``linear``
(z = s*v + (1-s)*u, s = cos(v, u), the paper's eq. 2) and ``slerp``
(slerp(v, u, 0.5)). The fits share one feature cache, so the images are encoded
once; they are seeded, so the alignment and the heads come out the same and the
prototypes (and what the policy and soft ranking chosen on validation make of
them) are the only difference. A fit per fusion rather than prototypes swapped
into one model: the policy, the soft-ranking alpha and the saved config all
depend on the prototypes, and ``fit`` is the one place that builds them all.

Reported on the test split, per fusion: prototype, baseline-head and hybrid
accuracy (fine and coarse; the hybrid is gated by the prototypes' confidence),
the policy chosen on validation and how far the prototypes moved. Then, on the
test images that carry a caption, the nearest class prompt in the joint space
for the image vector v alone, linear fusion and slerp with the caption vector u.

``--caption-rate R`` gives a share R of all synthetic images a caption made from
the image's own findings (``findings.caption_en``: side-free and without the
class name, so it names the region but never the label or side) and removes the
other captions, so the comparison has enough captioned images; without it the
generator's own t2i.json captions (about 5% of images) are kept. Training images
without a caption are fused with their class prompt, as in ``fit``.
Synthetic data is far easier than real endoscopy: the figures check the
mechanism, they do not rank the fusions for real ENT images.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

FUSIONS = ("linear", "slerp")
SIDE_WORDS = ("left", "right")


def recaption(ds, plan, rate: float, seed: int):
    """``ds`` with a share ``rate`` of its records captioned from their findings and the others uncaptioned."""
    from entrep.data.synthetic.findings import caption_en

    findings = {s.name: s.findings for s in plan.train}
    missing = [r.name for r in ds.records if r.name not in findings]
    if missing:
        raise SystemExit(f"{ds.root}: image {missing[0]} is not in the synthetic plan of this --n/--seed; remove the folder")
    rng = np.random.default_rng([seed, 2024])
    chosen = set(rng.permutation(len(ds))[: round(rate * len(ds))].tolist())
    records = [dataclasses.replace(r, text=caption_en(findings[r.name]) if i in chosen else None)
               for i, r in enumerate(ds.records)]
    return dataclasses.replace(ds, records=records)


def caption_counts(parts: dict, taxonomy) -> dict:
    """Captioned images per split, and how many captions name a class or a side (must be 0 with --caption-rate)."""
    names = [c.lower() for c in taxonomy.classes]
    out = {}
    for split, ds in parts.items():
        texts = [r.text.lower() for r in ds.records if r.text]
        leaks = sum(any(w in t.split() for w in SIDE_WORDS) or any(c in t for c in names) for t in texts)
        out[split] = {"images": len(ds), "captioned": len(texts), "naming_class_or_side": leaks}
    return out


def system_scores(ev: dict) -> dict:
    s = ev["classification"]["systems"]
    out = {f"{name}/{lvl}": round(v["accuracy"], 4) for name, lv in s.items() for lvl, v in lv.items()}
    for thr, r in ev["hybrid"]["results_at_thresholds"].items():  # the hybrid at 0.99 and at its tuned threshold
        for lvl in ("fine", "coarse"):
            if lvl in r:
                out[f"hybrid@{thr}/{lvl}"] = round(r[lvl]["accuracy"], 4)
        out[f"hybrid@{thr}/deferred_to_heads"] = round(r["deferred_fraction"], 4)
    return out


def prompt_comparison(model, test) -> dict:
    """Nearest class prompt (joint space) for v, linear fusion and slerp, on the captioned test images."""
    from entrep.classify.fusion import fuse_by

    tax = model.taxonomy
    recs = [r for r in test.records if r.text]
    if not recs:
        return {"n": 0}
    v = model.joint_images(model.image_features([r.image for r in recs], flips=False).clip)
    u = model.embed_texts([r.text for r in recs])
    prompts = model.embed_texts([tax.prompt(c) for c in tax.classes])
    y = np.array([tax.class_id(r.label) for r in recs])
    g = tax.group_ids() if tax.hierarchical else None
    out: dict = {"n": len(recs)}
    for name, e in (("image", v), *((f, fuse_by(f, v, u)) for f in FUSIONS)):
        pred = np.argmax(e @ prompts.T, axis=1)  # cosine: prompts are unit rows, the argmax ignores |e|
        out[name] = {"fine": round(float(np.mean(pred == y)), 4)}
        if g is not None:
            out[name]["coarse"] = round(float(np.mean(g[pred] == g[y])), 4)
    return out


def run(parts: dict, cfg, cache: Path) -> tuple[dict, dict]:
    from entrep.model.train import fit

    figures, protos = {}, {}
    for fusion in FUSIONS:
        t0 = time.perf_counter()
        stage = lambda m: print(f"  [{fusion}] {time.perf_counter() - t0:6.1f}s {m}", flush=True)  # noqa: E731
        model = fit(parts["train"], val=parts["val"], config=cfg.replace(fusion=fusion), cache=cache, stage=stage)
        fit_s = time.perf_counter() - t0
        ev, _ = model.evaluate(parts["test"])
        figures[fusion] = {"test": system_scores(ev), "policy": model.policy.name, "fit_s": round(fit_s, 1),
                           "nearest_prompt": prompt_comparison(model, parts["test"])}
        protos[fusion] = model.parts.proto_fine.prototypes_
    moved = np.sum(protos["linear"] * protos["slerp"], axis=1)
    return figures, {"min_cosine_linear_vs_slerp_fine_prototypes": round(float(moved.min()), 6)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1857, help="synthetic images (default 1857, the paper's size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--caption-rate", type=float, default=None,
                    help="share of images captioned from their findings (default: the generator's t2i.json captions)")
    ap.add_argument("--n-aug", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/entrep-bench-fusion"), help="data and feature cache")
    ap.add_argument("--json", type=Path, required=True, help="write the figures here")
    args = ap.parse_args()
    if args.caption_rate is not None and not 0.0 <= args.caption_rate <= 1.0:
        ap.error(f"--caption-rate must be in [0, 1], got {args.caption_rate}")

    from entrep.config import FitConfig
    from entrep.data.readers import read_dataset
    from entrep.data.split import split_dataset
    from entrep.data.synthetic import generate, make_plan
    from entrep.io import write_json_atomic

    data = args.out / f"data-n{args.n}-s{args.seed}"
    if not data.exists():
        t = time.perf_counter()
        generate(data, n=args.n, seed=args.seed)
        print(f"synthetic data: {args.n} images in {time.perf_counter() - t:.0f}s", flush=True)
    ds = read_dataset(data)
    if args.caption_rate is not None:
        ds = recaption(ds, make_plan(args.n, args.seed), args.caption_rate, args.seed)
    parts = dict(split_dataset(ds, seed=args.seed).items())
    cfg = FitConfig(profile="offline-fast", seed=args.seed, n_aug=args.n_aug)
    figures = {"n": args.n, "seed": args.seed, "caption_rate": args.caption_rate,
               "captions": caption_counts(parts, ds.taxonomy), "profile": cfg.profile,
               "cpus": len(os.sched_getaffinity(0)), "loadavg": os.getloadavg(),
               "note": "synthetic data is far easier than real endoscopy: checks the mechanism, does not rank the fusions"}
    print(json.dumps(figures["captions"]), flush=True)
    per_fusion, moved = run(parts, cfg, args.out / "cache")
    figures.update(per_fusion, **moved)
    print(json.dumps({k: figures[k] for k in (*FUSIONS, *moved)}, indent=1))
    write_json_atomic(args.json, figures)


if __name__ == "__main__":
    main()
