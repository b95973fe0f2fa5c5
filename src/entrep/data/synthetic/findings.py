"""Clinical findings per anatomical region, in English and Vietnamese.

The vocabulary mirrors the phrasing of the ENTRep annotations ("a spur on the
septum", "the tympanic membrane is intact", ...). Every finding is drawn
visibly by the renderer, drives the bilingual descriptions, the i2i pairs
(images sharing a finding) and the t2i captions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from entrep.taxonomy import ENT


@dataclass(frozen=True)
class Finding:
    """One finding: English text (the key), Vietnamese text, normal or not, exclusions."""

    en: str
    vi: str
    normal: bool = False
    excludes: tuple[str, ...] = ()
    weight: float = 1.0


def _f(en: str, vi: str, *, normal: bool = False, excludes: tuple[str, ...] = (), weight: float = 1.0) -> Finding:
    return Finding(en, vi, normal, excludes, weight)


#: Finding vocabulary per coarse group of the ENT taxonomy (order = caption order).
FINDINGS: dict[str, tuple[Finding, ...]] = {
    "nose": (
        _f("normal nasal mucosa", "niêm mạc mũi bình thường", normal=True,
           excludes=("pale mucosa", "purulent discharge", "congested mucosa"), weight=0.8),
        _f("a spur on the septum", "gai vách ngăn", weight=1.2),
        _f("deviated nasal septum", "vẹo vách ngăn", weight=0.8),
        _f("hypertrophy of the inferior turbinate", "quá phát cuốn dưới", weight=1.2),
        _f("polyp of the middle turbinate", "polyp cuốn giữa"),
        _f("pale mucosa", "niêm mạc nhợt nhạt", excludes=("congested mucosa",), weight=0.8),
        _f("congested mucosa", "niêm mạc sung huyết", weight=0.7),
        _f("purulent discharge", "dịch mủ trong hốc mũi"),
    ),
    "ear": (
        _f("the tympanic membrane is intact", "màng nhĩ còn nguyên vẹn", normal=True,
           excludes=("perforation of the tympanic membrane",), weight=1.4),
        _f("the cone of light is visualized", "thấy rõ nón sáng", normal=True,
           excludes=("retracted tympanic membrane", "perforation of the tympanic membrane"), weight=1.2),
        _f("perforation of the tympanic membrane", "thủng màng nhĩ", excludes=("retracted tympanic membrane",)),
        _f("retracted tympanic membrane", "màng nhĩ co lõm", weight=0.8),
        _f("earwax in the canal", "ráy tai trong ống tai", weight=0.9),
    ),
    "vc": (
        _f("normal vocal folds", "dây thanh bình thường", normal=True,
           excludes=("edema of the vocal folds", "vocal fold nodule"), weight=0.7),
        _f("edema of the vocal folds", "phù nề dây thanh"),
        _f("vocal fold nodule", "hạt xơ dây thanh", weight=0.9),
        _f("erythema of the arytenoid cartilages", "sụn phễu sung huyết",
           excludes=("edema and erythema of the arytenoid cartilages",)),
        _f("edema and erythema of the arytenoid cartilages", "sụn phễu phù nề, sung huyết"),
        _f("posterior commissure hypertrophy", "dày mép sau", weight=1.1),
    ),
    "throat": (
        _f("normal oropharynx", "họng bình thường", normal=True,
           excludes=("tonsillar hypertrophy", "erythema of the posterior pharyngeal wall",
                     "granular posterior pharyngeal wall", "exudate on the tonsils"), weight=0.6),
        _f("tonsillar hypertrophy", "amidan quá phát", weight=1.2),
        _f("erythema of the posterior pharyngeal wall", "thành sau họng sung huyết"),
        _f("granular posterior pharyngeal wall", "thành sau họng có nhiều hạt lympho"),
        _f("exudate on the tonsils", "amidan có chấm mủ", weight=0.7),
    ),
}

#: Every class of the ENT taxonomy -> (region, side). ``side`` is "left", "right" or None.
#: The canonical drawing is the left one; the right class is its exact mirror.
CLASS_REGION: dict[str, tuple[str, str | None]] = {
    "nose-left": ("nose", "left"),
    "nose-right": ("nose", "right"),
    "ear-left": ("ear", "left"),
    "ear-right": ("ear", "right"),
    "vc-open": ("vc", None),
    "vc-closed": ("vc", None),
    "throat": ("throat", None),
}

#: A short phrase placing a caption in its class (used to keep t2i captions unique).
CLASS_PHRASE: dict[str, str] = {
    "nose-left": "in the left nasal cavity",
    "nose-right": "in the right nasal cavity",
    "ear-left": "in the left ear",
    "ear-right": "in the right ear",
    "vc-open": "with the glottis open",
    "vc-closed": "with the glottis closed",
    "throat": "in the oropharynx",
}

if set(CLASS_REGION) != set(ENT.classes) or any(ENT.group_of(c) != r for c, (r, _) in CLASS_REGION.items()):
    raise RuntimeError("synthetic.findings is out of step with entrep.taxonomy.ENT")  # pragma: no cover
for _c, (_r, _s) in CLASS_REGION.items():
    if _s is not None and CLASS_REGION[ENT.mirror_of(_c)] != (_r, "right" if _s == "left" else "left"):
        raise RuntimeError(f"mirror of {_c} does not match its side")  # pragma: no cover

_BY_EN: dict[str, tuple[str, Finding]] = {f.en: (r, f) for r, fs in FINDINGS.items() for f in fs}


def finding(en: str) -> Finding:
    """Look up a finding by its English text."""
    try:
        return _BY_EN[en][1]
    except KeyError:
        raise KeyError(f"unknown finding {en!r}; known: {sorted(_BY_EN)}") from None


def region_of_finding(en: str) -> str:
    return _BY_EN[en][0]


def canonical_order(region: str, findings: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Findings sorted in vocabulary order (so equal sets give equal captions)."""
    order = {f.en: i for i, f in enumerate(FINDINGS[region])}
    unknown = [f for f in findings if f not in order]
    if unknown:
        raise KeyError(f"findings {unknown} are not in the {region!r} vocabulary: {sorted(order)}")
    return tuple(sorted(dict.fromkeys(findings), key=order.__getitem__))


