"""Content hashes of image files: what makes two files "the same image" for splits and audits."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from entrep.data.records import DataError

_CHUNK = 1 << 20


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


def sha256_files(paths: Sequence[str | Path], *, progress: Callable[[int], None] | None = None) -> list[str]:
    """SHA-256 of many files, a few threads at a time (hashlib releases the GIL)."""
    out: list[str] = []
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        for h in pool.map(sha256_file, paths):
            out.append(h)
            if progress:
                progress(1)
    return out
