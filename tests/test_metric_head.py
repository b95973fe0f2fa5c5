"""The dual-backbone metric head and soft class-aware ranking."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import finetune_taxonomy

from entrep.errors import UserError
from entrep.finetune import MetricHead, mirror_batches, recall_at_1, soft_class_rank, tune_rank_alpha

TAX = finetune_taxonomy()


def _two_backbones(n_per=12, seed=0, mirror_gap=0.35):
    """Two row-aligned feature sets; mirror classes sit close together (as left/right views do)."""
    rng = np.random.default_rng(seed)
    centres = {}
    for c in TAX.classes:
        m = TAX.mirror_of(c)
        if m in centres:
            centres[c] = centres[m] + mirror_gap * rng.standard_normal(24)
        else:
            centres[c] = rng.standard_normal(24)
    y = np.repeat(np.arange(TAX.n_classes), n_per)
    a = np.stack([centres[TAX.classes[i]] for i in y]) + 0.3 * rng.standard_normal((len(y), 24))
    b = a @ rng.standard_normal((24, 16)) + 0.3 * rng.standard_normal((len(y), 16))
    return [a.astype(np.float32), b.astype(np.float32)], y


def test_batches_bring_every_lateral_class_with_its_mirror():
    _, y = _two_backbones()
    mirror = TAX.flip_permutation()
    for idx in mirror_batches(y, mirror, m=4, batch_size=16, rng=np.random.default_rng(0)):
        present = set(y[idx].tolist())
        assert all(int(mirror[c]) in present for c in present)


@pytest.mark.parametrize("loss", ["triplet", "multi_similarity"])
def test_miner_finds_mirror_class_negatives_and_retrieval_improves(loss):
    allf, ally = _two_backbones(n_per=16)
    v = np.arange(len(ally)) % 4 == 0
    feats, y, val, yv = [f[~v] for f in allf], ally[~v], [f[v] for f in allf], ally[v]
    head = MetricHead(dim=32, loss=loss, epochs=15, lr=3e-3, seed=0).fit(feats, y, TAX, X_val=val, y_val=yv)
    assert len(head.history_["val_recall_at_1"]) == 15
    assert max(head.history_["mirror_negative_share"]) > 0.2  # mirror classes are among the mined negatives
    z = head.transform(feats)
    assert z.shape == (len(y), 32) and np.allclose(np.linalg.norm(z, axis=1), 1, atol=1e-5)
    raw = np.concatenate([f / np.linalg.norm(f, axis=1, keepdims=True) for f in feats], axis=1)
    assert recall_at_1(z, y) >= recall_at_1(raw / np.linalg.norm(raw, axis=1, keepdims=True), y)
    assert head.history_["loss"][-1] < head.history_["loss"][0]


def test_state_round_trip_is_exact(tmp_path):
    from helpers import roundtrip_state

    feats, y = _two_backbones(n_per=6)
    head = MetricHead(dim=16, epochs=2).fit(feats, y, TAX)
    again = MetricHead.from_state(roundtrip_state(head.get_state(), tmp_path))
    assert np.array_equal(head.transform(feats), again.transform(feats))


def test_misaligned_backbone_features_are_refused():
    feats, y = _two_backbones(n_per=4)
    with pytest.raises(UserError, match="row-aligned"):
        MetricHead(epochs=1).fit([feats[0], feats[1][:-1]], y, TAX)


def test_soft_rank_lets_a_wrongly_predicted_query_still_find_its_class():
    # one query of class 0 predicted as class 1 with 0.6; gallery: two of class 1 (less similar), one of class 0
    sim = np.array([[0.60, 0.55, 0.95]])
    proba = np.array([[0.4, 0.6]])
    gallery = np.array([1, 1, 0])
    hard = np.argsort(-(sim + 10.0 * proba[:, gallery]), axis=1)[0]
    soft = np.argsort(-soft_class_rank(sim, proba, gallery, 0.5), axis=1)[0]
    assert gallery[hard[0]] == 1  # a hard filter puts the wrong class first
    assert gallery[soft[0]] == 0  # the soft rank keeps the much more similar right-class image on top
    assert np.array_equal(soft_class_rank(sim, proba, gallery, 0.0), sim)


def test_alpha_is_tuned_on_validation_mrr():
    rng = np.random.default_rng(0)
    q_labels = rng.integers(0, 3, 30)
    g_labels = rng.integers(0, 3, 40)
    sim = rng.uniform(-0.2, 0.2, (30, 40))  # similarity says little
    proba = np.full((30, 3), 0.05)
    proba[np.arange(30), q_labels] = 0.9  # the classifier is right
    best, table = tune_rank_alpha(sim, proba, g_labels, q_labels)
    assert best > 0 and table[best] == max(table.values()) and table[best] > table[0.0]
