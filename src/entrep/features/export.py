"""Export image (and text) embeddings of a dataset: ``entrep embed``.

``--out DIR`` (a folder) writes resumable Parquet shards plus a manifest
through the distributor seam (:mod:`entrep.distribute`; ``local`` or ``ray``
engine). ``--out FILE.npz`` keeps the single-file export below. The file (``.npz``; ``.parquet`` when pyarrow is installed) holds, row-aligned
with the dataset's records:

- ``image_embeddings``  (N, D) float32 from the profile's clip image encoder
- ``head_embeddings``   (N, H) float32 from the head image encoder, only when it differs
- ``text_embeddings``   (N, T) float32 of the English caption; NaN rows where there is none
- ``has_text``          (N,) bool
- ``paths`` (relative to the dataset root when inside it), ``labels`` ("" when unlabelled),
  ``texts``, and the encoder names and fingerprints, the profile name and the view.

Vietnamese captions (``text_vi``) stay in the records; they are embedded only
by a multilingual text encoder (none of the built-in ones is).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from entrep.errors import UserError
from entrep.io import atomic_path

log = logging.getLogger(__name__)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(path)


def compute_embeddings(dataset, profile="offline", *, view: str = "orig", cache=None, batch_size: int = 32,
                       progress: bool = False, device=None, runtime: str = "auto") -> dict[str, Any]:
    """Embeddings of a Dataset (or a DATA path) as a dict of row-aligned arrays + metadata.

    Goes through the one :class:`~entrep.features.Extractor`: an encoder is built only when the
    feature cache misses, so a fully cached rerun builds none.
    """
    from entrep.encoders.profiles import get_profile
    from entrep.features import Extractor

    if isinstance(dataset, (str, Path)):
        from entrep.data.readers import read_dataset

        dataset = read_dataset(dataset)
    if not len(dataset.records):
        raise UserError(f"{dataset.source or dataset.root}: no images to embed")
    prof = get_profile(profile)
    from entrep.features import FeatureCache

    ex = Extractor(prof, cache_root=cache if isinstance(cache, FeatureCache) else _cache_root(cache), device=device, batch_size=batch_size, progress=progress,
                   runtime=runtime)
    records = dataset.records
    paths = [r.image for r in records]
    desc = ex.describe()

    arrays: dict[str, Any] = {"image_embeddings": ex.images("clip", paths, view)}
    meta = {"profile": prof.name, "view": view, "image_encoder": desc["clip_image"]["name"],
            "image_fingerprint": desc["clip_image"]["fingerprint"], "image_pooling": prof.clip_image_pooling}
    if not ex.shares_encoder():
        arrays["head_embeddings"] = ex.images("head", paths, view)
        meta.update(head_encoder=desc["head_image"]["name"], head_fingerprint=desc["head_image"]["fingerprint"],
                    head_pooling=prof.head_image_pooling)

    texts = [r.text or "" for r in records]
    has_text = np.array([bool(t.strip()) for t in texts], dtype=bool)
    if any(r.text_vi for r in records):
        log.info("Vietnamese captions are kept in the records; the embedded text is each record's English caption")
    text_emb = np.full((len(records), desc["clip_text"]["dim"]), np.nan, dtype=np.float32)
    if has_text.any():
        idx = np.flatnonzero(has_text)
        text_emb[idx] = ex.texts([texts[i] for i in idx])
    arrays.update(text_embeddings=text_emb, has_text=has_text)
    meta.update(text_encoder=desc["clip_text"]["name"], text_fingerprint=desc["clip_text"]["fingerprint"],
                joint=prof.joint)
    arrays.update(
        paths=np.array([_rel(p, dataset.root) for p in paths], dtype=str),
        labels=np.array([r.label or "" for r in records], dtype=str),
        texts=np.array(texts, dtype=str),
    )
    return {"arrays": arrays, "meta": meta}


def _cache_root(cache) -> Path | None:
    """The cache folder of a FeatureCache, a folder, or None (the default cache)."""
    from entrep.features import FeatureCache

    if isinstance(cache, FeatureCache):
        return Path(cache.root)
    return Path(cache) if cache is not None else None


def export_embeddings(dataset, out: str | Path, profile="offline", *, view: str = "orig", cache=None,
                      batch_size: int = 32, progress: bool = False, device=None, engine: str = "local",
                      ray_address: str | None = None, workers: int | None = None, shard_rows: int | None = None,
                      model: str | Path | None = None, flips: bool = False, runtime: str | None = None) -> Path:
    """Compute and write embeddings to ``out``: a folder of shards, or one .npz (.parquet) file, atomically.

    ``engine``/``ray_address``/``workers``/``shard_rows``/``model``/``flips``
    apply to the folder form (see :func:`export_shards`).
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if not suffix or out.is_dir():
        return export_shards(dataset, out, profile, view=view, cache=cache, batch_size=batch_size, device=device,
                             engine=engine, ray_address=ray_address, workers=workers, shard_rows=shard_rows,
                             model=model, flips=flips, runtime=runtime)
    if suffix not in (".npz", ".parquet"):
        raise UserError(f"{out}: output must be a folder (resumable shards), or end in .npz or .parquet")
    if engine != "local" or model is not None or flips:
        raise UserError(f"{out}: --engine ray, --model and --flips write shards; give a folder as --out")
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise UserError(f"{out}: writing .parquet needs pyarrow (pip install pyarrow); or use a .npz file") from None
    res = compute_embeddings(dataset, profile, view=view, cache=cache, batch_size=batch_size, progress=progress,
                             device=device, runtime=runtime or "auto")
    (write_parquet if suffix == ".parquet" else write_npz)(out, res["arrays"], res["meta"])
    log.info("wrote %d embeddings to %s", len(res["arrays"]["paths"]), out)
    return out


