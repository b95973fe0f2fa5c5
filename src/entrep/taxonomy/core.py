"""The :class:`Taxonomy` type: fine classes, official ids, groups, mirror pairs, prompts, synonyms.

Reading taxonomies (the built-in ``ent.yaml``, users' files, class-folder
names) lives in :mod:`entrep.taxonomy.loader`. Nothing else in the package
hard-codes class names: everything asks a :class:`Taxonomy`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np


from entrep.errors import EntrepError


#: Keys of a taxonomy file, in documentation order.
FIELDS = ("name", "classes", "groups", "mirrors", "prompts", "synonyms")


class TaxonomyError(EntrepError, ValueError):
    """A taxonomy file or a label that does not fit the taxonomy."""


@dataclass(frozen=True)
class Taxonomy:
    """Fine classes in official-id order, with optional groups and mirror pairs.

    ``classes[i]`` has label id ``i``. ``groups`` maps every fine class to its
    coarse group (empty: a flat taxonomy). ``mirrors`` maps a class to the class
    a horizontal flip turns it into (symmetric; classes absent are unchanged by
    a flip). ``prompts`` are the fallback descriptions used when an image has
    no caption (the paper's Table 3 for ENT). ``synonyms`` maps a class *or a
    group* to phrases that name it in free text ("nasal" names group nose).
    Derived lookups (ids, arrays, name tokens) are computed once per instance.
    """

    name: str
    classes: tuple[str, ...]
    groups: Mapping[str, str] = field(default_factory=dict)
    mirrors: Mapping[str, str] = field(default_factory=dict)
    prompts: Mapping[str, str] = field(default_factory=dict)
    synonyms: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

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
        nameable = known | set(self.groups.values())
        for key, phrases in self.synonyms.items():
            if key not in nameable:
                raise TaxonomyError(f"synonyms name {key!r}, which is neither a class nor a group; "
                                    f"classes are {list(self.classes)}")
            if not isinstance(phrases, tuple) or not all(isinstance(p, str) and _words(p) for p in phrases):
                raise TaxonomyError(f"synonyms of {key!r} must be a list of non-empty phrases, got {phrases!r}")

    # ---- derived lookups, computed once (cached_property writes __dict__, so frozen is fine) ----
    @cached_property
    def _ids(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.classes)}

    @cached_property
    def _group_ids(self) -> np.ndarray:
        g = self.group_names
        return np.array([g.index(self.group_of(c)) for c in self.classes], dtype=np.int64)

    @cached_property
    def _flip(self) -> np.ndarray:
        return np.array([self._ids[self.mirrors.get(c, c)] for c in self.classes], dtype=np.int64)

    @cached_property
    def _synonym_words(self) -> tuple[tuple[str, frozenset[str]], ...]:
        return tuple((key, _words(p)) for key, phrases in self.synonyms.items() for p in phrases)

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
            return self._ids[label]
        except (KeyError, TypeError):
            raise TaxonomyError(f"unknown label {label!r}; known labels: {', '.join(self.classes)}") from None

    def class_name(self, label_id: int) -> str:
        if not 0 <= int(label_id) < len(self.classes):
            raise TaxonomyError(f"label id {label_id} out of range 0..{len(self.classes) - 1}")
        return self.classes[int(label_id)]

    def normalise_label(self, label: str) -> str:
        """Map a user spelling ('Nose-Left', 'nose_left', ' nose left ') to a class name."""
        if label in self.classes:
            return label
        key = label_key(label)
        for c in self.classes:
            if label_key(c) == key:
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
        """Array mapping fine class id -> coarse group id (a fresh copy of the cached array)."""
        return self._group_ids.copy()

    # ---- mirrors ------------------------------------------------------
    def mirror_of(self, label: str) -> str:
        """The class a horizontal flip turns ``label`` into (itself if unpaired)."""
        if label not in self.classes:
            raise TaxonomyError(f"unknown label {label!r}; known labels: {', '.join(self.classes)}")
        return self.mirrors.get(label, label)

    def flip_permutation(self) -> np.ndarray:
        """perm[i] = id of the class that class i becomes under a horizontal flip (a fresh copy)."""
        return self._flip.copy()

    # ---- free text and label parts ---------------------------------------
    def classes_named_in(self, text: str) -> set[str] | None:
        """Classes a free-text query names explicitly, e.g. 'left ear' -> {ear-left}.

        Every word of a class name (split on '-', '_', spaces) must occur, or
        every word of one of the class's synonyms; a group synonym stands for
        the group's name ('nasal' counts as 'nose'). A bare group ('ear') names
        all its classes. None when no class is named.
        """
        words = set(_words(text))
        direct: set[str] = set()
        for key, phrase in self._synonym_words:
            if phrase <= words:
                if key in self._ids:
                    direct.add(key)
                else:
                    words |= _words(key)
        full = direct | {c for c in self.classes if _words(c) <= words}
        if full:
            return full
        groups = {g for g in self.group_names if _words(g) <= words}
        if groups:
            return {c for g in groups for c in self.members(g)}
        return None

    def names_a_side(self, text: str) -> bool:
        """True when the text names one class of a mirror pair but not its mirror ('left ear')."""
        named = self.classes_named_in(text) or set()
        return any(self.mirror_of(c) != c and self.mirror_of(c) not in named for c in named)

    def label_parts(self, label: str) -> dict[str, str | None]:
        """Region, side and state of a fine class, derived from groups and mirrors.

        ``region`` is the class's group. The rest of the class name (its words
        that are not the group's) is a *side* when the class has a mirror
        partner (``nose-left`` -> side ``left``), else a *state* (``vc-open`` ->
        state ``open``); both are None when the group has one class (``throat``).
        """
        region = self.group_of(label)
        if len(self.members(region)) < 2:
            return {"region": region, "side": None, "state": None}
        group_words = _words(region)
        rest = "-".join(t for t in _tokens(label) if t.lower() not in group_words) or label
        if label in self.mirrors:
            return {"region": region, "side": rest, "state": None}
        return {"region": region, "side": None, "state": rest}

    # ---- prompts ------------------------------------------------------
    def prompt(self, label: str) -> str:
        if label not in self.classes:
            raise TaxonomyError(f"unknown label {label!r}; known labels: {', '.join(self.classes)}")
        return self.prompts.get(label) or f"An endoscopic image of {label.replace('-', ' ').replace('_', ' ')}."

    # ---- built-in -------------------------------------------------------
    @classmethod
    def ent(cls) -> "Taxonomy":
        """The built-in ENT taxonomy (``ent.yaml`` shipped in the package)."""
        from entrep.taxonomy.loader import builtin_taxonomy

        return builtin_taxonomy("ent")

    # ---- serialisation --------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "groups": dict(self.groups),
            "mirrors": dict(self.mirrors),
            "prompts": dict(self.prompts),
            "synonyms": {k: list(v) for k, v in self.synonyms.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping, *, source: str = "taxonomy") -> "Taxonomy":
        if not isinstance(d, Mapping) or "classes" not in d:
            raise TaxonomyError(f"{source}: expected a mapping with a 'classes' list")
        unknown = sorted(str(k) for k in d if k not in FIELDS)
        if unknown:
            raise TaxonomyError(f"{source}: unknown key(s) {unknown}; a taxonomy has {', '.join(FIELDS)}")
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
        for key in ("groups", "prompts", "synonyms"):
            if d.get(key) is not None and not isinstance(d.get(key), Mapping):
                raise TaxonomyError(f"{source}: {key!r} must be a mapping")
        raw_m = d.get("mirrors") or []
        if not isinstance(raw_m, (Mapping, list)):
            raise TaxonomyError(f"{source}: 'mirrors' must be a list of [a, b] pairs")
        groups = {str(k): v for k, v in (d.get("groups") or {}).items()}
        # groups may also be given as {group: [classes]}
        if groups and all(isinstance(v, list) for v in groups.values()):
            groups = {str(c): g for g, cs in groups.items() for c in cs}
        if not all(isinstance(v, str) for v in groups.values()):
            raise TaxonomyError(f"{source}: 'groups' must be {{class: group}} or {{group: [classes]}}")
        mirrors: dict[str, str] = {}
        pairs = raw_m.items() if isinstance(raw_m, Mapping) else raw_m
        for pair in pairs:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise TaxonomyError(f"{source}: each mirror pair needs two classes, got {pair!r}")
            a, b = (str(x) for x in pair)
            mirrors[a] = b
            mirrors[b] = a
        synonyms = {str(k): (v,) if isinstance(v, str) else tuple(v) if isinstance(v, list) else v
                    for k, v in (d.get("synonyms") or {}).items()}
        try:
            return cls(
                name=str(d.get("name", "custom")),
                classes=tuple(classes),
                groups=groups,
                mirrors=mirrors,
                prompts={str(k): str(v) for k, v in (d.get("prompts") or {}).items()},
                synonyms=synonyms,
            )
        except TaxonomyError as e:
            raise TaxonomyError(f"{source}: {e}") from None


def label_key(s: str) -> str:
    """Spelling-insensitive key of a label: case, spaces, '_' and '-' ignored."""
    return re.sub(r"[\s_\-]+", "-", s.strip().lower())


def _tokens(name: str) -> list[str]:
    return [t for t in re.split(r"[\s_\-]+", name) if t]


def _words(text: str) -> frozenset[str]:
    """Lower-cased words of a text (letters and digits, any script)."""
    return frozenset(re.findall(r"[^\W_]+", str(text).casefold()))
