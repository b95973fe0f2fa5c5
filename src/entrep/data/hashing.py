"""Content hashes of files, and grouping by shared keys: what makes two files "the same image".

One memo of file hashes for the whole package (:class:`HashCache`): a SQLite
table keyed by resolved path + size + mtime_ns, so a file is read once until it
changes. Splits, audits, the feature cache and the weights resolver all ask it.
One union-find (:class:`UnionFind`, :func:`components_sharing`) groups items
that share a hash, a patient id or a near-duplicate edge.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TypeVar

from entrep.data.records import DataError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_SQL_CHUNK = 500
#: File name of the memo inside its root folder.
HASH_DB = "file-hashes.sqlite"
T = TypeVar("T")


def default_hash_root() -> Path:
    """Folder of the memo: ``$ENTREP_CACHE`` when set, else ``~/.cache/entrep``."""
    env = os.environ.get("ENTREP_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "entrep"


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (uncached); :class:`DataError` naming the file if it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    return h.hexdigest()


def map_files(fn: Callable[[Any], T], paths: Sequence[Any], *,
              progress: Callable[[int], None] | None = None, workers: int | None = None) -> list[T]:
    """``fn`` over many files (or records), a few threads at a time (reads, decoding, hashing release the GIL)."""
    out: list[T] = []
    with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1)) as pool:
        for res in pool.map(fn, paths):
            out.append(res)
            if progress:
                progress(1)
    return out


def sha256_files(paths: Sequence[str | Path], *, progress: Callable[[int], None] | None = None) -> list[str]:
    """SHA-256 of many files, uncached, a few threads at a time. Prefer :meth:`HashCache.sha256`."""
    return map_files(sha256_file, paths, progress=progress)


class HashCache:
    """SHA-256 of files, remembered on disk per (resolved path, size, mtime_ns).

    ``HashCache(root=None)`` keeps its table in ``root/file-hashes.sqlite``
    (default :func:`default_hash_root`; tests pass ``tmp_path``). Safe across
    processes (SQLite WAL, busy timeout) and threads (one connection per call).
    A cache file that is unreadable or corrupt is reported once as a warning
    and bypassed: hashes are still right, only slower.
    """

    def __init__(self, root: str | Path | None = None, *, workers: int | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_hash_root()
        self.path = self.root / HASH_DB
        self.workers = workers
        #: counters of the last :meth:`sha256` call (for logs, benchmarks and tests)
        self.last_computed = 0
        self.last_reused = 0
        self._usable = True
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with self._connect() as con, con:
                con.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, "
                            "mtime INTEGER, sha256 TEXT)")
        except (OSError, sqlite3.Error) as e:
            self._disable(e)

    def _connect(self) -> contextlib.closing:
        con = sqlite3.connect(str(self.path), timeout=60)
        con.execute("PRAGMA journal_mode=WAL")
        return contextlib.closing(con)

    def _disable(self, e: Exception) -> None:
        self._usable = False
        log.warning("file-hash cache %s is not usable (%s); hashing without it (delete the file to rebuild it)",
                    self.path, str(e).splitlines()[0] if str(e) else type(e).__name__)

    def sha256(self, paths: Iterable[str | Path], *, progress: Callable[[int], None] | None = None) -> list[str]:
        """Hex SHA-256 of each file's bytes, in order; :class:`DataError` naming a missing or unreadable file.

        Files not in the memo (or changed since) are hashed on a few threads and remembered.
        """
        keys = [str(Path(p).resolve()) for p in paths]
        stats: dict[str, tuple[int, int]] = {}
        for p in dict.fromkeys(keys):
            try:
                st = os.stat(p)
            except OSError as e:
                raise DataError(f"{p}: cannot read file ({e.strerror or e})") from None
            stats[p] = (st.st_size, st.st_mtime_ns)
        known = self._lookup(stats)
        todo = [p for p in stats if p not in known]
        fresh = map_files(sha256_file, todo, progress=progress, workers=self.workers) if todo else []
        known.update(zip(todo, fresh))
        self._remember([(p, *stats[p], h) for p, h in zip(todo, fresh)])
        self.last_computed, self.last_reused = len(todo), len(stats) - len(todo)
        return [known[p] for p in keys]

    def sha256_one(self, path: str | Path) -> str:
        """Hex SHA-256 of one file, through the memo."""
        return self.sha256([path])[0]

    def _lookup(self, stats: dict[str, tuple[int, int]]) -> dict[str, str]:
        known: dict[str, str] = {}
        if not self._usable or not stats:
            return known
        names = list(stats)
        try:
            with self._connect() as con:
                for i in range(0, len(names), _SQL_CHUNK):
                    part = names[i:i + _SQL_CHUNK]
                    q = f"SELECT path, size, mtime, sha256 FROM files WHERE path IN ({','.join('?' * len(part))})"
                    for p, size, mtime, sha in con.execute(q, part):
                        if (size, mtime) == stats.get(p) and isinstance(sha, str):
                            known[p] = sha
        except sqlite3.Error as e:
            self._disable(e)
        return known

    def _remember(self, rows: list[tuple[str, int, int, str]]) -> None:
        if not rows or not self._usable:
            return
        try:
            with self._connect() as con, con:
                con.executemany("INSERT OR REPLACE INTO files (path, size, mtime, sha256) VALUES (?, ?, ?, ?)", rows)
        except sqlite3.Error as e:
            self._disable(e)


class UnionFind:
    """Disjoint sets over ``0..n-1``; the smallest member is each set's root (canonical output)."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        p = self.parent
        while p[i] != i:
            p[i] = p[p[i]]
            i = p[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def components(self, idx: Iterable[int] | None = None) -> list[list[int]]:
        """Sets among ``idx`` (default: all), each in the order given, ordered by first member."""
        comps: dict[int, list[int]] = {}
        for i in range(len(self.parent)) if idx is None else idx:
            comps.setdefault(self.find(i), []).append(i)
        return sorted(comps.values(), key=lambda c: c[0])


def components_sharing(keys: Sequence[Iterable[str]]) -> list[list[int]]:
    """Connected components of items that share any key, each sorted, ordered by first member."""
    uf = UnionFind(len(keys))
    first: dict[str, int] = {}
    for i, ks in enumerate(keys):
        for k in ks:
            uf.union(i, first.setdefault(k, i))
    return uf.components()


__all__ = ["HASH_DB", "HashCache", "UnionFind", "components_sharing", "default_hash_root", "map_files",
           "sha256_file", "sha256_files"]
