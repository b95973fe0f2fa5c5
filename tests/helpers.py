"""Helpers shared by test modules (import as `from helpers import ...`)."""

from __future__ import annotations

import json

import numpy as np


def roundtrip_state(state: dict, tmp_path) -> dict:
    """Store a fitted state exactly as a model bundle does (arrays in npz, the rest in JSON) and read it back."""
    from entrep.model.bundle import flatten_state, unflatten_state

    arrays: dict[str, np.ndarray] = {}
    rest = flatten_state(state, "s", arrays)
    np.savez(tmp_path / "state.npz", **arrays)
    (tmp_path / "state.json").write_text(json.dumps(rest, allow_nan=False))
    with np.load(tmp_path / "state.npz") as npz:
        loaded = {k: npz[k] for k in npz.files}
    return unflatten_state(json.loads((tmp_path / "state.json").read_text()), loaded)


# ---- fine-tuning (tests/test_finetune*.py, tests/test_metric_head.py) -------------------------------------------
def finetune_taxonomy():
    """The ENT taxonomy (three lateral mirror pairs are what the laterality tests need)."""
    import entrep.taxonomy as tx

    return tx.Taxonomy.ent() if hasattr(tx.Taxonomy, "ent") else tx.ENT


def laterality_images(folder, taxonomy, *, per_class: int = 6, size: int = 32, seed: int = 0):
    """A separable synthetic set in which a horizontal flip turns each class into its mirror class.

    Lateral pairs share a colour; the "-left" class has the blob on the left, the "-right" one on the right.
    Other classes have a centred blob of their own colour. Returns (records, labels).
    """
    from PIL import Image

    from entrep.data.records import Record

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    colours = {}
    palette = [(230, 40, 40), (40, 200, 60), (50, 80, 230), (220, 200, 40), (200, 60, 200)]
    records = []
    for c in taxonomy.classes:
        key = c.rsplit("-", 1)[0] if taxonomy.mirror_of(c) != c else c
        colours.setdefault(key, palette[len(colours) % len(palette)])
        for i in range(per_class):
            a = rng.integers(0, 40, (size, size, 3)).astype(np.uint8)
            q = size // 4
            x0 = {"left": 1, "right": size - 2 * q - 1}.get(c.rsplit("-", 1)[-1], size // 2 - q)
            y0 = int(rng.integers(1, size - 2 * q))
            a[y0:y0 + 2 * q, x0:x0 + 2 * q] = colours[key]
            p = folder / f"{c}-{i}.png"
            Image.fromarray(a).save(p)
            records.append(Record(image=p.resolve(), label=c, text=f"an endoscopic view of the {c.replace('-', ' ')}"))
    return records


def tiny_vit_encoder(size: int = 42, seed: int = 0, pooling: str = "grid2"):
    """A randomly initialised 4-block ViT (timm DINOv2 layout, width 32) as an entrep encoder, on CPU."""
    import timm
    import torch

    from entrep.encoders import ImageEncoderConfig, pooled_dim
    from entrep.encoders.dinov2 import DinoV2Encoder

    torch.manual_seed(seed)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=size,
                              embed_dim=32, depth=4, num_heads=2)
    cfg = ImageEncoderConfig(name="tiny-vit", dim=pooled_dim(pooling, 32), image_size=(size, size),
                             mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), weights=f"random:{seed}", pooling=pooling,
                             width=32)
    return DinoV2Encoder(cfg, model, device="cpu", weights_digest=f"random-{seed}")


def tiny_effnet_encoder(size=(32, 43), seed: int = 0):
    """A randomly initialised EfficientNet-Lite0 (BatchNorm folded as in inference) as an entrep encoder."""
    import dataclasses

    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from entrep.encoders.effnet import BASE, EffNetEncoder, fold_batchnorm

    torch.manual_seed(seed)
    model = fold_batchnorm(EfficientNet.from_name("efficientnet-lite0", image_size=tuple(size)))
    return EffNetEncoder(dataclasses.replace(BASE, name="tiny-effnet", image_size=tuple(size), weights=f"random:{seed}"),
                         model, device="cpu", weights_digest=f"random-{seed}")


class TinyExtractor:
    """What fine-tuning needs of an entrep Extractor: one image encoder, texts, file hashes, a cache."""

    def __init__(self, encoder, cache_root, text_dim: int = 16) -> None:
        from entrep.features import FeatureCache

        self.encoder = encoder
        self.cache = FeatureCache(cache_root)
        self.text_dim = text_dim

    def image_encoder(self, which: str):
        return self.encoder

    def texts(self, texts):
        import hashlib

        out = []
        for t in texts:
            r = np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16))
            v = r.standard_normal(self.text_dim).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out) if out else np.zeros((0, self.text_dim), np.float32)

    def file_hashes(self, paths):
        return self.cache.file_hashes(paths)
