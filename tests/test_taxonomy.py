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
