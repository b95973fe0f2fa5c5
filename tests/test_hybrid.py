"""Hybrid decision path and flip-TTA maths against hand-computed values."""

import numpy as np
import pytest

from entrep.classify.hybrid import flat_decide, flip_tta, hierarchical_decide, subset_permutation, tune_threshold
from entrep.taxonomy import ENT


def test_flip_tta_swaps_mirror_columns():
    # classes: left, right, throat; a flip swaps left/right
    perm = np.array([1, 0, 2])
    p = np.array([[0.7, 0.2, 0.1]])
    p_flip = np.array([[0.1, 0.8, 0.1]])  # flipped image looks right -> original looks left
    out = flip_tta(p, p_flip, perm)
    np.testing.assert_allclose(out, [[0.75, 0.15, 0.1]])
    np.testing.assert_allclose(out.sum(1), 1.0)


def test_flip_tta_is_symmetric_for_a_perfectly_mirrored_pair():
    perm = np.array([1, 0])
    p = np.array([[0.9, 0.1]])
    np.testing.assert_allclose(flip_tta(p, p[:, perm], perm), p)


def test_flip_tta_rejects_bad_permutation():
    with pytest.raises(ValueError):
        flip_tta(np.ones((1, 2)) / 2, np.ones((1, 2)) / 2, np.array([0, 0]))


def test_subset_permutation_for_ent_groups():
    full = ENT.flip_permutation()
    nose = [ENT.class_id("nose-right"), ENT.class_id("nose-left")]
    vc = [ENT.class_id("vc-open"), ENT.class_id("vc-closed")]
    assert subset_permutation(nose, full).tolist() == [1, 0]
    assert subset_permutation(vc, full).tolist() == [0, 1]  # a flip keeps the vc state


def _ent_members():
    return [[ENT.class_id(c) for c in ENT.members(g)] for g in ENT.group_names]


def test_hierarchical_uses_prototype_when_confident_and_head_otherwise():
    members = _ent_members()  # nose, ear, vc, throat
    proto = np.array([[0.995, 0.005, 0, 0], [0.6, 0.4, 0, 0]])
    head = np.array([[0.1, 0.9, 0, 0], [0.2, 0.8, 0, 0]])
    within = {0: np.array([[0.3, 0.7], [0.5, 0.5]]), 1: np.array([[0.4, 0.6], [0.9, 0.1]]),
              2: np.full((2, 2), 0.5)}
    d = hierarchical_decide(proto, head, within, members, 7, threshold=0.99)
    # row 0: prototype confident -> nose; nose head says 0.7 for nose-left
    assert d.from_prototype.tolist() == [True, False]
    assert ENT.class_name(d.fine[0]) == "nose-left"
    assert d.confidence[0] == pytest.approx(0.995 * 0.7)
    # row 1: prototype unsure -> coarse head says ear; ear head says ear-right (0.9)
    assert ENT.class_name(d.fine[1]) == "ear-right"
    assert d.group[1] == 1
    assert d.confidence[1] == pytest.approx(0.8 * 0.9)


def test_single_class_group_needs_no_head():
    members = _ent_members()
    proto = np.array([[0, 0, 0, 1.0]])
    d = hierarchical_decide(proto, proto, {0: np.full((1, 2), .5), 1: np.full((1, 2), .5), 2: np.full((1, 2), .5)},
                            members, 7, threshold=0.99)
    assert ENT.class_name(d.fine[0]) == "throat"
    assert d.confidence[0] == pytest.approx(1.0)


def test_fine_class_is_chosen_inside_the_chosen_group():
    # group probabilities favour ear (0.55) although nose's best class has a higher joint probability? no:
    # the fine class must come from the chosen group even if another group's single class scores higher
    members = [[0, 1], [2]]
    proto = np.array([[0.55, 0.45]])
    d = hierarchical_decide(proto, proto, {0: np.array([[0.5, 0.5]])}, members, 3, threshold=0.5)
    assert d.group[0] == 0 and d.fine[0] in (0, 1)


def test_flat_decide():
    proto = np.array([[0.995, 0.005], [0.6, 0.4]])
    head = np.array([[0.1, 0.9], [0.1, 0.9]])
    d = flat_decide(proto, head, 0.99)
    assert d.fine.tolist() == [0, 1]
    assert d.from_prototype.tolist() == [True, False]


def test_tune_threshold_picks_best_accuracy_and_prefers_higher_on_ties():
    conf = np.array([0.999, 0.98, 0.95, 0.9])
    proto_ok = np.array([True, True, False, False])
    head_ok = np.array([False, False, True, True])
    t = tune_threshold(proto_ok, head_ok, conf)
    assert t == pytest.approx(0.98)  # use prototypes for the two confident rows only
    # when prototypes never help, never use them
    assert tune_threshold(np.zeros(4, bool), np.ones(4, bool), conf) > 1.0


def test_side_free_text_rankings_show_both_sides_early():
    from entrep.retrieval.search import diversify_sides

    ranked = ["nose-left", "nose-left", "nose-left", "nose-right", "throat"]
    assert diversify_sides(ranked, ENT) == [0, 3, 1, 2, 4]
    assert diversify_sides(["vc-open", "vc-open", "vc-closed"], ENT) == [0, 1, 2]  # states are not sides
    assert diversify_sides(["nose-left", "nose-right", "nose-left"], ENT) == [0, 1, 2]
    assert ENT.names_a_side("perforation in the left ear")
    assert not ENT.names_a_side("a spur on the septum")
    assert not ENT.names_a_side("nasal polyp")
