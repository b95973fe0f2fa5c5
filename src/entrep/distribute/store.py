"""Embeddings on disk as a stage joined by files: Parquet shards plus a JSON manifest.

A folder holds ``manifest.json`` and ``shard-<start>-<stop>.parquet`` files, one
per deterministic range of ``shard_rows`` dataset rows. The manifest (written
atomically after every shard) names the profile, view, the encoders with their
fingerprints and dims, the dataset's digest (its image paths in order) and the
shards that are complete; a shard file is written atomically before it is
listed, so a killed run loses at most the shards in flight. ``.lock`` (an
exclusive ``flock``) keeps two runs from writing one folder.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from entrep.data.records import DataError
from entrep.errors import UserError
from entrep.io import atomic_path, read_structured, write_json_atomic

log = logging.getLogger(__name__)

FORMAT = "entrep-embeddings"
VERSION = 1
MANIFEST = "manifest.json"
VECTOR_COLUMNS = ("clip", "head", "head_flip", "text")


def shard_name(start: int, stop: int) -> str:
    return f"shard-{start:09d}-{stop:09d}.parquet"


def shard_ranges(n: int, shard_rows: int) -> list[tuple[int, int]]:
    """The deterministic row ranges [start, stop) of ``n`` rows."""
    return [(s, min(s + shard_rows, n)) for s in range(0, n, shard_rows)]


def dataset_digest(paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Exclusive lock on ``folder`` for one writer; a second writer gets one clear error."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{folder}: another run is writing embeddings here (lock held); "
                            "wait for it to finish or choose another --out") from None
        yield
    finally:
        os.close(fd)


def read_manifest(folder: str | Path) -> dict[str, Any]:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise DataError(f"{folder}: no {MANIFEST}; not an embeddings folder written by `entrep embed --out DIR`")
    m = read_structured(path, what="embeddings manifest", error=DataError)
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise DataError(f"{path}: not an entrep embeddings manifest")
    if m.get("version") != VERSION:
        raise DataError(f"{path}: embeddings format version {m.get('version')!r}; this entrep reads {VERSION}; re-run `entrep embed`")
    return m


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(folder / MANIFEST, manifest)


def _numeric_column(v: np.ndarray):
    import pyarrow as pa

    v = np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("="))
    if v.dtype.kind == "b":
        return pa.Array.from_buffers(pa.bool_(), len(v), [None, pa.py_buffer(np.packbits(v, bitorder="little"))])
    return pa.Array.from_buffers(pa.from_numpy_dtype(v.dtype), len(v), [None, pa.py_buffer(v)])


def _string_column(values) -> Any:
    import pyarrow as pa

    data = [str(x).encode("utf-8") for x in values]
    offsets = np.zeros(len(data) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in data], out=offsets[1:])
    if offsets[-1] >= 2**31:  # beyond 32-bit offsets: let pyarrow chunk it
        return pa.array([b.decode("utf-8") for b in data], type=pa.string())
    return pa.Array.from_buffers(pa.string(), len(data), [None, pa.py_buffer(offsets.astype(np.int32)),
                                                          pa.py_buffer(b"".join(data))])


def arrow_column(v) -> Any:
    """A numpy column as a pyarrow array: vectors (2-D) as fixed-size float32 lists, strings as ``string``,
    bool/int/float as themselves, no nulls (NaN stays NaN).

    Built from the arrays' buffers because ``pyarrow.array()`` imports pandas (to look for pandas
    types) on its first call, half a second of a fully cached ``entrep embed``; same types and values.
    """
    import pyarrow as pa

    v = np.asarray(v)
    if v.ndim == 2:
        flat = _numeric_column(np.asarray(v, dtype=np.float32).reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, v.shape[1])
    if v.ndim == 1 and v.dtype.kind in "US":
        return _string_column(v)
    if v.ndim == 1 and v.dtype.kind in "biuf":
        return _numeric_column(v)
    return pa.array(v)


def write_shard(path: Path, columns: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """One Parquet file: scalar columns as they are, vectors as fixed-size float32 lists."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {k: arrow_column(v) for k, v in columns.items()}
    table = pa.table(cols).replace_schema_metadata({"entrep": json.dumps(meta, sort_keys=True)})
    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp))


def read_shard(path: Path) -> dict[str, np.ndarray]:
    """Columns of one shard as numpy arrays (vectors as (n, d) float32)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(str(path))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable embeddings shard ({e}); delete it and re-run `entrep embed` to redo it") from None
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if name in VECTOR_COLUMNS:
            dim = col.type.list_size
            out[name] = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
        else:
            out[name] = np.asarray(col.to_pylist(), dtype=object if pa.types.is_string(col.type) else None)
    return out


def complete_shards(folder: Path, manifest: dict[str, Any]) -> list[str]:
    """Names of the shards the manifest lists as complete whose files exist, in row order."""
    names = sorted(manifest.get("shards", {}))
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        log.warning("%s: %d shard(s) listed as complete are missing (%s); they will be recomputed by `entrep embed`",
                    folder, len(missing), missing[0])
    return [n for n in names if n not in missing]


def read_shards(folder: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The manifest and the rows of every complete shard, concatenated in row order."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    names = complete_shards(folder, manifest)
    if not names:
        raise DataError(f"{folder}: no complete embeddings shard; run `entrep embed DATA --out {folder}`")
    total = manifest.get("n_shards", len(names))
    if len(names) < total:
        log.warning("%s: %d of %d shards complete; using the complete ones (re-run `entrep embed` to finish)",
                    folder, len(names), total)
    parts = [read_shard(folder / n) for n in names]
    keys = parts[0].keys()
    return manifest, {k: np.concatenate([p[k] for p in parts]) for k in keys}
