"""Encoder throughput on this CPU against its matmul FLOP bound, and the feature cache's re-run speed-up.

Measures, for every encoder that runs offline here:

- images/s (texts/s for MiniLM) at a fixed batch size, after a warm-up batch;
- model FLOPs per item (torch.utils.flop_counter.FlopCounterMode, one multiply-add = 2 FLOPs);
- the achieved fraction of the CPU's dense matmul rate (GFLOP/s measured with torch.matmul, same threads).

ViT-B/16 (BiomedCLIP's image tower) and ViT-B/14 (DINOv2 at 224 px) are built
from their timm configs with random weights: same architecture and cost as the
real weights, no download. Also times FeatureCache.image_features on a first
run and a re-run over the same images.

    python benchmarks/bench_encoders.py [--images 32] [--batch-size 16] [--threads 2] [--json out.json]

Not run by CI. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def matmul_gflops(sizes=(1024, 2048), reps: int = 5) -> float:
    """Best dense float32 matmul rate over a few sizes (the CPU's practical FLOP bound)."""
    best_rate = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            best_rate = max(best_rate, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best_rate


def flops_of(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def frames(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(n)]


def vit_encoder(arch: str, patch: int):
    """A full-size timm ViT with random weights wrapped as a DINOv2-style encoder (grid2 pooling)."""
    import timm

    from entrep.encoders.config import ImageEncoderConfig
    from entrep.encoders.dinov2 import IMAGENET_MEAN, IMAGENET_STD, DinoV2Encoder
    from entrep.encoders.pooling import pooled_dim

    model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=224)
    cfg = ImageEncoderConfig(name=f"{arch}-random", dim=pooled_dim("grid2", model.num_features), image_size=(224, 224),
                             mean=IMAGENET_MEAN, std=IMAGENET_STD, weights="random", pooling="grid2",
                             width=model.num_features)
    return DinoV2Encoder(cfg, model, device="cpu")


def bench_image(name: str, enc, n: int, batch: int, reps: int) -> dict:
    ims = frames(n)
    x = torch.stack([enc.preprocess(im) for im in ims[:batch]])
    flops = flops_of(lambda: enc.encode_tensor(x[:1]))
    t_model = timed(lambda: enc.encode_tensor(x), reps) / batch
    t_full = timed(lambda: enc.encode(ims, batch_size=batch), 1) / n
    gflops = flops / 1e9
    return {
        "encoder": name, "runtime": "torch", "unit": "img", "dim": enc.config.dim, "input": "x".join(map(str, enc.config.image_size)),
        "gflop_per_item": round(gflops, 3),
        "model_items_per_s": round(1 / t_model, 2),
        "end_to_end_items_per_s": round(1 / t_full, 2),
        "achieved_gflops": round(gflops / t_model, 1),
    }


def bench_text(enc, n: int, batch: int, reps: int) -> dict:
    base = ["a spur on the septum", "edema and erythema of the arytenoid cartilages", "the tympanic membrane is intact",
            "the cone of light is visualized", "posterior commissure hypertrophy"]
    texts = [base[i % len(base)] + f" ({i})" for i in range(n)]
    flops = flops_of(lambda: enc.encode(texts[:1]))
    t = timed(lambda: enc.encode(texts, batch_size=batch), reps) / n
    gflops = flops / 1e9
    return {"encoder": enc.config.name, "unit": "text", "dim": enc.config.dim, "input": "~12 tokens",
            "gflop_per_item": round(gflops, 4), "model_items_per_s": round(1 / t, 1),
            "end_to_end_items_per_s": round(1 / t, 1), "achieved_gflops": round(gflops / t, 1)}


def bench_cache(enc, n: int, batch: int) -> dict:
    from entrep.features import FeatureCache

    with tempfile.TemporaryDirectory() as d:
        paths = []
        for i, im in enumerate(frames(n, seed=1)):
            p = Path(d) / f"im{i}.png"
            im.save(p)
            paths.append(p)
        cache = FeatureCache(Path(d) / "cache")
        t0 = time.perf_counter()
        cache.image_features(enc, paths, batch_size=batch)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        cache.image_features(enc, paths, batch_size=batch)
        again = time.perf_counter() - t0
    return {"images": n, "first_run_s": round(first, 2), "rerun_s": round(again, 3),
            "speedup": round(first / again, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-vit", action="store_true", help="only the offline encoders (EfficientNet-Lite0/1/2, MiniLM)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from entrep.encoders import build_image_encoder, build_text_encoder

    peak = matmul_gflops()
    rows = []
    eff = build_image_encoder("effnet-lite0", device="cpu")
    rows.append(bench_image("effnet-lite0 (grid2)", eff, args.images, args.batch_size, args.reps))
    for variant in ("lite1", "lite2"):
        rows.append(bench_image(f"effnet-{variant} (grid2)", build_image_encoder(f"effnet-{variant}", device="cpu"),
                                args.images, args.batch_size, args.reps))
    rows.append(bench_text(build_text_encoder("minilm-l6", device="cpu"), 4 * args.images, 4 * args.batch_size,
                           args.reps))
    if not args.skip_vit:
        rows.append(bench_image("ViT-B/16 224 (BiomedCLIP tower, random)", vit_encoder("vit_base_patch16_224", 16),
                                args.images, args.batch_size, args.reps))
        rows.append(bench_image("ViT-B/14 224 (DINOv2, random)", vit_encoder("vit_base_patch14_dinov2", 14),
                                args.images, args.batch_size, args.reps))
    cache = bench_cache(eff, args.images, args.batch_size)
    peak = max(peak, matmul_gflops())  # measured before and after: a busy machine only lowers it
    for r in rows:
        r["fraction_of_matmul_peak"] = round(r["achieved_gflops"] / peak, 3)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{args.threads} threads, load average {load:.1f}; matmul peak {peak:.1f} GFLOP/s\n")
    print("| encoder | dim | input | GFLOP/item | model items/s | end-to-end items/s | achieved GFLOP/s | of matmul peak |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['encoder']} | {r['dim']} | {r['input']} | {r['gflop_per_item']} | {r['model_items_per_s']} | "
              f"{r['end_to_end_items_per_s']} | {r['achieved_gflops']} | {r['fraction_of_matmul_peak']:.0%} |")
    print(f"\nFeature cache, effnet-lite0, {cache['images']} images: first run {cache['first_run_s']} s, "
          f"re-run {cache['rerun_s']} s ({cache['speedup']}x)")
    if args.json:
        args.json.write_text(json.dumps({"peak_gflops": peak, "load": load, "rows": rows, "cache": cache}, indent=2))


if __name__ == "__main__":
    main()
