"""Readers for every on-disk layout users have, auto-detected, all giving one :class:`Dataset`.

Layouts (see docs/data.md and shared/ENTREP_FORMAT.md):

- ENTRep training folder: ``cls.json`` + ``imgs/`` (+ optional ``i2i.json``, ``t2i.json``);
- public release ``data.json`` (a JSON list of ``Path``/``Classification``/``Description*``);
- a folder of class subfolders (taxonomy inferred from the folder names);
- a JSONL manifest (:mod:`entrep.data.records`).

Reading is cheap: files are checked for existence only. ``skip_bad=True``
skips missing files and also decodes every image, skipping (with one warning)
what cannot be used.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

from entrep.data.finder import IMAGE_DIRS, ImageFinder, class_folders, find_image_dir
from entrep.data.hashing import map_files
from entrep.data.images import ImageError, load_rgb
from entrep.data.inputs import (SHOW, check_repeated_labels, check_str_map, findings_text, handle_missing, label_of,
                                load_json, repeated_keys, show_name, warn_unknown)
from entrep.data.records import DataError, Dataset, Record, read_manifest
from entrep.taxonomy import ENT, Taxonomy, infer_taxonomy, load_taxonomy

log = logging.getLogger(__name__)

#: Manifests of a split folder written by :func:`entrep.data.split.write_splits`.
SPLIT_NAMES = ("train", "val", "test")
LAYOUTS = (
    "ENTRep training folder (cls.json + imgs/)",
    "public release data.json",
    "folder of class subfolders",
    "JSONL manifest (.jsonl)",
)
#: A first CSV row equal to one of these is a column header, not a query.
_HEADER_WORDS = frozenset({"query", "queries", "text", "caption", "image", "images", "file", "filename",
                           "file name", "path", "name", "query_image", "query_text", "query,image"})


# ---------------------------------------------------------------- public API
def read_dataset(path: str | Path, taxonomy: Taxonomy | None = None, *, skip_bad: bool = False,
                 check_images: bool | None = None) -> Dataset:
    """Read a dataset from any supported layout, detected from ``path``.

    ``taxonomy=None`` means ENT, except for class folders (inferred from the
    folder names) and manifests with a ``taxonomy.json`` beside them.
    Missing image files raise :class:`DataError` (``skip_bad``: warn and skip).
    ``check_images`` (default: ``skip_bad``) decodes every image and skips the
    unreadable ones with a warning.
    """
    ds = _read_any(Path(path).expanduser(), taxonomy, skip_bad)
    if skip_bad if check_images is None else check_images:
        ds = _drop_unreadable(ds)
    return ds


def _read_any(p: Path, taxonomy: Taxonomy | None, skip_bad: bool) -> Dataset:
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if p.is_file():
        name = p.name.lower()
        if name == "cls.json":
            return _read_entrep(p.parent, taxonomy, skip_bad)
        if p.suffix.lower() == ".jsonl":
            return _read_jsonl(p, taxonomy, skip_bad)
        if p.suffix.lower() == ".json":
            data = load_json(p)
            if isinstance(data, list):
                return _read_public(p, data, taxonomy, skip_bad)
            if isinstance(data, dict) and find_image_dir(p.parent, require_subdir=True) is not None:
                return _read_entrep(p.parent, taxonomy, skip_bad, cls_file=p, cls_data=data)
            raise DataError(
                f"{p}: JSON is neither a data.json list of records nor a cls.json mapping beside an imgs/ folder"
            )
        raise DataError(f"{p}: not a dataset file; tried layouts: {'; '.join(LAYOUTS)}")
    return _read_folder(p, taxonomy, skip_bad)


def read_datasets(
    paths: Iterable[str | Path], taxonomy: Taxonomy | None = None, skip_bad: bool = False
) -> Dataset:
    """Read several datasets and merge them into one (they must share one taxonomy)."""
    parts = [read_dataset(p, taxonomy, skip_bad=skip_bad) for p in paths]
    if not parts:
        raise DataError("no dataset paths given")
    if len(parts) == 1:
        return parts[0]
    tax = parts[0].taxonomy
    for ds in parts[1:]:
        if ds.taxonomy != tax:
            raise DataError(
                f"{ds.source}: its classes {list(ds.taxonomy.classes)} differ from {parts[0].source}'s "
                f"{list(tax.classes)}; pass one --taxonomy for all"
            )
    records: list[Record] = []
    seen: dict[Path, Record] = {}
    repeated = 0
    for ds in parts:
        for r in ds.records:
            old = seen.get(r.image)
            if old is None:
                seen[r.image] = r
                records.append(r)
            elif old.label != r.label:
                raise DataError(f"{r.image}: listed as {old.label!r} in one dataset and {r.label!r} in another")
            else:
                repeated += 1
    if repeated:
        log.warning("%d image file(s) appear in more than one of the given datasets; kept once", repeated)
    names: dict[str, Path] = {}
    clash = sorted({r.name for r in records if names.setdefault(r.name, r.image) != r.image})
    if clash:
        log.warning(
            "%d file name(s) occur in more than one folder (pairs and captions match by name): %s",
            len(clash), ", ".join(clash[:SHOW]),
        )
    root = Path(os.path.commonpath([str(ds.root) for ds in parts]))
    queries = list(dict.fromkeys(q for ds in parts for q in ds.text_queries))
    return Dataset(records=records, root=root, taxonomy=tax, text_queries=queries,
                   source="; ".join(ds.source for ds in parts))


def read_queries(csv_path: str | Path) -> list[str]:
    """Read a header-less challenge query CSV: one query (file name or caption) per row.

    The first line is a query, not a header. Quoted captions may contain commas;
    an unquoted row that the csv module splits is joined back with ``,``.
    """
    p = Path(csv_path)
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise DataError(f"{p}: cannot read query file ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: query file is not UTF-8 text (byte {e.start})") from None
    queries = []
    try:
        for row in csv.reader(io.StringIO(text, newline="")):
            q = ",".join(row).strip()
            if q:
                queries.append(q)
    except csv.Error as e:
        raise DataError(f"{p}: malformed CSV ({e})") from None
    if queries and queries[0].strip().strip('"').lower() in _HEADER_WORDS:
        log.warning("%s: first row %r looks like a column header, not a query; skipped", p, queries[0])
        queries = queries[1:]
    if not queries:
        raise DataError(f"{p}: query file is empty")
    return queries


def find_split_manifests(folder: str | Path) -> dict[str, Path] | None:
    """``{"train": .../train.jsonl, ...}`` when ``folder`` holds split manifests, else None.

    Empty manifests (a part with no records, as ``write_splits`` writes them) are left out.
    """
    f = Path(folder)
    if not f.is_dir():
        return None
    found = {n: f / f"{n}.jsonl" for n in SPLIT_NAMES if _non_empty(f / f"{n}.jsonl")}
    return found if len(found) >= 2 else None


def _non_empty(p: Path) -> bool:
    try:
        return p.is_file() and p.stat().st_size > 0
    except OSError:
        return False


# ---------------------------------------------------------------- layouts
def _read_folder(p: Path, taxonomy: Taxonomy | None, skip_bad: bool) -> Dataset:
    """Detect the layout of a folder."""
    if (p / "cls.json").is_file():
        return _read_entrep(p, taxonomy, skip_bad)
    if (p / "data.json").is_file():
        data = load_json(p / "data.json")
        if not isinstance(data, list):
            raise DataError(f"{p / 'data.json'}: expected a JSON list of records, got {type(data).__name__}")
        return _read_public(p / "data.json", data, taxonomy, skip_bad)
    splits = find_split_manifests(p)
    if splits:
        raise DataError(
            f"{p}: holds split manifests ({', '.join(f.name for f in splits.values())}); pass one of them, "
            "e.g. {0}".format(next(iter(splits.values())))
        )
    manifests = [f for f in p.glob("*.jsonl") if not f.name.startswith(".") and _non_empty(f)]
    if len(manifests) == 1:
        return _read_jsonl(manifests[0], taxonomy, skip_bad)
    classes = class_folders(p)
    if classes:
        if set(classes) <= {"imgs", "images"}:
            raise DataError(f"{p}: has an {next(iter(classes))}/ folder but no cls.json or data.json beside it")
        return _read_class_folders(p, classes, taxonomy, skip_bad)
    raise DataError(f"{p}: no dataset found; tried layouts: {'; '.join(LAYOUTS)}")


def _read_entrep(root: Path, taxonomy: Taxonomy | None, skip_bad: bool, *,
                 cls_file: Path | None = None, cls_data: Any = None) -> Dataset:
    """ENTRep training folder: cls.json labels, i2i.json pairs, t2i.json captions."""
    tax = taxonomy or ENT
    cls_file = cls_file or root / "cls.json"
    cls = cls_data if cls_data is not None else load_json(cls_file)
    check_str_map(cls_file, cls, "{\"<file>.png\": \"<class>\"}")
    check_repeated_labels(cls_file, cls, tax)
    finder = ImageFinder(root, cls_file)
    labels = {name: label_of(cls_file, tax, lab, name) for name, lab in cls.items()}

    pairs: dict[str, str] = {}
    i2i_file = root / "i2i.json"
    if i2i_file.is_file():
        i2i = load_json(i2i_file)
        check_str_map(i2i_file, i2i, "{\"<file>.png\": \"<file>.png\"}")
        if repeated_keys(i2i):
            log.warning("%s: %d image(s) listed twice; the first pair of each is used: %s", i2i_file,
                        len(repeated_keys(i2i)), ", ".join(list(repeated_keys(i2i))[:SHOW]))
        for a, b in i2i.items():
            pairs[a] = b
        for a, b in i2i.items():
            pairs.setdefault(b, a)  # pairs are symmetric even where the file lists one direction
        warn_unknown(i2i_file, set(i2i) | set(i2i.values()), labels)

    captions: dict[str, list[str]] = {}
    queries: list[tuple[str, str]] = []
    t2i_file = root / "t2i.json"
    if t2i_file.is_file():
        t2i = load_json(t2i_file)
        check_str_map(t2i_file, t2i, "{\"<English caption>\": \"<file>.png\"}")
        pairs_t2i = list(t2i.items()) + [(t, n) for t, extra in repeated_keys(t2i).items() for n in extra[1:]]
        if repeated_keys(t2i):
            log.warning("%s: %d caption(s) appear more than once; each occurrence is kept as a query: %s", t2i_file,
                        len(repeated_keys(t2i)), "; ".join(list(repeated_keys(t2i))[:3]))
        warn_unknown(t2i_file, {n for _, n in pairs_t2i if isinstance(n, str)}, labels)
        for text, name in pairs_t2i:
            if not isinstance(name, str):
                raise DataError(f"{t2i_file}: value for {text!r} must be a string, got {json.dumps(name)[:40]}")
            text = text.strip()
            if name in labels and text:
                captions.setdefault(name, []).append(text)
                queries.append((text, name))

    records, missing, on_disk = [], [], {}
    for name, label in labels.items():
        img = finder.find(name)
        if img is None:
            missing.append(name)
            continue
        on_disk[name] = img.name
        text = "; ".join(captions[name]) if name in captions else None
        records.append(Record(image=img, label=label, text=text, pair=pairs.get(name)))
    # pairs and captions name files as the JSON spells them; point them at the names on disk
    records = [replace(r, pair=on_disk.get(r.pair, r.pair)) if r.pair else r for r in records]
    finder.report_case_fixes()
    handle_missing(cls_file, missing, skip_bad)
    names = {r.name for r in records}
    queries = [(t, on_disk[n]) for t, n in queries if on_disk.get(n) in names]
    return _dataset(cls_file, records, finder.root, tax, queries)


def _read_public(data_file: Path, data: list, taxonomy: Taxonomy | None, skip_bad: bool) -> Dataset:
    """Public release data.json: Path, Classification, Description (vi), DescriptionEN."""
    tax = taxonomy or ENT
    root = data_file.parent.resolve()
    finder = ImageFinder(root, data_file)
    records, missing = [], []
    by_name: dict[str, Record] = {}
    repeated = 0
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise DataError(f"{data_file}: entry {i} is a {type(item).__name__}, expected an object with 'Path'")
        d = {str(k).lower(): v for k, v in item.items()}
        name, label = d.get("path"), d.get("classification")
        if not isinstance(name, str) or not name.strip():
            raise DataError(f"{data_file}: entry {i} has no 'Path'")
        if not isinstance(label, str):
            raise DataError(f"{data_file}: entry {i} ({show_name(name)}) has no 'Classification'")
        name = name.strip()
        label = label_of(data_file, tax, label, name)
        img = finder.find(name)
        if img is None:
            missing.append(name)
            continue
        rec = Record(image=img, label=label, text=findings_text(d.get("descriptionen"), data_file, name),
                     text_vi=findings_text(d.get("description"), data_file, name))
        old = by_name.get(str(img))
        if old is not None:
            if old.label != rec.label:
                raise DataError(f"{data_file}: {show_name(name)} is listed twice, as {old.label!r} and {rec.label!r}")
            repeated += 1
            continue
        by_name[str(img)] = rec
        records.append(rec)
    if repeated:
        log.warning("%s: %d image(s) listed more than once; kept the first entry", data_file, repeated)
    finder.report_case_fixes()
    handle_missing(data_file, missing, skip_bad)
    return _dataset(data_file, records, root, tax, [])


def _read_class_folders(root: Path, classes: dict[str, list[Path]], taxonomy: Taxonomy | None,
                        skip_bad: bool) -> Dataset:
    """One sub-folder per class; folder names may contain spaces."""
    tax = taxonomy or infer_taxonomy(classes, name=root.name or "inferred")
    records = []
    for folder, files in sorted(classes.items()):
        label = label_of(root, tax, folder, f"class folder {folder!r}")
        records += [Record(image=f, label=label) for f in files]
    return _dataset(root, records, root.resolve(), tax, [])


def _read_jsonl(p: Path, taxonomy: Taxonomy | None, skip_bad: bool) -> Dataset:
    """JSONL manifest; a taxonomy.json beside it is used when no taxonomy is given."""
    tax = taxonomy
    if tax is None:
        side = p.parent / "taxonomy.json"
        tax = load_taxonomy(side) if side.is_file() else ENT
    ds = read_manifest(p, tax, check_files=False)
    kept, missing = [], []
    for r in ds.records:
        (kept if r.image.is_file() else missing).append(r)
    handle_missing(p, [str(r.image) for r in missing], skip_bad)
    names = {r.name for r in kept}
    return _dataset(p, kept, ds.root, tax, [q for q in ds.text_queries if q[1] in names])


# ---------------------------------------------------------------- helpers


def _drop_unreadable(ds: Dataset) -> Dataset:
    """Decode every image; drop (with one warning) those that fail."""

    def error(r: Record) -> str | None:
        try:
            load_rgb(r.image)
            return None
        except ImageError as e:
            return str(e)

    errors = map_files(error, ds.records)
    bad = [e for e in errors if e]
    if not bad:
        return ds
    log.warning("%s: skipped %d unreadable image(s): %s", ds.source, len(bad), "; ".join(bad[:3]))
    kept = ds.subset(i for i, e in enumerate(errors) if e is None)
    if not kept.records:
        raise DataError(f"{ds.source}: dataset has no usable images")
    return kept


def _dataset(source: Path, records: list[Record], root: Path, tax: Taxonomy, queries: list) -> Dataset:
    if not records:
        raise DataError(f"{source}: dataset has no usable images")
    return Dataset(records=records, root=root, taxonomy=tax, text_queries=queries, source=str(source))


__all__ = ["IMAGE_DIRS", "LAYOUTS", "SPLIT_NAMES", "find_split_manifests", "read_dataset", "read_datasets",
           "read_queries"]
