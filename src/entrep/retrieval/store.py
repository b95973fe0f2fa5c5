"""Row store of the gallery index: GalleryItem / Hit, stable ids, label codes, and the metadata files.

:class:`RowStore` keeps the row-ordered ids and per-row label codes as numpy
columns (vectorised label masks) and the metadata of a saved gallery in SQLite
(:class:`MetaDB`), read by id when a hit or a lookup needs it, so loading a
million-row gallery builds no million Python objects. Ids are assigned
incrementally and never reused. The vectors are not here: they live once, in
the FAISS index or, for IVF-PQ, in a memory-mapped ``vectors.npy``
(:mod:`entrep.retrieval.backend`).

Gallery folder (format version 3): ``gallery.json`` (settings, label
vocabulary, build report), ``rows.npy``, ``rows.sqlite``, ``index.faiss`` and,
for IVF-PQ only, ``vectors.npy``. Versions 1-2 kept the metadata as one JSON
list in gallery.json; they load (converted in memory, with an INFO line) and
are written as version 3 on the next save.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from entrep.errors import ModelError, UserError

log = logging.getLogger(__name__)

FORMAT_NAME = "entrep-gallery-index"
FORMAT_VERSION = 3  # 3: metadata in rows.sqlite + rows.npy; 2: one JSON list, vectors once in index.faiss; 1: also vectors.npy
READABLE_VERSIONS = (1, 2, 3)
JSON_ITEM_VERSIONS = (1, 2)  # metadata as one JSON list inside gallery.json: converted on load
META_FILE = "gallery.json"
ROWS_FILE = "rows.npy"  # (n, 2) int64: id, label code (row order = increasing id)
DB_FILE = "rows.sqlite"  # one metadata row per gallery row, looked up by id on demand


@dataclass(frozen=True)
class GalleryItem:
    """What is known about one gallery row. ``id`` is stable and never reused."""

    id: int
    path: str
    name: str
    label: str | None = None
    group: str | None = None
    caption: str | None = None
    content_hash: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "GalleryItem":
        return cls(**{f.name: d.get(f.name) for f in fields(cls)})


ITEM_KEYS = tuple(f.name for f in fields(GalleryItem) if f.name != "id")
ALLOWED_KEYS = frozenset(ITEM_KEYS) | {"id"}


class Hit(NamedTuple):
    """One search result: gallery id, cosine score, and the row's metadata."""

    id: int
    score: float
    metadata: GalleryItem

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def label(self) -> str | None:
        return self.metadata.label


