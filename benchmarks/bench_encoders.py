"""Image-encoder throughput per (encoder, runtime) against this machine's matmul rate and memory bandwidth.

One row per (encoder, runtime), side by side in one run. The runtimes of an encoder are measured
in alternation (each repetition runs torch, then onnx, then the next repetition), so that a slow
spell of a shared VM lowers both alike; ``speedup_vs_torch`` is the median of the per-repetition
ratios, and every end-to-end run is kept in the JSON (``*_runs``).

- ``images_per_s``: model only (a preprocessed batch of ``--batch-size``, best of ``--reps``
  after a warm-up), through ``ImageEncoder.encode_tensor`` on the chosen runtime; and
  ``images_per_s_by_batch``: the same images run in batches of 1, 4 and ``--batch-size``
  (the baseline's best batch size shows there; the end-to-end figures use ``--batch-size``);
- ``end_to_end_per_s``: 640x480 JPEG files -> decode + preprocess + model + store, through
  ``FeatureCache.image_features`` with a cold (empty) cache, as ``entrep embed`` / ``index`` run;
  ``end_to_end_png_per_s``: the same frames as PNG files (the ENTRep data's format: no
  reduced-scale decode, and PNG decoding costs about twice JPEG's); median of ``--reps`` runs,
  each on a new empty cache;
- ``encode_files_per_s``: JPEG files -> ``ImageEncoder.encode(paths)`` (the decode pool overlapping
  the model, no cache), median of ``--reps`` runs;
- ``gflop_per_image`` (torch.utils.flop_counter, one multiply-add = 2 FLOPs; the same graph for
  both runtimes), ``gflop_per_s`` (model-only rate x GFLOP/image) and ``share_of_matmul_peak``
  (against the best float32 ``torch.matmul`` rate measured in the same run);
- ``mb_per_image``: bytes every aten op of the eager torch forward reads and writes (inputs +
  outputs, weights included; an upper bound of the traffic, since a fused graph keeps some in
  cache), and ``share_of_mem_bandwidth``: model-only rate x that traffic / the measured memory
  bandwidth (best numpy copy of a 256 MiB array, read + write).

``pipeline`` (ONNX Runtime rows of the EfficientNets): ``encode(files)`` images/s from JPEG and
PNG files for each way of sharing the cores (median of ``--reps``, in alternation): ``batches``
(the default: one worker per core decodes a batch and runs it on a one-thread session, one
image per run, and the same with the whole batch in one run) and ``intra-op`` (one session of
``--threads`` intra-op threads beside a decode pool of 2 or 1 threads), with the peak memory
each adds at twice ``--batch-size``: the figures behind the default.

Runtimes: ``torch`` (eager) and ``onnx`` (``ImageEncoder.use_runtime("onnx")``: ONNX Runtime
on the exported graph); ViT-B/16 (BiomedCLIP's image tower) and ViT-B/14 (DINOv2 at 224 px)
are built from their timm configs with random weights (same architecture and cost as the
real weights, no download) and run on torch only unless ``--vit-onnx``. ``--coldstart`` adds
the cold-start section from ``benchmarks/bench_coldstart.py`` (its ``measure(workdir,
n_images)``). A GPU, when there is one, gets the same rows on ``cuda`` (torch runtime,
autocast, batch size from free memory, up to 512: give ``--images`` a few times that) and the share
of its bf16/fp16 matmul peak.

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


def _median(values: list[float]) -> float:
    return float(np.median(values))


def bench_side_by_side(label: str, make_encoder, runtimes: list[str], files: dict[str, list[Path]], batch: int,
                       reps: int, peak: float, bw: float, cache_root: Path) -> list[dict]:
    """One row per runtime for the encoder ``make_encoder()`` builds, the runtimes measured in alternation.

    Every repetition runs each runtime once before the next repetition starts (torch, onnx,
    torch, onnx, ...), so a slow spell of a shared host lowers all runtimes alike and the
    paired ratios stay fair. Model only: best of ``reps`` batches. End to end (cold feature
    cache, JPEG and PNG) and ``encode(files)``: ``reps`` runs each, the median reported and
    every run kept (``*_runs``); ``speedup_vs_torch`` (on the non-torch rows) is the median of
    the per-repetition ratios.
    """
    encs, rows = {}, {}
    for rt in runtimes:
        enc = make_encoder()
        device = enc.device.type
        row = {"encoder": label, "runtime": rt, "device": device, "dim": enc.config.dim,
               "input": "x".join(map(str, enc.config.image_size))}
        t0 = time.perf_counter()
        used = enc.use_runtime(rt if device == "cpu" else "torch", cache_dir=cache_root / "onnx")
        row["runtime_setup_s"] = round(time.perf_counter() - t0, 2)
        if used != rt:
            row["note"] = f"ran on {used}"
        encs[rt], rows[rt] = enc, row
    first = encs[runtimes[0]]
    device = first.device.type
    if device == "cuda":  # the batch size the encoder chooses from free GPU memory, as embed does
        batch = first.effective_batch_size(None)
    for row in rows.values():
        row["batch_size"] = batch
    x = np.stack([first.preprocess_array(first.load_image(files["jpg"][i % len(files["jpg"])]))
                  for i in range(batch)])
    with torch.inference_mode():  # the torch graph of the encoder: the same one every runtime runs
        flops = flops_of(lambda: first.forward(torch.from_numpy(x[:1]).to(first.device)))
        traffic = traffic_bytes(lambda: first.forward(torch.from_numpy(x[:2]).to(first.device))) / 2

    sizes = sorted({b for b in (1, 4) if b < len(x)} | {len(x)})  # model only at smaller batches too
    model_s = {(rt, b): [] for rt in runtimes for b in sizes}
    for enc in encs.values():
        for b in sizes:
            enc.encode_tensor(x[:b])  # warm-up (numpy in, as the decode pool gives)
    for _ in range(reps):
        for rt, enc in encs.items():
            for b in sizes:
                _sync(device)
                t0 = time.perf_counter()
                for i in range(0, len(x), b):
                    enc.encode_tensor(x[i:i + b])
                _sync(device)
                model_s[rt, b].append((time.perf_counter() - t0) / len(x))

    runs = {rt: {"jpg": [], "png": [], "files": []} for rt in runtimes}
    stem = "features-" + label.replace("/", "_").replace(" ", "_")
    for rep in range(reps):
        for rt, enc in encs.items():
            for fmt in ("jpg", "png"):
                runs[rt][fmt].append(cold_cache_rate(enc, files[fmt], batch,
                                                     cache_root / f"{stem}-{rt}-{fmt}-{rep}"))
            t0 = time.perf_counter()
            enc.encode(files["jpg"], batch_size=batch)
            runs[rt]["files"].append(len(files["jpg"]) / (time.perf_counter() - t0))

    gflop = flops / 1e9
    for rt, row in rows.items():
        t_model = min(model_s[rt, len(x)])
        row.update({
            "images_per_s_by_batch": {str(b): round(1 / min(model_s[rt, b]), 2) for b in sizes},
            "gflop_per_image": round(gflop, 3),
            "mb_per_image": round(traffic / 1e6, 1),
            "images_per_s": round(1 / t_model, 2),
            "end_to_end_per_s": round(_median(runs[rt]["jpg"]), 2),
            "end_to_end_png_per_s": round(_median(runs[rt]["png"]), 2),
            "encode_files_per_s": round(_median(runs[rt]["files"]), 2),
            "end_to_end_runs": [round(r, 2) for r in runs[rt]["jpg"]],
            "end_to_end_png_runs": [round(r, 2) for r in runs[rt]["png"]],
            "encode_files_runs": [round(r, 2) for r in runs[rt]["files"]],
            "gflop_per_s": round(gflop / t_model, 1),
            "share_of_matmul_peak": round(gflop / t_model / peak, 3),
            "share_of_mem_bandwidth": round(traffic / t_model / 1e9 / bw, 3),
        })
    if "torch" in rows:
        base = runs["torch"]
        for rt in runtimes:
            if rt == "torch":
                continue
            paired = {key: _median([a / b for a, b in zip(runs[rt][k], base[k])])
                      for key, k in (("end_to_end_per_s", "jpg"), ("end_to_end_png_per_s", "png"),
                                     ("encode_files_per_s", "files"))}
            rows[rt]["speedup_vs_torch"] = {"images_per_s": round(min(model_s["torch", len(x)]) /
                                                                  min(model_s[rt, len(x)]), 2),
                                            **{k: round(v, 2) for k, v in paired.items()}}
    return [rows[rt] for rt in runtimes]


def bench_pipeline(variant: str, files: dict[str, list[Path]], batch: int, reps: int, threads: int,
                   onnx_dir: Path) -> list[dict]:
    """encode(files) images/s on ONNX Runtime for each way of sharing the cores, measured in alternation
    (median of ``reps``): "batches" (the default: one worker thread per core, each decoding a batch and
    running it on a one-thread session, one image per run; and the same with the whole batch in one run)
    and "intra-op" (a decode pool of 2 or 1 threads beside one session of ``threads`` intra-op threads);
    and what each costs in memory at twice ``batch`` (:func:`encode_rss_growth_mb`)."""
    from entrep.encoders import describe_encoder, onnx_runtime
    from entrep.encoders.graph_encoder import GraphImageEncoder

    enc = describe_encoder("image", f"effnet-{variant}", device="cpu")  # the graph the onnx rows cached
    graph = onnx_runtime.graph_file(onnx_dir, enc.name, enc.fingerprint)
    if not graph.is_file():  # its export failed (the onnx rows say why)
        return []
    # (parallel, ORT threads, prefetch = decode threads of "intra-op", images per run of "batches")
    configs = [("batches", threads, 2, onnx_runtime.RUN_IMAGES), ("batches", threads, 2, batch),
               ("intra-op", threads, 2, batch), ("intra-op", threads, 1, batch)]
    runners = {c: GraphImageEncoder(enc.config, enc.fingerprint, graph, threads=c[1], parallel=c[0])
               for c in configs}
    default_run_images = onnx_runtime.RUN_IMAGES
    rates = {(c, fmt): [] for c in configs for fmt in files}
    try:
        for fmt, paths in files.items():
            for r in runners.values():
                r.encode(paths[:batch], batch_size=batch)  # warm-up
            for _ in range(reps):
                for c, r in runners.items():
                    onnx_runtime.RUN_IMAGES = c[3]
                    t0 = time.perf_counter()
                    r.encode(paths, batch_size=batch, prefetch=c[2])
                    rates[c, fmt].append(len(paths) / (time.perf_counter() - t0))
    finally:
        onnx_runtime.RUN_IMAGES = default_run_images
    return [{"encoder": f"effnet-{variant}", "parallel": c[0], "ort_threads": c[1],
             "decode_threads": c[1] if c[0] == "batches" else c[2], "images_per_run": c[3],
             **{f"encode_{fmt}_per_s": round(_median(rates[c, fmt]), 2) for fmt in files},
             "encode_rss_growth_mb": encode_rss_growth_mb(variant, onnx_dir, files["jpg"], 2 * batch, *c)}
            for c in configs]


_RSS_PROBE = """
import json, os, sys, threading
from entrep.encoders import describe_encoder, onnx_runtime
from entrep.encoders.graph_encoder import GraphImageEncoder
variant, onnx_dir, batch, parallel, threads, prefetch, run_images = sys.argv[1:8]
onnx_runtime.RUN_IMAGES = int(run_images)
info = describe_encoder("image", "effnet-" + variant, device="cpu")
enc = GraphImageEncoder(info.config, info.fingerprint, onnx_runtime.graph_file(onnx_dir, info.name, info.fingerprint),
                        threads=int(threads), parallel=parallel)
