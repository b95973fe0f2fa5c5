"""Partial fine-tuning on CPU: the frozen part of the backbone runs once per image and view.

With the last ``N`` blocks trainable, everything before block ``k = depth - N``
is frozen and deterministic for a deterministic view (``orig`` or ``flip``),
so its output (the input of block ``k``) is computed once and stored in the
feature cache folder under ``finetune-prefix/<key>/``, one ``.npy`` (float16)
per image content hash and view. ``key`` covers the base encoder fingerprint,
the input size, ``k`` and the fused layers, so a change of any of them never
reuses stale activations. An epoch then runs only the trainable blocks
(:func:`suffix_forward`), which gives the same result as the full forward.

For the multi-level CLS fusion, the class tokens of fused layers that lie in
the frozen part are cached beside the activations.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from entrep.encoders.pooling import pool_map, pool_tokens
from entrep.errors import UserError
from entrep.finetune.encoder import Structure
from entrep.io import atomic_path

log = logging.getLogger(__name__)

CODE_VERSION = 1


class _Captured(Exception):
    """Raised by the pre-hook once the frozen prefix has run (the rest of the forward is skipped)."""


def split_index(st: Structure) -> int:
    return len(st.backbone.blocks) - int(st.backbone_layers)


def check_supported(st: Structure) -> None:
    bb = st.backbone
    if bb.kind == "vit" and st.fusion is None and st.clone.config.pooling == "proj":
        raise UserError(f"{st.clone.config.name}: partial fine-tuning with cached activations needs pooled tokens or "
                        f"CLS fusion, not the projection head; set finetune cls_layers > 0 or use a pooling")
    if bb.kind == "vit" and not hasattr(st.clone.vit, "num_prefix_tokens"):
        raise UserError(f"{st.clone.config.name}: partial fine-tuning needs a timm ViT")


def cache_key(st: Structure, k: int, base_fingerprint: str) -> str:
    obj = {"fp": base_fingerprint, "size": list(st.config.image_size), "k": k, "layers": list(st.layers),
           "code": CODE_VERSION}
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:24]


@torch.no_grad()
def prefix_outputs(st: Structure, x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Input of block ``k`` and (B, L_frozen, C) normed class tokens of fused frozen layers."""
    blocks = st.backbone.blocks
    captured: dict = {}
    frozen_fused = [j for j in st.layers if j < k]
    handles = [blocks[k].register_forward_pre_hook(lambda _m, args: (captured.__setitem__("act", args[0]), _raise()))]
    for j in frozen_fused:
        handles.append(blocks[j].register_forward_hook(
            lambda _m, _i, out, j=j: captured.__setitem__(j, (out[0] if isinstance(out, tuple) else out)[:, 0])))
    was = st.clone.model.training
    st.clone.model.eval()
    try:
        st.clone.forward(x)
    except _Captured:
        pass
    finally:
        for h in handles:
            h.remove()
        st.clone.model.train(was)
    cls = None
    if frozen_fused:
        norm = st.backbone.tail[0]
        cls = torch.stack([norm(captured[j]) for j in frozen_fused], dim=1)
    return captured["act"], cls


def _raise():
    raise _Captured


def suffix_forward(st: Structure, act: torch.Tensor, cls_frozen: torch.Tensor | None, k: int) -> torch.Tensor:
    """The embedding from the input of block ``k`` (same as the full forward of the adapted encoder)."""
    bb = st.backbone
    if bb.kind == "cnn":
        model = bb.root
        rate = float(model._global_params.drop_connect_rate or 0.0)
        x = act
        for j in range(k, len(bb.blocks)):
            x = bb.blocks[j](x, drop_connect_rate=rate * j / len(bb.blocks) if rate else rate)
        x = model._swish(model._bn1(model._conv_head(x)))
        return pool_map(x, st.clone.config.pooling)
    parts = st.clone.vit
    t = act
    cls_new = []
    for j in range(k, len(bb.blocks)):
        t = bb.blocks[j](t)
        if st.fusion is not None and j in st.layers:
            cls_new.append(parts.norm(t[:, 0]))
    if st.fusion is not None:
        new = torch.stack(cls_new, dim=1) if cls_new else None
        all_cls = torch.cat([c for c in (cls_frozen, new) if c is not None], dim=1)
        return st.fusion(all_cls)
    t = parts.norm(t)
    npt = parts.num_prefix_tokens
    return pool_tokens(t[:, npt:], parts.grid, st.clone.config.pooling, cls=t[:, 0])


def cached_prefix(st: Structure, k: int, *, base_fingerprint: str, root: Path, hashes: Sequence[str],
                  batches, view: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Prefix outputs of every image for one view, from ``root`` or computed and stored.

    ``batches(idx) -> (B, 3, H, W)`` tensor of the view's preprocessed images.
    Returns (N, *act) float16 and (N, L_frozen, C) float16 (or None).
    """
    folder = root / "finetune-prefix" / cache_key(st, k, base_fingerprint) / view
    folder.mkdir(parents=True, exist_ok=True)
    todo = [i for i, h in enumerate(hashes) if not (folder / f"{h}.npz").is_file()]
    if todo:
        log.info("partial fine-tuning: computing frozen activations of %d image(s), view %s (cached in %s)",
                 len(todo), view, folder)
    dev = next(st.clone.model.parameters()).device
    for s in range(0, len(todo), 16):
        idx = todo[s:s + 16]
        act, cls = prefix_outputs(st, batches(idx).to(dev), k)
        for r, i in enumerate(idx):
            with atomic_path(folder / f"{hashes[i]}.npz", suffix=".npz") as tmp:
                with open(tmp, "wb") as f:
                    arrays = {"act": act[r].float().cpu().numpy().astype(np.float16)}
                    if cls is not None:
                        arrays["cls"] = cls[r].float().cpu().numpy().astype(np.float16)
                    np.savez(f, **arrays)
    acts, clss = [], []
    for h in hashes:
        with np.load(folder / f"{h}.npz") as z:
            acts.append(z["act"])
            if "cls" in z:
                clss.append(z["cls"])
    return np.stack(acts), (np.stack(clss) if clss else None)