def compatible(region: str, findings: tuple[str, ...] | list[str]) -> bool:
    """True when no finding excludes another (in either direction)."""
    s = set(findings)
    return not any(set(finding(f).excludes) & s for f in s)


def sample_findings(region: str, rng: np.random.Generator, *, include: str | None = None) -> tuple[str, ...]:
    """1-3 mutually compatible findings for one image (optionally forcing ``include``)."""
    vocab = FINDINGS[region]
    k = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.20]))
    w = np.array([f.weight for f in vocab], float)
    order = rng.choice(len(vocab), size=len(vocab), replace=False, p=w / w.sum())
    chosen: list[str] = [include] if include else []
    for i in order:
        if len(chosen) >= k:
            break
        cand = vocab[int(i)].en
        if cand not in chosen and compatible(region, chosen + [cand]):
            chosen.append(cand)
    return canonical_order(region, chosen)


def is_normal(findings: tuple[str, ...] | list[str]) -> bool:
    return all(finding(f).normal for f in findings)


def caption_en(findings: tuple[str, ...] | list[str]) -> str:
    """English caption: findings joined by ' and ' (no commas, so CSV-safe)."""
    return " and ".join(findings)


def description_en(findings: tuple[str, ...] | list[str]) -> str:
    """Public-release DescriptionEN: one finding per line, CRLF-separated."""
    return "\r\n".join(findings)


def description_vi(findings: tuple[str, ...] | list[str]) -> str:
    """Public-release Description (Vietnamese), CRLF-separated."""
    return "\r\n".join(finding(f).vi for f in findings)