class RowStore:
    """Row-ordered ids, label codes and metadata. Not locked: the owning index serialises access.

    Ids are assigned in increasing order and rows keep insertion order, so
    :attr:`ids` is always sorted and an id's row is found by binary search (no
    id -> row dict). Metadata of a loaded gallery stays in its SQLite file
    (:class:`MetaDB`) and is read row by row on demand; rows added since (or
    every row of a gallery built in memory) are held as :class:`GalleryItem`
    objects until the next save. Removed rows simply leave :attr:`ids`.
    """

    def __init__(self) -> None:
        self.ids = np.zeros(0, dtype=np.int64)
        self.codes = np.zeros(0, dtype=np.int32)  # per-row label code, for vectorised label masks
        self.labels: list[str | None] = []  # code -> label
        self.label_code: dict[str | None, int] = {}
        self.next_id = 0
        self.base: MetaDB | None = None  # metadata of the rows loaded from a saved gallery
        self.new: dict[int, GalleryItem] = {}  # rows not in ``base``, in id order

    def __len__(self) -> int:
        return len(self.ids)

    def snapshot(self) -> tuple:
        return self.ids, self.codes, self.next_id, len(self.labels)

    def restore(self, saved: tuple) -> None:
        self.ids, self.codes, next_id, n_labels = saved
        for i in range(next_id, self.next_id):
            self.new.pop(i, None)
        for lab in self.labels[n_labels:]:
            del self.label_code[lab]
        del self.labels[n_labels:]
        self.next_id = next_id

    def append(self, metadata: Sequence) -> tuple[np.ndarray, list[GalleryItem]]:
        """Give the entries new ids and append them; returns (new ids, new items)."""
        new_ids = np.arange(self.next_id, self.next_id + len(metadata), dtype=np.int64)
        items = [make_item(int(i), m, row) for row, (i, m) in enumerate(zip(new_ids, metadata))]
        names = [it.name for it in items]
        dup = sorted({it.name for it in self.items_for(self.ids_for_names(names))} | repeated(names))
        if dup:
            log.warning("gallery now holds several rows named %s; name-based lookups return all of them", dup[:5])
        self.ids = np.concatenate([self.ids, new_ids])
        self.codes = np.concatenate([self.codes, self.encode_labels(it.label for it in items)])
        self.new.update(zip(new_ids.tolist(), items))
        self.next_id += len(items)
        return new_ids, items

    def keep(self, keep: np.ndarray) -> None:
        """Keep only the rows where the bool mask ``keep`` holds (order preserved)."""
        for i in self.ids[~keep].tolist():
            self.new.pop(i, None)
        self.ids = self.ids[keep]
        self.codes = self.codes[keep]

    def set_rows(self, items: list[GalleryItem], next_id: int) -> None:
        """Rows from a list of items (an old JSON gallery): held in memory until the next save."""
        self.ids = np.array([it.id for it in items], dtype=np.int64)
        self.next_id, self.base = next_id, None
        self.new = dict(zip(self.ids.tolist(), items))
        self.labels, self.label_code = [], {}
        self.codes = self.encode_labels(it.label for it in items)

    def set_columns(self, ids: np.ndarray, codes: np.ndarray, labels: list, next_id: int, base: "MetaDB") -> None:
        """Rows of a saved gallery: id and label-code columns in memory, metadata in ``base``."""
        self.ids, self.codes, self.next_id, self.base, self.new = ids, codes, next_id, base, {}
        self.labels = list(labels)
        self.label_code = {lab: c for c, lab in enumerate(self.labels)}

    def encode_labels(self, labels: Iterable[str | None]) -> np.ndarray:
        out = []
        for lab in labels:
            c = self.label_code.get(lab)
            if c is None:
                c = self.label_code[lab] = len(self.labels)
                self.labels.append(lab)
            out.append(c)
        return np.array(out, dtype=np.int32)

    # ---- lookups --------------------------------------------------------
    def present(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, ok): the row of each id and whether the id is in the gallery at all."""
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.searchsorted(self.ids, ids)
        ok = rows < len(self.ids)
        ok[ok] = self.ids[rows[ok]] == ids[ok]
        return np.minimum(rows, max(len(self.ids) - 1, 0)), ok

    def has(self, i: int) -> bool:
        return bool(self.present(np.array([i]))[1][0])

    def rows_of(self, ids: Iterable[int]) -> np.ndarray:
        """Rows of the given ids, in order; UserError naming unknown ids."""
        ids = np.fromiter((int(i) for i in ids), dtype=np.int64)
        rows, ok = self.present(ids)
        if not ok.all():
            unknown = ids[~ok].tolist()
            raise UserError(f"unknown gallery ids {unknown[:5]}{' ...' if len(unknown) > 5 else ''} "
                            f"(the gallery has {len(self)} rows)")
        return rows

    def items_for(self, ids: Sequence[int]) -> list[GalleryItem]:
        """Metadata of ids known to be present, in the given order (one SQLite query for the stored ones)."""
        ids = [int(i) for i in ids]
        stored = [i for i in ids if i not in self.new]
        found = self.base.items(stored) if stored and self.base is not None else {}
        return [self.new[i] if i in self.new else found[i] for i in ids]

    def iter_items(self) -> Iterator[GalleryItem]:
        """Every row's metadata, in row order (stored rows first: their ids precede every newer row's)."""
        if self.base is not None and len(self.ids):
            for chunk in self.base.iter_items():
                ok = self.present(np.array([it.id for it in chunk], dtype=np.int64))[1]
                yield from (it for it, k in zip(chunk, ok.tolist()) if k)
        yield from self.new.values()

    def ids_for_names(self, names: Iterable[str]) -> list[int]:
        """Ids of rows whose file name is in ``names`` (every row sharing a name), in row order."""
        return self.ids_where("name", names)

    def ids_where(self, column: str, values: Iterable[str]) -> list[int]:
        """Ids of present rows whose ``column`` ("name" or "content_hash") is one of ``values``, in row order."""
        want = set(values)
        if not want:
            return []
        found = self.base.ids_where(column, want) if self.base is not None else []
        found += [i for i, it in self.new.items() if getattr(it, column) in want]
        if not found:
            return []
        arr = np.unique(np.array(found, dtype=np.int64))
        return arr[self.present(arr)[1]].tolist()

    def ids_to_drop(self, ids_or_names: Iterable[int | str]) -> tuple[set[int], list]:
        """(ids to remove, entries not found) for gallery ids (int) and file names (str)."""
        drop: set[int] = set()
        missing: list = []
        names: list[str] = []
        for x in ids_or_names:
            if isinstance(x, str):
                names.append(x)
            elif isinstance(x, (int, np.integer)) and not isinstance(x, bool):
                if self.has(int(x)):
                    drop.add(int(x))
                else:
                    missing.append(int(x))
            else:
                raise UserError(f"remove() takes gallery ids (int) or file names (str), got {x!r}")
        if names:
            found = self.ids_for_names(names)
            drop.update(found)
            have = {it.name for it in self.items_for(found)}
            missing += [n for n in names if n not in have]
        return drop, missing

    def hits(self, scores: np.ndarray, found: np.ndarray, mask: np.ndarray | None, excl: frozenset,
             want: int) -> list[Hit]:
        """The first ``want`` results (ids ``found``) that exist, are allowed by ``mask`` and not excluded."""
        found = np.asarray(found, dtype=np.int64)
        rows, ok = self.present(found)
        ok &= found >= 0
        if mask is not None:
            ok &= mask[rows]
        pick: list[tuple[int, float]] = []
        for i, s, good in zip(found.tolist(), scores.tolist(), ok.tolist()):
            if len(pick) == want:
                break
            if good and i not in excl:
                pick.append((i, s))
        items = self.items_for([i for i, _ in pick])
        return [Hit(i, float(s), it) for (i, s), it in zip(pick, items)]

    def mask(self, predicate: Callable[[GalleryItem], bool]) -> np.ndarray:
        return np.fromiter((bool(predicate(it)) for it in self.iter_items()), dtype=bool, count=len(self.ids))

    def label_mask(self, labels: Iterable[str | None]) -> np.ndarray:
        lut = np.zeros(len(self.labels) + 1, dtype=bool)  # code -> allowed: one gather, 10x np.isin at 1M
        lut[[self.label_code[lab] for lab in set(labels) if lab in self.label_code]] = True
        return lut[self.codes]

    # ---- files ------------------------------------------------------------
    def write(self, folder: Path) -> dict:
        """Write ``rows.npy`` (id, label code) and ``rows.sqlite`` (metadata) into ``folder``; returns meta keys."""
        with open(folder / ROWS_FILE, "wb") as f:
            np.save(f, np.stack([self.ids, self.codes.astype(np.int64)], axis=1) if len(self.ids)
                    else np.zeros((0, 2), dtype=np.int64))
        MetaDB.write(folder / DB_FILE, self.iter_items())
        return {"labels": self.labels, "next_id": self.next_id, "n": len(self.ids)}

    @classmethod
    def read(cls, folder: Path, meta: dict) -> "RowStore":
        """The rows of a version-3 gallery folder: columns loaded, metadata left in SQLite; ModelError otherwise."""
        rows_path = folder / ROWS_FILE
        n, next_id, labels = int(meta["n"]), int(meta["next_id"]), list(meta["labels"])
        try:
            cols = np.load(rows_path, allow_pickle=False)
        except FileNotFoundError:
            raise ModelError(f"{rows_path}: gallery row file is missing; rebuild it with `entrep index`") from None
        except (OSError, ValueError) as e:
            raise ModelError(f"{rows_path}: unreadable gallery rows ({e}); rebuild it with `entrep index`") from None
        if cols.ndim != 2 or cols.shape != (n, 2) or cols.dtype != np.int64:
            raise ModelError(f"{rows_path}: {cols.shape} rows do not match n = {n}; rebuild it with `entrep index`")
        ids, codes = np.ascontiguousarray(cols[:, 0]), cols[:, 1].astype(np.int32)
        if n and (ids[0] < 0 or ids[-1] >= next_id or np.any(np.diff(ids) <= 0)
                  or codes.min() < 0 or codes.max() >= len(labels)):
            raise ModelError(f"{rows_path}: gallery ids or label codes are out of order or range; "
                             "rebuild it with `entrep index`")
        base = MetaDB.open(folder / DB_FILE, n)
        out = cls()
        out.set_columns(ids, codes, labels, next_id, base)
        return out


class MetaDB:
    """A gallery's metadata table in SQLite (stdlib ``sqlite3``), opened read-only and queried by id on demand.

    Chosen over Parquet by measurement at 1M rows (docs/scale.md): opening
    takes milliseconds and holds a few MB, where a Parquet table must be read
    whole (hundreds of MB of strings) before rows can be looked up by id. One
    connection, used under the owning index's lock.
    """

    COLS = ("id", "path", "name", "label", "grp", "caption", "content_hash")
    CHUNK = 900  # bound parameters per query (SQLite's default limit is 999)

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path, self.conn = path, conn

    @staticmethod
    def write(path: Path, items: Iterable[GalleryItem], batch: int = 50_000) -> None:
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA journal_mode=OFF")  # a fresh file inside a temporary folder: no rollback needed
            conn.execute("PRAGMA synchronous=OFF")  # the whole folder is fsynced by entrep.io before install
            conn.execute("CREATE TABLE rows (id INTEGER PRIMARY KEY, path TEXT NOT NULL, name TEXT NOT NULL, "
                         "label TEXT, grp TEXT, caption TEXT, content_hash TEXT)")
            buf: list[tuple] = []
            for it in items:
                buf.append((it.id, it.path, it.name, it.label, it.group, it.caption, it.content_hash))
                if len(buf) >= batch:
                    conn.executemany("INSERT INTO rows VALUES (?,?,?,?,?,?,?)", buf)
                    buf = []
            conn.executemany("INSERT INTO rows VALUES (?,?,?,?,?,?,?)", buf)
            conn.execute("CREATE INDEX rows_name ON rows(name)")
            conn.execute("CREATE INDEX rows_hash ON rows(content_hash)")
            conn.commit()
        finally:
            conn.close()

    @classmethod
    def open(cls, path: Path, n: int) -> "MetaDB":
        """Open read-only; ModelError naming the file if it is missing, not SQLite, or not ``n`` rows."""
        if not path.is_file():
            raise ModelError(f"{path}: gallery metadata file is missing; rebuild it with `entrep index`")
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            have = conn.execute("SELECT count(*) FROM rows").fetchone()[0]
        except sqlite3.Error as e:
            raise ModelError(f"{path}: unreadable gallery metadata ({e}); rebuild it with `entrep index`") from None
        if have != n:
            conn.close()
            raise ModelError(f"{path}: {have} metadata rows do not match n = {n}; rebuild it with `entrep index`")
        return cls(path, conn)

    def _row(self, r: tuple) -> GalleryItem:
        return GalleryItem(*r)

    def items(self, ids: Sequence[int]) -> dict[int, GalleryItem]:
        out: dict[int, GalleryItem] = {}
        for j in range(0, len(ids), self.CHUNK):
            part = ids[j : j + self.CHUNK]
            q = f"SELECT {', '.join(self.COLS)} FROM rows WHERE id IN ({','.join('?' * len(part))})"
            out.update((r[0], self._row(r)) for r in self.query(q, part))
        missing = [i for i in ids if i not in out]
        if missing:
            raise ModelError(f"{self.path}: gallery ids {missing[:5]} have no metadata row; "
                             "rebuild it with `entrep index`")
        return out

    def ids_where(self, column: str, values: set[str]) -> list[int]:
        if column not in ("name", "content_hash"):  # pragma: no cover - internal callers only
            raise ValueError(column)
        vals, out = sorted(v for v in values if v is not None), []
        for j in range(0, len(vals), self.CHUNK):
            part = vals[j : j + self.CHUNK]
            out += [r[0] for r in self.query(f"SELECT id FROM rows WHERE {column} IN ({','.join('?' * len(part))})",
                                             part)]
        return out

    def iter_items(self, chunk: int = 10_000) -> Iterator[list[GalleryItem]]:
        cur = self.conn.execute(f"SELECT {', '.join(self.COLS)} FROM rows ORDER BY id")
        while rows := cur.fetchmany(chunk):
            yield [self._row(r) for r in rows]

    def query(self, sql: str, args: Sequence) -> list[tuple]:
        try:
            return self.conn.execute(sql, list(args)).fetchall()
        except sqlite3.Error as e:
            raise ModelError(f"{self.path}: unreadable gallery metadata ({e}); rebuild it with `entrep index`") from None


def make_item(id_: int, m, row: int) -> GalleryItem:
    """A GalleryItem from a dict, GalleryItem (id replaced), Record or path; UserError naming entry ``row``."""
    if type(m) is dict or isinstance(m, Mapping):
        unknown = m.keys() - ALLOWED_KEYS
        if unknown:
            raise UserError(f"metadata entry {row} has unknown keys {sorted(unknown)}; valid keys: {list(ITEM_KEYS)}")
        d = m
    elif isinstance(m, GalleryItem):
        d = m.to_json()
    elif isinstance(m, (str, Path)):
        d = {"path": str(m)}
    elif hasattr(m, "image") and hasattr(m, "label"):  # entrep.data.records.Record
        d = {"path": str(m.image), "name": Path(m.image).name, "label": m.label,
             "group": None, "caption": getattr(m, "text", None)}
    else:
        raise UserError(f"metadata entry {row} is a {type(m).__name__}; give a dict, GalleryItem, Record or path")
    path, name = d.get("path"), d.get("name")
    if not path and not name:
        raise UserError(f"metadata entry {row} needs a path or a name")
    path = str(path) if path else str(name)
    name = str(name) if name else Path(path).name
    opt = [d.get(k) for k in ("label", "group", "caption", "content_hash")]
    return GalleryItem(id_, path, name, *(None if v is None else str(v) for v in opt))


def repeated(names: Iterable[str]) -> set[str]:
    seen, rep = set(), set()
    for n in names:
        (rep if n in seen else seen).add(n)
    return rep


def as_matrix(x, dim: int, *, what: str, allow_1d: bool = False) -> np.ndarray:
    """``x`` as a C-contiguous float32 (N, dim) array; UserError naming the shape otherwise."""
    a = np.asarray(x)
    if a.size == 0 and a.ndim <= 2:
        return np.zeros((0, dim), dtype=np.float32)
    if allow_1d and a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2 or a.shape[1] != dim:
        raise UserError(f"{what} have shape {a.shape} but this gallery index holds dimension {dim} vectors; "
                        "use the encoder (and joint space) the gallery was built with")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise UserError(f"{what} must be real numbers, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def normalise(a: np.ndarray, *, what: str) -> np.ndarray:
    """Rows L2-normalised; UserError naming the first row holding NaN/inf or all zeros."""
    bad = np.flatnonzero(~np.isfinite(a).all(axis=1))
    if len(bad):
        raise UserError(f"{what} {int(bad[0])} holds NaN or infinity; check the encoder output")
    norms = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64))[:, None]
    zero = np.flatnonzero(norms[:, 0] == 0)
    if len(zero):
        raise UserError(f"{what} {int(zero[0])} is all zeros and cannot be L2-normalised")
    return np.ascontiguousarray(a / norms, dtype=np.float32)


# ---- the metadata file ------------------------------------------------------
def write_meta(path: Path, meta: dict) -> None:
    path.write_text(json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, **meta}, ensure_ascii=False,
                               indent=1) + "\n", encoding="utf-8")


def read_meta(folder: Path) -> dict:
    """The parsed gallery.json of ``folder``; ModelError naming the folder if missing, corrupt or another version."""
    meta_path = folder / META_FILE
    if not folder.is_dir():
        raise ModelError(f"{folder}: no gallery index folder here; build one with `entrep index`")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{folder}: not a gallery index folder ({META_FILE} is missing); rebuild it with `entrep index`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{meta_path}: unreadable gallery index metadata ({e}); rebuild it with `entrep index`") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ModelError(f"{meta_path}: not an entrep gallery index; rebuild it with `entrep index`")
    if meta.get("version") not in READABLE_VERSIONS:
        raise ModelError(f"{folder}: gallery index format version {meta.get('version')!r}, but this entrep reads "
                         f"versions {list(READABLE_VERSIONS)}; rebuild it with `entrep index`")
    return meta


def parse_items(raw, n: int, next_id: int, meta_path: Path) -> list[GalleryItem]:
    """Items of a gallery.json, checked: ``n`` of them, integer ids unique and below ``next_id``."""
    items = [GalleryItem.from_json(d) for d in raw]
    if not all(isinstance(it.id, int) and isinstance(it.path, str) and isinstance(it.name, str) for it in items):
        raise ValueError("every item needs an integer id, a path and a name")
    if len(items) != n:
        raise ModelError(f"{meta_path}: {len(items)} items do not match n = {n}; rebuild it with `entrep index`")
    ids = [it.id for it in items]
    if n and (len(set(ids)) != n or min(ids) < 0 or max(ids) >= next_id):
        raise ModelError(f"{meta_path}: gallery ids are duplicated or out of range; rebuild it with `entrep index`")
    return items
