"""Fault run: SIGKILL `entrep fit`, `entrep index` and `entrep embed` at random points, many times.

After every kill it checks that the model folder, its search index, the
embeddings file and the feature cache are each either the old or a new
complete version: the model loads, its gallery has every image, it predicts,
the embeddings file loads with matching row counts. At the end each command
runs once to completion over the killed runs' cache, and no temporary may be
left beside the outputs. Loopback-free, local files only; stops by itself
after BUDGET seconds of kills. Not run by CI.

    python benchmarks/bench_faults.py [--n 60] [--budget 180] [--seed 0] [--work DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLI = [sys.executable, "-c", "from entrep.cli import main; main()"]


def run(args: list[str], env: dict, timeout: float = 1800) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SystemExit(f"entrep {' '.join(args)} failed ({r.returncode}): {r.stderr[-2000:]}")
    return time.perf_counter() - t0


def digest(path: Path) -> str | None:
    """A hash of a file or of a folder's files (names and bytes); None when absent."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(path.parent)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def check_model(model_dir: Path, cache: Path, n_gallery: int, probe: Path) -> None:
    import entrep

    model = entrep.load(model_dir, cache=cache)
    if model.gallery is None or len(model.gallery) != n_gallery:
        raise AssertionError(f"{model_dir}: gallery has {0 if model.gallery is None else len(model.gallery)} "
                             f"images, expected {n_gallery}")
    if not model.predict([probe])[0]["label"]:
        raise AssertionError(f"{model_dir}: no prediction")


def check_embeddings(path: Path, n_images: int) -> None:
    with np.load(path, allow_pickle=False) as z:
        rows = {k: z[k].shape[0] for k in z.files if z[k].ndim >= 1 and z[k].shape[0] > 1}
    if not rows or set(rows.values()) != {n_images}:
        raise AssertionError(f"{path}: row counts {rows}, expected {n_images} everywhere")


def check_all(model: Path, cache: Path, n_gallery: int, probe: Path, emb: Path, n_images: int) -> str | None:
    """Run both checks in a fresh interpreter (the code on disk, as the next command would); error line or None."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from bench_faults import check_model, check_embeddings; "
            "from pathlib import Path as P; a = sys.argv; check_model(P(a[2]), P(a[3]), int(a[4]), P(a[5])); "
            "check_embeddings(P(a[6]), int(a[7]))")
    r = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent), str(model), str(cache),
                        str(n_gallery), str(probe), str(emb), str(n_images)], capture_output=True, text=True,
                       timeout=600)
    if r.returncode == 0:
        return None
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"check exited with {r.returncode}"


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*.entrep-*"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60, help="Synthetic images (default 60).")
    ap.add_argument("--budget", type=float, default=180.0, help="Seconds of kill rounds (default 180).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, help="Working folder (default: a temporary one).")
    ap.add_argument("--json", type=Path, help="Also write the figures here.")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="entrep-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    data, model, emb, cache = work / "data", work / "model", work / "emb.npz", work / "cache"
    env = {**os.environ, "ENTREP_CACHE": str(cache)}

    if not data.exists():  # a --work folder from an earlier run is reused (its cache too)
        run(["synth", str(data), "--n", str(args.n), "--seed", str(args.seed)], env)
    commands = {
        "fit": ["fit", "--data", str(data), "--out", str(model)],
        "index": ["index", "--model", str(model), "--gallery", str(data), "--rebuild"],
        "embed": ["embed", str(data), "--out", str(emb)],
    }
    full = {name: run(cmd, env) for name, cmd in commands.items()}  # also the first complete versions
    import entrep

    n_gallery = len(entrep.load(model, cache=cache).gallery)
    probe = next(p for p in sorted((data / "imgs").iterdir()) if p.suffix == ".png")
    with np.load(emb) as z:
        n_images = max(z[k].shape[0] for k in z.files if z[k].ndim >= 1)
    # warm runs (features cached) are what the kill points are drawn over
    full = {name: run(cmd, env) for name, cmd in commands.items()}

    rounds: list[dict] = []
    t_end = time.monotonic() + args.budget
    names = list(commands)
    while time.monotonic() < t_end:
        name = names[len(rounds) % len(names)]
        target = emb if name == "embed" else model
        before = digest(target)
        delay = rng.uniform(0.0, full[name])
        proc = subprocess.Popen([*CLI, *commands[name]], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(delay)
            killed = False
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed = True
        after = digest(target)
        outcome = {"command": name, "delay_s": round(delay, 2), "killed": killed,
                   "version": "old" if after == before else "new", "ok": True}
        error = f"{target}: gone after the kill" if after is None else check_all(model, cache, n_gallery, probe,
                                                                                   emb, n_images)
        if error:
            outcome.update(ok=False, error=error)
        rounds.append(outcome)
        print(json.dumps(outcome), flush=True)

    final = {name: round(run(cmd, env), 1) for name, cmd in commands.items()}  # cache still usable
    final_error = check_all(model, cache, n_gallery, probe, emb, n_images)
    left = leftovers(work)
    res = {
        "rounds": len(rounds), "killed": sum(r["killed"] for r in rounds),
        "by_command": {n: {"rounds": sum(r["command"] == n for r in rounds),
                           "killed": sum(r["command"] == n and r["killed"] for r in rounds),
                           "old": sum(r["command"] == n and r["version"] == "old" for r in rounds),
                           "new": sum(r["command"] == n and r["version"] == "new" for r in rounds)} for n in names},
        "failures": [r for r in rounds if not r["ok"]], "final_check_error": final_error,
        "leftover_temporaries": left,
        "full_run_s": {n: round(v, 1) for n, v in full.items()}, "final_run_s": final,
        "n_images": args.n, "budget_s": args.budget, "seed": args.seed,
    }
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    if res["failures"] or left or final_error:
        sys.exit(1)


if __name__ == "__main__":
    main()
