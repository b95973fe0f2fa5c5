"""Row store of the gallery index: GalleryItem / Hit, stable ids, label codes, and the metadata file.

:class:`RowStore` keeps one :class:`GalleryItem` per row, in insertion order,
with the id -> row map and a per-row label code for fast label masks. Ids are
assigned incrementally and never reused. The vectors themselves are not here:
they live once, in the FAISS index (:mod:`entrep.retrieval.backend`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from entrep.errors import ModelError, UserError

log = logging.getLogger(__name__)

FORMAT_NAME = "entrep-gallery-index"
FORMAT_VERSION = 2  # 2: vectors are stored once, in index.faiss (version 1 also wrote them to vectors.npy)
READABLE_VERSIONS = (1, 2)
META_FILE = "gallery.json"


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
    """Row-ordered ids and metadata with an id -> row map. Not locked: the owning index serialises access."""

    def __init__(self) -> None:
        self.ids = np.zeros(0, dtype=np.int64)
        self.items: list[GalleryItem] = []
        self.codes = np.zeros(0, dtype=np.int32)  # per-row label code, for fast label masks
        self.label_code: dict[str | None, int] = {}
        self.row: dict[int, int] = {}
        self.next_id = 0

    def __len__(self) -> int:
        return len(self.ids)

    def snapshot(self) -> tuple:
        return self.ids, self.items, self.codes, self.row, self.next_id

    def restore(self, saved: tuple) -> None:
        self.ids, self.items, self.codes, self.row, self.next_id = saved

    def append(self, metadata: Sequence) -> tuple[np.ndarray, list[GalleryItem]]:
        """Give the entries new ids and append them; returns (new ids, new items)."""
        new_ids = np.arange(self.next_id, self.next_id + len(metadata), dtype=np.int64)
        items = [make_item(int(i), m, row) for row, (i, m) in enumerate(zip(new_ids, metadata))]
        seen = {it.name for it in self.items}
        dup = sorted({it.name for it in items if it.name in seen} | repeated(it.name for it in items))
        if dup:
            log.warning("gallery now holds several rows named %s; name-based lookups return all of them", dup[:5])
        start = len(self.ids)
        self.ids = np.concatenate([self.ids, new_ids])
        self.items = self.items + items
        self.codes = np.concatenate([self.codes, self.encode_labels(items)])
        self.row = {**self.row, **{int(i): start + r for r, i in enumerate(new_ids)}}
        self.next_id += len(items)
        return new_ids, items

    def keep(self, keep: np.ndarray) -> None:
        """Keep only the rows where the bool mask ``keep`` holds (order preserved)."""
        self.ids = self.ids[keep]
        self.items = [it for it, k in zip(self.items, keep) if k]
        self.codes = self.codes[keep]
        self.row = {int(i): r for r, i in enumerate(self.ids)}

    def set_rows(self, items: list[GalleryItem], next_id: int) -> None:
        self.ids = np.array([it.id for it in items], dtype=np.int64)
        self.items, self.next_id = items, next_id
        self.row = {int(i): r for r, i in enumerate(self.ids)}
        self.label_code = {}
        self.codes = self.encode_labels(items)

    def encode_labels(self, items: Sequence[GalleryItem]) -> np.ndarray:
        return np.array([self.label_code.setdefault(it.label, len(self.label_code)) for it in items], dtype=np.int32)

    def rows_of(self, ids: Iterable[int]) -> list[int]:
        """Rows of the given ids, in order; UserError naming unknown ids."""
        rows, unknown = [], []
        for i in ids:
            r = self.row.get(int(i))
            if r is None:
                unknown.append(int(i))
            else:
                rows.append(r)
        if unknown:
            raise UserError(f"unknown gallery ids {unknown[:5]}{' ...' if len(unknown) > 5 else ''} "
                            f"(the gallery has {len(self)} rows)")
        return rows

    def ids_for_names(self, names: Iterable[str]) -> list[int]:
        want = set(names)
        return [it.id for it in self.items if it.name in want]

    def ids_to_drop(self, ids_or_names: Iterable[int | str]) -> tuple[set[int], list]:
        """(ids to remove, entries not found) for gallery ids (int) and file names (str)."""
        drop: set[int] = set()
        missing: list = []
        by_name: dict[str, list[int]] | None = None
        for x in ids_or_names:
            if isinstance(x, str):
                if by_name is None:
                    by_name = {}
                    for it in self.items:
                        by_name.setdefault(it.name, []).append(it.id)
                found = by_name.get(x)
                if found:
                    drop.update(found)
                else:
                    missing.append(x)
            elif isinstance(x, (int, np.integer)) and not isinstance(x, bool):
                if int(x) in self.row:
                    drop.add(int(x))
                else:
                    missing.append(int(x))
            else:
                raise UserError(f"remove() takes gallery ids (int) or file names (str), got {x!r}")
        return drop, missing

    def hits(self, scores: np.ndarray, found: np.ndarray, mask: np.ndarray | None, excl: frozenset,
             want: int) -> list[Hit]:
        """The first ``want`` FAISS results (ids ``found``) that exist, are allowed by ``mask`` and not excluded."""
        hits: list[Hit] = []
        for i, s in zip(found.tolist(), scores.tolist()):
            if len(hits) == want:
                break
            if i < 0 or i in excl:
                continue
            r = self.row.get(i)
            if r is None or (mask is not None and not mask[r]):
                continue  # defensive: FAISS returned a row the filter forbids
            hits.append(Hit(i, float(s), self.items[r]))
        return hits

    def mask(self, predicate: Callable[[GalleryItem], bool]) -> np.ndarray:
        return np.fromiter((bool(predicate(it)) for it in self.items), dtype=bool, count=len(self.items))

    def label_mask(self, labels: Iterable[str | None]) -> np.ndarray:
        want = [self.label_code[lab] for lab in set(labels) if lab in self.label_code]
        return np.isin(self.codes, np.array(want, dtype=np.int32))


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
