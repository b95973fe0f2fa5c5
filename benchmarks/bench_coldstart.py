"""Cold start: `entrep predict` on one image and a fully cached `entrep embed`, in fresh processes.

    python benchmarks/bench_coldstart.py [--images 200] [--repeats 3] [--json OUT]

In a temporary folder (or ``--workdir``): synthesises a small training set (48
images) and fits a tiny model on it (offline profile), synthesises ``--images``
more images, then times, each in a fresh subprocess (best of ``--repeats``):

- ``python -c "import torch"``                                (the floor every command pays)
- ``entrep predict --model M one.png`` on an empty feature cache (``predict_first_s``: also exports and
  caches the image encoder's runtime graph, which happens once per machine and encoder)
- the same for an image never seen, the cache kept              (``predict_s``: the cached graph alone
  computes its features, no torch model is built)
- the same command again for that image                        (``predict_cached_s``: every row cached)
- ``entrep embed DATA --out DIR`` on the ``--images`` images, first run on an empty cache (``embed_first_s``)
  and a re-run into another folder with the cache kept          (``embed_cached_s``: no encoder is built)

Targets (issue 14): ``predict_ratio`` = predict_s / import_torch_s < 2; ``embed_speedup`` =
embed_first_s / embed_cached_s >= 10 on 200 images. Timings on a busy machine are indicative only.
:func:`measure` returns the figures (``benchmarks/bench_encoders.py`` calls it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: training images of the tiny model (enough for every class of the synthetic layout)
FIT_IMAGES = 48


def _run(args: list[str], env: dict) -> float:
    """Seconds one fresh subprocess takes; its failure is an error naming the command."""
    t = time.perf_counter()
    r = subprocess.run(args, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:4])} ... failed ({r.returncode}): {r.stderr.strip()[-800:]}")
    return dt


def _entrep(*args: str) -> list[str]:
    return [sys.executable, "-m", "entrep", *args]


def _fit_model(data: Path, out: Path, cache: Path) -> None:
    from entrep.config import AlignConfig, FitConfig, HeadConfig
    from entrep.data.readers import read_dataset
    from entrep.model.train import fit

    cfg = FitConfig(n_aug=1, head=HeadConfig(max_epochs=10, patience=3), align=AlignConfig(epochs=10))
    fit(read_dataset(data), config=cfg, cache=cache).save(out)


def _images(data: Path) -> list[Path]:
    from entrep.data.readers import read_dataset

    return [Path(r.image) for r in read_dataset(data).records]


def measure(workdir: str | Path, n_images: int = 200, repeats: int = 3) -> dict:
    """Cold-start figures (see the module docstring) measured under ``workdir``; returns a dict with keys
    import_torch_s, predict_s, predict_cached_s, predict_ratio, embed_first_s, embed_cached_s, embed_speedup."""
    from entrep.data.synthetic import generate

    if n_images < 1 or repeats < 1:
        raise ValueError("n_images and repeats must be >= 1")
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    fit_data, data = work / "fit-data", work / "data"
    for d in (fit_data, data):
        if d.exists():
            shutil.rmtree(d)
    generate(fit_data, n=FIT_IMAGES, seed=1, queries=False)
    generate(data, n=n_images, seed=2, queries=False)
    model = work / "model"
    if model.exists():
        shutil.rmtree(model)
    _fit_model(fit_data, model, work / "fit-cache")

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("ENTREP_CACHE", None)
    torch_s = min(_run([sys.executable, "-c", "import torch"], env) for _ in range(repeats))

    images = _images(data)
    if len(images) < repeats + 1:
        raise ValueError(f"need at least {repeats + 1} images for {repeats} predict repeats")
    pcache = work / "predict-cache"
    shutil.rmtree(pcache, ignore_errors=True)
    penv = dict(env, ENTREP_CACHE=str(pcache))
    # first predict on an empty cache: also exports/caches the image encoder's runtime graph, once per machine
    predict_first = _run(_entrep("predict", "--model", str(model), str(images[-1])), penv)
    predict, predict_cached = [], []
    for i in range(repeats):
        one = str(images[i])  # never seen: its features are computed (by the cached ONNX graph)
        predict.append(_run(_entrep("predict", "--model", str(model), one), penv))
        predict_cached.append(_run(_entrep("predict", "--model", str(model), one), penv))

    embed_first, embed_cached = [], []
    for i in range(repeats):
        ecache = work / f"embed-cache-{i}"
        for p in (ecache, work / f"embed-{i}-a", work / f"embed-{i}-b"):
            shutil.rmtree(p, ignore_errors=True)
        # the cache goes through $ENTREP_CACHE (the same as `embed --cache DIR`), so the content-hash memo
        # is kept in that fresh folder too
        eenv = dict(env, ENTREP_CACHE=str(ecache))
        embed_first.append(_run(_entrep("embed", str(data), "--out", str(work / f"embed-{i}-a"), "--no-progress"),
                                eenv))
        embed_cached.append(_run(_entrep("embed", str(data), "--out", str(work / f"embed-{i}-b"), "--no-progress"),
                                 eenv))
        if not any(ecache.glob("*/orig/meta.json")):
            raise RuntimeError(f"entrep embed wrote no feature cache under {ecache}")
        if i == 0 and repeats > 1 and n_images >= 100:
            break  # a first run of a large set is long and steady: once is enough

    out = {
        "n_images": n_images, "repeats": repeats, "cpus": os.cpu_count(),
        "import_torch_s": round(torch_s, 3),
        "predict_first_s": round(predict_first, 3),
        "predict_s": round(min(predict), 3), "predict_cached_s": round(min(predict_cached), 3),
        "embed_first_s": round(min(embed_first), 3), "embed_cached_s": round(min(embed_cached), 3),
    }
    out["predict_ratio"] = round(out["predict_s"] / out["import_torch_s"], 2)
    out["predict_cached_ratio"] = round(out["predict_cached_s"] / out["import_torch_s"], 2)
    out["embed_speedup"] = round(out["embed_first_s"] / out["embed_cached_s"], 2)
    out["targets_met"] = {"predict_under_2x_import_torch": out["predict_ratio"] < 2.0,
                          "cached_embed_10x": out["embed_speedup"] >= 10.0}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200, help="Images embedded by the embed runs (default 200).")
    ap.add_argument("--repeats", type=int, default=3, help="Runs per timing; the best is kept (default 3).")
    ap.add_argument("--workdir", type=Path, default=None, help="Keep the work here (default: a temporary folder).")
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures to this JSON file.")
    a = ap.parse_args()
    if a.workdir is not None:
        out = measure(a.workdir, a.images, a.repeats)
    else:
        with tempfile.TemporaryDirectory(prefix="entrep-coldstart-") as t:
            out = measure(t, a.images, a.repeats)
    text = json.dumps(out, indent=2)
    print(text)
    if a.json is not None:
        from entrep.io import write_json_atomic

        write_json_atomic(a.json, out)


if __name__ == "__main__":
    main()
