"""Load benchmark of `entrep serve`: image search (POST /api/search) under concurrent clients.

Starts `entrep serve` as a subprocess on a free 127.0.0.1 port (loopback only),
waits for /healthz, then runs CONCURRENCY client threads that upload gallery
images until REQUESTS requests are done or DURATION seconds have passed,
whichever comes first; then stops the server. Prints requests/s and latency
percentiles (and writes them as JSON with --json). Not run by CI.

    python benchmarks/bench_server.py --model MODEL [--requests 200] [--concurrency 8] [--duration 60]
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


def run_load(base: str, images: list[tuple[str, bytes]], *, requests: int, concurrency: int, duration: float,
             k: int) -> dict:
    lock = threading.Lock()
    issued = [0]
    latencies: list[float] = []
    errors: list[str] = []
    deadline = time.monotonic() + duration

    def take() -> int | None:
        with lock:
            if issued[0] >= requests or time.monotonic() >= deadline:
                return None
            issued[0] += 1
            return issued[0] - 1

    def client() -> None:
        with httpx.Client(base_url=base, timeout=max(5.0, duration)) as c:
            while (i := take()) is not None:
                name, data = images[i % len(images)]
                t0 = time.perf_counter()
                try:
                    r = c.post("/api/search", files={"file": (name, data, "image/png")}, data={"k": str(k)})
                    ok = r.status_code == 200 and r.json().get("results") is not None
                    msg = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as e:
                    msg = f"{type(e).__name__}: {e}"
                dt = time.perf_counter() - t0
                with lock:
                    if msg is None:
                        latencies.append(dt)
                    else:
                        errors.append(msg)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 30)
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000.0
    return {
        "requests_ok": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(latencies) / wall, 2) if wall > 0 else None,
        "latency_ms": {q: round(float(np.percentile(lat, p)), 1) for q, p in (("p50", 50), ("p95", 95), ("p99", 99))}
        | {"mean": round(float(lat.mean()), 1), "max": round(float(lat.max()), 1)} if len(lat) else {},
        "stopped_by": "count" if len(latencies) + len(errors) >= requests else "time",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="Model folder with a gallery (e.g. from `entrep demo`).")
    ap.add_argument("--requests", type=int, default=200, help="Stop after this many requests (default 200).")
    ap.add_argument("--concurrency", type=int, default=8, help="Concurrent client threads (default 8).")
    ap.add_argument("--duration", type=float, default=60.0, help="Stop after this many seconds (default 60).")
    ap.add_argument("--k", type=int, default=10, help="Results per query (default 10).")
    ap.add_argument("--warmup", type=int, default=8, help="Untimed requests first (default 8).")
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
            run_load(base, images, requests=args.warmup, concurrency=min(args.warmup, args.concurrency),
                     duration=120, k=args.k)
        res = run_load(base, images, requests=args.requests, concurrency=args.concurrency, duration=args.duration,
                       k=args.k)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    import torch

    res.update({
        "endpoint": "POST /api/search", "concurrency": args.concurrency, "max_requests": args.requests,
        "max_duration_s": args.duration, "k": args.k, "gallery_size": health["gallery_size"],
        "profile": health.get("profile"), "server_startup_s": round(startup_s, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
                   f"({torch.get_num_threads()} intra-op threads)",
    })
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
