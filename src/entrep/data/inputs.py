"""Parsing and checking the JSON files users give (cls.json, i2i.json, t2i.json, data.json).

Every problem is one line naming the file (and the image or entry), or a
warning where users want the data read anyway. Shared by the readers.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from entrep.data.records import DataError
from entrep.taxonomy import Taxonomy, TaxonomyError

log = logging.getLogger("entrep.data.readers")

#: How many names an error or warning lists.
SHOW = 5


class JsonObject(dict):
    """A JSON object that remembers keys the file repeats (``json`` keeps only the last)."""

    def __init__(self, pairs: list[tuple[str, Any]]):
        super().__init__()
        self.repeated: dict[str, list[Any]] = {}
        for k, v in pairs:
            if k in self:
                self.repeated.setdefault(k, [self[k]]).append(v)
                continue  # the first occurrence wins; callers decide whether a repeat is an error
            self[k] = v


def load_json(p: Path) -> Any:
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"{p}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text (byte {e.start})") from None
    try:
        return json.loads(text, object_pairs_hook=JsonObject)
    except json.JSONDecodeError as e:
        raise DataError(f"{p}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise DataError(f"{p}: malformed JSON (nested too deeply)") from None


def repeated_keys(data: Any) -> dict[str, list[Any]]:
    return getattr(data, "repeated", {}) or {}


def _label_or_self(tax: Taxonomy, label: str) -> str:
    try:
        return tax.normalise_label(label)
    except TaxonomyError:
        return label


def check_repeated_labels(p: Path, data: Any, tax: Taxonomy) -> None:
    """cls.json naming one image twice: an error with two labels, a warning with the same one."""
    rep = repeated_keys(data)
    conflicts = []
    for name, labels in rep.items():
        distinct = list(dict.fromkeys(str(lab) for lab in labels))
        if len({_label_or_self(tax, x) for x in distinct}) > 1:
            conflicts.append(f"{show_name(name)} ({' vs '.join(show_name(x) for x in distinct)})")
    if conflicts:
        raise DataError(f"{p}: {len(conflicts)} image(s) listed twice with different labels: "
                        f"{', '.join(conflicts[:SHOW])}; keep one label per image")
    if rep:
        log.warning("%s: %d image(s) listed twice with the same label: %s", p, len(rep),
                    ", ".join(list(rep)[:SHOW]))


def check_str_map(p: Path, data: Any, shape: str) -> None:
    if not isinstance(data, dict):
        raise DataError(f"{p}: expected a JSON object {shape}, got {type(data).__name__}")
    for k, v in data.items():
        if not isinstance(v, str):
            raise DataError(f"{p}: value for {k!r} must be a string, got {json.dumps(v)[:40]}")


def show_name(text: str) -> str:
    """A name as it can appear in a one-line message (control characters escaped)."""
    return text if text.isprintable() else repr(text)


def label_of(source: Path, tax: Taxonomy, label: str, name: str) -> str:
    try:
        return tax.normalise_label(label)
    except TaxonomyError:
        raise DataError(
            f"{source}: {show_name(name)}: unknown label {label!r}; known labels: {', '.join(tax.classes)}"
            " (pass --taxonomy FILE for other classes)"
        ) from None


def warn_unknown(p: Path, names: set[str], known: dict[str, str]) -> None:
    unknown = sorted(n for n in names if n not in known)
    if unknown:
        log.warning("%s: %d name(s) not in cls.json ignored: %s", p, len(unknown), ", ".join(unknown[:SHOW]))


def findings_text(v: Any, source: Path, name: str) -> str | None:
    """Several findings (separated by CRLF/LF, or a JSON list of strings) -> one string joined by '; '."""
    if v is None:
        return None
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        v = "\n".join(v)
    if not isinstance(v, str):
        raise DataError(f"{source}: {show_name(name)}: a description must be text or a list of texts, "
                        f"got {json.dumps(v, ensure_ascii=False)[:40]}")
    parts = [s.strip() for s in re.split(r"\r\n|\r|\n", v)]
    return "; ".join(s for s in parts if s) or None


def handle_missing(source: Path, missing: list[str], skip_bad: bool) -> None:
    if not missing:
        return
    shown = ", ".join(show_name(m) for m in missing[:SHOW]) + (", ..." if len(missing) > SHOW else "")
    if not skip_bad:
        raise DataError(f"{source}: {len(missing)} image file(s) not found: {shown} (use --skip-bad to skip them)")
    log.warning("%s: skipped %d record(s) whose image file is missing: %s", source, len(missing), shown)


__all__ = ["SHOW", "JsonObject", "check_repeated_labels", "check_str_map", "findings_text", "handle_missing",
           "label_of", "load_json", "repeated_keys", "show_name", "warn_unknown"]
