"""Crash-safe, durable outputs: an interrupt or power cut never leaves a half-written file or folder.

Every output goes through :func:`atomic_path`: the caller writes a temporary
beside the target, and on success it is fsynced and moved over the target in
one atomic step, then the parent folder is fsynced.

Folders (a model, a search index, a dataset) are replaced by *exchanging* the
new folder with the old one in one system call (``renameat2(RENAME_EXCHANGE)``
on Linux, ``renamex_np(RENAME_SWAP)`` on macOS): at every instant the path
holds either the complete old folder or the complete new one, never neither,
and the old one is deleted only afterwards. Where the file system cannot
exchange (rare: some network file systems), the fallback is two renames with
the old folder kept under a marked name; :func:`recover_dir` (run at the start
of every write of that path, and by loaders that call it) moves it back if an
interrupt fell between the two.

A target that is a symlink is followed: the folder it points to is replaced
and the link is kept. Temporaries are named
``.NAME.entrep-tmp-HOST-PID-RANDOM``; ones left by a killed process on this
host are swept on the next write of the same path.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import uuid
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Literal

from entrep.errors import UserError

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h
_RENAME_SWAP = 2  # macOS sys/stdio.h
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}
Foreign = Literal["keep", "refuse", "drop"]


# ---- durability -----------------------------------------------------------
def fsync_path(path: str | Path) -> None:
    """fsync one file or folder (a folder's fsync makes its entries' names durable)."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems refuse fsync on folders; the data files were synced
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """fsync a file, or every file and folder under a folder (children before parents)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        if not path.is_symlink():
            fsync_path(path)
        return
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                fsync_path(p)
        fsync_path(root)


# ---- the atomic exchange ----------------------------------------------------
def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def exchange(a: str | Path, b: str | Path) -> bool:
    """Atomically swap two existing paths in one folder. False where the system cannot.

    Raises OSError for real failures (permissions, a path missing).
    """
    libc = _libc()
    fa, fb = os.fsencode(os.fspath(a)), os.fsencode(os.fspath(b))
    if sys.platform.startswith("linux") and libc is not None and hasattr(libc, "renameat2"):
        rc = libc.renameat2(_AT_FDCWD, fa, _AT_FDCWD, fb, _RENAME_EXCHANGE)
    elif sys.platform == "darwin" and libc is not None and hasattr(libc, "renamex_np"):
        rc = libc.renamex_np(fa, fb, _RENAME_SWAP)
    else:
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in _UNSUPPORTED:
        return False
    raise OSError(err, os.strerror(err), os.fspath(a))


# ---- temporaries: names, sweeping, recovery --------------------------------
def _host_id() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _marked(target: Path, kind: str, suffix: str = "") -> Path:
    return target.with_name(f".{target.name}.entrep-{kind}-{_host_id()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}")


def _leftovers(target: Path) -> list[tuple[Path, str, str, int]]:
    """(path, kind, host id, pid) of the marked temporaries beside ``target``."""
    pat = re.compile(rf"^\.{re.escape(target.name)}\.entrep-(tmp|old)-([0-9a-f]{{8}})-(\d+)-[0-9a-f]{{8}}")
    out = []
    with contextlib.suppress(OSError):
        for entry in target.parent.iterdir():
            m = pat.match(entry.name)
            if m:
                out.append((entry, m.group(1), m.group(2), int(m.group(3))))
    return out


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def recover_dir(path: str | Path) -> Path:
    """Finish or undo an interrupted replacement of ``path``; return the resolved path.

    Puts the old folder back when an interrupt left the path empty (fallback
    mode only), and removes temporaries of dead processes on this host.
    """
    target = Path(os.path.realpath(path))
    here = _host_id()
    found = _leftovers(target)
    if not os.path.lexists(target):
        olds = sorted((p for p, kind, _, _ in found if kind == "old"), key=lambda p: p.stat().st_mtime_ns)
        if olds:
            os.rename(olds[-1], target)
            log.warning("%s: restored the previous folder after an interrupted replacement", target)
            found = _leftovers(target)
    for p, _kind, host, pid in found:
        if host == here and not _alive(pid):
            _remove(p)
    return target


def _install(tmp: Path, target: Path) -> None:
    """Move ``tmp`` over ``target`` atomically; the old ``target`` is gone afterwards."""
    if os.path.lexists(target) and (tmp.is_dir() or target.is_dir()):
        if exchange(tmp, target):
            _remove(tmp)  # now the old folder
            return
        old = _marked(target, "old")  # fallback: two renames, undone by recover_dir if interrupted between
        os.rename(target, old)
        os.rename(tmp, target)
        _remove(old)
        return
    try:
        os.replace(tmp, target)
    except OSError as e:  # a folder appeared at target meanwhile
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR) or not exchange(tmp, target):
            raise
        _remove(tmp)


@contextlib.contextmanager
def atomic_path(path: str | Path, *, suffix: str = "", durable: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it over ``path`` (file or folder) on success.

    The caller creates the file or folder at the yielded path. On success it is
    fsynced (every file and folder in it, unless ``durable=False``), installed
    atomically and the parent folder fsynced. On an exception the temporary is
    removed and the existing ``path`` is untouched. Symlinks are followed.
    """
    try:
        target = recover_dir(path)
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{path}: cannot write here ({e.strerror or e})") from None
    tmp = _marked(target, "tmp", suffix)
    try:
        yield tmp
        if not os.path.lexists(tmp):
            raise UserError(f"{target}: nothing was written")
        try:
            if durable:
                fsync_tree(tmp)
            _install(tmp, target)
            if durable:
                fsync_path(target.parent)
        except OSError as e:
            raise UserError(f"{path}: cannot write here ({e.strerror or e})") from None
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


