"""On-disk feature cache: each (encoder, weights, preprocessing, view, image content) is computed once.

Layout under the cache root (``$ENTREP_CACHE`` or ``~/.cache/entrep/features``)::

    file-hashes.sqlite                      path+size+mtime -> sha256 (the one memo: entrep.data.hashing)
    <encoder>-<fingerprint[:20]>/<view>/    (augmented views: <view>.k2, seeded from the decoded pixels)
        meta.json                           full fingerprint, encoder, dim, view
        index.sqlite                        key -> (shard, row, crc32 of the row bytes)
        shard-<uuid>.npy                    float32 rows, one shard per finished batch (memory-mapped on read)
        .lock                               fcntl lock held while a batch is written

Keys are content hashes (images) or text hashes, so renamed or duplicated
images are computed once. An augmented view's random parameters are seeded from
the decoded pixels (:func:`pixel_key`), so a file and the same image held in
memory (an upload) get exactly the same view. Rows are appended per finished batch, so an
interrupted run keeps its work and the next run resumes. Every row carries a
checksum: a corrupt or missing row is logged and recomputed, never used.
Cached vectors are the encoder's L2-normalised output.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import sqlite3
import time
import uuid
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from entrep.errors import EntrepError
from entrep.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

_SQL_CHUNK = 500


class CacheError(EntrepError, RuntimeError):
    """A feature cache folder that cannot be used; the message names it."""


def default_cache_root() -> Path:
    """``$ENTREP_CACHE`` or ``~/.cache/entrep/features``."""
    env = os.environ.get("ENTREP_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "entrep" / "features"


def text_key(text: str) -> str:
    return hashlib.sha256(b"text\x00" + text.encode("utf-8")).hexdigest()


def pixel_key(img) -> str:
    """sha256 of a decoded image's mode, size and pixels: the seed key of its augmented views."""
    h = hashlib.sha256(f"{img.mode}\x00{img.size[0]}x{img.size[1]}\x00".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), timeout=60)
    con.execute("PRAGMA journal_mode=WAL")
    return con


