"""Load and memory benchmark of `entrep serve` (loopback only; stops by itself).

Starts `entrep serve` as a subprocess on a free 127.0.0.1 port, waits for
/healthz, then

1. load: CONCURRENCY client threads (default 16) mix classify (POST
   /api/classify), image search (POST /api/search) and text search (GET
   /api/search, distinct texts) for a fixed DURATION (default 30 s), after a few
   untimed warm-up requests: requests/s, p50/p95/p99 latency, errors;
2. burst: BURST simultaneous uploads of a large 16-bit PNG (BURST_PIXELS
   pixels, default 7000x7000: about 100 MB of 16-bit samples behind a small file)
   to /api/classify while the server's resident memory is sampled every 20 ms:
   RSS before, peak (VmHWM) and after.

Then it stops the server. Prints the figures (and writes them with --json). Not run by CI.

    python benchmarks/bench_server.py --model MODEL [--concurrency 16] [--duration 30] [--burst 8] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from entrep.cli import main; main()", "serve", "--model", str(model),
           "--host", "127.0.0.1", "--port", str(port), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_ready(base: str, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            r = httpx.get(base + "/healthz", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"server not ready after {timeout:.0f} s")


def query_images(model: Path, limit: int) -> list[tuple[str, bytes]]:
    """Query uploads: the first ``limit`` gallery images of the model (read from its gallery metadata)."""
    meta = json.loads((model / "gallery" / "gallery.json").read_text(encoding="utf-8"))
    out = []
    for item in meta["items"]:
        p = Path(item["path"])
        if p.is_file():
            out.append((p.name, p.read_bytes()))
        if len(out) >= limit:
            break
    if not out:
        raise SystemExit(f"{model}: no readable gallery images to use as queries")
    return out


TEXTS = ("a spur on the septum", "left ear canal with wax", "vocal cords open", "polyp in the right nostril",
         "red swollen throat", "closed vocal folds", "eardrum with a perforation", "deviated nasal septum")


def request_once(c: httpx.Client, i: int, images: list[tuple[str, bytes]], k: int) -> tuple[str, str | None]:
    """One request of the mix (classify, image search, text search by turns); (kind, error or None)."""
    name, data = images[i % len(images)]
    kind = ("classify", "image_search", "text_search")[i % 3]
    try:
        if kind == "classify":
            r = c.post("/api/classify", files={"file": (name, data, "image/png")})
            ok = r.status_code == 200 and "label" in r.json()
        elif kind == "image_search":
            r = c.post("/api/search", files={"file": (name, data, "image/png")}, data={"k": str(k)})
            ok = r.status_code == 200 and r.json().get("results") is not None
        else:
            r = c.get("/api/search", params={"q": f"{TEXTS[i % len(TEXTS)]} {i}", "k": k})
            ok = r.status_code == 200 and r.json().get("results") is not None
        return kind, None if ok else f"{kind} HTTP {r.status_code}: {r.text[:200]}"
    except httpx.HTTPError as e:
        return kind, f"{kind} {type(e).__name__}: {e}"


def run_load(base: str, images: list[tuple[str, bytes]], *, concurrency: int, duration: float, k: int,
             max_requests: int | None = None) -> dict:
    lock = threading.Lock()
    issued = [0]
    latencies: dict[str, list[float]] = {"classify": [], "image_search": [], "text_search": []}
    errors: list[str] = []
    deadline = time.monotonic() + duration

    def take() -> int | None:
        with lock:
            if time.monotonic() >= deadline or (max_requests is not None and issued[0] >= max_requests):
                return None
            issued[0] += 1
            return issued[0] - 1

    def client() -> None:
        with httpx.Client(base_url=base, timeout=60.0) as c:
            while (i := take()) is not None:
                t0 = time.perf_counter()
                kind, msg = request_once(c, i, images, k)
                dt = time.perf_counter() - t0
                with lock:
                    if msg is None:
                        latencies[kind].append(dt)
                    else:
                        errors.append(msg)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 90)
    wall = time.perf_counter() - t0

    def pct(values: list[float]) -> dict:
        lat = np.array(values) * 1000.0
        if not len(lat):
            return {}
        return {q: round(float(np.percentile(lat, p)), 1) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))} | {
            "mean": round(float(lat.mean()), 1), "max": round(float(lat.max()), 1), "n": int(len(lat))}

    every = [v for vs in latencies.values() for v in vs]
    return {
        "requests_ok": len(every), "errors": len(errors), "first_errors": errors[:3], "wall_s": round(wall, 2),
        "requests_per_s": round(len(every) / wall, 2) if wall > 0 else None,
        "latency_ms": pct(every), "latency_ms_by_kind": {kind: pct(v) for kind, v in latencies.items()},
    }


def large_png(pixels: int) -> bytes:
    """A 16-bit grayscale PNG of about ``pixels`` pixels (smooth, so the file is small and the decode large)."""
    import io

    from PIL import Image

    side = int(pixels ** 0.5)
    row = np.linspace(0, 65535, side, dtype=np.uint16)
    im = Image.fromarray(np.broadcast_to(row, (side, side)).copy())
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise SystemExit(f"/proc/{pid}/status has no {field} (this measurement needs Linux)")


def run_burst(base: str, pid: int, *, burst: int, pixels: int) -> dict:
    data = large_png(pixels)
    before = rss_mb(pid)
    hwm_before = rss_mb(pid, "VmHWM")
    samples: list[float] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(rss_mb(pid))
            time.sleep(0.02)

    codes: list[int] = []
    lock = threading.Lock()

    def upload() -> None:
        with httpx.Client(base_url=base, timeout=300.0) as c:
            r = c.post("/api/classify", files={"file": ("large16.png", data, "image/png")})
            with lock:
                codes.append(r.status_code)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=upload, daemon=True) for _ in range(burst)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    wall = time.perf_counter() - t0
    done.set()
    sampler.join(5)
    return {"uploads": burst, "file_kb": round(len(data) / 1024, 1), "pixels": int(pixels ** 0.5) ** 2,
            "status_codes": sorted(codes), "wall_s": round(wall, 2), "rss_before_mb": round(before, 1),
            "rss_peak_sampled_mb": round(max(samples, default=before), 1),
            "vmhwm_before_mb": round(hwm_before, 1), "vmhwm_after_mb": round(rss_mb(pid, "VmHWM"), 1),
            "rss_after_mb": round(rss_mb(pid), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="Model folder with a gallery (e.g. from `entrep demo`).")
    ap.add_argument("--concurrency", type=int, default=16, help="Concurrent client threads (default 16).")
    ap.add_argument("--duration", type=float, default=30.0, help="Seconds of load (default 30).")
    ap.add_argument("--k", type=int, default=10, help="Results per query (default 10).")
    ap.add_argument("--warmup", type=int, default=9, help="Untimed requests first (default 9).")
    ap.add_argument("--burst", type=int, default=8, help="Simultaneous large uploads (default 8; 0 skips).")
    ap.add_argument("--burst-pixels", type=int, default=7000 * 7000, help="Pixels of the large upload.")
    ap.add_argument("--json", type=Path, help="Also write the figures here.")
    ap.add_argument("--serve-arg", action="append", default=[], help="Extra argument for `entrep serve` (repeatable).")
    args = ap.parse_args()

    images = query_images(args.model, 64)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(args.model, port, args.serve_arg)
    try:
        t_start = time.monotonic()
        health = wait_ready(base, proc, timeout=300)
        startup_s = time.monotonic() - t_start
        if args.warmup:
            run_load(base, images, concurrency=3, duration=120, k=args.k, max_requests=args.warmup)
        res = {"load": run_load(base, images, concurrency=args.concurrency, duration=args.duration, k=args.k)}
        if args.burst:
            res["burst"] = run_burst(base, proc.pid, burst=args.burst, pixels=args.burst_pixels)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    import torch

    res.update({
        "mix": "classify, image search, text search by turns", "concurrency": args.concurrency,
        "duration_s": args.duration, "k": args.k, "gallery_size": health["gallery_size"],
        "profile": health.get("profile"), "server_startup_s": round(startup_s, 1), "serve_args": args.serve_arg,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
                   f"({torch.get_num_threads()} intra-op threads)",
    })
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
