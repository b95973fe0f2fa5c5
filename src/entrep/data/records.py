"""One Record type for every data source, and the JSONL manifest format.

Manifest: JSON Lines, one image a line; relative paths resolve against the
manifest's folder::

    {"image": "imgs/a.png", "label": "nose-left", "text": "a spur on the septum",
     "text_vi": "...", "pair": "b.png", "group": "patient-17"}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator

from entrep.errors import EntrepError
from entrep.io import write_text_atomic
from entrep.taxonomy import ENT, Taxonomy, TaxonomyError


class DataError(EntrepError, ValueError):
    """Bad input data; the message names the file and the problem."""


@dataclass(frozen=True)
class Record:
    """One image with what is known about it.

    ``image`` is an absolute path. ``label`` is a fine class name (or None for
    unlabelled query images). ``text`` is the English caption (several findings
    joined by '; '), ``text_vi`` the Vietnamese one. ``pair`` is the file name of
    an image sharing a clinical finding (ENTRep i2i.json). ``group`` is a
    patient/visit key that must not be split across train/val/test.
    """

    image: Path
    label: str | None = None
    text: str | None = None
    text_vi: str | None = None
    pair: str | None = None
    group: str | None = None

    @property
    def name(self) -> str:
        return self.image.name

    def to_json(self, root: Path | None = None) -> dict:
        img = self.image
        if root is not None:
            try:
                img = self.image.relative_to(root)
            except ValueError:
                img = self.image
        d = {"image": img.as_posix(), "label": self.label}
        for k in ("text", "text_vi", "pair", "group"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


@dataclass
class Dataset:
    """Records plus what belongs to the whole set.

    ``text_queries`` holds (caption, image file name) pairs from ENTRep's
    t2i.json: text->image queries with their exact relevant image.
    """

    records: list[Record]
    root: Path
    taxonomy: Taxonomy = ENT
    text_queries: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    @property
    def labels(self) -> list[str | None]:
        return [r.label for r in self.records]

    def label_ids(self) -> list[int]:
        return [self.taxonomy.class_id(r.label) for r in self.records if r.label is not None]

    def subset(self, idx: Iterable[int]) -> "Dataset":
        keep = list(idx)
        names = {self.records[i].name for i in keep}
        return Dataset(
            records=[self.records[i] for i in keep],
            root=self.root,
            taxonomy=self.taxonomy,
            text_queries=[(t, n) for t, n in self.text_queries if n in names],
            source=self.source,
        )

    def by_name(self) -> dict[str, Record]:
        return {r.name: r for r in self.records}


def read_manifest(path: str | Path, taxonomy: Taxonomy = ENT, *, check_files: bool = True) -> Dataset:
    """Read a JSONL manifest. Errors name the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read manifest ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: manifest is not UTF-8 text") from None
    root = path.parent.resolve()
    records: list[Record] = []
    text_queries: list[tuple[str, str]] = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{no}: malformed JSON ({e.msg})") from None
        if not isinstance(d, dict) or not isinstance(d.get("image"), str) or not d["image"].strip():
            raise DataError(f"{path}:{no}: each line needs an 'image' path")
        img = Path(d["image"])
        if not img.is_absolute():
            img = root / img
        if check_files and not img.is_file():
            raise DataError(f"{path}:{no}: image file not found: {img}")
        label = d.get("label")
        if label is not None and not isinstance(label, str):
            raise DataError(f"{path}:{no}: 'label' must be a class name, got {json.dumps(label)[:40]}")
        if label is not None:
            try:
                label = taxonomy.normalise_label(label)
            except TaxonomyError as e:
                raise DataError(f"{path}:{no}: {e}") from None
        if label is not None and not isinstance(label, str):
            raise DataError(f"{path}:{no}: 'label' must be a class name, got {json.dumps(label)[:40]}")
        where = f"{path}:{no}"
        rec = Record(
            image=img,
            label=label,
            text=_text(d.get("text"), where, "text"),
            text_vi=_text(d.get("text_vi"), where, "text_vi"),
            pair=_name(d.get("pair"), where, "pair"),
            group=_name(d.get("group"), where, "group"),
        )
        records.append(rec)
        for q in _queries(d.get("queries"), where):  # extra t2i captions for this image
            text_queries.append((q, rec.name))
    if not records:
        raise DataError(f"{path}: manifest has no records")
    return Dataset(records=records, root=root, taxonomy=taxonomy, text_queries=text_queries, source=str(path))


def write_manifest(path: str | Path, records: Iterable[Record], *, text_queries: Iterable[tuple[str, str]] = (),
                   root: str | Path | None = None) -> Path:
    """Write records as JSONL (atomically), paths relative to ``root`` when possible.

    ``root`` defaults to the manifest's folder; pass the final folder when
    writing into a temporary one that will be moved there. t2i captions are
    kept as a ``queries`` list on the record they point to.
    """
    path = Path(path)
    root = Path(root).resolve() if root is not None else path.parent.resolve()
    queries: dict[str, list[str]] = {}
    for text, name in text_queries:
        queries.setdefault(name, []).append(text)
    out = []
    for r in records:
        d = r.to_json(root)
        if r.name in queries:
            d["queries"] = queries[r.name]
        out.append(json.dumps(d, ensure_ascii=False))
    return write_text_atomic(path, "\n".join(out) + ("\n" if out else ""))


def _text(v, where: str, key: str) -> str | None:
    """A caption: text, or a list of texts (several findings) joined by '; '."""
    if v is None:
        return None
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        v = "; ".join(x.strip() for x in v if x.strip())
    if not isinstance(v, str):
        raise DataError(f"{where}: {key!r} must be text or a list of texts, got {json.dumps(v)[:40]}")
    return v.strip() or None


def _name(v, where: str, key: str) -> str | None:
    """A file name or group id: text, or a number (patient ids are often numbers)."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise DataError(f"{where}: {key!r} must be text, got {json.dumps(v)[:40]}")
    return str(v).strip() or None


def _queries(v, where: str) -> list[str]:
    """``queries``: a list of captions; one caption given as a plain string counts as one query."""
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(q, str) for q in v):
        raise DataError(f"{where}: 'queries' must be a list of captions, got {json.dumps(v)[:40]}")
    return [q.strip() for q in v if q.strip()]


__all__ = ["DataError", "Dataset", "Record", "read_manifest", "write_manifest", "replace"]
