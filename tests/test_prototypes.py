"""PrototypeClassifier: prototypes, FAISS scoring, confidence, temperature, empty classes, state."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from entrep.classify._common import NotFittedModelError as NotFittedError

from entrep.classify.fusion import l2_normalize
from entrep.classify.prototypes import PrototypeClassifier
from entrep.errors import EntrepError, ModelError
from entrep.taxonomy import ENT
from helpers import roundtrip_state


def _clusters(n_per=30, C=4, D=24, spread=0.6, seed=0):
    r = np.random.default_rng(seed)
    centres = r.normal(size=(C, D))
    y = np.repeat(np.arange(C), n_per)
    Z = centres[y] + spread * r.normal(size=(len(y), D))
    return Z.astype(np.float32), y, centres



def test_prototype_is_normalised_mean_of_normalised_members():
    Z, y, _ = _clusters()
    Z[y == 1] *= np.linspace(0.1, 10, (y == 1).sum(), dtype=np.float32)[:, None]  # lengths must not matter
    model = PrototypeClassifier().fit(Z, y)
    for c in range(4):
        expected = l2_normalize(l2_normalize(Z[y == c].astype(np.float64)).mean(axis=0))
        np.testing.assert_allclose(model.prototypes_[c], expected, atol=1e-6)
    np.testing.assert_array_equal(model.classes_, [0, 1, 2, 3])
    np.testing.assert_array_equal(model.counts_, [30, 30, 30, 30])


def test_faiss_scores_are_cosines_to_every_prototype_and_predict_is_nearest():
    Z, y, centres = _clusters(seed=1)
    model = PrototypeClassifier().fit(Z, y)
    Xq, yq, _ = _clusters(n_per=10, seed=1)
    scores = model.decision_function(Xq * 7.0)
    assert scores.shape == (40, 4)
    np.testing.assert_allclose(scores, l2_normalize(Xq) @ model.prototypes_.T, atol=1e-5)
    np.testing.assert_array_equal(model.predict(Xq), np.argmax(scores, axis=1))
    assert np.mean(model.predict(Xq) == yq) > 0.95


def test_probabilities_are_softmax_of_cosine_over_temperature():
    Z, y, _ = _clusters(seed=2)
    model = PrototypeClassifier(temperature=0.05).fit(Z, y)
    X = Z[:10]
    logits = model.decision_function(X).astype(np.float64) / 0.05
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba, expected, atol=1e-9)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_allclose(model.confidence(X), proba.max(1))


@pytest.mark.parametrize("margin, confident", [(0.047, True), (0.040, False)])
def test_two_close_classes_need_a_cosine_margin_of_about_0_046_for_0_99(margin, confident):
    # prototypes e0, e1; a query whose cosines to them differ by `margin`
    Z = np.eye(2, 3, dtype=np.float32)
    model = PrototypeClassifier(temperature=0.01).fit(Z, [0, 1])
    c0 = 0.6
    c1 = c0 - margin
    q = np.array([[c0, c1, np.sqrt(1 - c0**2 - c1**2)]])
    assert model.predict(q)[0] == 0
    assert bool(model.confidence(q)[0] >= 0.99) is confident


def test_empty_class_is_an_error_naming_it_unless_allowed():
    Z, y, _ = _clusters(C=3, seed=3)
    with pytest.raises(EntrepError, match=r"\[5\]"):
        PrototypeClassifier().fit(Z, y, classes=[0, 1, 2, 5])
    model = PrototypeClassifier().fit(Z, y, classes=[0, 1, 2, 5], allow_empty=True)
    scores = model.decision_function(Z)
    assert np.all(np.isneginf(scores[:, 3])) and np.isfinite(scores[:, :3]).all()
    assert np.all(model.predict_proba(Z)[:, 3] == 0.0)
    assert 5 not in set(model.predict(Z))
    with pytest.raises(EntrepError, match=r"\[7\]"):
        PrototypeClassifier().fit(Z, np.where(y == 2, 7, y), classes=[0, 1, 2])


def test_bad_input_gives_clear_errors():
    Z, y, _ = _clusters(seed=4)
    bad = Z.copy()
    bad[5, 3] = np.nan
    with pytest.raises(EntrepError, match="NaN"):
        PrototypeClassifier().fit(bad, y)
    model = PrototypeClassifier().fit(Z, y)
    with pytest.raises(EntrepError, match="NaN"):
        model.predict(bad)
    with pytest.raises(EntrepError, match="24"):
        model.predict(np.ones((2, 10)))
    with pytest.raises(EntrepError, match="labels"):
        PrototypeClassifier().fit(Z, y[:-1])
    with pytest.raises(EntrepError, match="integer"):
        PrototypeClassifier().fit(Z, y.astype(str))
    with pytest.raises(EntrepError, match="metric"):
        PrototypeClassifier(metric="euclidean").fit(Z, y)
    with pytest.raises(EntrepError, match="temperature"):
        PrototypeClassifier(temperature=0).fit(Z, y)


def test_use_before_fit_is_a_clear_not_fitted_error():
    with pytest.raises(NotFittedError, match="fit"):
        PrototypeClassifier().predict_proba(np.ones((1, 4)))
    with pytest.raises(NotFittedError, match="fit"):
        PrototypeClassifier().predict(np.ones((1, 4)))
    with pytest.raises(ModelError):
        PrototypeClassifier().get_state()


def test_state_round_trips_exactly_through_npz_and_json(tmp_path):
    Z, y, _ = _clusters(seed=7)
    model = PrototypeClassifier().fit(Z, y, classes=[0, 1, 2, 3, 4], allow_empty=True)
    back = PrototypeClassifier.from_state(roundtrip_state(model.get_state(), tmp_path))
    assert back.get_params() == model.get_params()
    assert back.temperature_ == model.temperature_
    X = _clusters(n_per=5, seed=8)[0]
    np.testing.assert_array_equal(back.decision_function(X), model.decision_function(X))
    np.testing.assert_array_equal(back.predict_proba(X), model.predict_proba(X))
    with pytest.raises(ModelError):
        PrototypeClassifier.from_state({k: v for k, v in model.get_state().items() if k != "prototypes_"})


def test_fitted_model_copies_and_pickles_after_use():
    Z, y, _ = _clusters(seed=9)
    model = PrototypeClassifier().fit(Z, y)
    before = model.predict_proba(Z)
    clone = copy.deepcopy(model)
    np.testing.assert_array_equal(clone.predict_proba(Z), before)


def test_coarse_prototypes_are_the_same_estimator_on_group_ids():
    gid = ENT.group_ids()
    r = np.random.default_rng(10)
    group_centres = r.normal(size=(gid.max() + 1, 16))
    y = np.repeat(np.arange(ENT.n_classes), 12)
    Z = (group_centres[gid[y]] + 0.3 * r.normal(size=(len(y), 16))).astype(np.float32)
    coarse = PrototypeClassifier().fit(Z, gid[y], classes=list(range(gid.max() + 1)))
    np.testing.assert_array_equal(coarse.classes_, np.arange(gid.max() + 1))
    for g in coarse.classes_:
        expected = l2_normalize(l2_normalize(Z[gid[y] == g].astype(np.float64)).mean(axis=0))
        np.testing.assert_allclose(coarse.prototypes_[g], expected, atol=1e-6)
    assert np.mean(coarse.predict(Z) == gid[y]) > 0.95