paths = sys.argv[8:]
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
base, peak, done = rss(), [0], threading.Event()
def sample():
    while not done.wait(0.005):
        peak[0] = max(peak[0], rss())
t = threading.Thread(target=sample)
t.start()
enc.encode(paths, batch_size=int(batch), prefetch=int(prefetch))
done.set()
t.join()
print(json.dumps((max(peak[0], rss()) - base) / 1e6))
"""


def encode_rss_growth_mb(variant: str, onnx_dir: Path, paths: list[Path], batch: int, parallel: str, threads: int,
                         prefetch: int, run_images: int) -> float:
    """Peak resident memory (MB, sampled every 5 ms from /proc/self/statm) of a fresh, torch-free process while
    ``encode`` runs ``paths`` at ``batch`` on the cached graph in that way of sharing the cores, above what it
    held before (imports and session loaded). Linux only."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, variant, str(onnx_dir), str(batch), parallel,
                          str(threads), str(prefetch), str(run_images), *map(str, paths[:4 * batch])],
                         check=True, capture_output=True, text=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


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
    ap.add_argument("--skip-pipeline", action="store_true", help="no table of the ways ONNX Runtime shares the cores (batches, intra-op x decode threads)")
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
            rows += bench_side_by_side(f"effnet-{variant} (grid2)",
                                       lambda v=variant: build_image_encoder(f"effnet-{v}", device="cpu"), runtimes,
                                       files, args.batch_size, args.reps, peak, bw, work)
        pipeline = []
        if "onnx" in runtimes and not args.skip_pipeline:
            for variant in [v.strip() for v in args.encoders.split(",") if v.strip()]:
                pipeline += bench_pipeline(variant, files, args.batch_size, args.reps, args.threads, work / "onnx")
        openvino = []
        if args.openvino:
            for variant in [v.strip() for v in args.encoders.split(",") if v.strip()]:
                openvino.append(bench_openvino(f"effnet-{variant} (grid2)", build_image_encoder(f"effnet-{variant}", device="cpu"),
                                               files, args.batch_size, args.reps, args.threads, work / "onnx"))
        if not args.skip_vit:
            for label, arch in (("ViT-B/16 224 (BiomedCLIP tower, random)", "vit_base_patch16_224"),
                                ("ViT-B/14 224 (DINOv2, random)", "vit_base_patch14_dinov2")):
                rows += bench_side_by_side(label, lambda a=arch: vit_encoder(a, "cpu"),
                                           runtimes if args.vit_onnx else ["torch"], files, args.batch_size,
                                           args.reps, peak, bw, work)
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
                rows += bench_side_by_side(f"effnet-{variant} (grid2)",
                                           lambda v=variant: build_image_encoder(f"effnet-{v}", device="cuda"),
                                           ["torch"], files, args.batch_size, args.reps, gpu_peak, gpu_bw, work)
    peak = max(peak, matmul_gflops())  # measured before and after: a busy machine only lowers it
    bw = max(bw, memory_bandwidth_gbs())
    for r in rows:
        if r["device"] == "cpu":
            r["share_of_matmul_peak"] = round(r["gflop_per_s"] / peak, 3)
            r["share_of_mem_bandwidth"] = round(r["images_per_s"] * r["mb_per_image"] / 1e3 / bw, 3)

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
        print("\n| encoder (onnx) | parallel | ORT threads | decode threads | images per run | "
              f"encode(JPEG files) img/s | encode(PNG files) img/s | peak RSS growth at batch {2 * args.batch_size}, MB |")
        print("|---|---|---|---|---|---|---|---|")
        for r in pipeline:
            print(f"| {r['encoder']} | {r['parallel']} | {r['ort_threads']} | {r['decode_threads']} | "
                  f"{r['images_per_run']} | {r['encode_jpg_per_s']} | {r['encode_png_per_s']} | "
                  f"{r['encode_rss_growth_mb']} |")
    for r in openvino:
        print(f"\n{r['encoder']} model only: OpenVINO {r.get('openvino_images_per_s')} img/s, ONNX Runtime "
              f"{r.get('onnxruntime_images_per_s')} img/s ({r.get('openvino_over_onnxruntime')}x){' ' + r['note'] if 'note' in r else ''}", end="")
    if text:
        print(f"\n{text['encoder']} (torch, ~12-token captions): {text['texts_per_s']} texts/s, "
              f"{text['gflop_per_text']} GFLOP/text, {text['gflop_per_s']} GFLOP/s", end="")
    for r in rows:
        print(f"\n{r['encoder']} on {r['runtime']}: model img/s by batch size {r['images_per_s_by_batch']}", end="")
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
