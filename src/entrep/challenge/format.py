"""ENTRep challenge submissions: ONE JSON file at the root of a zip.

- Track 1 (classification): ``{"<image>.png": <label id int>, ...}``
- Track 2 (image -> image):  ``{"<query>.png": "<retrieved image>.png", ...}``
- Track 3 (text -> image):   ``{"<caption>": "<retrieved image>.png", ...}``

:func:`write_submission` validates the answers and writes the zip atomically
(UTF-8 JSON, non-ASCII kept as is). :func:`check_submission` lists everything
wrong with a zip against the query list before it is uploaded; an empty list
means valid. Query CSVs are header-less (:func:`read_query_csv`); a query
listed twice is answered once, since JSON keys are unique.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from entrep.data.records import DataError
from entrep.errors import UserError
from entrep.io import atomic_path

log = logging.getLogger(__name__)

TRACKS = {1: "classification", 2: "image->image retrieval", 3: "text->image retrieval"}
DEFAULT_JSON_NAMES = {1: "cls.json", 2: "i2i.json", 3: "t2i.json"}  # named like the query CSVs
_SHOW = 5  # examples shown per problem


def _track(track) -> int:
    if isinstance(track, bool) or track not in TRACKS:
        raise UserError(f"track must be one of {sorted(TRACKS)} ({', '.join(f'{k}: {v}' for k, v in TRACKS.items())}), got {track!r}")
    return int(track)


def _examples(xs: list) -> str:
    shown = ", ".join(repr(x) for x in xs[:_SHOW])
    return shown + (f" and {len(xs) - _SHOW} more" if len(xs) > _SHOW else "")


def unique_queries(queries: Iterable[str], *, source: str | Path | None = None) -> list[str]:
    """Queries in order with repeats dropped (each is answered once); logs a warning naming the repeats."""
    seen: dict[str, int] = {}
    for q in queries:
        seen[q] = seen.get(q, 0) + 1
    dups = [q for q, c in seen.items() if c > 1]
    if dups:
        where = f"{source}: " if source else ""
        log.warning("%s%d queries are listed more than once and will be answered once: %s", where, len(dups), _examples(dups))
    return list(seen)


def read_query_csv(csv_path: str | Path) -> list[str]:
    """Read a header-less challenge query CSV (the first line is a query) and drop repeats with a warning."""
    from entrep.data.readers import read_queries  # lazy: keeps submit importable without the readers' deps

    return unique_queries(read_queries(csv_path), source=csv_path)


def _answer_problems(track: int, answers: Mapping, n_classes: int) -> list[str]:
    """Problems with the answer values and keys themselves (not coverage of the queries)."""
    problems: list[str] = []
    bad_keys = [k for k in answers if not isinstance(k, str) or not k.strip()]
    if bad_keys:
        problems.append(f"keys must be non-empty query strings; bad keys: {_examples(bad_keys)}")
    if track == 1:
        not_int = [k for k, v in answers.items() if isinstance(v, bool) or not isinstance(v, int)]
        skip = set(not_int)
        out_of_range = [k for k, v in answers.items() if k not in skip and not 0 <= v < n_classes]
        if not_int:
            problems.append(f"Track 1 answers must be integer label ids; {len(not_int)} are not, e.g. "
                            + ", ".join(f"{k!r}: {answers[k]!r}" for k in not_int[:_SHOW]))
        if out_of_range:
            problems.append(f"Track 1 label ids must be in 0..{n_classes - 1}; {len(out_of_range)} are not, e.g. "
                            + ", ".join(f"{k!r}: {answers[k]!r}" for k in out_of_range[:_SHOW]))
    else:
        not_name = [k for k, v in answers.items() if not isinstance(v, str) or not v.strip()]
        if not_name:
            problems.append(f"Track {track} answers must be one retrieved image file name (a string) per query; "
                            f"{len(not_name)} are not, e.g. " + ", ".join(f"{k!r}: {answers[k]!r}" for k in not_name[:_SHOW]))
    return problems


def _coerce(track: int, answers: Mapping) -> dict:
    """numpy integers -> int for Track 1, paths -> file names for Tracks 2/3; other values unchanged."""
    out: dict[Any, Any] = {}
    for k, v in answers.items():
        if track == 1 and not isinstance(v, bool) and hasattr(v, "__index__") and not isinstance(v, int):
            v = int(v.__index__())
        elif track != 1 and isinstance(v, os.PathLike):
            v = Path(v).name
        out[k] = v
    return out


def write_submission(track: int, answers: Mapping, out_zip: str | Path, *, json_name: str | None = None,
                     n_classes: int = 7) -> Path:
    """Write ``answers`` as a challenge submission zip holding one JSON file; returns the zip path.

    ``json_name`` defaults to cls.json / i2i.json / t2i.json (Track 1 / 2 / 3).
    Invalid answers (non-int or out-of-range label ids, non-string image names)
    raise UserError before anything is written.
    """
    track = _track(track)
    if not isinstance(answers, Mapping):
        raise UserError(f"answers must be a dict of query -> answer, got {type(answers).__name__}")
    if not answers:
        raise UserError("no answers to write; the submission would be empty")
    name = json_name if json_name is not None else DEFAULT_JSON_NAMES[track]
    if not name.lower().endswith(".json") or "/" in name or "\\" in name or name.startswith("."):
        raise UserError(f"json_name must be a plain file name ending in .json, got {name!r}")
    answers = _coerce(track, answers)
    problems = _answer_problems(track, answers, n_classes)
    if problems:
        raise UserError(f"cannot write Track {track} submission {out_zip}: " + "; ".join(problems))
    data = (json.dumps(answers, ensure_ascii=False, indent=1) + "\n").encode("utf-8")
    out_zip = Path(out_zip)
    if out_zip.suffix.lower() != ".zip":
        log.warning("%s: submission archives are usually named *.zip", out_zip)
    with atomic_path(out_zip) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            info = zipfile.ZipInfo(name, date_time=time.localtime()[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    log.info("wrote Track %d submission with %d answers to %s (%s)", track, len(answers), out_zip, name)
    return out_zip


class _DuplicateKeys(dict):
    """json object_pairs_hook result that remembers keys seen twice."""

    duplicates: list[str]


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict:
    d = _DuplicateKeys()
    d.duplicates = []
    for k, v in pairs:
        if k in d:
            d.duplicates.append(k)
        d[k] = v
    return d


def _load_single_json(zip_path: Path) -> tuple[dict | None, list[str]]:
    """(parsed JSON object or None, structural problems) for a submission zip."""
    if not zip_path.is_file():
        return None, [f"{zip_path}: file not found"]
    try:
        with zipfile.ZipFile(zip_path) as z:
            infos = z.infolist()
            files = [i.filename for i in infos if not i.is_dir()]
            root_json = [n for n in files if "/" not in n and n.lower().endswith(".json")]
            nested_json = [n for n in files if "/" in n and n.lower().endswith(".json")]
            other = [i.filename for i in infos if i.filename not in root_json]
            problems = []
            if not root_json:
                hint = f"; found {_examples(nested_json)} inside a folder: put the JSON at the zip root" if nested_json else ""
                return None, [f"{zip_path}: no JSON file at the zip root{hint}"]
            if len(root_json) > 1:
                return None, [f"{zip_path}: {len(root_json)} JSON files at the zip root ({_examples(root_json)}); "
                              "a submission holds exactly one"]
            if other:
                problems.append(f"{zip_path}: unexpected entries besides {root_json[0]!r}: {_examples(other)}; "
                                "a submission holds only the one JSON file")
            raw = z.read(root_json[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
        return None, [f"{zip_path}: not a readable zip archive ({e})"]
    member = f"{zip_path}:{root_json[0]}"
    if raw.startswith(b"\xef\xbb\xbf"):
        problems.append(f"{member}: starts with a UTF-8 byte-order mark; write it without one")
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, problems + [f"{member}: not UTF-8 text (byte {e.start})"]
    try:
        obj = json.loads(text, object_pairs_hook=_pairs_hook)
    except json.JSONDecodeError as e:
        return None, problems + [f"{member}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})"]
    if not isinstance(obj, dict):
        return None, problems + [f"{member}: the JSON must be one object mapping query -> answer, got a {type(obj).__name__}"]
    if getattr(obj, "duplicates", None):
        problems.append(f"{member}: keys appear more than once: {_examples(sorted(set(obj.duplicates)))}")
    return dict(obj), problems


def read_submission(zip_path: str | Path) -> dict:
    """The answers dict inside a submission zip; DataError naming the zip if it is not one JSON object at the root."""
    zip_path = Path(zip_path)
    obj, problems = _load_single_json(zip_path)
    if obj is None:
        raise DataError(problems[-1])
    return obj


def check_submission(zip_path: str | Path, track: int, queries: list[str], *,
                     image_names: set[str] | None = None, n_classes: int = 7) -> list[str]:
    """Everything wrong with a submission zip, one line per problem; an empty list means valid.

    Checks: the file is a zip holding exactly one JSON file at its root and
    nothing else; the JSON is UTF-8, well-formed, an object without repeated
    keys; it answers every query (repeats in ``queries`` count once) and
    nothing else; Track 1 values are integer label ids in 0..n_classes-1;
    Track 2/3 values are image file names, and in ``image_names`` when given.
    """
    track = _track(track)
    zip_path = Path(zip_path)
    obj, problems = _load_single_json(zip_path)
    if obj is None:
        return problems
    qs = unique_queries(queries)
    qset = set(qs)
    missing = [q for q in qs if q not in obj]
    extra = [k for k in obj if k not in qset]
    if missing:
        problems.append(f"{zip_path}: {len(missing)} of {len(qs)} queries have no answer: {_examples(missing)}")
    if extra:
        problems.append(f"{zip_path}: {len(extra)} answers are for keys that are not queries: {_examples(extra)}")
    problems += [f"{zip_path}: {p}" for p in _answer_problems(track, obj, n_classes)]
    if track != 1 and image_names is not None:
        unknown = sorted({v for v in obj.values() if isinstance(v, str) and v not in image_names})
        if unknown:
            problems.append(f"{zip_path}: {len(unknown)} retrieved images are not among the {len(image_names)} "
                            f"test images: {_examples(unknown)}")
    return problems
