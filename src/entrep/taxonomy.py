"""Class taxonomies: fine classes, official ids, coarse groups, mirror pairs, prompts.

The ENT taxonomy of the ENTRep challenge is the default. A user's own taxonomy
comes from a small YAML/JSON file (:func:`load_taxonomy`) or is inferred from
class-folder names (:func:`infer_taxonomy`). Nothing else in the package
hard-codes class names: everything asks a :class:`Taxonomy`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np


from entrep.errors import EntrepError


class TaxonomyError(EntrepError, ValueError):
    """A taxonomy file or a label that does not fit the taxonomy."""


@dataclass(frozen=True)
class Taxonomy:
    """Fine classes in official-id order, with optional groups and mirror pairs.

    ``classes[i]`` has label id ``i``. ``groups`` maps every fine class to its
    coarse group (empty: a flat taxonomy). ``mirrors`` maps a class to the class
    a horizontal flip turns it into (symmetric; classes absent are unchanged by
    a flip). ``prompts`` are the fallback descriptions used when an image has
    no caption (the paper's Table 3 for ENT).
    """

    name: str
    classes: tuple[str, ...]
    groups: Mapping[str, str] = field(default_factory=dict)
    mirrors: Mapping[str, str] = field(default_factory=dict)
    prompts: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.classes:
            raise TaxonomyError("a taxonomy needs at least one class")
        if len(set(self.classes)) != len(self.classes):
            dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise TaxonomyError(f"duplicate class names: {dup}")
        known = set(self.classes)
        for mapping, what in ((self.groups, "groups"), (self.mirrors, "mirrors"), (self.prompts, "prompts")):
            extra = set(mapping) - known
            if extra:
                raise TaxonomyError(f"{what} names unknown classes {sorted(extra)}; classes are {list(self.classes)}")
        if self.groups and set(self.groups) != known:
            missing = sorted(known - set(self.groups))
            raise TaxonomyError(f"groups must cover every class; missing {missing}")
        for a, b in self.mirrors.items():
            if b not in known:
                raise TaxonomyError(f"mirror of {a!r} is unknown class {b!r}")
            if self.mirrors.get(b) != a:
                raise TaxonomyError(f"mirror pairs must be symmetric: {a!r}->{b!r} but {b!r}->{self.mirrors.get(b)!r}")
            if a == b:
                raise TaxonomyError(f"class {a!r} cannot mirror itself; leave it out of mirrors")
            if self.groups and self.groups[a] != self.groups[b]:
                raise TaxonomyError(f"mirror pair {a!r}/{b!r} must share a group")

    # ---- ids and names -------------------------------------------------
    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def hierarchical(self) -> bool:
        """True when coarse groups exist and at least one group has >1 class."""
        return bool(self.groups) and len(self.group_names) < len(self.classes)

    def class_id(self, label: str) -> int:
        try:
            return self.classes.index(label)
        except ValueError:
            raise TaxonomyError(f"unknown label {label!r}; known labels: {', '.join(self.classes)}") from None

    def class_name(self, label_id: int) -> str:
        if not 0 <= int(label_id) < len(self.classes):
            raise TaxonomyError(f"label id {label_id} out of range 0..{len(self.classes) - 1}")
        return self.classes[int(label_id)]

    def normalise_label(self, label: str) -> str:
        """Map a user spelling ('Nose-Left', 'nose_left', ' nose left ') to a class name."""
        if label in self.classes:
            return label
        key = _label_key(label)
        for c in self.classes:
            if _label_key(c) == key:
                return c
        raise TaxonomyError(f"unknown label {label!r}; known labels: {', '.join(self.classes)}")

    # ---- groups -------------------------------------------------------
    @property
    def group_names(self) -> tuple[str, ...]:
        """Coarse groups in first-appearance order of their classes."""
        if not self.groups:
            return tuple(self.classes)
        seen: dict[str, None] = {}
        for c in self.classes:
            seen.setdefault(self.groups[c], None)
        return tuple(seen)

    def group_of(self, label: str) -> str:
        if label not in self.classes:
            raise TaxonomyError(f"unknown label {label!r}; known labels: {', '.join(self.classes)}")
        return self.groups.get(label, label)

    def members(self, group: str) -> tuple[str, ...]:
        out = tuple(c for c in self.classes if self.group_of(c) == group)
        if not out:
            raise TaxonomyError(f"unknown group {group!r}; groups are {list(self.group_names)}")
        return out

    def group_ids(self) -> np.ndarray:
        """Array mapping fine class id -> coarse group id."""
        g = self.group_names
        return np.array([g.index(self.group_of(c)) for c in self.classes], dtype=np.int64)

    # ---- mirrors ------------------------------------------------------
    def mirror_of(self, label: str) -> str:
        """The class a horizontal flip turns ``label`` into (itself if unpaired)."""
        if label not in self.classes:
            raise TaxonomyError(f"unknown label {label!r}; known labels: {', '.join(self.classes)}")
        return self.mirrors.get(label, label)

    def flip_permutation(self) -> np.ndarray:
        """perm[i] = id of the class that class i becomes under a horizontal flip."""
        return np.array([self.class_id(self.mirror_of(c)) for c in self.classes], dtype=np.int64)

    # ---- prompts ------------------------------------------------------
    def prompt(self, label: str) -> str:
        if label not in self.classes:
            raise TaxonomyError(f"unknown label {label!r}; known labels: {', '.join(self.classes)}")
        return self.prompts.get(label) or f"An endoscopic image of {label.replace('-', ' ').replace('_', ' ')}."

    # ---- serialisation --------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "groups": dict(self.groups),
            "mirrors": dict(self.mirrors),
            "prompts": dict(self.prompts),
        }

    @classmethod
    def from_dict(cls, d: Mapping, *, source: str = "taxonomy") -> "Taxonomy":
        if not isinstance(d, Mapping) or "classes" not in d:
            raise TaxonomyError(f"{source}: expected a mapping with a 'classes' list")
        classes = d["classes"]
        if isinstance(classes, Mapping):  # {id: name}
            try:
                items = sorted((int(k), str(v)) for k, v in classes.items())
            except ValueError:
                raise TaxonomyError(f"{source}: 'classes' as a mapping must be {{id: name}}") from None
            if [i for i, _ in items] != list(range(len(items))):
                raise TaxonomyError(f"{source}: class ids must be 0..N-1 without gaps")
            classes = [n for _, n in items]
        if not isinstance(classes, list) or not all(isinstance(c, str) and c.strip() for c in classes):
            raise TaxonomyError(f"{source}: 'classes' must be a list of non-empty names")
        groups = dict(d.get("groups") or {})
        # groups may also be given as {group: [classes]}
        if groups and all(isinstance(v, list) for v in groups.values()):
            groups = {c: g for g, cs in groups.items() for c in cs}
        mirrors: dict[str, str] = {}
        raw_m = d.get("mirrors") or {}
        pairs = raw_m.items() if isinstance(raw_m, Mapping) else raw_m
        for pair in pairs:
            if len(pair) != 2:
                raise TaxonomyError(f"{source}: each mirror pair needs two classes, got {pair!r}")
            a, b = pair
            mirrors[a] = b
            mirrors[b] = a
        try:
            return cls(
                name=str(d.get("name", "custom")),
                classes=tuple(classes),
                groups=groups,
                mirrors=mirrors,
                prompts=dict(d.get("prompts") or {}),
            )
        except TaxonomyError as e:
            raise TaxonomyError(f"{source}: {e}") from None


def _label_key(s: str) -> str:
    return re.sub(r"[\s_\-]+", "-", s.strip().lower())


ENT = Taxonomy(
    name="ent",
    classes=("nose-right", "nose-left", "ear-right", "ear-left", "vc-open", "vc-closed", "throat"),
    groups={
        "nose-right": "nose",
        "nose-left": "nose",
        "ear-right": "ear",
        "ear-left": "ear",
        "vc-open": "vc",
        "vc-closed": "vc",
        "throat": "throat",
    },
    mirrors={"nose-left": "nose-right", "nose-right": "nose-left", "ear-left": "ear-right", "ear-right": "ear-left"},
    prompts={
        "nose-left": "An endoscopic image of the left nasal passage.",
        "nose-right": "An endoscopic image of the right nasal passage.",
        "ear-left": "An endoscopic image of the left ear.",
        "ear-right": "An endoscopic image of the right ear.",
        "vc-open": "An endoscopic image of the vocal cords in the open state.",
        "vc-closed": "An endoscopic image of the vocal cords in the closed state.",
        "throat": "An endoscopic image of the throat region.",
    },
)


def load_taxonomy(path: str | Path) -> Taxonomy:
    """Read a taxonomy from YAML or JSON.

    Format::

        name: otoscopy
        classes: [normal, "acute otitis media", effusion, perforation]
        groups: {normal: healthy, ...}        # optional; or {group: [classes]}
        mirrors: [[ear-left, ear-right]]      # optional
        prompts: {normal: "An otoscopic image of a normal ear."}  # optional
    """
    p = Path(path)
    if p.name.lower() == "ent":
        return ENT
    from entrep.io import read_structured

    data = read_structured(p, what="taxonomy file", error=TaxonomyError)
    return Taxonomy.from_dict(data, source=str(p))


def infer_taxonomy(class_names: Iterable[str], name: str = "inferred") -> Taxonomy:
    """A taxonomy from class-folder names.

    If every name is one of the ENT classes, the ENT taxonomy is returned (with
    its official ids). Otherwise: classes sorted by name, groups from a shared
    ``group-side`` prefix, mirror pairs where names differ only by left/right.
    """
    names = sorted({str(n) for n in class_names})
    if not names:
        raise TaxonomyError("no class names to infer a taxonomy from")
    ent_keys = {_label_key(c): c for c in ENT.classes}
    if all(_label_key(n) in ent_keys for n in names):
        return ENT
    groups: dict[str, str] = {}
    mirrors: dict[str, str] = {}
    side = re.compile(r"^(?P<g>.+?)[\s_\-]+(?P<s>left|right)$", re.IGNORECASE)
    by_group: dict[str, list[str]] = {}
    for n in names:
        m = side.match(n)
        if m:
            by_group.setdefault(m.group("g"), []).append(n)
    for g, members in by_group.items():
        if len(members) == 2:
            a, b = members
            mirrors[a], mirrors[b] = b, a
            groups[a] = groups[b] = g
    if groups:
        for n in names:
            groups.setdefault(n, n)
    return Taxonomy(name=name, classes=tuple(names), groups=groups, mirrors=mirrors)
