"""Audit datasets before trusting any number: unreadable files, duplicates, leakage, label conflicts.

- exact duplicates: identical file bytes (SHA-256) or identical decoded pixels,
  whatever the file names;
- near duplicates: perceptual hash (pHash, 64 bits) within ``near_threshold``
  bits, confirmed by the correlation of 32x32 grey thumbnails (>= ``min_correlation``;
  different views of the same anatomy can share a 64-bit pHash), and, when
  embeddings are given, cosine similarity >= ``cos_threshold``;
- leakage: a duplicate group whose members come from two or more of the named
  datasets (e.g. "train" and "test");
- class conflicts: identical content under two different labels.

File names are listed so users can fix their data; ``hide_names=True`` replaces
them with short stable hashes for reports that leave the hospital.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import imagehash
import numpy as np
from PIL import Image

from entrep.data.hashing import HashCache, UnionFind, map_files
from entrep.data.images import ImageError, load_rgb
from entrep.data.readers import find_split_manifests, read_dataset
from entrep.data.records import DataError, Dataset
from entrep.taxonomy import Taxonomy

log = logging.getLogger(__name__)
_LIST = 20  # groups listed per section in the summary


@dataclass(frozen=True)
class Member:
    """One image of a duplicate group."""

    dataset: str
    name: str
    label: str | None
    path: Path


@dataclass
class DuplicateGroup:
    """Images with the same (``exact``) or nearly the same (``near``) content."""

    kind: str
    members: list[Member]
    evidence: list[str] = field(default_factory=list)
    max_distance: int | None = None

    @property
    def datasets(self) -> list[str]:
        return sorted({m.dataset for m in self.members})

    @property
    def labels(self) -> list[str]:
        return sorted({m.label for m in self.members if m.label is not None})


@dataclass
class AuditReport:
    """What :func:`audit_datasets` found; ``ok`` is False on leakage, conflicts or unreadable files."""

    datasets: dict[str, int]
    unreadable: list[tuple[Member, str]]
    exact: list[DuplicateGroup]
    near: list[DuplicateGroup]
    near_threshold: int
    cos_threshold: float | None
    hide_names: bool = False

    @property
    def leakage(self) -> list[DuplicateGroup]:
        return [g for g in self.exact + self.near if len(g.datasets) > 1]

    @property
    def conflicts(self) -> list[DuplicateGroup]:
        return [g for g in self.exact if len(g.labels) > 1]

    @property
    def ok(self) -> bool:
        return not (self.leakage or self.conflicts or self.unreadable)

    # ---- rendering ---------------------------------------------------
    def _name(self, name: str) -> str:
        if not self.hide_names:
            return name
        return "img-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:10]

    def _member(self, m: Member) -> dict:
        return {"dataset": m.dataset, "file": self._name(m.name), "label": m.label}

    def _error(self, m: Member, err: str) -> str:
        if not self.hide_names:
            return err
        return err.replace(str(m.path), self._name(m.name)).replace(m.name, self._name(m.name))

    def _group(self, g: DuplicateGroup) -> dict:
        d = {"kind": g.kind, "datasets": g.datasets, "labels": g.labels,
             "members": [self._member(m) for m in g.members]}
        if g.kind == "near":
            d["evidence"] = g.evidence
            d["max_distance"] = g.max_distance
        return d

    def to_json(self) -> dict:
        leak, conf = self.leakage, self.conflicts
        return {
            "ok": self.ok,
            "names_hidden": self.hide_names,
            "settings": {"near_threshold": self.near_threshold, "cos_threshold": self.cos_threshold},
            "datasets": dict(self.datasets),
            "counts": {
                "images": sum(self.datasets.values()),
                "unreadable": len(self.unreadable),
                "exact_groups": len(self.exact),
                "exact_images": sum(len(g.members) for g in self.exact),
                "near_groups": len(self.near),
                "leakage_groups": len(leak),
                "conflicts": len(conf),
            },
            "unreadable": [dict(self._member(m), error=self._error(m, e)) for m, e in self.unreadable],
            "exact_duplicates": [self._group(g) for g in self.exact],
            "near_duplicates": [self._group(g) for g in self.near],
            "leakage": [self._group(g) for g in leak],
            "conflicts": [self._group(g) for g in conf],
        }

    def summary(self) -> str:
        """Plain-text report for a terminal."""
        sizes = ", ".join(f"{n} {k}" for n, k in self.datasets.items())
        lines = [f"audit of {len(self.datasets)} dataset(s) ({sizes} images): "
                 + ("clean" if self.ok else "PROBLEMS FOUND")]

        def show(g: DuplicateGroup) -> str:
            ms = ", ".join(f"{m.dataset}/{self._name(m.name)} ({m.label})" for m in g.members[:6])
            more = f", ... {len(g.members) - 6} more" if len(g.members) > 6 else ""
            extra = f", distance <= {g.max_distance}" if g.kind == "near" and g.max_distance is not None else ""
            how = f" [{g.kind}{': ' + '+'.join(g.evidence) if g.evidence else ''}{extra}]"
            return f"    {ms}{more}{how}"

        def section(title: str, items: list, render: Callable) -> None:
            lines.append(f"{title}: {len(items)}")
            lines.extend(render(x) for x in items[:_LIST])
            if len(items) > _LIST:
                lines.append(f"    ... {len(items) - _LIST} more (write them all with --json)")

        section("unreadable images", self.unreadable,
                lambda me: f"    {me[0].dataset}: {self._error(me[0], me[1])}")
        leak = self.leakage
        lines.append(f"leakage (duplicate groups spanning datasets): {len(leak)}")
        for pair, n in sorted(Counter(" <-> ".join(g.datasets) for g in leak).items()):
            lines.append(f"  {pair}: {n} group(s)")
        lines.extend(show(g) for g in leak[:_LIST])
        if len(leak) > _LIST:
            lines.append(f"    ... {len(leak) - _LIST} more (write them all with --json)")
        section("class conflicts (identical content, different labels)", self.conflicts, show)
        section("exact duplicate groups (identical bytes or pixels)", self.exact, show)
        section(f"near duplicate groups (pHash distance <= {self.near_threshold}"
                + (f" or cosine >= {self.cos_threshold}" if self.cos_threshold is not None else "") + ")",
                self.near, show)
        mixed = [g for g in self.near if len(g.labels) > 1]
        if mixed:
            lines.append(f"  of these, {len(mixed)} near group(s) mix labels (check them; frames of one video can)")
        return "\n".join(lines)


def audit_datasets(
    named: Mapping[str, Dataset] | Sequence[str | Path],
    *,
    near_threshold: int = 4,
    embeddings: Mapping[str, np.ndarray] | None = None,
    cos_threshold: float = 0.98,
    min_correlation: float | None = 0.99,
    hide_names: bool = False,
    taxonomy: Taxonomy | None = None,
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
    hashes: HashCache | None = None,
) -> AuditReport:
    """Audit any number of named datasets (or dataset paths) together.

    ``embeddings[name]`` (optional) holds one row per record of dataset
    ``name``. ``min_correlation`` confirms pHash matches on grey thumbnails
    (None: pHash alone). ``progress(k)`` is called as images are hashed.
    ``hashes``: the content-hash memo for file bytes (default ``HashCache()``).
    """
    if not isinstance(named, Mapping):
        named = named_datasets(named, taxonomy, skip_bad=skip_bad)
    if not named:
        raise DataError("nothing to audit: no datasets given")
    if near_threshold < 0 or near_threshold > 64:
        raise DataError(f"near threshold must be 0..64 bits, got {near_threshold}")
    members = [Member(n, r.name, r.label, r.image) for n, ds in named.items() for r in ds.records]
    results = _hash_all([m.path for m in members], progress, hashes or HashCache())

    unreadable = [(m, res) for m, res in zip(members, results) if isinstance(res, str)]
    ok_idx = [i for i, res in enumerate(results) if not isinstance(res, str)]
    uf = UnionFind(len(members))
    first: dict[str, int] = {}
    for i in ok_idx:
        uf.union(i, first.setdefault(results[i][0], i))
    # identical pixels under different bytes (re-saved files): only images sharing a pHash can be
    for key, i in _pixel_hashes(members, results, ok_idx):
        uf.union(i, first.setdefault(key, i))
    exact_comps = [c for c in uf.components(ok_idx) if len(c) > 1]
    exact = [DuplicateGroup("exact", [members[i] for i in c]) for c in exact_comps]

    # near duplicates: union near edges on top of the exact groups
    near_uf = UnionFind(len(members))
    for i in ok_idx:
        near_uf.union(i, uf.find(i))
    evidence: dict[int, set[str]] = {}
    dist: dict[int, int] = {}
    edges = []
    if len(ok_idx) > 1:
        hashes = np.array([results[i][1] for i in ok_idx], dtype=np.uint64)
        for a, b, d in hamming_pairs(hashes, near_threshold):
            # confirm: look-alike views of the same anatomy can share a 64-bit pHash, not their thumbnails
            ta, tb = results[ok_idx[a]][2], results[ok_idx[b]][2]
            if min_correlation is None or float(ta @ tb) >= min_correlation:
                edges.append((ok_idx[a], ok_idx[b], "phash", int(d)))
    cos_used = None
    if embeddings is not None:
        cos_used = float(cos_threshold)
        emb = _stack_embeddings(named, embeddings)
        edges += [(a, b, "embedding", None) for a, b in _cosine_pairs(emb, cos_used)]
    for a, b, how, d in edges:
        if isinstance(results[a], str) or isinstance(results[b], str) or uf.find(a) == uf.find(b):
            continue
        near_uf.union(a, b)
    for a, b, how, d in edges:
        if isinstance(results[a], str) or isinstance(results[b], str) or uf.find(a) == uf.find(b):
            continue
        root = near_uf.find(a)
        evidence.setdefault(root, set()).add(how)
        if d is not None:
            dist[root] = max(dist.get(root, 0), d)
    near = []
    for c in near_uf.components(ok_idx):
        if len({uf.find(i) for i in c}) > 1:
            root = near_uf.find(c[0])
            near.append(DuplicateGroup("near", [members[i] for i in c], sorted(evidence.get(root, ())),
                                       dist.get(root)))
    return AuditReport(
        datasets={n: len(ds) for n, ds in named.items()},
        unreadable=unreadable,
        exact=exact,
        near=near,
        near_threshold=near_threshold,
        cos_threshold=cos_used,
        hide_names=hide_names,
    )


def named_datasets(paths: Sequence[str | Path], taxonomy: Taxonomy | None = None, *,
                   skip_bad: bool = False) -> dict[str, Dataset]:
    """Read dataset paths under short names; a split folder becomes its train/val/test parts.

    ``skip_bad`` skips records whose file is missing; unreadable images are kept for the audit to list.
    """
    out: dict[str, Dataset] = {}
    several = len(paths) > 1

    def add(name: str, ds: Dataset) -> None:
        base, k = name, 2
        while name in out:
            name, k = f"{base}#{k}", k + 1
        out[name] = ds

    for p in paths:
        p = Path(p)
        splits = find_split_manifests(p)
        if splits:
            for split, f in splits.items():
                ds = read_dataset(f, taxonomy, skip_bad=skip_bad, check_images=False)
                add(f"{p.name}/{split}" if several else split, ds)
            continue
        name = p.parent.name if p.name.lower() in ("cls.json", "data.json") and p.parent.name else p.name
        if p.suffix.lower() in (".jsonl", ".json") and p.name.lower() not in ("cls.json", "data.json"):
            name = p.stem
        add(name or str(p), read_dataset(p, taxonomy, skip_bad=skip_bad, check_images=False))
    return out


# ---------------------------------------------------------------- hashing
def _hash_one(path: Path) -> tuple[int, np.ndarray] | str:
    """(64-bit pHash, unit-norm zero-mean 32x32 grey thumbnail), or the error text."""
    try:
        img = load_rgb(path)
    except ImageError as e:
        return str(e)
    # pHash resizes to 32x32 anyway; a box-filter reduce first gives the same bits ~10x faster
    k = min(img.size) // 128
    small = img.reduce(k) if k > 1 else img
    bits = imagehash.phash(small).hash.flatten()
    thumb = np.asarray(small.convert("L").resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32).ravel()
    thumb -= thumb.mean()
    thumb /= max(float(np.linalg.norm(thumb)), 1e-6)
    return int(np.packbits(bits).view(">u8")[0]), thumb


def _pixel_hashes(members: list[Member], results: list, ok_idx: list[int]) -> list[tuple[str, int]]:
    """(pixel hash, index) for images whose pHash equals that of a file with other bytes."""
    by_phash: dict[int, set[str]] = {}
    for i in ok_idx:
        by_phash.setdefault(results[i][1], set()).add(results[i][0])
    out = []
    for i in ok_idx:
        if len(by_phash[results[i][1]]) > 1:
            try:
                img = load_rgb(members[i].path)
            except ImageError:  # changed on disk since it was hashed
                continue
            out.append(("px:" + hashlib.sha256(f"{img.size}".encode() + img.tobytes()).hexdigest(), i))
    return out


def _hash_all(paths: list[Path], progress: Callable[[int], None] | None, memo: HashCache) -> list:
    """Per path (byte sha256, pHash, thumbnail), or the error text; byte hashes through the memo."""
    try:
        shas: list[str | None] = list(memo.sha256(paths))
    except DataError:  # some file cannot be read: hash one by one, the decoder names the problem
        shas = []
        for p in paths:
            try:
                shas.append(memo.sha256_one(p))
            except DataError:
                shas.append(None)
    out = []
    for sha, res, p in zip(shas, map_files(_hash_one, paths, progress=progress), paths):
        if isinstance(res, str):
            out.append(res)
        elif sha is None:
            out.append(f"{p}: cannot read file")
        else:
            out.append((sha, *res))
    return out


def hamming_pairs(hashes: np.ndarray, threshold: int) -> list[tuple[int, int, int]]:
    """Index pairs (i < j) of 64-bit hashes within ``threshold`` bits, by blocks of rows."""
    n = len(hashes)
    block = max(1, 4_000_000 // n)
    out = []
    for i0 in range(0, n, block):
        d = np.bitwise_count(hashes[i0:i0 + block, None] ^ hashes[None, :])
        ii, jj = np.nonzero(d <= threshold)
        keep = jj > ii + i0
        out += [(int(i + i0), int(j), int(d[i, j])) for i, j in zip(ii[keep], jj[keep])]
    return out


def _stack_embeddings(named: Mapping[str, Dataset], embeddings: Mapping[str, np.ndarray]) -> np.ndarray:
    rows = []
    for n, ds in named.items():
        if n not in embeddings:
            raise DataError(f"embeddings missing for dataset {n!r}; give one row per record of every dataset")
        e = np.asarray(embeddings[n], dtype=np.float32)
        if e.ndim != 2 or len(e) != len(ds):
            raise DataError(f"embeddings for {n!r} have shape {e.shape}; expected ({len(ds)}, dim)")
        rows.append(e)
    emb = np.concatenate(rows)
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return np.where(norm > 0, emb / np.maximum(norm, 1e-12), 0.0)


def _cosine_pairs(emb: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    n = len(emb)
    block = max(1, 4_000_000 // max(n, 1))
    out = []
    for i0 in range(0, n, block):
        s = emb[i0:i0 + block] @ emb.T
        ii, jj = np.nonzero(s >= threshold)
        keep = jj > ii + i0
        out += [(int(i + i0), int(j)) for i, j in zip(ii[keep], jj[keep])]
    return out


__all__ = ["AuditReport", "DuplicateGroup", "Member", "audit_datasets", "named_datasets"]
