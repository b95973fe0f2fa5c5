"""Reading taxonomies: the built-in ENT file, users' YAML/JSON files, class-folder names.

The built-in ``ent.yaml`` ships in this package and goes through the same
parser as a user's file (:meth:`Taxonomy.from_dict`), so its format is the
documented one.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Iterable

from entrep.taxonomy.core import Taxonomy, TaxonomyError, label_key

log = logging.getLogger(__name__)

#: Names of the taxonomies shipped in the package (``<name>.yaml`` next to this module).
BUILTIN = ("ent",)


@lru_cache(maxsize=None)
def builtin_taxonomy(name: str) -> Taxonomy:
    """A taxonomy shipped with entrep, by name (``ent``); read once per process."""
    if name not in BUILTIN:
        raise TaxonomyError(f"unknown built-in taxonomy {name!r}; built-in: {', '.join(BUILTIN)}")
    import yaml

    res = resources.files("entrep.taxonomy") / f"{name}.yaml"
    return Taxonomy.from_dict(yaml.safe_load(res.read_text(encoding="utf-8")), source=f"built-in {name}.yaml")


def load_taxonomy(path: str | Path) -> Taxonomy:
    """Read a taxonomy from a YAML or JSON file, or name a built-in one.

    A bare built-in name (``ent``) means the built-in taxonomy only when no
    file of that name exists; a file always wins, and the log says which was
    used. Format::

        name: otoscopy
        classes: [normal, "acute otitis media", effusion, perforation]
        groups: {normal: healthy, ...}        # optional; or {group: [classes]}
        mirrors: [[ear-left, ear-right]]      # optional
        prompts: {normal: "An otoscopic image of a normal ear."}  # optional
        synonyms: {effusion: [fluid, "middle ear fluid"]}          # optional; classes or groups
    """
    p = Path(path)
    if str(path) in BUILTIN and not p.exists():
        log.info("taxonomy %r: no such file, using the built-in %s taxonomy", str(path), path)
        return builtin_taxonomy(str(path))
    if str(path) in BUILTIN:
        log.info("taxonomy %r: reading the file %s (not the built-in taxonomy of that name)", str(path), p.resolve())
    from entrep.io import read_structured

    if not p.exists():
        raise TaxonomyError(f"{p}: cannot read taxonomy file (no such file); built-in taxonomies: {', '.join(BUILTIN)}")
    data = read_structured(p, what="taxonomy file", error=TaxonomyError)
    return Taxonomy.from_dict(data, source=str(p))


def infer_taxonomy(class_names: Iterable[str], name: str = "inferred") -> Taxonomy:
    """A taxonomy from class-folder names, saying in the log which one it chose.

    When every name is an ENT class name (any spelling) the built-in ENT
    taxonomy is used, with its official ids. Otherwise a taxonomy of exactly
    these names: classes sorted by name, and where two names differ only by a
    left/right (leading or trailing) they become a mirror pair in a shared group (so flips
    swap their labels); with no such pair the taxonomy is flat.
    """
    names = sorted({str(n) for n in class_names})
    if not names:
        raise TaxonomyError("no class names to infer a taxonomy from")
    ent = builtin_taxonomy("ent")
    ent_keys = {label_key(c) for c in ent.classes}
    if all(label_key(n) in ent_keys for n in names):
        missing = sorted(ent_keys - {label_key(n) for n in names})
        log.info("class folders %s are ENT class names: using the built-in ENT taxonomy (official ids)%s",
                 names, f"; no folder for {missing}" if missing else "")
        return ent
    groups: dict[str, str] = {}
    mirrors: dict[str, str] = {}
    side = re.compile(r"^(?:(?P<g>.+?)[\s_\-]+(?P<s>left|right)|(?P<s2>left|right)[\s_\-]+(?P<g2>.+))$",
                      re.IGNORECASE)
    by_group: dict[str, list[str]] = {}
    sides: dict[str, str] = {}
    for n in names:
        m = side.match(n)
        if m:
            g = m.group("g") or m.group("g2")
            sides[n] = (m.group("s") or m.group("s2")).lower()
            by_group.setdefault(g, []).append(n)
    for g, members in by_group.items():
        if len(members) == 2 and sides[members[0]] != sides[members[1]]:
            a, b = members
            mirrors[a], mirrors[b] = b, a
            groups[a] = groups[b] = g
    if groups:
        for n in names:
            groups.setdefault(n, n)
    log.info("class folders %s: a %s taxonomy of these names%s", names, "grouped" if groups else "flat",
             f" with mirror pairs {sorted({tuple(sorted(p)) for p in mirrors.items()})}" if mirrors else "")
    return Taxonomy(name=name, classes=tuple(names), groups=groups, mirrors=mirrors)
