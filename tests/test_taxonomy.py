"""The ENT taxonomy and user taxonomies (files and class-folder names)."""

import json

import pytest

from entrep.taxonomy import ENT, TaxonomyError, infer_taxonomy, load_taxonomy


def test_ent_official_ids_groups_and_mirrors():
    assert [ENT.class_id(c) for c in ("nose-right", "nose-left", "ear-right", "ear-left", "vc-open", "vc-closed", "throat")] == list(range(7))
    assert ENT.group_names == ("nose", "ear", "vc", "throat")
    assert ENT.mirror_of("nose-left") == "nose-right"
    assert ENT.mirror_of("ear-right") == "ear-left"
    assert ENT.mirror_of("vc-open") == "vc-open"  # a state, not a side
    assert ENT.mirror_of("throat") == "throat"
    assert ENT.prompt("nose-left") == "An endoscopic image of the left nasal passage."
    assert ENT.flip_permutation().tolist() == [1, 0, 3, 2, 4, 5, 6]


def test_label_errors_name_the_label_and_the_known_ones():
    with pytest.raises(TaxonomyError, match="unknown label 'nose-up'.*nose-right"):
        ENT.class_id("nose-up")
    assert ENT.normalise_label(" Nose_Left ") == "nose-left"


def test_user_taxonomy_from_yaml_with_spaces_and_group_lists(tmp_path):
    p = tmp_path / "otoscopy.yaml"
    p.write_text(
        "name: otoscopy\n"
        "classes: [normal, acute otitis media, chronic otitis media, earwax plug]\n"
        "groups: {healthy: [normal, earwax plug], otitis: [acute otitis media, chronic otitis media]}\n"
        "prompts: {normal: An otoscopic image of a normal ear.}\n"
    )
    t = load_taxonomy(p)
    assert t.classes[1] == "acute otitis media"
    assert t.group_of("chronic otitis media") == "otitis"
    assert t.hierarchical
    assert t.prompt("normal") == "An otoscopic image of a normal ear."
    assert "acute otitis media" in t.prompt("acute otitis media")
    assert t.flip_permutation().tolist() == [0, 1, 2, 3]


def test_taxonomy_file_errors(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text("{not json")
    with pytest.raises(TaxonomyError, match="t.json: malformed"):
        load_taxonomy(bad)
    bad.write_text(json.dumps({"classes": ["a", "b"], "mirrors": [["a", "c"]]}))
    with pytest.raises(TaxonomyError, match="unknown"):
        load_taxonomy(bad)
    with pytest.raises(TaxonomyError, match="cannot read"):
        load_taxonomy(tmp_path / "missing.yaml")


def test_infer_from_folder_names():
    assert infer_taxonomy(["nose-left", "Nose_Right", "throat"]) is ENT
    t = infer_taxonomy(["knee left", "knee right", "hip"])
    assert t.mirror_of("knee left") == "knee right"
    assert t.group_of("knee left") == "knee" and t.hierarchical
    flat = infer_taxonomy(["normal", "acute otitis media", "effusion", "perforation"])
    assert not flat.hierarchical and flat.mirrors == {}


def test_builtin_ent_is_the_shipped_file_through_the_user_loader(tmp_path, caplog):
    from entrep.taxonomy import Taxonomy

    assert Taxonomy.ent() is ENT and load_taxonomy("ent") is ENT
    # the built-in file round-trips through the same parser users' files go through
    p = tmp_path / "copy.json"
    p.write_text(json.dumps(ENT.to_dict()))
    assert load_taxonomy(p) == ENT


def test_a_file_named_ent_is_read_not_replaced_by_the_builtin(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ent").write_text("classes: [cat, dog]\n")
    t = load_taxonomy("ent")
    assert t.classes == ("cat", "dog")
    with pytest.raises(TaxonomyError, match="no such file.*built-in taxonomies: ent"):
        load_taxonomy(tmp_path / "sub" / "ent")


def test_infer_says_which_taxonomy_it_chose(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="entrep.taxonomy"):
        infer_taxonomy(["nose-left", "nose-right"])
        infer_taxonomy(["cat", "dog"])
    text = caplog.text
    assert "built-in ENT taxonomy" in text and "no folder for" in text
    assert "flat taxonomy" in text


def test_text_naming_classes_groups_and_sides():
    assert ENT.classes_named_in("a perforation in the left ear") == {"ear-left"}
    assert ENT.classes_named_in("nasal polyp") == {"nose-left", "nose-right"}
    assert ENT.classes_named_in("Vocal cords, OPEN") == {"vc-open"}
    assert ENT.classes_named_in("a spur on the septum") is None
    assert ENT.names_a_side("left nostril") and not ENT.names_a_side("nasal polyp")
    assert not ENT.names_a_side("vocal cords open")  # a state, not a side
    assert ENT.synonyms["nose"] == ("nasal", "nostril")


def test_user_synonyms_name_classes_and_groups():
    from entrep.taxonomy import Taxonomy

    t = Taxonomy.from_dict({"classes": ["normal", "effusion", "perforation"],
                            "synonyms": {"effusion": ["middle ear fluid"], "perforation": "hole"}})
    assert t.classes_named_in("fluid in the middle ear") == {"effusion"}
    assert t.classes_named_in("a small hole") == {"perforation"}
    assert t.classes_named_in("ear fluid") is None  # every word of a phrase must occur
    with pytest.raises(TaxonomyError, match="neither a class nor a group"):
        Taxonomy.from_dict({"classes": ["a"], "synonyms": {"b": ["x"]}})
    with pytest.raises(TaxonomyError, match="'synonyms' must be a mapping"):
        Taxonomy.from_dict({"classes": ["a"], "synonyms": ["x"]})


def test_label_parts_region_side_state():
    assert ENT.label_parts("nose-left") == {"region": "nose", "side": "left", "state": None}
    assert ENT.label_parts("vc-closed") == {"region": "vc", "side": None, "state": "closed"}
    assert ENT.label_parts("throat") == {"region": "throat", "side": None, "state": None}
    flat = infer_taxonomy(["cat", "dog"])
    assert flat.label_parts("cat") == {"region": "cat", "side": None, "state": None}


def test_derived_arrays_are_cached_but_callers_get_copies():
    a = ENT.flip_permutation()
    a[0] = 99
    assert ENT.flip_permutation()[0] == 1
    assert ENT.group_ids().tolist() == [0, 0, 1, 1, 2, 2, 3]


def test_wrongly_typed_taxonomy_fields_are_one_line_errors():
    from entrep.taxonomy import Taxonomy

    for bad in ({"classes": ["a", "b"], "groups": ["a"]}, {"classes": ["a", "b"], "mirrors": "a,b"},
                {"classes": ["a", "b"], "mirrors": [["a"]]}, {"classes": ["a", "b"], "groups": {"a": 1, "b": 2}},
                {"classes": "a b"}, {"classes": []}):
        with pytest.raises(TaxonomyError):
            Taxonomy.from_dict(bad, source="t.yaml")


def test_infer_pairs_only_a_left_with_a_right():
    t = infer_taxonomy(["left ear", "right ear", "knee-left", "knee_left"])
    assert t.mirror_of("left ear") == "right ear"
    assert t.mirror_of("knee-left") == "knee-left"  # two spellings of one side are no mirror pair


def test_a_misspelt_key_is_an_error_not_ignored(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("classes: [a-left, a-right]\nmirror: [[a-left, a-right]]\n")
    with pytest.raises(TaxonomyError, match=r"t.yaml: unknown key\(s\) \['mirror'\]; a taxonomy has name, classes"):
        load_taxonomy(p)
