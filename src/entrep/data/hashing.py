"""Content hashes of image files: what makes two files "the same image" for splits and audits."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from entrep.data.records import DataError

_CHUNK = 1 << 20
T = TypeVar("T")


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes; :class:`DataError` naming the file if it cannot be read."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise DataError(f"{path}: cannot read file ({e.strerror or e})") from None
    return h.hexdigest()


def map_files(fn: Callable[[Path], T], paths: Sequence[str | Path], *,
              progress: Callable[[int], None] | None = None) -> list[T]:
    """``fn`` over many files, a few threads at a time (file reads and hashing release the GIL)."""
    out: list[T] = []
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for res in pool.map(fn, paths):
            out.append(res)
            if progress:
                progress(1)
    return out


def sha256_files(paths: Sequence[str | Path], *, progress: Callable[[int], None] | None = None) -> list[str]:
    """SHA-256 of many files, a few threads at a time (hashlib releases the GIL)."""
    return map_files(sha256_file, paths, progress=progress)