@contextlib.contextmanager
def _locked(lock_file: Path) -> Iterator[None]:
    with open(lock_file, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _chunks(seq: Sequence, n: int) -> Iterator[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


class _Store:
    """Rows of one (encoder fingerprint, view): sharded .npy files + a sqlite index."""

    def __init__(self, folder: Path, *, fingerprint: str, encoder: str, dim: int, view: str) -> None:
        self.folder = folder
        self.dim = dim
        folder.mkdir(parents=True, exist_ok=True)
        meta = folder / "meta.json"
        if meta.is_file():
            try:
                m = json.loads(meta.read_text(encoding="utf-8"))
            except ValueError:
                m = {}
            if m.get("fingerprint") != fingerprint or m.get("dim") != dim:
                raise CacheError(f"feature cache {folder} belongs to another encoder configuration "
                                 f"({m.get('encoder')}, dim {m.get('dim')}); remove the folder")
        else:
            write_json_atomic(meta, {"fingerprint": fingerprint, "encoder": encoder, "dim": dim, "view": view,
                                     "dtype": "float32", "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.index = folder / "index.sqlite"
        self.lock = folder / ".lock"
        with contextlib.closing(_connect(self.index)) as con, con:
            con.execute("CREATE TABLE IF NOT EXISTS rows (key TEXT PRIMARY KEY, shard TEXT NOT NULL, "
                        "row INTEGER NOT NULL, crc INTEGER NOT NULL)")

    def get(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Verified rows for the keys present; corrupt entries are dropped from the index."""
        keys = list(dict.fromkeys(keys))
        where: dict[str, tuple[str, int, int]] = {}
        with contextlib.closing(_connect(self.index)) as con:
            for part in _chunks(keys, _SQL_CHUNK):
                q = f"SELECT key, shard, row, crc FROM rows WHERE key IN ({','.join('?' * len(part))})"
                for k, shard, row, crc in con.execute(q, list(part)):
                    where[k] = (shard, row, crc)
        out: dict[str, np.ndarray] = {}
        shards: dict[str, np.ndarray | None] = {}
        bad: list[str] = []
        for k, (shard, row, crc) in where.items():
            if shard not in shards:
                shards[shard] = self._open_shard(shard)
            arr = shards[shard]
            if arr is None or row >= arr.shape[0]:
                bad.append(k)
                continue
            v = np.array(arr[row], dtype=np.float32)
            if zlib.crc32(v.tobytes()) != crc:
                bad.append(k)
                continue
            out[k] = v
        if bad:
            log.warning("feature cache %s: %d corrupt or missing row(s); recomputing them", self.folder, len(bad))
            self.forget(bad)
        return out

    def _open_shard(self, shard: str) -> np.ndarray | None:
        try:
            arr = np.load(self.folder / shard, mmap_mode="r")
        except (OSError, ValueError) as e:
            log.warning("feature cache: unreadable shard %s (%s)", self.folder / shard, e)
            return None
        if arr.ndim != 2 or arr.shape[1] != self.dim or arr.dtype != np.float32:
            log.warning("feature cache: shard %s has shape %s %s, expected (n, %d) float32",
                        self.folder / shard, arr.shape, arr.dtype, self.dim)
            return None
        return arr

    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        """Append one finished batch as a new shard and index it (under the folder lock)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(keys), self.dim):
            raise ValueError(f"batch of {len(keys)} keys but vectors of shape {vectors.shape} (dim {self.dim})")
        shard = f"shard-{uuid.uuid4().hex}.npy"
        with _locked(self.lock):
            with atomic_path(self.folder / shard) as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, vectors)
                    f.flush()
                    os.fsync(f.fileno())
            rows = [(k, shard, i, zlib.crc32(vectors[i].tobytes())) for i, k in enumerate(keys)]
            with contextlib.closing(_connect(self.index)) as con, con:
                con.executemany("INSERT OR REPLACE INTO rows (key, shard, row, crc) VALUES (?, ?, ?, ?)", rows)

    def forget(self, keys: Sequence[str]) -> None:
        with _locked(self.lock), contextlib.closing(_connect(self.index)) as con, con:
            for part in _chunks(list(keys), _SQL_CHUNK):
                con.execute(f"DELETE FROM rows WHERE key IN ({','.join('?' * len(part))})", list(part))

    def __len__(self) -> int:
        with contextlib.closing(_connect(self.index)) as con:
            return int(con.execute("SELECT COUNT(*) FROM rows").fetchone()[0])


class FeatureCache:
    """Cached image and text features keyed by encoder fingerprint + view + content hash."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(f"cannot create feature cache folder {self.root} ({e.strerror or e}); "
                             f"set ENTREP_CACHE or --cache to a writable folder") from None
        from entrep.data.hashing import HashCache

        self._hash_cache = HashCache(root=self.root)
        #: counters of the last call, for logs, benchmarks and tests
        self.last_computed = 0
        self.last_reused = 0

    # ---- hashing -------------------------------------------------------
    def file_hashes(self, paths: Sequence[str | Path]) -> list[str]:
        """sha256 of each file's bytes through the one content-hash memo (entrep.data.hashing)."""
        return self._hash_cache.sha256(list(paths))

    # ---- stores --------------------------------------------------------------
    @staticmethod
    def _ident(encoder) -> tuple[str, int, str]:
        """(name, dim, fingerprint) of a built encoder or of an EncoderInfo (no encoder built)."""
        cfg = getattr(encoder, "config", None)
        if cfg is not None:
            return cfg.name, int(cfg.dim), encoder.fingerprint
        return encoder.name, int(encoder.dim), encoder.fingerprint

    def store_folder(self, encoder, view: str) -> Path:
        name, _, fp = self._ident(encoder)
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        folder = view if view in ("orig", "flip") else f"{view}.k2"  # k2: views seeded from pixels
        return self.root / f"{safe}-{fp[:20]}" / folder

    def _store(self, encoder, view: str) -> _Store:
        name, dim, fp = self._ident(encoder)
        return _Store(self.store_folder(encoder, view), fingerprint=fp, encoder=name, dim=dim, view=view)

    @staticmethod
    def _builder(encoder, build):
        """The callable giving the encoder that computes misses (built at most once, only on a miss)."""
        if build is None:
            if getattr(encoder, "config", None) is None:
                raise TypeError("an EncoderInfo needs build=: a callable returning the encoder for cache misses")
            return lambda: encoder
        built = []

        def get():
            if not built:
                enc = build()
                name, dim, fp = FeatureCache._ident(encoder)
                if enc.fingerprint != fp or int(enc.config.dim) != dim:
                    raise CacheError(f"encoder {name}: the built encoder's fingerprint {enc.fingerprint[:12]} "
                                     f"differs from the expected {fp[:12]}; its weights changed during the run")
                built.append(enc)
            return built[0]

        return get

    def _fill(self, store: _Store, keys: list[str], compute, *, batch_size: int, progress: bool, unit: str) -> np.ndarray:
        """Rows of ``keys``: cached ones read, missing ones computed by ``compute(missing)``, an iterator of
        (B, dim) arrays in the order of ``missing`` (each stored as it arrives, so an interruption keeps the
        finished batches)."""
        found = store.get(keys)
        missing = [k for k in dict.fromkeys(keys) if k not in found]
        self.last_reused = len(set(keys)) - len(missing)
        self.last_computed = 0
        if missing:
            from tqdm.auto import tqdm

            log.info("feature cache %s: computing %d, reusing %d", store.folder, len(missing), self.last_reused)
            with tqdm(total=len(missing), unit=unit, disable=not progress, leave=False) as bar:
                done = 0
                for vecs in compute(missing):
                    batch = missing[done:done + len(vecs)]
                    store.put(batch, vecs)
                    found.update(zip(batch, vecs))
                    done += len(batch)
                    self.last_computed += len(batch)
                    bar.update(len(batch))
                if done != len(missing):
                    raise RuntimeError(f"feature cache {store.folder}: the encoder returned {done} rows for {len(missing)}")
        if not keys:
            return np.zeros((0, store.dim), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    # ---- public API -------------------------------------------------------------
    def image_features(self, encoder, paths: Sequence[str | Path], *, view: str = "orig", batch_size: int = 32,
                       progress: bool = False, build=None) -> np.ndarray:
        """(N, dim) float32 features of ``paths`` under ``view``; only missing rows are computed.

        ``encoder``: a built encoder, or an :class:`~entrep.encoders.config.EncoderInfo` (name, dim,
        fingerprint) with ``build``, a callable returning the encoder, called only when a row is missing
        (a fully cached call builds nothing).
        """
        from entrep.data.augment import parse_view

        parse_view(view)
        get = self._builder(encoder, build)
        paths = [Path(p) for p in paths]
        keys = self.file_hashes(paths)
        first_path = {}
        for p, k in zip(paths, keys):
            first_path.setdefault(k, p)

        # orig / flip: a large JPEG is decoded at the reduced scale the encoder letterboxes to
        # (ImageEncoder.load_image). Jittered views keep the full decode: their blur and rotation are in
        # pixels of the full frame, and their seed (pixel_key) is taken from those pixels.
        whole_frame = parse_view(view)[0] == 0

        def load(enc, k: str):
            from entrep.data.augment import apply_view
            from entrep.data.images import load_rgb

            im = enc.load_image(first_path[k]) if whole_frame and hasattr(enc, "load_image") else load_rgb(first_path[k])
            return im if view == "orig" else apply_view(im, view, key=pixel_key(im))

        def compute(missing: list[str]):
            enc = get()
            if hasattr(enc, "iter_encode"):  # decode + preprocess of the next batches overlap the model
                return enc.iter_encode([functools.partial(load, enc, k) for k in missing], batch_size=batch_size,
                                       normalize=True)
            return (enc.encode([load(enc, k) for k in b], batch_size=len(b), normalize=True)
                    for b in map(list, _chunks(missing, batch_size)))

        return self._fill(self._store(encoder, view), keys, compute, batch_size=batch_size, progress=progress,
                          unit="img")

    def text_features(self, encoder, texts: Sequence[str], *, batch_size: int = 64, progress: bool = False,
                      build=None) -> np.ndarray:
        """(N, dim) float32 features of ``texts``, keyed by text hash (``encoder``/``build``: see
        :meth:`image_features`)."""
        get = self._builder(encoder, build)
        texts = list(texts)
        keys = [text_key(t) for t in texts]
        first = {}
        for t, k in zip(texts, keys):
            first.setdefault(k, t)

        def compute(missing: list[str]):
            enc = get()
            return (enc.encode([first[k] for k in b], batch_size=len(b), normalize=True)
                    for b in map(list, _chunks(missing, batch_size)))

        return self._fill(self._store(encoder, "text"), keys, compute, batch_size=batch_size, progress=progress,
                          unit="text")
