"""Backbone adaptation benchmark: frozen heads vs partial vs LoRA vs LoRA + metric head (not run by CI).

    python benchmarks/bench_finetune.py --synthetic 210 --json OUT.json [--epochs 3] [--encoder effnet-lite0]
    python benchmarks/bench_finetune.py --real DATA --folds 5 --json OUT.json
    python benchmarks/bench_finetune.py --vit-b-timing --json OUT.json     # LoRA step time, random ViT-B/16

Per fold (group-aware split, 70/15/15 unless --ratios, with a per-fold seed): an MLP head
(entrep.classify.heads.HeadClassifier) on frozen features; the same head on the
features of the partially fine-tuned and of the LoRA-adapted encoder; and the
dual-backbone metric head over [frozen, LoRA] features for retrieval. Reported:
fine and coarse accuracy, macro F1, image->image Recall@1 (class relevance,
query left out), seconds per fine-tuning epoch, peak process memory (ru_maxrss;
CUDA: max allocated). Synthetic data is far easier than real endoscopy.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


class BenchExtractor:
    """What finetune_encoder needs: the image encoder, the text encoder's vectors, file hashes, the cache."""

    def __init__(self, image_encoder, text_encoder, cache):
        self.encoder, self.text, self.cache = image_encoder, text_encoder, cache

    def image_encoder(self, which):
        return self.encoder

    def texts(self, texts):
        return self.cache.text_features(self.text, list(texts))

    def file_hashes(self, paths):
        return self.cache.file_hashes(paths)


def peak_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scores(tax, y_true, proba, emb) -> dict:
    from sklearn.metrics import f1_score

    from entrep.finetune import recall_at_1

    pred = proba.argmax(1)
    g = tax.group_ids()
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    return {"fine_acc": float(np.mean(pred == y_true)), "coarse_acc": float(np.mean(g[pred] == g[y_true])),
            "macro_f1": float(f1_score(y_true, pred, average="macro")), "i2i_recall_at_1": recall_at_1(emb, y_true)}


def head_scores(tax, Xtr, ytr, Xva, yva, Xte, yte, seed) -> dict:
    from entrep.classify.heads import HeadClassifier

    head = HeadClassifier(max_epochs=150, patience=15, seed=seed).fit(Xtr, ytr, n_classes=tax.n_classes, X_val=Xva, y_val=yva)
    return scores(tax, yte, head.predict_proba(Xte), Xte)


def run_fold(ds, tax, args, fold: int, cache, enc, text, device) -> dict:
    from entrep.config import FinetuneConfig
    from entrep.data.split import split_dataset
    from entrep.finetune import MetricHead, finetune_encoder, recall_at_1

    parts = split_dataset(ds, seed=fold, ratios=args.ratios)
    tr, va, te = parts["train"], parts["val"], parts["test"]
    ys = [np.array([tax.class_id(r.label) for r in p]) for p in (tr, va, te)]
    imgs = [[r.image for r in p] for p in (tr, va, te)]
    out = {"fold": fold, "n": [len(tr), len(va), len(te)]}
    t0 = time.perf_counter()
    frozen = [cache.image_features(enc, p) for p in imgs]
    out["frozen"] = head_scores(tax, frozen[0], ys[0], frozen[1], ys[1], frozen[2], ys[2], fold)
    out["frozen"].update(seconds=time.perf_counter() - t0, peak_mb=peak_mb(device))
    ex = BenchExtractor(enc, text, cache)
    lora_feats = None
    for method in ("partial", "lora"):
        cfg = FinetuneConfig(method=method, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                             layers=args.layers, input_size=args.input_size or enc.config.image_size[0], seed=fold,
                             patience=args.epochs)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        adapted = finetune_encoder(ex, tr, va, tax, cfg, device=device.type)
        train_s = time.perf_counter() - t0
        feats = [adapted.encode(p, batch_size=32) for p in imgs]
        res = head_scores(tax, feats[0], ys[0], feats[1], ys[1], feats[2], ys[2], fold)
        res.update(seconds_per_epoch=float(np.mean([h["seconds"] for h in adapted.history])),
                   first_epoch_seconds=adapted.history[0]["seconds"], train_seconds=train_s,
                   epochs_run=len(adapted.history), peak_mb=peak_mb(device), report=adapted.report)
        out[method] = res
        if method == "lora":
            lora_feats = feats
    t0 = time.perf_counter()
    mh = MetricHead(seed=fold).fit([frozen[0], lora_feats[0]], ys[0], tax, X_val=[frozen[1], lora_feats[1]], y_val=ys[1])
    z = mh.transform([frozen[2], lora_feats[2]])
    out["lora+metric"] = dict(out["lora"], i2i_recall_at_1=recall_at_1(z, ys[2]), seconds=time.perf_counter() - t0,
                              mirror_negative_share=float(np.mean(mh.history_["mirror_negative_share"])))
    return out


