"""Stratified, grouped, seeded train/val/test splits that never leak an image across splits.

Images are grouped before splitting (the one union-find of
:mod:`entrep.data.hashing` over keys): byte-identical
files (SHA-256) always share a group, so do records with the same
``Record.group``, and, with ``group_pattern``, files whose names give the same
patient/visit id. Whole groups go to one split; the per-class split sizes come
as close to ``ratios`` as the groups allow (1,857 ENTRep images at 80/10/10
give the paper's 1485/186/186). Every class with at least as many images as
there are non-empty parts gets at least one image in each part, as far as its
groups allow; ``require_every_class=True`` turns a class the groups keep out of
a part into a :class:`UserError` naming it (``fit`` uses this for its internal
hold-out). The result depends on the records and the seed only, never on the
order of the records.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Sequence

import numpy as np

from entrep.data.hashing import HashCache, components_sharing
from entrep.data.readers import SPLIT_NAMES
from entrep.data.records import DataError, Dataset, write_manifest
from entrep.errors import UserError
from entrep.io import atomic_dir

log = logging.getLogger(__name__)


class Splits(dict):
    """``{"train": Dataset, "val": Dataset, "test": Dataset}`` plus ``info`` on how it was made."""

    def __init__(self, parts: dict[str, Dataset], info: dict):
        super().__init__(parts)
        self.info = info


def group_keys(records: Sequence, hashes: Sequence[str], pattern: re.Pattern | None = None) -> tuple[list[list[str]], int]:
    """The split's grouping rule: per record the keys it shares with the rest of its group (its content
    hash, its ``Record.group``, the id ``pattern`` finds in its name), and how many names the pattern
    found no id in. :func:`entrep.data.hashing.components_sharing` turns the keys into groups."""
    keys: list[list[str]] = []
    unmatched = 0
    for rec, sha in zip(records, hashes):
        k = [f"sha:{sha}"]
        if rec.group:
            k.append(f"group:{rec.group}")
        if pattern is not None:
            gid = _pattern_id(pattern, rec.name)
            if gid is None:
                unmatched += 1
            else:
                k.append(f"id:{gid}")
        keys.append(k)
    return keys, unmatched


def split_dataset(
    ds: Dataset,
    *,
    seed: int = 0,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    group_pattern: str | None = None,
    require_every_class: bool = False,
    hashes: HashCache | None = None,
) -> Splits:
    """Split ``ds`` into train/val/test, stratified on the fine label, whole groups per split.

    ``hashes``: the content-hash memo to use (default ``HashCache()``).
    ``require_every_class``: raise :class:`UserError` when a class with enough
    images still misses a non-empty part (its images share groups); otherwise
    that is a warning.
    """
    r = _check_ratios(ratios)
    pattern = _compile(group_pattern)
    recs = ds.records
    if not recs:
        raise DataError(f"{ds.source or ds.root}: nothing to split")
    unlabelled = [x.name for x in recs if x.label is None]
    if unlabelled:
        raise DataError(f"{ds.source or ds.root}: {len(unlabelled)} image(s) have no label, e.g. {unlabelled[0]}")
    hashes = (hashes or HashCache()).sha256([x.image for x in recs])

    # canonical order: independent of the order records came in
    order = sorted(range(len(recs)), key=lambda i: (recs[i].name, str(recs[i].image), hashes[i]))
    keys, unmatched = group_keys([recs[i] for i in order], [hashes[i] for i in order], pattern)
    if pattern is not None:
        if unmatched == len(recs):
            raise DataError(f"group pattern {group_pattern!r} matched no file name (e.g. {recs[order[0]].name!r})")
        if unmatched:
            log.warning("group pattern %r matched no id in %d file name(s); each is its own group",
                        group_pattern, unmatched)
    groups = components_sharing(keys)  # lists of positions in `order`, canonical
    groups = [[order[p] for p in g] for g in groups]

    tax = ds.taxonomy
    label_ids = np.array([tax.class_id(x.label) for x in recs])
    counts = np.bincount(label_ids, minlength=tax.n_classes)
    targets = _targets(counts, r)
    assigned = np.zeros_like(targets)
    rng = np.random.default_rng(seed)
    tiebreak = rng.permutation(len(groups))
    members_of: list[list[int]] = [[] for _ in SPLIT_NAMES]
    open_splits = [s for s in range(len(SPLIT_NAMES)) if r[s] > 0]
    for g in sorted(range(len(groups)), key=lambda g: (-len(groups[g]), tiebreak[g])):
        cnt = np.bincount(label_ids[groups[g]], minlength=tax.n_classes)
        major = int(np.argmax(cnt))
        need = targets - assigned
        best = max(
            open_splits,
            key=lambda s: (
                int(np.minimum(cnt, np.maximum(need[:, s], 0)).sum()),
                need[major, s] / max(targets[major, s], 1e-9),
                -s,
            ),
        )
        assigned[:, best] += cnt
        members_of[best].extend(groups[g])

    _check_every_class(assigned, counts, open_splits, tax, require_every_class, ds.source or str(ds.root))
    sizes = [len(g) for g in groups]
    info = {
        "seed": seed,
        "ratios": list(r),
        "group_pattern": group_pattern,
        "n_images": len(recs),
        "groups": {
            "n_groups": len(groups),
            "multi_image_groups": sum(s > 1 for s in sizes),
            "largest_group": max(sizes),
            "duplicate_sets": sum(n > 1 for n in Counter(hashes).values()),
            "pattern_unmatched": unmatched if pattern is not None else None,
        },
        "targets": {s: {c: int(targets[i, s_i]) for i, c in enumerate(tax.classes)}
                    for s_i, s in enumerate(SPLIT_NAMES)},
    }
    parts = {}
    rank = {i: p for p, i in enumerate(order)}
    for s_i, s in enumerate(SPLIT_NAMES):
        parts[s] = ds.subset(sorted(members_of[s_i], key=rank.__getitem__))
    return Splits(parts, info)


def write_splits(splits: dict[str, Dataset], out_dir: str | Path) -> dict[str, Path]:
    """Write ``out_dir/{train,val,test}.jsonl``, ``taxonomy.json`` and ``split.json`` as a whole.

    The split files are replaced together (one folder swap, :func:`entrep.io.atomic_dir`),
    so no manifest of an earlier run survives next to the new ones; files in
    ``out_dir`` that entrep did not write are kept. Every part is written, an
    empty part as an empty manifest (a warning says so). Image paths are
    relative to ``out_dir`` when the images lie under it, else absolute; t2i
    captions travel with their images.
    """
    out = Path(out_dir).expanduser().resolve()
    own = {f"{n}.jsonl" for n in SPLIT_NAMES} | {"taxonomy.json", "split.json"}
    written: dict[str, Path] = {}
    counts: dict[str, dict[str, int]] = {}
    tax = None
    with atomic_dir(out, own=own, foreign="keep") as tmp:
        for name in SPLIT_NAMES:
            ds = splits.get(name)
            recs = [] if ds is None else [replace(x, image=x.image.resolve()) for x in ds.records]
            if ds is not None:
                tax = tax or ds.taxonomy
                counts[name] = {c: 0 for c in ds.taxonomy.classes}
            for x in recs:
                counts[name][x.label] = counts[name].get(x.label, 0) + 1
            if not recs:
                log.warning("split %r is empty; %s.jsonl written without records", name, name)
            write_manifest(tmp / f"{name}.jsonl", recs, text_queries=ds.text_queries if ds is not None else (),
                           root=out)
            written[name] = out / f"{name}.jsonl"
        if tax is not None:
            (tmp / "taxonomy.json").write_text(json.dumps(tax.to_dict(), indent=2, ensure_ascii=False),
                                               encoding="utf-8")
        info = dict(getattr(splits, "info", {}) or {})
        info["counts"] = counts
        info["totals"] = {n: sum(c.values()) for n, c in counts.items()}
        info["files"] = {n: p.name for n, p in written.items()}
        (tmp / "split.json").write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
    return written


# ---------------------------------------------------------------- helpers
def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    try:
        r = tuple(float(x) for x in ratios)
    except (TypeError, ValueError):
        raise UserError(f"split ratios must be three numbers, got {ratios!r}") from None
    if len(r) != 3 or any(x < 0 for x in r) or abs(sum(r) - 1.0) > 1e-6:
        raise UserError(f"split ratios must be three non-negative numbers summing to 1, got {ratios!r}")
    return r  # type: ignore[return-value]


def _compile(pattern: str | None) -> re.Pattern | None:
    if pattern is None:
        return None
    try:
        return re.compile(pattern)
    except re.error as e:
        raise UserError(f"invalid group pattern {pattern!r}: {e}") from None


def _pattern_id(pattern: re.Pattern, name: str) -> str | None:
    """The named group ``id``, else the first capture group, else the whole match."""
    m = pattern.search(name)
    if m is None:
        return None
    if "id" in pattern.groupindex:
        return m.group("id")
    return m.group(1) if pattern.groups else m.group(0)


def _check_every_class(assigned: np.ndarray, counts: np.ndarray, open_splits: list[int], tax, strict: bool,
                       source: str) -> None:
    """Classes with >= one image per open part that still miss a part (their images share groups)."""
    short = [(tax.classes[c], SPLIT_NAMES[s]) for c in range(len(counts)) if counts[c] >= len(open_splits)
             for s in open_splits if assigned[c, s] == 0]
    if not short:
        return
    shown = ", ".join(f"{c!r} has no image in {s}" for c, s in short[:4]) + (" ..." if len(short) > 4 else "")
    msg = (f"{source}: {shown}: its images share groups (identical files, patient ids) that cannot be divided; "
           "add images of that class, pass a separate validation set (--val DATA), or change the split fraction")
    if strict:
        raise UserError(msg)
    log.warning("%s", msg)


def _largest_remainder(total: int, ratios: Sequence[float]) -> np.ndarray:
    exact = np.asarray(ratios) * total
    out = np.floor(exact).astype(int)
    for s in np.argsort(-(exact - out), kind="stable")[: total - out.sum()]:
        out[s] += 1
    return out


def _targets(counts: np.ndarray, ratios: Sequence[float]) -> np.ndarray:
    """Per-class split sizes (classes x splits) summing to each class count and, as
    nearly as rounding allows, to the overall split sizes (controlled rounding)."""
    r = np.asarray(ratios, dtype=float)
    exact = counts[:, None] * r[None, :]
    t = np.floor(exact + 1e-9).astype(int)
    frac = exact - t
    row_left = counts - t.sum(1)
    col_left = _largest_remainder(int(counts.sum()), r) - t.sum(0)
    bumped = np.zeros_like(t, dtype=bool)
    while row_left.sum() > 0:
        cells = [(c, s) for c in range(len(counts)) if row_left[c] > 0 for s in range(len(r)) if r[s] > 0]
        # prefer: one extra per cell, a split below its total, the largest remainder, the split furthest below
        c, s = max(cells, key=lambda cs: (not bumped[cs], col_left[cs[1]] > 0, frac[cs], col_left[cs[1]],
                                          -cs[0], -cs[1]))
        t[c, s] += 1
        row_left[c] -= 1
        col_left[s] -= 1
        bumped[c, s] = True
    # every class with enough images gets at least one in each open part
    open_ = [s for s in range(len(r)) if r[s] > 0]
    for c in range(len(counts)):
        if counts[c] < len(open_):
            continue
        for s in open_:
            if t[c, s] == 0:
                donor = max(open_, key=lambda d: (t[c, d], -d))
                t[c, donor] -= 1
                t[c, s] += 1
    return t


__all__ = ["Splits", "split_dataset", "write_splits"]
