"""The fine-tuning loop: seeded epochs, flip-with-swap and same-class mixup, early stopping,
an atomic checkpoint per epoch and resume.

Per epoch ``e`` every random choice (shuffle, flips, mixup, dropout) is drawn
from generators seeded with ``(seed, e)``, so a run resumed from the checkpoint
of epoch ``e - 1`` continues exactly as the uninterrupted run would have.
The image encoder's adapters train at ``lr``; the training-only classifier and
joint-space projection at ``10 x lr``. Early stopping watches validation
accuracy (then validation loss); the best epoch's weights are kept.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from entrep.encoders.base import autocast_for, letterbox, resolve_device, resolve_precision
from entrep.errors import UserError
from entrep.finetune.encoder import AdaptedEncoder, build_structure, embed
from entrep.finetune.objectives import joint_loss
from entrep.finetune.prefix import cached_prefix, check_supported, split_index, suffix_forward
from entrep.finetune.views import flip_with_swap, mix, random_flip_mask, same_class_mixup
from entrep.io import atomic_path

log = logging.getLogger(__name__)

CHECKPOINT = "finetune-checkpoint.pt"
HEAD_LR_FACTOR = 10.0


def _spec(cfg, base) -> dict:
    return {"method": cfg.method, "rank": int(cfg.rank), "alpha": float(cfg.alpha), "dropout": float(cfg.dropout),
            "targets": list(cfg.targets), "layers": int(cfg.layers), "cls_layers": int(cfg.cls_layers),
            "input_size": int(cfg.input_size), "base_name": base.config.name}


def _labelled(ds, taxonomy, what: str):
    recs = [r for r in ds if r.label is not None] if ds is not None else []
    if ds is not None and not recs:
        raise UserError(f"fine-tuning: the {what} set has no labelled images")
    return recs, np.array([taxonomy.class_id(r.label) for r in recs], dtype=np.int64)


def _pixels(records, size, interpolation: str) -> np.ndarray:
    """(N, H, W, 3) uint8, every frame letterboxed (EXIF orientation honoured by load_rgb)."""
    from entrep.data.images import load_rgb

    out = np.empty((len(records), size[0], size[1], 3), dtype=np.uint8)
    for i, r in enumerate(records):
        out[i] = np.asarray(letterbox(load_rgb(r.image), size, interpolation), dtype=np.uint8)
    return out


class _Data:
    """Images of one split as the training path needs them: pixels or cached prefix activations."""

    def __init__(self, st, records, y, cfg, *, base_fp: str, cache_root: Path | None, hashes, mean, std, views):
        self.y = torch.as_tensor(y)
        self.pix = _pixels(records, st.config.image_size, st.clone.config.interpolation)
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.cached = cfg.method == "partial"
        self.act: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
        if self.cached:
            self.k = split_index(st)
            for view in views:
                self.act[view] = cached_prefix(st, self.k, base_fingerprint=base_fp, root=cache_root, hashes=hashes,
                                               batches=lambda idx, v=view: self.images(idx, v), view=view)

    def images(self, idx, view: str = "orig") -> torch.Tensor:
        x = torch.from_numpy(self.pix[np.asarray(idx)]).permute(0, 3, 1, 2).float().div_(255.0)
        x = (x - self.mean) / self.std
        return torch.flip(x, dims=(-1,)) if view == "flip" else x

    def activations(self, idx, flip: torch.Tensor | None = None):
        idx = np.asarray(idx)
        views = ["flip" if (flip is not None and bool(f)) else "orig" for f in (flip if flip is not None else [False] * len(idx))]
        act = np.stack([self.act[v][0][i] for v, i in zip(views, idx)])
        cls = self.act["orig"][1]
        cls = None if cls is None else np.stack([self.act[v][1][i] for v, i in zip(views, idx)])
        return torch.from_numpy(act).float(), None if cls is None else torch.from_numpy(cls).float()


def _run_key(spec, cfg, base_fp, train_recs, val_recs) -> str:
    obj = {"spec": spec, "cfg": {k: getattr(cfg, k) for k in sorted(vars(cfg))}, "base": base_fp,
           "train": [str(r.image) for r in train_recs], "val": [str(r.image) for r in val_recs]}
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def finetune_encoder(extractor, train, val, taxonomy, cfg, *, role: str = "head_image", checkpoint_dir=None,
                     resume: bool = False, progress: bool = False, device=None,
                     callback: Callable[[int, int], None] | None = None) -> AdaptedEncoder:
    """Adapt the frozen ``role`` encoder of ``extractor`` to ``train`` (``val`` for early stopping).

    ``callback(epoch, step)`` is called after every optimiser step (progress reporting, tests).
    Ctrl-C leaves the last epoch's checkpoint in ``checkpoint_dir`` and raises a UserError saying how to resume.
    """
    which = {"head_image": "head", "clip_image": "clip"}.get(role)
    if which is None:
        raise UserError(f"unknown encoder role {role!r}; use head_image or clip_image")
    if cfg.method not in ("lora", "partial"):
        raise UserError(f"finetune method {cfg.method!r}: nothing to fine-tune (use lora or partial)")
    base = extractor.image_encoder(which)
    dev = resolve_device(device)
    precision = resolve_precision(None, dev)
    log.info("fine-tuning %s (%s) on %s (%s)", base.config.name, cfg.method, dev.type,
             "mixed precision " + precision if precision != "fp32" else "fp32")
    train_recs, y_tr = _labelled(train, taxonomy, "training")
    val_recs, y_va = _labelled(val, taxonomy, "validation")
    if len(set(y_tr.tolist())) < 2:
        raise UserError("fine-tuning needs at least two classes in the training set")
    spec = _spec(cfg, base)
    torch.manual_seed(int(cfg.seed))
    st = build_structure(base, spec)
    if cfg.method == "partial":
        check_supported(st)
    modules = st.modules().to(dev)
    st.clone.device = dev
    base_fp = base.fingerprint
    cache_root = Path(extractor.cache.root)
    mean, std = base.config.mean, base.config.std
    hashes_tr = extractor.file_hashes([r.image for r in train_recs])
    hashes_va = extractor.file_hashes([r.image for r in val_recs]) if val_recs else []
    data_tr = _Data(st, train_recs, y_tr, cfg, base_fp=base_fp, cache_root=cache_root, hashes=hashes_tr, mean=mean,
                    std=std, views=("orig", "flip"))
    data_va = _Data(st, val_recs, y_va, cfg, base_fp=base_fp, cache_root=cache_root, hashes=hashes_va, mean=mean,
                    std=std, views=("orig",)) if val_recs else None

    n_classes = taxonomy.n_classes
    head = nn.Linear(st.config.dim, n_classes).to(dev)
    prompts = captions = cap_ids = proj = None
    if cfg.contrastive_weight > 0:
        prompts = torch.as_tensor(extractor.texts([taxonomy.prompt(c) for c in taxonomy.classes]), device=dev)
        texts = sorted({r.text for r in train_recs if r.text})
        cap_index = {t: i for i, t in enumerate(texts)}
        captions = torch.as_tensor(extractor.texts(texts), device=dev) if texts else None
        cap_ids = torch.tensor([cap_index.get(r.text, -1) if r.text else -1 for r in train_recs])
        proj = nn.Linear(st.config.dim, prompts.shape[1]).to(dev)
    extra = nn.ModuleDict({"head": head, **({"proj": proj} if proj is not None else {})})
    params = [p for p in modules.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": params, "lr": cfg.lr},
                             {"params": list(extra.parameters()), "lr": cfg.lr * HEAD_LR_FACTOR}], weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    flip_perm = torch.as_tensor(taxonomy.flip_permutation(), device=dev)
    everything = nn.ModuleDict({"adapter": modules, "extra": extra})

    def features(data, idx, flip=None, train_mode=True):
        if data.cached:
            act, cls = data.activations(idx, flip)
            return act.to(dev), None if cls is None else cls.to(dev)
        x = data.images(idx)
        return x.to(dev), None

    def forward_emb(data, x, cls):
        if data.cached:
            return suffix_forward(st, x, cls, data.k)
        return embed(st, x)

    ckpt_path = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
    run_key = _run_key(spec, cfg, base_fp, train_recs, val_recs)
    start, history, best, bad = 0, [], None, 0
    if ckpt_path is not None and resume:
        if ckpt_path.is_file():
            ck = torch.load(ckpt_path, map_location=dev, weights_only=False)
            if ck.get("run_key") != run_key:
                raise UserError(f"{ckpt_path} belongs to a different fine-tuning run (data, config or encoder changed); "
                                f"delete it or rerun without --resume")
            everything.load_state_dict(ck["state"])
            opt.load_state_dict(ck["optim"])
            start, history, best, bad = ck["epoch"] + 1, ck["history"], ck["best"], ck["bad"]
            log.info("resuming fine-tuning from %s after epoch %d", ckpt_path, start)
        else:
            log.warning("--resume: no checkpoint at %s; starting from the first epoch", ckpt_path)

    epoch = start
    try:
        for epoch in range(start, cfg.epochs):
            if best is not None and bad >= cfg.patience:
                break
            t0 = time.perf_counter()
            g = torch.Generator().manual_seed(int(cfg.seed) * 100_003 + epoch)
            torch.manual_seed(int(cfg.seed) * 100_003 + epoch)
            order = torch.randperm(len(y_tr), generator=g).numpy()
            everything.train()
            total, seen = 0.0, 0
            from tqdm.auto import tqdm

            bar = tqdm(total=len(order), disable=not progress, leave=False, unit="img", desc=f"epoch {epoch + 1}/{cfg.epochs}")
            for step, s in enumerate(range(0, len(order), cfg.batch_size)):
                idx = order[s:s + cfg.batch_size]
                y = data_tr.y[idx].to(dev)
                flip = random_flip_mask(len(idx), g)
                x, cls = features(data_tr, idx, flip)
                if data_tr.cached:  # the flipped view's activations were chosen; swap labels only
                    y = torch.where(flip.to(dev), flip_perm[y], y)
                else:
                    x, y = flip_with_swap(x, y, flip_perm, flip.to(dev))
                x, partners, lam = same_class_mixup(x, y, cfg.mixup, g)
                if cls is not None:
                    cls = mix(cls, partners, lam)
                try:
                    with autocast_for(dev, precision):
                        z = forward_emb(data_tr, x, cls).float()
                        zn = nn.functional.normalize(z, dim=-1)
                        loss = joint_loss(head(zn) * 10.0, y, proj(zn) if proj is not None else None, prompts,
                                          captions, cap_ids[idx].to(dev) if cap_ids is not None else None,
                                          cfg.contrastive_weight)
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                except torch.cuda.OutOfMemoryError as e:
                    raise UserError(f"out of GPU memory fine-tuning at batch size {cfg.batch_size}; rerun with a smaller "
                                    f"finetune batch_size (e.g. {max(1, cfg.batch_size // 2)})") from e
                total += loss.item() * len(idx)
                seen += len(idx)
                bar.update(len(idx))
                bar.set_postfix(loss=f"{total / seen:.4f}")
                if callback is not None:
                    callback(epoch, step)
            entry = {"epoch": epoch + 1, "loss": total / seen, "seconds": time.perf_counter() - t0}
            if data_va is not None:
                entry.update(_validate(everything, data_va, features, forward_emb, head, dev, precision, cfg.batch_size))
                bar.set_postfix(loss=f"{entry['loss']:.4f}", val_acc=f"{entry['val_acc']:.3f}")
            bar.close()
            history.append(entry)
            score = (entry.get("val_acc", -entry["loss"]), -entry.get("val_loss", entry["loss"]))
            if best is None or score > tuple(best["score"]):
                best = {"score": list(score), "epoch": epoch + 1,
                        "state": {k: v.detach().cpu().clone() for k, v in everything.state_dict().items()}}
                bad = 0
            else:
                bad += 1
            log.info("fine-tuning epoch %d: loss %.4f%s (%.1fs)", epoch + 1, entry["loss"],
                     f", val acc {entry['val_acc']:.3f}" if "val_acc" in entry else "", entry["seconds"])
            if ckpt_path is not None:
                _save_checkpoint(ckpt_path, {"run_key": run_key, "epoch": epoch, "state": everything.state_dict(),
                                             "optim": opt.state_dict(), "history": history, "best": best, "bad": bad})
    except KeyboardInterrupt:
        where = (f"the checkpoint of epoch {len(history)} is in {ckpt_path}; rerun with --resume to continue"
                 if ckpt_path is not None and history else "no epoch finished; rerun the same command")
        raise UserError(f"fine-tuning interrupted in epoch {epoch + 1}; {where}") from None
    everything.load_state_dict(best["state"])
    everything.eval()
    report = {"best_epoch": best["epoch"]}
    if data_va is not None and proj is not None:
        report.update(_fusion_report(everything, data_va, val_recs, features, forward_emb, proj, extractor, taxonomy,
                                     dev, cfg.batch_size))
    return AdaptedEncoder(st, spec, base_fingerprint=base_fp, device=dev, history=history, report=report)


@torch.no_grad()
def _embed_all(data, features, forward_emb, dev, precision, batch_size) -> torch.Tensor:
    out = []
    for s in range(0, len(data.y), batch_size):
        idx = np.arange(s, min(len(data.y), s + batch_size))
        x, cls = features(data, idx)
        with autocast_for(dev, precision):
            out.append(nn.functional.normalize(forward_emb(data, x, cls).float(), dim=-1))
    return torch.cat(out)


def _validate(everything, data, features, forward_emb, head, dev, precision, batch_size) -> dict:
    everything.eval()
    z = _embed_all(data, features, forward_emb, dev, precision, batch_size)
    with torch.no_grad():
        logits = head(z) * 10.0
        y = data.y.to(dev)
        return {"val_loss": float(nn.functional.cross_entropy(logits, y)),
                "val_acc": float((logits.argmax(1) == y).float().mean())}


def _fusion_report(everything, data, records, features, forward_emb, proj, extractor, taxonomy, dev, batch_size) -> dict:
    """Validation accuracy of nearest class prompt for the joint image vector alone, for the paper's linear
    fusion z = s*v + (1-s)*u with the caption vector u, and for slerp(v, u, 0.5)."""
    from entrep.classify.fusion import fuse_by, l2_normalize

    keep = [i for i, r in enumerate(records) if r.text]
    if not keep:
        return {}
    z = _embed_all(data, features, forward_emb, dev, "fp32", batch_size)
    with torch.no_grad():
        v = l2_normalize(proj(z).cpu().numpy())[keep]
    u = l2_normalize(extractor.texts([records[i].text for i in keep]))
    prompts = l2_normalize(extractor.texts([taxonomy.prompt(c) for c in taxonomy.classes]))
    y = data.y.numpy()[keep]

    def acc(e):
        return float(np.mean(np.argmax(l2_normalize(e) @ prompts.T, axis=1) == y))

    return {"val_prompt_acc_image": acc(v), "val_prompt_acc_linear_fusion": acc(fuse_by("linear", v, u)),
            "val_prompt_acc_slerp": acc(fuse_by("slerp", v, u)), "val_fusion_n": len(keep)}


def _save_checkpoint(path: Path, obj: dict) -> None:
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(obj, tmp)
