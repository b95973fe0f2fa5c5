"""The distributor seam: one worker function run by a ``local`` or a ``ray`` engine, writing resumable shards.

::

    from entrep.distribute import EmbedSpec, embed_to_shards, get_engine
    embed_to_shards(dataset, "emb/", EmbedSpec(profile="offline"), engine=get_engine("ray"))

:func:`embed_to_shards` plans deterministic row ranges (``shard_rows`` rows
each), skips the shards the folder's manifest lists as complete (resume), sends
the rest through the engine and writes each shard as soon as all its rows are
back (the format is in :mod:`entrep.distribute.store`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from entrep.distribute.local import LocalEngine
from entrep.distribute.store import (FORMAT, VERSION, dataset_digest, folder_lock, read_manifest, read_shards,
                                     shard_name, shard_ranges, write_manifest, write_shard)
from entrep.distribute.worker import ROW_COLUMNS, EmbedSpec, EmbedWorker, embed_batch
from entrep.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["EmbedSpec", "EmbedWorker", "LocalEngine", "ROW_COLUMNS", "embed_batch", "embed_to_shards",
           "get_engine", "read_manifest", "read_shards", "DEFAULT_SHARD_ROWS"]

ENGINES = ("local", "ray")
DEFAULT_SHARD_ROWS = 1024


def get_engine(name: str = "local", *, address: str | None = None, workers: int | None = None,
               num_cpus: int | None = None):
    """``local`` (default) or ``ray`` (``address``: join that cluster; else start Ray here)."""
    if name == "local":
        if address:
            raise UserError("--ray-address needs --engine ray")
        return LocalEngine()
    if name == "ray":
        from entrep.distribute.ray_engine import RayEngine

        return RayEngine(address, workers=workers, num_cpus=num_cpus)
    raise UserError(f"unknown engine {name!r}; use {' or '.join(ENGINES)}")


def _row_batches(dataset, ranges: list[tuple[int, int]]) -> list[dict[str, np.ndarray]]:
    recs = dataset.records
    out = []
    for start, stop in ranges:
        rs = recs[start:stop]
        out.append({
            "row_id": np.arange(start, stop, dtype=np.int64),
            "shard": np.array([shard_name(start, stop)] * len(rs), dtype=str),
            "path": np.array([str(r.image) for r in rs], dtype=str),
            "name": np.array([r.name for r in rs], dtype=str),
            "label": np.array([r.label or "" for r in rs], dtype=str),
            "caption": np.array([r.text or "" for r in rs], dtype=str),
        })
    return out


def _identity(spec: EmbedSpec, extractor_description: dict, paths: list[str], shard_rows: int) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "encoders": extractor_description, "view": spec.view,
            "flips": spec.flips, "texts": spec.texts, "n_rows": len(paths), "shard_rows": shard_rows,
            "dataset_digest": dataset_digest(paths)}


def _describe(spec: EmbedSpec) -> dict:
    return spec.build_extractor().describe()


def embed_to_shards(dataset, out: str | Path, spec: EmbedSpec, *, engine=None, shard_rows: int = DEFAULT_SHARD_ROWS,
                    describe: dict | None = None) -> dict[str, Any]:
    """Write (or finish) the embeddings of ``dataset`` as shards in ``out``; returns the manifest.

    A folder holding embeddings of another dataset, encoder, view or shard size
    is refused with one line (choose another ``--out``). ``describe`` is the
    extractor's ``describe()`` (computed from ``spec`` when not given).
    """
    out = Path(out)
    if shard_rows < 1:
        raise UserError(f"shard size must be at least 1 row, got {shard_rows}")
    if not dataset.records:
        raise UserError(f"{dataset.source or dataset.root}: no images to embed")
    engine = engine or LocalEngine()
    if isinstance(engine, LocalEngine):
        engine = engine.bound(spec)  # one extractor for the manifest and the rows
        describe = describe or engine.worker.extractor.describe()
    paths = [str(r.image) for r in dataset.records]
    with folder_lock(out):
        ident = _identity(spec, describe or _describe(spec), paths, shard_rows)
        manifest = {**ident, "shards": {}}
        if (out / "manifest.json").exists():
            old = read_manifest(out)
            diff = sorted(k for k in ident if old.get(k) != ident[k])
            if diff:
                raise UserError(f"{out}: holds embeddings with a different {', '.join(diff)}; "
                                "choose another --out (or delete the folder) to start over")
            manifest["shards"] = {n: v for n, v in old.get("shards", {}).items() if (out / n).is_file()}
        ranges = shard_ranges(len(paths), shard_rows)
        manifest["n_shards"] = len(ranges)
        todo = [r for r in ranges if shard_name(*r) not in manifest["shards"]]
        if len(todo) < len(ranges):
            log.info("%s: %d of %d shards already complete; embedding the other %d", out,
                     len(ranges) - len(todo), len(ranges), len(todo))
        write_manifest(out, manifest)
        expected = {shard_name(*r): r[1] - r[0] for r in todo}
        pending: dict[str, list[dict[str, np.ndarray]]] = {}
        have: dict[str, int] = {}
        try:
            for batch in engine.map(spec, _row_batches(dataset, todo)):
                for name in np.unique(batch["shard"]):
                    sel = batch["shard"] == name
                    part = {k: np.asarray(v)[sel] for k, v in batch.items()}
                    name = str(name)
                    pending.setdefault(name, []).append(part)
                    have[name] = have.get(name, 0) + int(sel.sum())
                    if have[name] == expected[name]:
                        _finish_shard(out, name, pending.pop(name), manifest)
        finally:
            engine.close()
        log.info("%s: %d shards, %d rows", out, len(manifest["shards"]), len(paths))
        return manifest


def _finish_shard(out: Path, name: str, parts: list[dict[str, np.ndarray]], manifest: dict) -> None:
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "shard"}
    order = np.argsort(cols["row_id"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    write_shard(out / name, cols, {"shard": name, "format": FORMAT, "version": VERSION})
    manifest["shards"][name] = {"rows": int(len(order)), "start": int(cols["row_id"][0]),
                                "stop": int(cols["row_id"][-1]) + 1}
    write_manifest(out, manifest)
