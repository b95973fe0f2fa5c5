"""Property-based fuzz of every reader of user input: valid results or one-line EntrepErrors, never a traceback.

Readers: ENTRep cls.json (+ t2i.json, i2i.json), public data.json, JSONL manifests,
class folders, challenge query CSVs, taxonomy files and image bytes. Cases per
test are set by ``max_examples`` (see docs/data.md for the totals).
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from entrep.data.images import load_rgb_bytes
from entrep.data.readers import read_dataset, read_queries
from entrep.data.records import Dataset
from entrep.errors import EntrepError
from entrep.taxonomy import ENT, load_taxonomy

#: cases per test; ENTREP_FUZZ_EXAMPLES=500 for a longer run
FUZZ = settings(max_examples=int(os.environ.get("ENTREP_FUZZ_EXAMPLES", "60")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                database=None)

_names = st.sampled_from(["a.png", "b.png", "A.PNG", "imgs/a.png", "../a.png", "", " ", "[left] ear 0042.png",
                          "tai trái.png", "c.jpg", "/etc/passwd", "a.png\x00"])
_labels = st.one_of(st.sampled_from(list(ENT.classes) + ["Nose_Left", "nose up", ""]), st.text(max_size=8))
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=12))
_json = st.recursive(_scalars | _names | _labels,
                     lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6) | _names, kids,
                                                                               max_size=4),
                     max_leaves=12)


def _png_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _folder() -> tuple[tempfile.TemporaryDirectory, Path]:
    tmp = tempfile.TemporaryDirectory()
    root = Path(tmp.name)
    (root / "imgs").mkdir()
    for i, n in enumerate(("a.png", "b.png", "[left] ear 0042.png")):
        (root / "imgs" / n).write_bytes(_png_bytes(i))
    return tmp, root


def _valid_or_entrep_error(fn) -> None:
    logging.disable(logging.WARNING)
    try:
        out = fn()
    except EntrepError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "Traceback" not in msg, msg
        return
    finally:
        logging.disable(logging.NOTSET)
    if isinstance(out, Dataset):
        assert out.records and all(r.image.is_file() for r in out.records)
        assert all(r.label is None or r.label in out.taxonomy.classes for r in out.records)
        assert all(isinstance(t, str) and t for t, _ in out.text_queries)


@FUZZ
@given(cls=_json, t2i=st.one_of(st.none(), _json), i2i=st.one_of(st.none(), _json), raw=st.booleans(),
       text=st.text(max_size=40))
def test_entrep_folder(cls, t2i, i2i, raw, text):
    tmp, root = _folder()
    with tmp:
        (root / "cls.json").write_text(text if raw else json.dumps(cls), encoding="utf-8")
        if t2i is not None:
            (root / "t2i.json").write_text(json.dumps(t2i))
        if i2i is not None:
            (root / "i2i.json").write_text(json.dumps(i2i))
        _valid_or_entrep_error(lambda: read_dataset(root))


@FUZZ
@given(items=st.lists(st.dictionaries(st.sampled_from(["Path", "Classification", "DescriptionEN", "Description",
                                                        "path", "other"]), _json, max_size=4), max_size=4)
       | _json)
def test_public_data_json(items):
    tmp, root = _folder()
    with tmp:
        (root / "data.json").write_text(json.dumps(items))
        _valid_or_entrep_error(lambda: read_dataset(root / "data.json"))


_line = st.one_of(
    st.text(max_size=30),
    st.builds(json.dumps, _json),
    st.builds(lambda d: json.dumps(d), st.fixed_dictionaries(
        {"image": _names}, optional={"label": _labels | _scalars, "text": _json, "text_vi": _json, "pair": _json,
                                     "group": _json, "queries": _json})),
)


@FUZZ
@given(lines=st.lists(_line, max_size=5), taxonomy=st.one_of(st.none(), _json))
def test_manifest(lines, taxonomy):
    tmp, root = _folder()
    with tmp:
        (root / "imgs" / "m.jsonl").write_text("\n".join(lines), encoding="utf-8")
        if taxonomy is not None:
            (root / "imgs" / "taxonomy.json").write_text(json.dumps(taxonomy))
        _valid_or_entrep_error(lambda: read_dataset(root / "imgs" / "m.jsonl"))


_path_part = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=8)


@FUZZ
@given(layout=st.lists(st.tuples(_path_part, _path_part,
                                 st.sampled_from([".png", ".jpg", ".txt", ""]),
                                 st.sampled_from(["png", "garbage", "empty", "loop"])), max_size=5),
       check=st.booleans())
def test_class_folders(layout, check):
    with tempfile.TemporaryDirectory() as t:
        root = Path(t) / "data"
        root.mkdir()
        for folder, name, suffix, kind in layout:
            d = root / folder
            if folder in (".", "..") or (d.exists() and not d.is_dir()):
                continue
            d.mkdir(exist_ok=True)
            f = d / (name + suffix)
            if name in (".", "..") or os.path.lexists(f) or f.is_dir():
                continue
            if kind == "loop":
                os.symlink(f, f)
            else:
                f.write_bytes({"png": _png_bytes(), "garbage": b"not an image", "empty": b""}[kind])
        _valid_or_entrep_error(lambda: read_dataset(root, skip_bad=check, check_images=check))


@FUZZ
@given(data=st.one_of(st.binary(max_size=80), st.text(max_size=80).map(lambda s: s.encode("utf-8"))))
def test_query_csv(data):
    with tempfile.TemporaryDirectory() as t:
        p = Path(t) / "q.csv"
        p.write_bytes(data)

        def read():
            out = read_queries(p)
            assert out and all(isinstance(q, str) and q.strip() for q in out)
            return out

        _valid_or_entrep_error(read)


@FUZZ
@given(tax=_json, as_yaml=st.booleans())
def test_taxonomy_file(tax, as_yaml):
    with tempfile.TemporaryDirectory() as t:
        p = Path(t) / ("t.yaml" if as_yaml else "t.json")
        p.write_text(json.dumps(tax))  # JSON is YAML too

        def load():
            taxonomy = load_taxonomy(p)
            assert taxonomy.flip_permutation().shape == (taxonomy.n_classes,)
            return taxonomy

        _valid_or_entrep_error(load)


@FUZZ
@given(cut=st.integers(0, 200), flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
       fmt=st.sampled_from(["PNG", "JPEG", "BMP", "TIFF", "WEBP"]))
def test_image_bytes(cut, flips, fmt):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(cut).integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(buf, fmt)
    data = bytearray(buf.getvalue())
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    data = bytes(data[: max(0, len(data) - cut)])

    def load():
        im = load_rgb_bytes(data, name="fuzz.img")
        assert im.mode == "RGB" and min(im.size) > 0
        return im

    _valid_or_entrep_error(load)
