"""The inference policy: every candidate scored on validation, the tie rule, the paper's prototype rule."""

from __future__ import annotations

import numpy as np
import pytest

from entrep.classify.policy import (
    InferencePolicy,
    PartOutputs,
    Structure,
    apply_policy,
    best_candidate,
    candidate_policies,
    select_policy,
)
from entrep.taxonomy import ENT, Taxonomy


S = Structure.from_taxonomy(ENT)


def _onehot(ids, n, p=1.0):
    out = np.full((len(ids), n), (1.0 - p) / max(n - 1, 1))
    out[np.arange(len(ids)), ids] = p
    return out


def _parts(y, *, proto_ok=True, heads_ok=True, baseline_ok=True, proto_conf=0.999, group_conf=0.5):
    """Parts whose answers are right or wrong on purpose (wrong = the mirror class / the next group)."""
    y = np.asarray(y)
    perm = ENT.flip_permutation()
    gid = ENT.group_ids()
    n_g = len(ENT.group_names)
    wrong = perm[y]
    wrong = np.where(wrong == y, (y + 1) % ENT.n_classes, wrong)
    fine_proto = _onehot(np.where(proto_ok, y, wrong), ENT.n_classes, proto_conf)
    base = _onehot(np.where(baseline_ok, y, wrong), ENT.n_classes, 0.9)
    g_true = gid[y]
    g_head = np.where(heads_ok, g_true, (g_true + 1) % n_g)
    within = {}
    for g, cls in enumerate(S.members):
        if len(cls) < 2:
            continue
        pos = {c: i for i, c in enumerate(cls)}
        target = [pos.get(int(c if heads_ok else perm[c]), 0) for c in y]
        within[g] = _onehot(np.array(target), len(cls), 0.9)
    return PartOutputs(proto_fine=fine_proto, baseline=base, proto_group=_onehot(g_true, n_g, group_conf),
                       head_group=_onehot(g_head, n_g, 0.9), within=within)


Y = np.array([ENT.class_id(c) for c in ENT.classes] * 3)


def test_chosen_policy_is_never_worse_on_validation_than_its_best_component():
    for flags in ({"heads_ok": False, "baseline_ok": False}, {"proto_ok": False}, {"proto_ok": False, "heads_ok": False}):
        parts = _parts(Y, **flags)
        sel = select_policy(candidate_policies(parts, Y, S, has_flip=False), parts, Y, S)
        acc = dict((p.name, a) for p, a in sel.scores)
        components = [acc[n] for n in ("prototype", "baseline", "heads")]
        assert acc[sel.policy.name] >= max(components)


def test_a_confident_fine_prototype_answers_directly_as_in_the_paper():
    # the coarse prototype is unsure (0.5) and the heads are wrong: only the fine prototype is right
    parts = _parts(Y, heads_ok=False, baseline_ok=False, proto_conf=0.999, group_conf=0.5)
    dec, _ = apply_policy(InferencePolicy(mode="hybrid", threshold=0.99, prototype_fine=True), parts, S)
    assert np.all(dec.fine == Y) and np.all(dec.from_prototype)
    without, _ = apply_policy(InferencePolicy(mode="hybrid", threshold=0.99, prototype_fine=False), parts, S)
    assert np.mean(without.fine == Y) < 0.5


def test_ties_keep_the_first_candidate_the_papers_hybrid():
    parts = _parts(Y)  # every part right: every candidate scores 1.0
    cands = candidate_policies(parts, Y, S, has_flip=False)
    sel = select_policy(cands, parts, Y, S)
    assert sel.policy == cands[0]
    assert sel.policy.mode == "hybrid" and sel.policy.threshold == 0.99
    d = sel.to_dict()
    assert d["chosen"] == cands[0].name and len(d["candidates"]) == len(cands)
    assert best_candidate(d, "prototype").mode == "prototype"


def test_policy_round_trips_and_rejects_unknown_options():
    pol = InferencePolicy(mode="heads", within_blend=True, flip_tta_baseline=False)
    assert InferencePolicy.from_dict(pol.to_dict()) == pol
    with pytest.raises(ValueError, match="unknown policy keys"):
        InferencePolicy.from_dict({**pol.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="mode"):
        InferencePolicy(mode="vote")


def test_blend_averages_a_side_head_with_the_baselines_within_group_share():
    parts = _parts(Y)
    nose = ENT.group_names.index("nose")
    parts.within[nose] = np.tile([1.0, 0.0], (len(Y), 1))
    parts.baseline = np.tile(np.eye(ENT.n_classes)[S.members[nose][1]] * 0.5 + 0.5 / ENT.n_classes, (len(Y), 1))
    _, out = apply_policy(InferencePolicy(mode="heads", within_blend=True, flip_tta_within=False,
                                          flip_tta_baseline=False), parts, S)
    base = parts.baseline[:, list(S.members[nose])]
    expected = 0.5 * (np.array([1.0, 0.0]) + base / base.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(out.within[nose], expected)


def test_flat_taxonomies_get_prototype_baseline_and_hybrid_candidates():
    flat = Taxonomy.from_dict({"name": "flat", "classes": ["a", "b", "c"]})
    fs = Structure.from_taxonomy(flat)
    y = np.array([0, 1, 2, 0, 1, 2])
    parts = PartOutputs(proto_fine=_onehot(y, 3, 0.999), baseline=_onehot((y + 1) % 3, 3, 0.9))
    sel = select_policy(candidate_policies(parts, y, fs, has_flip=False), parts, y, fs)
    assert {p.mode for p, _ in sel.scores} == {"hybrid", "baseline", "prototype"}
    assert dict((p.name, a) for p, a in sel.scores)[sel.policy.name] == 1.0
