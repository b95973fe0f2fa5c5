"""Readers for every layout, against the hazards listed in shared/ENTREP_FORMAT.md."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from entrep.data.images import ImageError, load_rgb
from entrep.data.readers import read_dataset, read_datasets, read_queries
from entrep.data.records import DataError, write_manifest
from entrep.taxonomy import ENT


def _png(path, seed=0, size=(32, 24)):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(a).save(path)
    return path


def _entrep(root, n=6):
    """ENTRep training layout: cls.json + imgs/ + i2i.json (one direction only) + t2i.json."""
    classes = list(ENT.classes)
    cls = {}
    for i in range(n):
        _png(root / "imgs" / f"img{i}.png", seed=i)
        cls[f"img{i}.png"] = classes[i % len(classes)]
    cls["img1.png"] = "Nose-Left"  # user spelling, normalised
    (root / "cls.json").write_text(json.dumps(cls))
    (root / "i2i.json").write_text(json.dumps({"img0.png": "img2.png"}))
    (root / "t2i.json").write_text(json.dumps({"a spur on the septum": "img1.png",
                                               "the septum is deviated": "img1.png",
                                               "the tympanic membrane is intact": "img2.png"}))
    return root


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- ENTRep folder
@pytest.mark.parametrize("as_file", [False, True])
def test_entrep_folder_labels_pairs_captions(tmp_path, as_file):
    root = _entrep(tmp_path / "train")
    ds = read_dataset(root / "cls.json" if as_file else root)
    assert len(ds) == 6 and ds.taxonomy is ENT
    by = ds.by_name()
    assert all(r.image.is_absolute() and r.image.is_file() for r in ds)
    assert by["img0.png"].label == "nose-right" and by["img1.png"].label == "nose-left"
    # pairs are symmetric even though i2i.json lists one direction
    assert by["img0.png"].pair == "img2.png" and by["img2.png"].pair == "img0.png"
    assert by["img3.png"].pair is None
    # captions become text queries and the image's text, several joined by "; "
    assert by["img1.png"].text == "a spur on the septum; the septum is deviated"
    assert sorted(ds.text_queries) == [("a spur on the septum", "img1.png"),
                                       ("the septum is deviated", "img1.png"),
                                       ("the tympanic membrane is intact", "img2.png")]


def test_entrep_t2i_to_unknown_image_is_warned_and_dropped(tmp_path, caplog):
    root = _entrep(tmp_path / "train")
    (root / "t2i.json").write_text(json.dumps({"x": "nope.png", "y": "img0.png"}))
    with caplog.at_level(logging.WARNING):
        ds = read_dataset(root)
    assert ds.text_queries == [("y", "img0.png")]
    assert "nope.png" in caplog.text


# ---------------------------------------------------------------- public data.json
def _public(root, *, missing=False):
    _png(root / "imgs" / "17090495_2307_954_Image05.png", seed=1)  # on disk: capital I
    _png(root / "imgs" / "17090495_2307_954_Image06.png", seed=2)
    data = [
        {"Path": "17090495_2307_954_image05.png", "Classification": "nose-left", "Type": "abnormal",
         "Description": "Vách ngăn lệch\r\ncó gai vách ngăn\r\n",
         "DescriptionEN": "deviated septum\r\na spur on the septum"},
        {"Path": "17090495_2307_954_Image06.png", "Classification": "vc-open", "Type": "normal",
         "Description": "Dây thanh bình thường", "DescriptionEN": "normal vocal cords\n"},
    ]
    if missing:
        data.append({"Path": "ghost_Image07.png", "Classification": "throat", "Type": "normal",
                     "Description": "", "DescriptionEN": ""})
    (root / "data.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return root


@pytest.mark.parametrize("as_file", [False, True])
def test_public_release_findings_vietnamese_and_case_mismatch(tmp_path, caplog, as_file):
    root = _public(tmp_path / "public")
    with caplog.at_level(logging.WARNING):
        ds = read_dataset(root / "data.json" if as_file else root)
    assert [r.name for r in ds] == ["17090495_2307_954_Image05.png", "17090495_2307_954_Image06.png"]
    first = ds.records[0]
    assert first.label == "nose-left"
    assert first.text == "deviated septum; a spur on the septum"
    assert first.text_vi == "Vách ngăn lệch; có gai vách ngăn"
    assert ds.records[1].text == "normal vocal cords"
    warnings = [r for r in caplog.records if "ignoring case" in r.getMessage()]
    assert len(warnings) == 1 and "1 file name" in warnings[0].getMessage()


def test_public_release_missing_file_errors_or_skips(tmp_path, caplog):
    root = _public(tmp_path / "public", missing=True)
    with pytest.raises(DataError) as e:
        read_dataset(root)
    msg = _one_line(e)
    assert "data.json" in msg and "ghost_Image07.png" in msg and "1 image file" in msg
    with caplog.at_level(logging.WARNING):
        ds = read_dataset(root, skip_bad=True)
    assert len(ds) == 2
    assert "ghost_Image07.png" in caplog.text and "skipped 1" in caplog.text


# ---------------------------------------------------------------- class folders
def test_class_folders_with_spaces_infer_ent(tmp_path):
    for i, folder in enumerate(["nose left", "nose right", "vc open"]):
        _png(tmp_path / "data" / folder / f"a{i}.png", seed=i)
    (tmp_path / "data" / "nose left" / ".DS_Store").write_bytes(b"junk")
    _png(tmp_path / "data" / ".hidden" / "x.png", seed=9)
    ds = read_dataset(tmp_path / "data")
    assert ds.taxonomy is ENT
    assert sorted(r.label for r in ds) == ["nose-left", "nose-right", "vc-open"]


def test_class_folders_custom_taxonomy_inferred(tmp_path):
    _png(tmp_path / "oto" / "acute otitis media" / "a.png", seed=1)
    _png(tmp_path / "oto" / "normal" / "b.png", seed=2)
    _png(tmp_path / "oto" / "normal" / "sub" / "c.PNG", seed=3)
    ds = read_dataset(tmp_path / "oto")
    assert ds.taxonomy.classes == ("acute otitis media", "normal")
    assert sorted(r.label for r in ds) == ["acute otitis media", "normal", "normal"]


# ---------------------------------------------------------------- manifests
def test_manifest_round_trip_keeps_everything(tmp_path):
    ds = read_dataset(_public(tmp_path / "public"))
    src = read_dataset(_entrep(tmp_path / "train"))
    man = tmp_path / "out" / "all.jsonl"
    write_manifest(man, ds.records + src.records, text_queries=src.text_queries)
    back = read_dataset(man)
    assert back.records == ds.records + src.records
    assert sorted(back.text_queries) == sorted(src.text_queries)


def test_manifest_missing_file_named_or_skipped(tmp_path):
    a = _png(tmp_path / "a.png")
    man = tmp_path / "m.jsonl"
    man.write_text(json.dumps({"image": "a.png", "label": "throat"}) + "\n"
                   + json.dumps({"image": "gone.png", "label": "throat"}) + "\n")
    with pytest.raises(DataError) as e:
        read_dataset(man)
    assert "m.jsonl" in _one_line(e) and "gone.png" in str(e.value)
    assert [r.image for r in read_dataset(man, skip_bad=True)] == [a.resolve()]


def test_read_datasets_merges_and_requires_one_taxonomy(tmp_path):
    merged = read_datasets([_entrep(tmp_path / "train"), _public(tmp_path / "public")])
    assert len(merged) == 8 and len(merged.text_queries) == 3
    _png(tmp_path / "oto" / "normal" / "b.png")
    with pytest.raises(DataError, match="taxonomy"):
        read_datasets([tmp_path / "train", tmp_path / "oto"])


# ---------------------------------------------------------------- errors
def test_malformed_json_names_file_and_position(tmp_path):
    root = _entrep(tmp_path / "train")
    (root / "cls.json").write_text('{"img0.png": "throat",\n "img1.png" "throat"}')
    with pytest.raises(DataError) as e:
        read_dataset(root)
    msg = _one_line(e)
    assert "cls.json" in msg and "line 2 column" in msg


def test_unknown_label_names_file_label_and_known_labels(tmp_path):
    root = _entrep(tmp_path / "train")
    (root / "cls.json").write_text(json.dumps({"img0.png": "larynx"}))
    with pytest.raises(DataError) as e:
        read_dataset(root)
    msg = _one_line(e)
    assert "cls.json" in msg and "'larynx'" in msg and "nose-left" in msg and "throat" in msg


def test_missing_image_in_cls_json(tmp_path):
    root = _entrep(tmp_path / "train")
    (root / "imgs" / "img3.png").unlink()
    with pytest.raises(DataError) as e:
        read_dataset(root)
    assert "img3.png" in _one_line(e) and "cls.json" in str(e.value)
    assert len(read_dataset(root, skip_bad=True)) == 5


def test_empty_dataset_and_unknown_layout(tmp_path):
    root = _entrep(tmp_path / "train")
    (root / "cls.json").write_text("{}")
    with pytest.raises(DataError) as e:
        read_dataset(root)
    assert "no usable images" in _one_line(e)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("hi")
    with pytest.raises(DataError) as e:
        read_dataset(tmp_path / "junk")
    msg = _one_line(e)
    assert "junk" in msg and "cls.json" in msg and "data.json" in msg and "class subfolders" in msg
    with pytest.raises(DataError, match="no such file"):
        read_dataset(tmp_path / "absent")


def test_skip_bad_decodes_only_when_asked(tmp_path, caplog):
    root = _entrep(tmp_path / "train")
    bad = root / "imgs" / "img4.png"
    bad.write_bytes(bad.read_bytes()[:60])  # truncated
    ds = read_dataset(root)  # cheap: no decoding at read time
    assert len(ds) == 6
    with pytest.raises(ImageError, match="img4.png"):
        load_rgb(ds.by_name()["img4.png"].image)
    with caplog.at_level(logging.WARNING):
        ds = read_dataset(root, skip_bad=True)
    assert "img4.png" not in ds.by_name() and len(ds) == 5
    assert "img4.png" in caplog.text and "unreadable" in caplog.text


# ---------------------------------------------------------------- query CSVs
def test_queries_keep_first_line_and_handle_quotes_bom_crlf(tmp_path):
    f = tmp_path / "t2i.csv"
    f.write_bytes('\ufeffa spur on the septum\r\n"edema, erythema of the arytenoids"\r\n\r\n'
                  'cone of light, visualized\r\n'.encode("utf-8"))
    assert read_queries(f) == ["a spur on the septum", "edema, erythema of the arytenoids",
                               "cone of light, visualized"]
    g = tmp_path / "cls.csv"
    g.write_text("q1.png\nq2.png\n")
    assert read_queries(g) == ["q1.png", "q2.png"]
    (tmp_path / "empty.csv").write_text("\n\n")
    with pytest.raises(DataError) as e:
        read_queries(tmp_path / "empty.csv")
    assert "empty.csv" in _one_line(e)


# ---------------------------------------------------------------- load_rgb
@pytest.mark.parametrize("mode", ["L", "RGBA", "I;16", "P", "LA"])
def test_load_rgb_any_mode_becomes_8bit_rgb(tmp_path, mode):
    p = tmp_path / f"{mode.replace(';', '')}.png"
    if mode == "I;16":
        a = np.full((8, 10), 65535, dtype=np.uint16)
        a[:, :5] = 0
        Image.fromarray(a).save(p)  # 16-bit grayscale PNG
    elif mode == "RGBA":
        a = np.zeros((8, 10, 4), dtype=np.uint8)
        a[..., 0] = 200
        a[:, :5, 3] = 255  # left opaque red, right transparent -> black
        Image.fromarray(a, "RGBA").save(p)
    else:
        Image.fromarray(np.tile(np.arange(10, dtype=np.uint8) * 20, (8, 1)), "L").convert(mode).save(p)
    im = load_rgb(p)
    a = np.asarray(im)
    assert im.mode == "RGB" and a.shape == (8, 10, 3) and a.dtype == np.uint8
    if mode == "I;16":
        assert a[0, 0].tolist() == [0, 0, 0] and a[0, 9].tolist() == [255, 255, 255]
    if mode == "RGBA":
        assert a[0, 0].tolist() == [200, 0, 0] and a[0, 9].tolist() == [0, 0, 0]


def test_load_rgb_bad_files_one_line_naming_file(tmp_path):
    good = _png(tmp_path / "good.png", size=(64, 64))
    cases = {
        "truncated.png": good.read_bytes()[: len(good.read_bytes()) // 2],
        "empty.png": b"",
        "text.png": b"this is not an image\n",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError) as e:
            load_rgb(tmp_path / name)
        assert name in _one_line(e)
    with pytest.raises(ImageError) as e:
        load_rgb(good, max_pixels=1000)
    assert "good.png" in _one_line(e) and "64x64" in str(e.value)


# ---------------------------------------------------------------- nothing silently wrong
def test_cls_json_image_listed_twice(tmp_path, caplog):
    root = tmp_path / "d"
    _png(root / "imgs" / "a.png")
    _png(root / "imgs" / "b.png", seed=1)
    (root / "cls.json").write_text('{"a.png": "nose-left", "b.png": "throat", "a.png": "ear-left"}')
    with pytest.raises(DataError) as e:
        read_dataset(root)
    assert "a.png (nose-left vs ear-left)" in _one_line(e)
    (root / "cls.json").write_text('{"a.png": "nose-left", "b.png": "throat", "a.png": "Nose_Left"}')
    with caplog.at_level(logging.WARNING):
        ds = read_dataset(root)
    assert len(ds) == 2 and "listed twice with the same label" in caplog.text


def test_t2i_caption_repeated_keeps_every_query(tmp_path, caplog):
    root = _entrep(tmp_path / "train")
    (root / "t2i.json").write_text('{"a polyp": "img0.png", "a polyp": "img3.png"}')
    with caplog.at_level(logging.WARNING):
        ds = read_dataset(root)
    assert sorted(ds.text_queries) == [("a polyp", "img0.png"), ("a polyp", "img3.png")]
    assert "appear more than once" in caplog.text


def test_manifest_queries_as_a_string_is_one_query(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "label": "throat", "queries": "red throat"}) + "\n")
    ds = read_dataset(tmp_path / "m.jsonl")
    assert ds.text_queries == [("red throat", "a.png")]
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": "a.png", "label": "throat", "queries": {"x": 1}}) + "\n")
    with pytest.raises(DataError) as e:
        read_dataset(tmp_path / "m.jsonl")
    assert "m.jsonl:1: 'queries' must be a list" in _one_line(e)


def test_list_valued_descriptions_are_joined(tmp_path):
    _png(tmp_path / "a.png")
    data = [{"Path": "a.png", "Classification": "throat", "DescriptionEN": ["red mucosa", "  ", "no ulcer"],
             "Description": ["niêm mạc đỏ", "không loét"]}]
    (tmp_path / "data.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    r = read_dataset(tmp_path).records[0]
    assert r.text == "red mucosa; no ulcer" and r.text_vi == "niêm mạc đỏ; không loét"
    data[0]["DescriptionEN"] = {"en": "x"}
    (tmp_path / "data.json").write_text(json.dumps(data))
    with pytest.raises(DataError) as e:
        read_dataset(tmp_path)
    assert "a.png: a description must be text" in _one_line(e)


def test_class_folders_with_symlink_loops_and_markup_names(tmp_path, caplog):
    import os

    root = tmp_path / "folders"
    _png(root / "left ear" / "[left] ear 0042.png")
    _png(root / "right ear" / "b.png", seed=1)
    os.symlink(root / "left ear" / "loop.png", root / "left ear" / "loop.png")  # a link to itself
    os.symlink(root, root / "right ear" / "again")  # a folder link back up: not followed
    with caplog.at_level(logging.WARNING):
        ds = read_dataset(root)
    assert sorted(r.name for r in ds) == ["[left] ear 0042.png", "b.png"]
    assert "loop.png" in caplog.text and "symlink loops" in caplog.text
    assert ds.taxonomy.mirror_of("left ear") == "right ear"


def test_vietnamese_names_match_across_unicode_normalisations(tmp_path):
    import unicodedata

    nfd = unicodedata.normalize("NFD", "tai_trái_01.png")
    _png(tmp_path / "imgs" / nfd)
    (tmp_path / "cls.json").write_text(json.dumps({unicodedata.normalize("NFC", "tai_trái_01.png"): "ear-left"}))
    assert [r.image.name for r in read_dataset(tmp_path)] == [nfd]


def test_query_csv_header_row_is_skipped_with_a_warning(tmp_path, caplog):
    p = tmp_path / "q.csv"
    p.write_text("query\na polyp in the nose\n")
    with caplog.at_level(logging.WARNING):
        assert read_queries(p) == ["a polyp in the nose"]
    assert "looks like a column header" in caplog.text
    p.write_text("query\n")
    with pytest.raises(DataError, match="q.csv: query file is empty"):
        read_queries(p)