def export_shards(dataset, out: str | Path, profile="offline", *, view: str = "orig", cache=None,
                  batch_size: int = 32, device=None, engine: str = "local", ray_address: str | None = None,
                  workers: int | None = None, shard_rows: int | None = None, model: str | Path | None = None,
                  flips: bool = False, runtime: str | None = None) -> Path:
    """Embeddings as resumable Parquet shards + manifest in folder ``out`` (a rerun finishes what is missing)."""
    from entrep.distribute import DEFAULT_SHARD_ROWS, EmbedSpec, embed_to_shards, get_engine

    if isinstance(dataset, (str, Path)):
        from entrep.data.readers import read_dataset

        dataset = read_dataset(dataset)
    root = _cache_root(cache)
    spec = EmbedSpec(profile=profile, model=str(model) if model is not None else None,
                     cache=str(root) if root is not None else None, device=device, batch_size=batch_size,
                     view=view, flips=flips, runtime=runtime)
    manifest = embed_to_shards(dataset, out, spec, engine=get_engine(engine, address=ray_address, workers=workers),
                               shard_rows=shard_rows or DEFAULT_SHARD_ROWS)
    log.info("wrote %d shards (%d rows) to %s", len(manifest["shards"]), manifest["n_rows"], out)
    return Path(out)


def write_npz(out: Path, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
    """Arrays + one ``meta`` JSON string, loadable with ``np.load(out)`` (no pickle)."""
    payload = dict(arrays)
    payload["meta"] = np.array(json.dumps(meta, sort_keys=True))
    for k, v in meta.items():
        payload[f"meta_{k}"] = np.array(v if not isinstance(v, bool) else bool(v))
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **payload)


def write_parquet(out: Path, arrays: dict[str, Any], meta: dict[str, Any]) -> None:
    """One row per image; vectors as fixed-size float32 lists; meta in the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from entrep.distribute.store import arrow_column

    cols = {}
    for k, v in arrays.items():
        v = np.asarray(v)
        if v.ndim == 2 or v.dtype.kind in "USb":
            cols[k] = arrow_column(v)  # without pyarrow.array(), which imports pandas
        else:
            cols[k] = pa.array(v.tolist())
    table = pa.table(cols).replace_schema_metadata({"entrep": json.dumps(meta, sort_keys=True)})
    with atomic_path(out) as tmp:
        pq.write_table(table, str(tmp))
