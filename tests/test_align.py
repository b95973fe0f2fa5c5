"""JointAlignment: contrastive image/text projections for encoders without a shared space."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from entrep.classify._common import NotFittedModelError as NotFittedError

from entrep.classify.align import JointAlignment, text_to_image_recall
from entrep.errors import EntrepError, ModelError
from helpers import roundtrip_state

C = 7


def _spaces(D_img=600, D_txt=384, seed=0):
    """Per-class means in two independent random spaces, plus one 'caption' direction per caption."""
    r = np.random.default_rng(seed)
    return r.normal(size=(C, D_img)), r.normal(size=(C, D_txt))


def _pairs(means, n, seed, caption_share=0.3, noise=1.0):
    """Images = class mean + noise; texts = the class prompt, or for some images a caption near it."""
    img_means, txt_means = means
    r = np.random.default_rng(seed)
    y = np.arange(n) % C
    V = img_means[y] + noise * r.normal(size=(n, img_means.shape[1]))
    captioned = r.random(n) < caption_share
    U = txt_means[y] + np.where(captioned[:, None], 0.5 * r.normal(size=(n, txt_means.shape[1])), 0.0)
    text_ids = np.where(captioned, [f"caption {i}" for i in range(n)], [f"prompt {c}" for c in y])
    return V.astype(np.float32), U.astype(np.float32), text_ids, y



@pytest.fixture(scope="module")
def fitted():
    means = _spaces()
    V, U, tid, y = _pairs(means, 350, seed=1)  # fewer rows than image features: the row-space path
    model = JointAlignment(dim=64, epochs=25, patience=8).fit(V, U, text_ids=tid, labels=y, prompts=means[1].astype(np.float32))
    return model, means


@pytest.mark.parametrize("D_img", [600, 48])
def test_alignment_makes_text_to_image_search_work_across_spaces(D_img, fitted):
    if D_img == 600:
        model, means = fitted
    else:  # more rows than image features: no row-space reduction
        means = _spaces(D_img=D_img, seed=2)
        V, U, tid, y = _pairs(means, 350, seed=3, noise=0.5)
        model = JointAlignment(dim=32, epochs=25, patience=8).fit(V, U, text_ids=tid, labels=y)
    Vt, Ut, _, yt = _pairs(means, 140, seed=4, noise=1.0 if D_img == 600 else 0.5)
    a, b = model.transform_images(Vt), model.transform_texts(Ut)
    relevant = yt[:, None] == yt[None, :]
    assert text_to_image_recall(a, b, relevant, k=5) >= 0.9
    cos = b @ a.T
    assert cos[relevant].mean() > cos[~relevant].mean() + 0.2
    # each text is closer to its own image than to images of other classes
    assert np.mean(np.sum(a * b, axis=1) > cos[~relevant].reshape(len(yt), -1).mean(axis=1)) > 0.95


def test_class_prompts_rank_the_right_class_first(fitted):
    model, means = fitted
    Vt, _, _, yt = _pairs(means, 140, seed=5)
    prompts = model.transform_texts(means[1].astype(np.float32))
    assert np.mean(np.argmax(model.transform_images(Vt) @ prompts.T, axis=1) == yt) >= 0.9


def test_outputs_are_unit_norm_float32_in_the_joint_dimension(fitted):
    model, means = fitted
    Vt, Ut, _, _ = _pairs(means, 20, seed=6)
    for out in (model.transform_images(Vt), model.transform_texts(Ut)):
        assert out.shape == (20, 64) and out.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert 1 <= model.best_epoch_ <= len(model.history_["epoch"]) <= 25
    assert len(model.history_["val_recall@5"]) == len(model.history_["epoch"])


def test_same_seed_gives_identical_projections_and_leaves_global_rng_alone():
    means = _spaces(D_img=80, D_txt=40, seed=7)
    V, U, tid, y = _pairs(means, 120, seed=8)
    kw = dict(dim=16, epochs=5, patience=5)
    torch.manual_seed(123)
    m1 = JointAlignment(seed=3, **kw).fit(V, U, text_ids=tid, labels=y)
    after_fit = torch.rand(3)
    m2 = JointAlignment(seed=3, **kw).fit(V, U, text_ids=tid, labels=y)
    m3 = JointAlignment(seed=4, **kw).fit(V, U, text_ids=tid, labels=y)
    np.testing.assert_array_equal(m1.transform_images(V), m2.transform_images(V))
    np.testing.assert_array_equal(m1.transform_texts(U), m2.transform_texts(U))
    assert not np.array_equal(m1.transform_images(V), m3.transform_images(V))
    torch.manual_seed(123)
    np.testing.assert_array_equal(torch.rand(3), after_fit)  # fitting neither reads nor moves the global RNG


def test_state_round_trips_exactly_through_npz_and_json(tmp_path, fitted):
    model, means = fitted
    back = JointAlignment.from_state(roundtrip_state(model.get_state(), tmp_path))
    assert back.get_params() == model.get_params()
    assert back.best_epoch_ == model.best_epoch_ and back.history_ == model.history_
    Vt, Ut, _, _ = _pairs(means, 30, seed=9)
    np.testing.assert_array_equal(back.transform_images(Vt), model.transform_images(Vt))
    np.testing.assert_array_equal(back.transform_texts(Ut), model.transform_texts(Ut))
    state = model.get_state()
    state["image_tower.proj.weight"] = state["image_tower.proj.weight"][:, :10]
    with pytest.raises(ModelError, match="image tower"):
        JointAlignment.from_state(state)


@pytest.mark.parametrize("image_hidden", [None, 32])
def test_numpy_towers_equal_the_torch_towers_loaded_from_the_state(image_hidden):
    from entrep.classify.torch_nets import Tower

    means = _spaces(D_img=80, D_txt=40)
    V, U, tid, y = _pairs(means, 60, seed=3)  # fewer rows than image features: a folded row-space basis
    model = JointAlignment(dim=16, epochs=3, image_hidden=image_hidden).fit(V, U, text_ids=tid, labels=y)
    state = model.get_state()
    for prefix, X, d, hidden, got in (("image_tower.", V, 80, image_hidden, model.transform_images(V)),
                                      ("text_tower.", U, 40, None, model.transform_texts(U))):
        tower = Tower(d, 16, hidden)
        tower.load_state_dict({k[len(prefix):]: torch.from_numpy(np.asarray(v)) for k, v in state.items()
                               if k.startswith(prefix)}, strict=True)
        with torch.no_grad():
            ref = tower.eval()(torch.from_numpy(X)).numpy()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_held_out_pairs_drive_early_stopping():
    means = _spaces(D_img=80, D_txt=40, seed=10)
    V, U, tid, y = _pairs(means, 175, seed=11)
    model = JointAlignment(dim=16, epochs=12, patience=3).fit(V, U, text_ids=tid, labels=y)
    assert all(v is not None for v in model.history_["val_loss"])
    best = model.best_epoch_
    # the kept epoch is the best held-out recall, ties broken by held-out loss
    recalls = model.history_["val_recall@5"]
    assert recalls[best - 1] == max(recalls)


def test_bad_input_and_use_before_fit_give_clear_errors(fitted):
    model, _ = fitted
    with pytest.raises(NotFittedError, match="fit"):
        JointAlignment().transform_images(np.ones((2, 5)))
    with pytest.raises(EntrepError, match="600"):
        model.transform_images(np.ones((2, 50)))
    V, U, tid, y = _pairs(_spaces(D_img=30, D_txt=20, seed=13), 40, seed=14)
    bad = V.copy()
    bad[3, 1] = np.inf
    with pytest.raises(EntrepError, match="NaN or infinite"):
        JointAlignment(dim=8, epochs=2).fit(bad, U, text_ids=tid, labels=y)
    with pytest.raises(EntrepError, match="row-aligned"):
        JointAlignment(dim=8, epochs=2).fit(V, U[:-1], text_ids=tid, labels=y)
    with pytest.raises(EntrepError, match="prompt"):
        JointAlignment(dim=8, epochs=2).fit(V, U, text_ids=tid, labels=y, prompts=np.ones((3, 20), np.float32))
