"""classification_summary against hand-computed values; coarse mapping."""

from __future__ import annotations

import json

import pytest

from entrep.errors import UserError
from entrep.report.metrics import (
    classification_summary,
    coarse_of,
    confusion_from_summary,
    fine_and_coarse_summary,
)
from entrep.taxonomy import ENT, Taxonomy

# 6 images. "c" is predicted but never true (zero support); "d" is neither true
# nor predicted; "b" is true but never predicted.
Y_TRUE = ["a", "a", "a", "b", "b", "a"]
Y_PRED = ["a", "a", "c", "a", "c", "a"]
LABELS = ["a", "b", "c", "d"]


def test_summary_matches_hand_computed_values():
    s = classification_summary(Y_TRUE, Y_PRED, LABELS)
    # a: TP=3, predicted 4 times, 4 true -> P=3/4, R=3/4, F1=3/4
    assert s["per_class"]["a"] == {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4}
    # b: never predicted -> P=0 (zero_division=0), R=0, F1=0, support 2
    assert s["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    # c: predicted twice, never true -> all zero, support 0, still listed
    assert s["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert s["per_class"]["d"]["support"] == 0
    assert list(s["per_class"]) == LABELS
    assert s["accuracy"] == pytest.approx(3 / 6)
    assert s["n"] == 6
    # macro over the 4 labels (sklearn's labels= semantics): 0.75/4
    assert s["macro_avg"]["precision"] == pytest.approx(0.75 / 4)
    assert s["macro_f1"] == pytest.approx(0.75 / 4)
    # weighted by support 4,2,0,0 of 6
    assert s["weighted_f1"] == pytest.approx(0.75 * 4 / 6)
    assert s["weighted_avg"]["recall"] == pytest.approx(0.75 * 4 / 6)
    assert s["macro_avg"]["support"] == s["weighted_avg"]["support"] == 6
    assert s["confusion"] == {
        "labels": LABELS,
        "matrix": [[3, 0, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    }


def test_summary_is_plain_json_types():
    s = classification_summary(Y_TRUE, Y_PRED, LABELS)
    assert json.loads(json.dumps(s)) == s
    assert type(s["accuracy"]) is float and type(s["n"]) is int
    assert type(s["per_class"]["a"]["support"]) is int
    assert type(s["confusion"]["matrix"][0][0]) is int


def test_perfect_predictions():
    s = classification_summary(["x", "y", "y"], ["x", "y", "y"], ["x", "y"])
    assert s["accuracy"] == s["macro_f1"] == s["weighted_f1"] == 1.0


@pytest.mark.parametrize(
    "y_true, y_pred, labels, match",
    [
        (["a"], ["a", "b"], ["a", "b"], "lengths must match"),
        ([], [], ["a"], "empty"),
        (["a", "z"], ["a", "a"], ["a", "b"], r"true labels \['z'\]"),
        (["a"], ["q"], ["a"], r"predicted labels \['q'\]"),
    ],
)
def test_bad_input_is_a_clear_error(y_true, y_pred, labels, match):
    with pytest.raises(UserError, match=match):
        classification_summary(y_true, y_pred, labels)


def test_coarse_of_maps_through_taxonomy():
    assert coarse_of(["nose-left", "vc-open", "throat"], ENT) == ["nose", "vc", "throat"]


def test_fine_and_coarse_left_right_swap_is_right_at_coarse_level():
    y = ["nose-left", "nose-right", "ear-left", "throat"]
    p = ["nose-right", "nose-left", "ear-left", "throat"]
    out = fine_and_coarse_summary(y, p, ENT)
    assert out["fine"]["accuracy"] == 0.5
    assert out["coarse"]["accuracy"] == 1.0
    assert list(out["coarse"]["per_class"]) == ["nose", "ear", "vc", "throat"]
    assert out["coarse"]["per_class"]["vc"]["support"] == 0


def test_flat_taxonomy_has_no_coarse_level():
    flat = Taxonomy(name="flat", classes=("normal", "effusion", "perforation"))
    out = fine_and_coarse_summary(["normal", "effusion"], ["normal", "normal"], flat)
    assert set(out) == {"fine"}


def test_confusion_from_summary_round_trip_and_missing():
    s = classification_summary(Y_TRUE, Y_PRED, LABELS)
    m, labels = confusion_from_summary(s)
    assert labels == LABELS and m.shape == (4, 4) and m.sum() == 6
    assert confusion_from_summary({"accuracy": 1.0}) is None
    assert confusion_from_summary({"confusion": {"labels": ["a"], "matrix": [[1, 2]]}}) is None
