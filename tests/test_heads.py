"""MLPHead architecture and the HeadClassifier trainer (oversampling, early stopping, holdout, state)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from entrep.classify._common import NotFittedModelError as NotFittedError
from torch import nn

from entrep.classify.heads import HeadClassifier, MLPHead
from entrep.errors import EntrepError, ModelError
from helpers import roundtrip_state


def _blobs(n_per, C=3, D=20, sep=3.0, seed=0, sizes=None):
    r = np.random.default_rng(seed)
    centres = np.random.default_rng(1000).normal(size=(C, D))
    centres *= sep / np.linalg.norm(centres, axis=1, keepdims=True)
    counts = sizes or [n_per] * C
    y = np.repeat(np.arange(C), counts)
    X = centres[y] + r.normal(size=(len(y), D))
    return X.astype(np.float32), y



def test_head_is_the_papers_architecture():
    head = MLPHead(768, 7)
    layers = list(head.net)
    assert [type(m) for m in layers] == [nn.LayerNorm, nn.Dropout, nn.Linear, nn.GELU, nn.Linear, nn.GELU, nn.Linear]
    assert layers[0].normalized_shape == (768,) and layers[0].elementwise_affine
    assert layers[1].p == 0.3
    assert [(m.in_features, m.out_features) for m in layers if isinstance(m, nn.Linear)] == [(768, 256), (256, 128), (128, 7)]
    assert head(torch.zeros(5, 768)).shape == (5, 7)
    other = MLPHead(10, 2, hidden=(8,), dropout=0.1)
    assert [type(m) for m in other.net] == [nn.LayerNorm, nn.Dropout, nn.Linear, nn.GELU, nn.Linear]


def test_learns_a_separable_problem():
    X, y = _blobs(60)
    Xt, yt = _blobs(100, seed=1)
    model = HeadClassifier(max_epochs=40, patience=10).fit(X, y)
    assert model.score(Xt, yt) > 0.95
    proba = model.predict_proba(Xt)
    assert proba.shape == (300, 3)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    np.testing.assert_array_equal(model.predict(Xt), model.classes_[proba.argmax(1)])


def test_oversampling_raises_minority_recall_on_a_10_to_1_problem():
    X, y = _blobs(0, C=2, D=10, sep=1.5, seed=2, sizes=[400, 40])
    Xt, yt = _blobs(300, C=2, D=10, sep=1.5, seed=3)
    kw = dict(max_epochs=30, patience=30, seed=0)
    recall = {}
    for oversample in (False, True):
        pred = HeadClassifier(oversample=oversample, **kw).fit(X, y).predict(Xt)
        recall[oversample] = np.mean(pred[yt == 1] == 1)
    assert recall[True] > recall[False] + 0.15


def test_early_stopping_restores_the_best_epochs_weights():
    # few rows, many features, half the labels random: the head overfits after a few epochs
    r = np.random.default_rng(4)
    X, y = _blobs(30, C=2, D=200, sep=2.0, seed=4)
    y = np.where(r.random(len(y)) < 0.5, r.integers(0, 2, len(y)), y)
    Xv, yv = _blobs(100, C=2, D=200, sep=2.0, seed=5)
    model = HeadClassifier(max_epochs=60, patience=60, oversample=False, lr=3e-3).fit(X, y, X_val=Xv, y_val=yv)
    h = model.history_
    assert len(h["epoch"]) == 60 and 1 <= model.best_epoch_ < 60
    assert h["val_loss"][model.best_epoch_ - 1] == min(h["val_loss"]) < h["val_loss"][-1]
    # the kept weights are the best epoch's: their validation loss is the recorded minimum
    p = model.predict_proba(Xv)[np.arange(len(yv)), yv]
    assert -np.mean(np.log(p)) == pytest.approx(min(h["val_loss"]), rel=1e-5)
    assert h["val_accuracy"][model.best_epoch_ - 1] == pytest.approx(model.score(Xv, yv))


def test_patience_stops_training_early():
    X, y = _blobs(40, seed=6)
    model = HeadClassifier(max_epochs=200, patience=3).fit(X, y)
    assert len(model.history_["epoch"]) == model.best_epoch_ + 3 < 200


def test_same_seed_same_predictions_and_global_rng_untouched(tmp_path):
    X, y = _blobs(40, seed=7)
    torch.manual_seed(11)
    a = HeadClassifier(max_epochs=8, seed=5).fit(X, y)
    after_fit = torch.rand(3)
    b = HeadClassifier(max_epochs=8, seed=5).fit(X, y)
    c = HeadClassifier(max_epochs=8, seed=6).fit(X, y)
    np.testing.assert_array_equal(a.predict_proba(X), b.predict_proba(X))
    assert a.history_ == b.history_
    assert not np.array_equal(a.predict_proba(X), c.predict_proba(X))
    torch.manual_seed(11)
    np.testing.assert_array_equal(torch.rand(3), after_fit)


def test_state_round_trips_exactly_through_npz_and_json(tmp_path):
    X, y = _blobs(30, seed=8)
    model = HeadClassifier(hidden=(32, 16), max_epochs=6).fit(X, y + 2)  # ids 2, 3, 4
    state = model.get_state()
    back = HeadClassifier.from_state(roundtrip_state(state, tmp_path))
    assert back.get_params() == model.get_params()
    assert back.best_epoch_ == model.best_epoch_ and back.history_ == model.history_
    np.testing.assert_array_equal(back.classes_, [2, 3, 4])
    np.testing.assert_array_equal(back.predict_proba(X), model.predict_proba(X))
    np.testing.assert_array_equal(back.predict(X), model.predict(X))
    state["head.net.2.weight"] = state["head.net.2.weight"][:5]
    with pytest.raises(ModelError, match="HeadClassifier"):
        HeadClassifier.from_state(state)


def test_numpy_inference_equals_the_torch_module_in_eval_mode():
    X, y = _blobs(40, C=4, D=24, seed=12)
    model = HeadClassifier(hidden=(32, 16), max_epochs=5).fit(X, y)
    head = model.module()
    assert isinstance(head, MLPHead) and not head.training
    with torch.no_grad():
        logits = head(torch.from_numpy(X)).numpy()
        hidden = head.net[:-1](torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(model.decision_function(X), logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(model.embed(X), hidden, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(model.predict(X), model.classes_[logits.argmax(1)])
    # non-finite saved weights are a damaged model, not NaN predictions
    state = model.get_state()
    state["head.net.4.bias"] = np.full_like(state["head.net.4.bias"], np.nan)
    with pytest.raises(ModelError, match="non-finite"):
        HeadClassifier.from_state(state)


def test_use_before_fit_is_a_clear_not_fitted_error():
    with pytest.raises(NotFittedError, match="fit"):
        HeadClassifier().predict(np.ones((2, 4)))
    with pytest.raises(ModelError, match="not fitted"):
        HeadClassifier().predict_proba(np.ones((2, 4)))


def test_internal_holdout_keeps_all_views_of_an_image_on_one_side():
    # 60 source images x 5 augmented views each
    Xs, ys = _blobs(15, C=4, D=12, seed=9)
    r = np.random.default_rng(9)
    X = np.repeat(Xs, 5, axis=0) + 0.05 * r.normal(size=(len(Xs) * 5, 12)).astype(np.float32)
    y = np.repeat(ys, 5)
    groups = np.repeat([f"img{i:03d}.png" for i in range(len(Xs))], 5)
    model = HeadClassifier(max_epochs=3).fit(X, y, sample_groups=groups)
    held = np.zeros(len(y), dtype=bool)
    held[model.holdout_index_] = True
    assert not set(groups[held]) & set(groups[~held])
    assert set(y[held]) == {0, 1, 2, 3}  # stratified: every class is validated
    assert 0.05 <= held.mean() <= 0.2


def test_n_classes_fixes_the_output_columns():
    X, y = _blobs(20, C=2, seed=10)
    model = HeadClassifier(max_epochs=3).fit(X, y + 1, n_classes=4)  # classes 0 and 3 absent
    np.testing.assert_array_equal(model.classes_, [0, 1, 2, 3])
    assert model.predict_proba(X).shape == (40, 4)


def test_bad_input_gives_clear_errors():
    X, y = _blobs(20, seed=11)
    bad = X.copy()
    bad[2, 2] = np.nan
    with pytest.raises(EntrepError, match="NaN"):
        HeadClassifier(max_epochs=2).fit(bad, y)
    with pytest.raises(EntrepError, match="at least 2 classes"):
        HeadClassifier(max_epochs=2).fit(X, np.zeros(len(y), dtype=int))
    with pytest.raises(EntrepError, match="outside"):
        HeadClassifier(max_epochs=2).fit(X, y, n_classes=2)
    with pytest.raises(EntrepError, match="both"):
        HeadClassifier(max_epochs=2).fit(X, y, X_val=X)
    with pytest.raises(EntrepError, match="not seen"):
        HeadClassifier(max_epochs=2).fit(X, y, X_val=X[:5], y_val=np.full(5, 9))
    model = HeadClassifier(max_epochs=2).fit(X, y)
    with pytest.raises(EntrepError, match="20"):
        model.predict(np.ones((3, 7)))


def test_internal_holdout_never_takes_every_row_of_a_class():
    X, y = _blobs(0, C=3, D=8, seed=12, sizes=[30, 30, 1])  # one image of class 2
    for seed in (4, 5, 6):  # seed 5's stratified fold holds out that image
        model = HeadClassifier(max_epochs=2, seed=seed).fit(X, y)
        assert 2 not in set(y[model.holdout_index_])


def test_a_small_set_with_under_ten_rows_per_class_still_holds_rows_out():
    X, y = _blobs(6, C=3, D=8, seed=13)  # 6 rows a class: fewer than the 10 folds of a 10% holdout
    model = HeadClassifier(max_epochs=3).fit(X, y)
    held = model.holdout_index_
    assert held is not None and 0 < len(held) < len(y)
    assert set(y[np.setdiff1d(np.arange(len(y)), held)]) == {0, 1, 2}
    assert model.history_["val_loss"][0] is not None


def test_sklearn_clone_and_set_params_work_without_sklearn_in_entrep():
    from sklearn.base import clone

    model = HeadClassifier(hidden=(16,), max_epochs=3, seed=4)
    twin = clone(model)
    assert twin is not model and twin.get_params() == model.get_params()
    assert twin.set_params(max_epochs=5).max_epochs == 5
    with pytest.raises(ValueError, match="unknown parameters"):
        model.set_params(epochs=5)
    assert "max_epochs=3" in repr(model)