def vit_b_timing(device, batch: int = 8, steps: int = 3) -> dict:
    """Seconds per LoRA training step (forward + backward) on a random ViT-B/16 tower, the paper's shape."""
    import timm

    from entrep.encoders import ImageEncoderConfig
    from entrep.encoders.dinov2 import DinoV2Encoder
    from entrep.finetune.adapters import apply_lora, backbone_of, count_trainable

    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0)
    cfg = ImageEncoderConfig(name="vit-b16-random", dim=768, image_size=(224, 224), mean=(0.5,) * 3, std=(0.5,) * 3,
                             weights="random", pooling="cls", width=768)
    enc = DinoV2Encoder(cfg, model, device=device.type)
    bb = backbone_of(enc)
    apply_lora(bb, rank=8, alpha=16, dropout=0.05, targets=("qkv", "proj", "fc1", "fc2"))
    trainable, total = count_trainable(enc.model)
    opt = torch.optim.AdamW([p for p in enc.model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(batch, 3, 224, 224, device=device)
    enc.model.train()
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        loss = enc.forward(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step = float(np.median(times[1:]))
    return {"batch": batch, "seconds_per_step": step, "seconds_per_image": step / batch,
            "trainable_params": trainable, "total_params": total, "device": device.type}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--synthetic", type=int, help="generate N synthetic images")
    src.add_argument("--real", type=Path, help="a labelled ENTRep-layout folder")
    ap.add_argument("--folds", type=int, default=1)
    ap.add_argument("--ratios", type=lambda t: tuple(float(x) for x in t.split(",")), default=(0.7, 0.15, 0.15),
                    help="train,val,test shares of each fold's split (default 0.7,0.15,0.15; the paper: 0.8,0.1,0.1)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--encoder", default="effnet-lite0")
    ap.add_argument("--text-encoder", default="minilm-l6")
    ap.add_argument("--vit-b-timing", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("entrep.features").setLevel(logging.WARNING)

    from entrep.encoders import build_image_encoder, build_text_encoder
    from entrep.encoders.base import resolve_device
    from entrep.features import FeatureCache

    device = resolve_device(args.device)
    result: dict = {"device": device.type, "torch_threads": torch.get_num_threads(), "args": {k: str(v) for k, v in vars(args).items()}}
    if args.vit_b_timing:
        result["vit_b16_lora"] = vit_b_timing(device)
    if args.synthetic or args.real:
        from entrep.data.readers import read_dataset

        tmp = Path(tempfile.mkdtemp(prefix="bench-ft-"))
        if args.synthetic:
            from entrep.data.synthetic import generate

            generate(tmp / "data", n=args.synthetic, seed=0)
            data_dir = tmp / "data"
        else:
            data_dir = args.real
        ds = read_dataset(data_dir)
        cache = FeatureCache(args.cache or tmp / "cache")
        enc = build_image_encoder(args.encoder, device=device.type)
        text = build_text_encoder(args.text_encoder, device=device.type)
        result["encoder"] = enc.config.name
        result["n_images"] = len(ds)
        result["folds"] = [run_fold(ds, ds.taxonomy, args, f, cache, enc, text, device) for f in range(args.folds)]
        keys = ("fine_acc", "coarse_acc", "macro_f1", "i2i_recall_at_1")
        result["mean"] = {m: {k: float(np.mean([f[m][k] for f in result["folds"]])) for k in keys}
                          for m in ("frozen", "partial", "lora", "lora+metric")}
    from entrep.io import write_json_atomic

    write_json_atomic(args.json, result)
    print(json.dumps({k: v for k, v in result.items() if k != "folds"}, indent=2))


if __name__ == "__main__":
    main()
