"""What a synthetic dataset contains, decided before any pixel is drawn.

A :class:`Plan` lists every image to render (class, findings, file name, the
seed stream it is drawn from) plus the i2i pairs, t2i captions, public-release
records and held-out queries. Planning is cheap and fully determined by
``seed``; rendering then draws image ``i`` of stream ``s`` from its own
generator ``default_rng([seed, s, i])`` so any number of workers produce the
same bytes.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

import numpy as np

from entrep.data.synthetic.findings import CLASS_PHRASE, CLASS_REGION, caption_en, sample_findings
from entrep.taxonomy import ENT

log = logging.getLogger(__name__)

#: Images per class in the paper's Table 1 (training + public release, 1,857 images).
TABLE1_COUNTS: dict[str, int] = {
    "nose-left": 470, "nose-right": 453, "vc-open": 239, "vc-closed": 209,
    "ear-left": 178, "ear-right": 200, "throat": 108,
}
#: Images per class in the public release (566 images).
PUBLIC_COUNTS: dict[str, int] = {
    "nose-left": 180, "nose-right": 128, "vc-open": 80, "vc-closed": 62,
    "ear-left": 45, "ear-right": 44, "throat": 27,
}
#: i2i.json entries per training image (141 entries for 1,291 images).
I2I_ENTRY_RATE = 141 / 1291
#: t2i.json captions per training image (71 captions for 1,291 images).
T2I_RATE = 71 / 1291
#: Held-out query images per training image.
QUERY_RATE = 0.10
#: Share of held-out images used as i2i queries and as t2i targets.
QUERY_TRACK_RATE = 0.3
#: Share of public records whose Path says ``_image`` while the file is ``_Image``.
CASE_HAZARD_RATE = 0.03

STREAM_TRAIN, STREAM_PUBLIC, STREAM_QUERY = 0, 1, 2


@dataclass
class ImageSpec:
    """One image to render: its seed stream and index, class, findings and file name."""

    stream: int
    index: int
    label: str
    findings: tuple[str, ...]
    name: str = ""

    @property
    def region(self) -> str:
        return CLASS_REGION[self.label][0]


@dataclass
class PublicSpec(ImageSpec):
    """A public-release image: ``path`` is what data.json says, ``name`` the file on disk."""

    path: str = ""
    patient: str = ""


@dataclass
class Plan:
    seed: int
    train: list[ImageSpec]
    pairs: list[tuple[str, str]] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)
    public: list[PublicSpec] = field(default_factory=list)
    queries: list[ImageSpec] = field(default_factory=list)
    query_i2i: dict[str, str] = field(default_factory=dict)
    query_i2i_train: dict[str, str] = field(default_factory=dict)
    query_t2i: dict[str, str] = field(default_factory=dict)

    def all_images(self) -> list[ImageSpec]:
        return [*self.train, *self.public, *self.queries]


def allocate(n: int, weights: dict[str, int]) -> dict[str, int]:
    """Split ``n`` over classes in proportion to ``weights`` (largest remainder).

    Every class gets at least 2 images when ``n >= 14`` (1 when ``n >= 7``),
    taken from the largest classes. Keys come in the taxonomy's id order.
    """
    classes = [c for c in ENT.classes if c in weights]
    total = sum(weights[c] for c in classes)
    exact = {c: n * weights[c] / total for c in classes}
    counts = {c: int(exact[c]) for c in classes}
    rest = n - sum(counts.values())
    by_remainder = sorted(classes, key=lambda c: (-(exact[c] - counts[c]), -weights[c], ENT.class_id(c)))
    for c in by_remainder[:rest]:
        counts[c] += 1
    minimum = 2 if n >= 2 * len(classes) else 1 if n >= len(classes) else 0
    for c in classes:
        while counts[c] < minimum:
            donor = max(classes, key=lambda d: (counts[d], -ENT.class_id(d)))
            counts[donor] -= 1
            counts[c] += 1
    return counts


def _uuid_name(rng: np.random.Generator, taken: set[str]) -> str:
    while True:
        name = f"{uuid.UUID(bytes=rng.bytes(16), version=4)}.png"
        if name not in taken:
            taken.add(name)
            return name


def _specs(counts: dict[str, int], stream: int, rng: np.random.Generator, taken: set[str]) -> list[ImageSpec]:
    labels = [c for c, k in counts.items() for _ in range(k)]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    out = []
    for i, lab in enumerate(labels):
        out.append(ImageSpec(stream, i, lab, sample_findings(CLASS_REGION[lab][0], rng), _uuid_name(rng, taken)))
    return out


def pair_by_finding(specs: list[ImageSpec], target: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Up to ``target`` disjoint pairs of images of one region sharing a finding.

    Pairs may cross sides (nose-left/nose-right) or states (vc-open/vc-closed),
    as in the real i2i.json.
    """
    used: set[int] = set()
    pairs: list[tuple[int, int]] = []
    by_region: dict[str, list[int]] = {}
    for i, s in enumerate(specs):
        by_region.setdefault(s.region, []).append(i)
    for a in rng.permutation(len(specs)):
        a = int(a)
        if len(pairs) >= target:
            break
        if a in used:
            continue
        fa = set(specs[a].findings)
        cands = [b for b in by_region[specs[a].region] if b != a and b not in used and fa & set(specs[b].findings)]
        if not cands:
            continue
        b = cands[int(rng.integers(len(cands)))]
        pairs.append((a, b))
        used.update((a, b))
    if len(pairs) < target:
        log.info("only %d of %d i2i pairs share a finding", len(pairs), target)
    return pairs