# ---- folders with foreign files --------------------------------------------
def foreign_entries(folder: str | Path, own: Collection[str]) -> list[str]:
    """Names in ``folder`` that are not in ``own`` (hidden names and entrep temporaries excluded)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(e.name for e in folder.iterdir() if e.name not in own and not e.name.startswith("."))


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:
        shutil.copy2(src, dst, follow_symlinks=False)


def _carry(old: Path, new: Path, names: list[str]) -> None:
    """Hard-link (or copy) ``names`` from ``old`` into ``new``; ``old`` stays intact."""
    for name in names:
        src, dst = old / name, new / name
        if os.path.lexists(dst):
            continue
        if src.is_dir() and not src.is_symlink():
            shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(src), str(dst))
        log.info("%s: kept %s (not written by entrep)", old, name)


def _refuse(target: Path, names: list[str]) -> None:
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    raise UserError(f"{target}: holds files entrep did not write ({shown}); move them elsewhere "
                    "or choose another output folder")


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, own: Collection[str] | None = None, foreign: Foreign = "keep",
               durable: bool = True) -> Iterator[Path]:
    """Yield a new, empty folder that replaces the folder ``path`` atomically on success.

    ``own``: the entry names entrep writes in this kind of folder (e.g. a
    model's ``model.json``, ``arrays.npz``, ``gallery``...). Anything else in the
    old folder is the user's: ``foreign="keep"`` carries it into the new folder
    (hard links, so no copy of large files; an entry of the same name in the
    new folder wins), ``"refuse"`` raises a UserError naming it (checked before
    the caller builds anything), ``"drop"`` discards it. Without ``own`` the
    new folder simply replaces the old one.
    """
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_dir():
        raise UserError(f"{path}: exists and is not a folder; choose another output folder")
    if own is not None and foreign == "refuse" and foreign_entries(target, own):
        _refuse(target, foreign_entries(target, own))
    with atomic_path(target, durable=durable) as tmp:
        tmp.mkdir()
        yield tmp
        if own is not None and foreign != "drop":
            names = foreign_entries(target, own)
            if names and foreign == "refuse":
                _refuse(target, names)
            _carry(target, tmp, names)


def replace_dir(path: str | Path, build: Callable[[Path], Any], *, own: Collection[str] | None = None,
                foreign: Foreign = "keep", durable: bool = True) -> Path:
    """Build a folder with ``build(tmp)`` and swap it in for ``path`` atomically (see :func:`atomic_dir`)."""
    with atomic_dir(path, own=own, foreign=foreign, durable=durable) as tmp:
        build(tmp)
    return Path(os.path.realpath(path))


# ---- small files -----------------------------------------------------------
def write_text_atomic(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    return write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def read_structured(path: str | Path, *, what: str, error: type[Exception]) -> Any:
    """Parse a small YAML or JSON file (by suffix; YAML otherwise) for config-like inputs.

    Raises ``error`` with one line naming the file: unreadable, or malformed.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"{p}: cannot read {what} ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise error(f"{p}: {what} is not UTF-8 text") from None
    try:
        if p.suffix.lower() == ".json":
            return json.loads(text)
        import yaml

        return yaml.safe_load(text)
    except Exception as e:  # noqa: BLE001 - json or yaml syntax errors
        raise error(f"{p}: malformed {what}: {str(e).splitlines()[0]}") from None
