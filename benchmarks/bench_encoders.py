"""Image-encoder throughput per (encoder, runtime) against this machine's matmul rate and memory bandwidth.

One row per (encoder, runtime), side by side in one run:

- ``images_per_s``: model only (a preprocessed batch of ``--batch-size``, best of ``--reps``
  after a warm-up), through ``ImageEncoder.encode_tensor`` on the chosen runtime;
- ``end_to_end_per_s``: 640x480 JPEG files -> decode + preprocess + model + store, through
  ``FeatureCache.image_features`` with a cold (empty) cache, as ``entrep embed`` / ``index`` run;
  ``end_to_end_png_per_s``: the same frames as PNG files (the ENTRep data's format: no
  reduced-scale decode, and PNG decoding costs about twice JPEG's);
- ``encode_files_per_s``: JPEG files -> ``ImageEncoder.encode(paths)`` (the decode pool overlapping
  the model, no cache);
- ``gflop_per_image`` (torch.utils.flop_counter, one multiply-add = 2 FLOPs; the same graph for
  both runtimes), ``gflop_per_s`` (model-only rate x GFLOP/image) and ``share_of_matmul_peak``
  (against the best float32 ``torch.matmul`` rate measured in the same run);
- ``mb_per_image``: bytes every aten op of the eager torch forward reads and writes (inputs +
  outputs, weights included; an upper bound of the traffic, since a fused graph keeps some in
  cache), and ``share_of_mem_bandwidth``: model-only rate x that traffic / the measured memory
  bandwidth (best numpy copy of a 256 MiB array, read + write).

``pipeline`` (ONNX Runtime rows of the EfficientNets): ``encode(files)`` images/s from JPEG and
PNG files for ONNX Runtime intra-op threads x decode-pool threads in {2, 1} x {2, 1} (the pool
is ``prefetch`` threads), the figures behind the defaults (threads = torch's, prefetch 2).

Runtimes: ``torch`` (eager) and ``onnx`` (``ImageEncoder.use_runtime("onnx")``: ONNX Runtime
on the exported graph); ViT-B/16 (BiomedCLIP's image tower) and ViT-B/14 (DINOv2 at 224 px)
are built from their timm configs with random weights (same architecture and cost as the
real weights, no download) and run on torch only unless ``--vit-onnx``. ``--coldstart`` adds
the cold-start section from ``benchmarks/bench_coldstart.py`` (its ``measure(workdir,
n_images)``). A GPU, when there is one, gets the same rows on ``cuda`` (torch runtime,
autocast, batch size from free memory) and the share of its bf16/fp16 matmul peak.

    python benchmarks/bench_encoders.py [--images 32] [--batch-size 16] [--threads 2] [--skip-vit]
                                        [--vit-onnx] [--skip-pipeline] [--coldstart] [--json OUT.json]

Not run by CI. Prints a Markdown table; ``--json OUT`` writes every figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent


def matmul_gflops(sizes=(1024, 2048), reps: int = 5, device: str = "cpu", dtype=torch.float32) -> float:
    """Best dense matmul rate over a few sizes (the device's practical FLOP bound)."""
    best_rate = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        for _ in range(3):
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            _sync(device)
            best_rate = max(best_rate, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best_rate


def memory_bandwidth_gbs(mib: int = 256, reps: int = 5) -> float:
    """Best read + write rate of a numpy copy of a ``mib`` MiB array (GB/s)."""
    src = np.ones(mib * 2**20 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def gpu_bandwidth_gbs(mib: int = 1024, reps: int = 5) -> float:
    """Best read + write rate of a CUDA tensor copy of ``mib`` MiB (GB/s)."""
    src = torch.ones(mib * 2**20 // 4, device="cuda")
    dst = torch.empty_like(src)
    best = timed(lambda: dst.copy_(src), reps, "cuda")
    return 2 * src.numel() * 4 / best / 1e9


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def flops_of(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def traffic_bytes(fn) -> int:
    """Bytes read and written by every aten op ``fn`` runs (inputs + outputs, views excluded)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    total = [0]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if torch.Tag.view_copy not in func.tags and not func.is_view:
                for t in tree_flatten((args, kwargs or {}, out))[0]:
                    if isinstance(t, torch.Tensor):
                        total[0] += t.numel() * t.element_size()
            return out

    with Count():
        fn()
    return total[0]


def timed(fn, reps: int, device: str = "cpu") -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def write_frames(folder: Path, n: int, seed: int = 0, fmt: str = "jpg") -> list[Path]:
    """``n`` 640x480 JPEG (or ``fmt="png"``) frames (smooth colour fields with noise)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:480, 0:640].astype(np.float32)
    paths = []
    for i in range(n):
        c = rng.uniform(60, 200, 3)
        a = c + 40 * np.sin(xx[..., None] / rng.uniform(20, 80) + yy[..., None] / rng.uniform(20, 80))
        a = np.clip(a + rng.normal(0, 6, a.shape), 0, 255).astype(np.uint8)
        p = folder / f"frame{i:04d}.{fmt}"
        Image.fromarray(a).save(p, **({"quality": 90} if fmt == "jpg" else {}))
        paths.append(p)
    return paths


def vit_encoder(arch: str, device: str):
    """A full-size timm ViT with random weights wrapped as a DINOv2-style encoder (grid2 pooling)."""
    import timm

    from entrep.encoders.config import ImageEncoderConfig
    from entrep.encoders.dinov2 import IMAGENET_MEAN, IMAGENET_STD, DinoV2Encoder
    from entrep.encoders.pooling import pooled_dim

    model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=224)
    cfg = ImageEncoderConfig(name=f"{arch}-random", dim=pooled_dim("grid2", model.num_features), image_size=(224, 224),
                             mean=IMAGENET_MEAN, std=IMAGENET_STD, weights="random", pooling="grid2",
                             width=model.num_features)
    return DinoV2Encoder(cfg, model, device=device, weights_digest=f"random-{arch}")


def cold_cache_rate(enc, files: list[Path], batch: int, folder: Path) -> float:
    """Images/s through a fresh FeatureCache (hash, decode, preprocess, model, store)."""
    from entrep.features import FeatureCache

    t0 = time.perf_counter()
    FeatureCache(folder).image_features(enc, files, batch_size=batch)
    return len(files) / (time.perf_counter() - t0)


def bench_image(label: str, enc, runtime: str, files: dict[str, list[Path]], batch: int, reps: int, peak: float,
                bw: float, cache_root: Path) -> dict:
    device = enc.device.type
    row = {"encoder": label, "runtime": runtime, "device": device, "dim": enc.config.dim,
           "input": "x".join(map(str, enc.config.image_size))}
    t0 = time.perf_counter()
    used = enc.use_runtime(runtime if device == "cpu" else "torch", cache_dir=cache_root / "onnx")
    row["runtime_setup_s"] = round(time.perf_counter() - t0, 2)
    if used != runtime:
        row["note"] = f"ran on {used}"
    x = np.stack([enc.preprocess_array(enc.load_image(p)) for p in files["jpg"][:batch]])
    with torch.inference_mode():
        flops = flops_of(lambda: enc.forward(torch.from_numpy(x[:1]).to(enc.device)))
        traffic = traffic_bytes(lambda: enc.forward(torch.from_numpy(x[:2]).to(enc.device))) / 2
    t_model = timed(lambda: enc.encode_tensor(x), reps, device) / len(x)  # numpy in, as the decode pool gives
    stem = f"features-{label}-{runtime}".replace("/", "_").replace(" ", "_")
    rates = {fmt: cold_cache_rate(enc, files[fmt], batch, cache_root / f"{stem}-{fmt}") for fmt in ("jpg", "png")}
    t0 = time.perf_counter()
    enc.encode(files["jpg"], batch_size=batch)
    t_files = (time.perf_counter() - t0) / len(files["jpg"])
    gflop = flops / 1e9
    row.update({
        "gflop_per_image": round(gflop, 3),
        "mb_per_image": round(traffic / 1e6, 1),
        "images_per_s": round(1 / t_model, 2),
        "end_to_end_per_s": round(rates["jpg"], 2),
        "end_to_end_png_per_s": round(rates["png"], 2),
        "encode_files_per_s": round(1 / t_files, 2),
        "gflop_per_s": round(gflop / t_model, 1),
        "share_of_matmul_peak": round(gflop / t_model / peak, 3),
        "share_of_mem_bandwidth": round(traffic / t_model / 1e9 / bw, 3),
    })
    return row


def bench_pipeline(variant: str, files: dict[str, list[Path]], batch: int, onnx_dir: Path) -> list[dict]:
    """encode(files) images/s on ONNX Runtime for intra-op threads ({--threads, 1}) x decode-pool threads (2, 1)."""
    from entrep.encoders import build_image_encoder

    rows, threads = [], torch.get_num_threads()
    try:
        for ort_threads in sorted({threads, 1}, reverse=True):
            torch.set_num_threads(ort_threads)  # use_runtime gives the session torch's thread count
            enc = build_image_encoder(f"effnet-{variant}", device="cpu")
            if enc.use_runtime("onnx", cache_dir=onnx_dir) != "onnx":
                return rows
            for decode_threads in (2, 1):
                row = {"encoder": f"effnet-{variant}", "ort_threads": ort_threads, "decode_threads": decode_threads}
                for fmt, paths in files.items():
                    enc.encode(paths[:batch], batch_size=batch)  # warm-up
                    t0 = time.perf_counter()
                    enc.encode(paths, batch_size=batch, prefetch=decode_threads)
                    row[f"encode_{fmt}_per_s"] = round(len(paths) / (time.perf_counter() - t0), 2)
                rows.append(row)
    finally:
        torch.set_num_threads(threads)
    return rows


def bench_openvino(label: str, enc, files: dict[str, list[Path]], batch: int, reps: int, threads: int,
                   onnx_dir: Path) -> dict:
    """Model-only img/s of the encoder's cached ONNX graph compiled by OpenVINO (the alternative CPU
    runtime issue 14 names), beside ONNX Runtime's on the same batch; ``--openvino`` (pip install openvino)."""
    import openvino as ov

    from entrep.encoders import onnx_runtime

    if enc.use_runtime("onnx", cache_dir=onnx_dir) != "onnx":
        return {"encoder": label, "note": "no ONNX graph (export failed)"}
    graph = onnx_runtime.graph_path(onnx_dir, enc)
    compiled = ov.Core().compile_model(str(graph), "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
                                                           "PERFORMANCE_HINT": "LATENCY",
                                                           "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    x = np.stack([enc.preprocess_array(enc.load_image(p)) for p in files["jpg"][:batch]])
    t_ov = timed(lambda: request.infer({0: x}), reps) / len(x)
    t_ort = timed(lambda: enc.encode_tensor(x), reps) / len(x)
    got = request.infer({0: x})[compiled.output(0)]
    got = got / np.linalg.norm(got, axis=1, keepdims=True)
    ref = enc.encode_tensor(x).numpy()
    return {"encoder": label, "openvino": ov.__version__, "openvino_images_per_s": round(1 / t_ov, 2),
            "onnxruntime_images_per_s": round(1 / t_ort, 2), "openvino_over_onnxruntime": round(t_ort / t_ov, 2),
            "max_abs_diff_normalised": float(np.abs(got - ref).max())}


def bench_text(enc, n: int, batch: int, reps: int, peak: float) -> dict:
    """MiniLM on short captions (torch): texts/s and its share of the matmul rate."""
    base = ["a spur on the septum", "edema and erythema of the arytenoid cartilages", "the tympanic membrane is intact",
            "the cone of light is visualized", "posterior commissure hypertrophy"]
    texts = [base[i % len(base)] + f" ({i})" for i in range(n)]
    flops = flops_of(lambda: enc.encode(texts[:1]))
    t = timed(lambda: enc.encode(texts, batch_size=batch), reps) / n
    return {"encoder": enc.config.name, "runtime": "torch", "unit": "text", "dim": enc.config.dim,
            "gflop_per_text": round(flops / 1e9, 4), "texts_per_s": round(1 / t, 1),
            "gflop_per_s": round(flops / 1e9 / t, 1), "share_of_matmul_peak": round(flops / 1e9 / t / peak, 3)}


def coldstart(n_images: int) -> dict:
    """The cold-start figures of benchmarks/bench_coldstart.py (its measure(workdir, n_images))."""
    path = HERE / "bench_coldstart.py"
    if not path.is_file():
        raise SystemExit(f"--coldstart: {path} is not there; the cold-start benchmark is not written yet")
    spec = importlib.util.spec_from_file_location("bench_coldstart", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "measure"):
        raise SystemExit(f"--coldstart: {path} has no measure(workdir, n_images)")
    with tempfile.TemporaryDirectory(prefix="entrep-coldstart-") as work:
        return mod.measure(work, n_images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=32, help="frames (JPEG, and the same as PNG) for the end-to-end runs (default 32)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--encoders", default="lite0,lite1,lite2", help="EfficientNet-Lite variants (comma-separated)")
    ap.add_argument("--runtimes", default="torch,onnx")
    ap.add_argument("--skip-vit", action="store_true", help="only the EfficientNet-Lite rows (and MiniLM)")
    ap.add_argument("--skip-text", action="store_true", help="no MiniLM row")
    ap.add_argument("--vit-onnx", action="store_true", help="also run the ViTs on ONNX Runtime (slow export)")
    ap.add_argument("--coldstart", action="store_true", help="add the cold-start section (bench_coldstart.measure)")
    ap.add_argument("--coldstart-images", type=int, default=200)
    ap.add_argument("--skip-pipeline", action="store_true", help="no ONNX Runtime threads x decode threads table")
    ap.add_argument("--openvino", action="store_true",
                    help="also time each EfficientNet-Lite graph on OpenVINO, model only (needs pip install openvino)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.images < args.batch_size:
        raise SystemExit(f"--images ({args.images}) must be >= --batch-size ({args.batch_size})")

    from entrep.encoders import build_image_encoder

    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    peak, bw = matmul_gflops(), memory_bandwidth_gbs()
    rows = []
    with tempfile.TemporaryDirectory(prefix="entrep-bench-enc-") as work:
        work = Path(work)
        files = {fmt: write_frames(work / f"frames-{fmt}", args.images, fmt=fmt) for fmt in ("jpg", "png")}
        for variant in [v.strip() for v in args.encoders.split(",") if v.strip()]:
            for rt in runtimes:
                enc = build_image_encoder(f"effnet-{variant}", device="cpu")
                rows.append(bench_image(f"effnet-{variant} (grid2)", enc, rt, files, args.batch_size, args.reps,
                                        peak, bw, work))
        pipeline = []
        if "onnx" in runtimes and not args.skip_pipeline:
            for variant in [v.strip() for v in args.encoders.split(",") if v.strip()]:
                pipeline += bench_pipeline(variant, files, args.batch_size, work / "onnx")
        openvino = []
        if args.openvino:
            for variant in [v.strip() for v in args.encoders.split(",") if v.strip()]:
                openvino.append(bench_openvino(f"effnet-{variant} (grid2)", build_image_encoder(f"effnet-{variant}", device="cpu"),
                                               files, args.batch_size, args.reps, args.threads, work / "onnx"))
        if not args.skip_vit:
            for label, arch in (("ViT-B/16 224 (BiomedCLIP tower, random)", "vit_base_patch16_224"),
                                ("ViT-B/14 224 (DINOv2, random)", "vit_base_patch14_dinov2")):
                for rt in (runtimes if args.vit_onnx else ["torch"]):
                    rows.append(bench_image(label, vit_encoder(arch, "cpu"), rt, files, args.batch_size, args.reps,
                                            peak, bw, work))
        text = None
        if not args.skip_text:
            from entrep.encoders import build_text_encoder

            text = bench_text(build_text_encoder("minilm-l6", device="cpu"), 4 * args.images, 4 * args.batch_size,
                              args.reps, peak)
        gpu = None
        if torch.cuda.is_available():
            gpu_peak = matmul_gflops(sizes=(4096, 8192), device="cuda", dtype=torch.bfloat16)
            gpu_bw = gpu_bandwidth_gbs()
            gpu = {"name": torch.cuda.get_device_name(), "bf16_matmul_peak_gflops": round(gpu_peak, 1),
                   "mem_bandwidth_gbs": round(gpu_bw, 1)}
            for variant in [v.strip() for v in args.encoders.split(",") if v.strip()]:
                enc = build_image_encoder(f"effnet-{variant}", device="cuda")
                rows.append(bench_image(f"effnet-{variant} (grid2)", enc, "torch", files, args.batch_size,
                                        args.reps, gpu_peak, gpu_bw, work))
    peak = max(peak, matmul_gflops())  # measured before and after: a busy machine only lowers it
    bw = max(bw, memory_bandwidth_gbs())
    for r in rows:
        if r["device"] == "cpu":
            r["share_of_matmul_peak"] = round(r["gflop_per_s"] / peak, 3)
            r["share_of_mem_bandwidth"] = round(r["images_per_s"] * r["mb_per_image"] / 1e3 / bw, 3)
    for variant in args.encoders.split(","):
        t = [r for r in rows if r["encoder"].startswith(f"effnet-{variant.strip()} ") and r["device"] == "cpu"]
        by = {r["runtime"]: r for r in t}
        if "torch" in by and "onnx" in by:
            by["onnx"]["speedup_vs_torch"] = {
                k: round(by["onnx"][k] / by["torch"][k], 2)
                for k in ("images_per_s", "end_to_end_per_s", "end_to_end_png_per_s", "encode_files_per_s")}

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    import onnxruntime

    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, {args.threads} threads, load average {load:.1f}; "
          f"matmul peak {peak:.1f} GFLOP/s, memory bandwidth {bw:.1f} GB/s\n")
    print("| encoder | runtime | device | GFLOP/img | MB/img | model img/s | end-to-end img/s (JPEG) | "
          "end-to-end img/s (PNG) | encode(files) img/s | GFLOP/s | of matmul peak | of mem bandwidth |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['encoder']} | {r['runtime']}{' (' + r['note'] + ')' if r.get('note') else ''} | {r['device']} | "
              f"{r['gflop_per_image']} | {r['mb_per_image']} | {r['images_per_s']} | {r['end_to_end_per_s']} | "
              f"{r['end_to_end_png_per_s']} | {r['encode_files_per_s']} | {r['gflop_per_s']} | "
              f"{r['share_of_matmul_peak']:.0%} | {r['share_of_mem_bandwidth']:.0%} |")
    if pipeline:
        print("\n| encoder (onnx) | ORT threads | decode threads | encode(JPEG files) img/s | encode(PNG files) img/s |")
        print("|---|---|---|---|---|")
        for r in pipeline:
            print(f"| {r['encoder']} | {r['ort_threads']} | {r['decode_threads']} | {r['encode_jpg_per_s']} | "
                  f"{r['encode_png_per_s']} |")
    for r in openvino:
        print(f"\n{r['encoder']} model only: OpenVINO {r.get('openvino_images_per_s')} img/s, ONNX Runtime "
              f"{r.get('onnxruntime_images_per_s')} img/s ({r.get('openvino_over_onnxruntime')}x){' ' + r['note'] if 'note' in r else ''}", end="")
    if text:
        print(f"\n{text['encoder']} (torch, ~12-token captions): {text['texts_per_s']} texts/s, "
              f"{text['gflop_per_text']} GFLOP/text, {text['gflop_per_s']} GFLOP/s", end="")
    for r in rows:
        if "speedup_vs_torch" in r:
            print(f"\n{r['encoder']}: onnx / torch = {r['speedup_vs_torch']}", end="")
    print()
    out = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "threads": args.threads, "load_average": load, "torch": torch.__version__,
                       "onnxruntime": onnxruntime.__version__},
           "matmul_peak_gflops": round(peak, 1), "mem_bandwidth_gbs": round(bw, 1),
           "images": args.images, "batch_size": args.batch_size, "rows": rows, "pipeline": pipeline}
    if openvino:
        out["openvino"] = openvino
    if text:
        out["text"] = text
    if gpu:
        out["gpu"] = gpu
    if args.coldstart:
        out["coldstart"] = coldstart(args.coldstart_images)
        print("\ncold start:", json.dumps(out["coldstart"]))
    if args.json:
        from entrep.io import write_json_atomic

        write_json_atomic(args.json, out)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
