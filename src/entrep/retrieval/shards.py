"""A gallery from embeddings shards (``entrep index --model M --embeddings DIR``), without touching images.

The shards' encoder fingerprints must match the model's extractor
(``model.extractor.describe()``). Vectors are
``model.retrieval_vectors(ImageFeatures(clip, head, head_flip=None))``; rows
without a label get the model's prediction from the stored features (with
flip TTA only when the shards carry ``head_flip``, i.e. ``embed --flips``).
Like an index from images, an existing gallery is updated: rows whose content
is gone are removed, only new content is added.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from entrep.data.records import DataError
from entrep.errors import UserError

log = logging.getLogger(__name__)


def check_encoders(manifest: dict, describe: dict, folder: Path) -> None:
    """One clear error when the shards come from other image encoders than the model's."""
    enc = manifest.get("encoders") or {}
    for role in ("clip_image", "head_image"):
        want, got = describe.get(role, {}), enc.get(role, {})
        if want.get("fingerprint") != got.get("fingerprint"):
            raise DataError(
                f"{folder}: shards were embedded with {role} {got.get('name', '?')} "
                f"(fingerprint {str(got.get('fingerprint'))[:12]}) but the model uses {want.get('name', '?')} "
                f"(fingerprint {str(want.get('fingerprint'))[:12]}); re-run `entrep embed DATA --out DIR --model MODEL`")
    if manifest.get("view", "orig") != "orig":
        raise DataError(f"{folder}: shards hold the {manifest['view']!r} view; a gallery needs --view orig")


def _gallery_rows(model, cols: dict[str, np.ndarray]) -> tuple[np.ndarray, list[dict]]:
    from entrep.model import ImageFeatures

    clip = cols["clip"]
    head = cols.get("head", clip)
    vecs = model.retrieval_vectors(ImageFeatures(clip=clip, head=head, head_flip=None))
    labels = [str(x) or None for x in cols["label"]]
    missing = [i for i, lab in enumerate(labels) if lab is None]
    if missing:
        flip = cols.get("head_flip")
        feats = ImageFeatures(clip=clip[missing], head=head[missing],
                              head_flip=flip[missing] if flip is not None else None)
        dec, _ = model.predict_features(feats)
        for i, c in zip(missing, dec.fine):
            labels[i] = model.taxonomy.class_name(int(c))
    tax = model.taxonomy
    meta = [{"path": str(p), "name": str(n), "label": lab, "group": tax.group_of(lab) if lab else None,
             "caption": str(c) or None, "content_hash": str(h)}
            for p, n, lab, c, h in zip(cols["path"], cols["name"], labels, cols["caption"], cols["content_hash"])]
    return vecs, meta


def gallery_from_shards(model, folder: str | Path, *, rebuild: bool = False) -> dict:
    """Build or update ``model.gallery`` from the complete shards in ``folder``; returns removed/added/size."""
    from entrep.distribute import read_shards
    from entrep.retrieval.gallery import update_gallery

    folder = Path(folder)
    manifest, cols = read_shards(folder)
    check_encoders(manifest, model.extractor.describe(), folder)
    hashes = [str(h) for h in cols["content_hash"]]
    if rebuild:
        model.gallery = None
    return update_gallery(model, hashes, lambda idx: _gallery_rows(model, {k: v[idx] for k, v in cols.items()}))


def index_with_engine(model, data, engine, *, rebuild: bool = False, workdir: str | Path | None = None) -> dict:
    """Index a gallery (a Dataset) by embedding it through ``engine`` into shards, then indexing the shards.

    The model must be saved (``model.path``): Ray actors load it to get the
    same (possibly fine-tuned) encoders. Shards go to a temporary folder
    under ``workdir`` (default: next to the model) and are removed afterwards.
    """
    from entrep.distribute import EmbedSpec, embed_to_shards

    if model.path is None:
        raise UserError("index --engine ray needs a saved model folder (entrep fit --out M)")
    spec = EmbedSpec(model=str(model.path), cache=str(model.cache) if model.cache else None,
                     device=model.device, batch_size=model.config.batch_size, texts=False,
                     flips=any(r.label is None for r in data.records))
    parent = Path(workdir) if workdir else Path(model.path).parent
    with tempfile.TemporaryDirectory(prefix=".entrep-shards-", dir=parent) as tmp:
        embed_to_shards(data, tmp, spec, engine=engine, describe=model.extractor.describe())
        return gallery_from_shards(model, tmp, rebuild=rebuild)


def index_model(model, *, gallery=None, embeddings=None, engine: str = "local", ray_address: str | None = None,
                rebuild: bool = False) -> dict:
    """What ``entrep index`` does: from shards (``embeddings``), or from images through the local or Ray engine."""
    from entrep.distribute import get_engine
    from entrep.retrieval.gallery import read_gallery

    if embeddings is not None:
        if engine != "local" or ray_address:
            raise UserError("--embeddings reads shards; --engine/--ray-address apply to `entrep embed` or --gallery")
        return gallery_from_shards(model, embeddings, rebuild=rebuild)
    runner = get_engine(engine, address=ray_address)
    ds = read_gallery(gallery, model.taxonomy)
    if engine == "local":
        return model.index(ds, rebuild=rebuild)
    return index_with_engine(model, ds, runner, rebuild=rebuild)