def pick_captions(specs: list[ImageSpec], target: int, rng: np.random.Generator,
                  taken: set[str] | None = None) -> dict[str, str]:
    """Up to ``target`` unique English captions -> image names.

    The caption is the image's findings; when that text is already used, the
    class phrase is appended ("... in the left ear"); otherwise the image is skipped.
    """
    taken = set() if taken is None else taken
    out: dict[str, str] = {}
    for i in rng.permutation(len(specs)):
        if len(out) >= target:
            break
        s = specs[int(i)]
        base = caption_en(s.findings)
        for cap in (base, f"{base} {CLASS_PHRASE[s.label]}"):
            if cap not in taken:
                taken.add(cap)
                out[cap] = s.name
                break
    return out


def _public_specs(n: int, rng: np.random.Generator) -> list[PublicSpec]:
    """Public-release records with hospital-style names grouped by fake patient."""
    counts = allocate(n, PUBLIC_COUNTS)
    labels = [c for c, k in counts.items() for _ in range(k)]
    labels = [labels[i] for i in rng.permutation(len(labels))]
    specs: list[PublicSpec] = []
    taken: set[str] = set()
    i = 0
    while i < len(labels):
        size = int(rng.choice([1, 2, 3, 4, 5], p=[0.25, 0.3, 0.2, 0.15, 0.1]))
        patient = f"{int(rng.integers(10_000_000, 99_999_999)):08d}"
        visit = (f"23{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
                 f"{int(rng.integers(7, 18)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}"
                 f"{int(rng.integers(0, 1_000_000)):06d}")
        clinic = int(rng.integers(100, 1000))
        first = int(rng.integers(1, 4))
        for k in range(min(size, len(labels) - i)):
            lab = labels[i]
            path = f"{patient}_{visit}_{clinic}_image{first + k:02d}.png"
            if path in taken:  # astronomically unlikely; keep names unique anyway
                path = f"{patient}_{visit}_{clinic}_{i}_image{first + k:02d}.png"
            taken.add(path)
            specs.append(PublicSpec(STREAM_PUBLIC, i, lab, sample_findings(CLASS_REGION[lab][0], rng),
                                    name=path, path=path, patient=patient))
            i += 1
    n_haz = max(1, round(CASE_HAZARD_RATE * n))
    for j in sorted(rng.choice(len(specs), size=min(n_haz, len(specs)), replace=False).tolist()):
        s = specs[j]
        head, _, tail = s.path.rpartition("_image")
        s.name = f"{head}_Image{tail}"
    return specs


def _query_pairs(queries: list[ImageSpec], target: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Disjoint (query, answer) pairs of held-out images of one class sharing a finding.

    When no unpaired image of the query's class is left, a partner is re-drawn
    with that class and one of the query's findings, so even 3 held-out images
    give one i2i query.
    """
    used: set[int] = set()
    pairs: list[tuple[int, int]] = []
    for a in rng.permutation(len(queries)):
        a = int(a)
        if len(pairs) >= target or len(used) + 2 > len(queries):
            break
        if a in used:
            continue
        qa = queries[a]
        free = [b for b in range(len(queries)) if b != a and b not in used]
        same = [b for b in free if queries[b].label == qa.label]
        b = same[int(rng.integers(len(same)))] if same else free[int(rng.integers(len(free)))]
        qb = queries[b]
        if qb.label != qa.label or not set(qa.findings) & set(qb.findings):
            shared = qa.findings[int(rng.integers(len(qa.findings)))]
            qb.label = qa.label
            qb.findings = sample_findings(qa.region, rng, include=shared)
        pairs.append((a, b))
        used.update((a, b))
    return pairs


def _best_train_match(q: ImageSpec, train: list[ImageSpec], rng: np.random.Generator) -> str | None:
    """The training image of the query's class sharing most findings (random among ties)."""
    pool = [t for t in train if t.label == q.label] or [t for t in train if t.region == q.region]
    if not pool:
        return None
    fq = set(q.findings)
    score = np.array([len(fq & set(t.findings)) for t in pool])
    best = np.flatnonzero(score == score.max())
    return pool[int(best[int(rng.integers(len(best)))])].name


def make_plan(n: int, seed: int, *, public: bool = False, public_n: int | None = None,
              queries: bool = True) -> Plan:
    """Everything to render and write, determined by ``seed``."""
    rng = np.random.default_rng([seed, 7919])
    taken: set[str] = set()
    train = _specs(allocate(n, TABLE1_COUNTS), STREAM_TRAIN, rng, taken)
    plan = Plan(seed=seed, train=train)
    n_pairs = max(1, round(I2I_ENTRY_RATE * n / 2)) if n >= 2 else 0
    plan.pairs = [(train[a].name, train[b].name) for a, b in pair_by_finding(train, n_pairs, rng)]
    plan.captions = pick_captions(train, max(1, round(T2I_RATE * n)), rng)
    if public:
        m = public_n if public_n is not None else max(len(ENT.classes), round(n * sum(PUBLIC_COUNTS.values()) / 1857))
        plan.public = _public_specs(m, rng)
    if queries:
        q = max(3, round(QUERY_RATE * n))
        plan.queries = _specs(allocate(q, TABLE1_COUNTS), STREAM_QUERY, rng, taken)
        n_track = max(1, round(QUERY_TRACK_RATE * q))
        for a, b in _query_pairs(plan.queries, min(n_track, q // 2), rng):
            qa, qb = plan.queries[a], plan.queries[b]
            plan.query_i2i[qa.name] = qb.name
            match = _best_train_match(qa, train, rng)
            if match is not None:
                plan.query_i2i_train[qa.name] = match
        plan.query_t2i = pick_captions(plan.queries, n_track, rng)
    return plan
