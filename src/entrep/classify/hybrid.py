"""Hybrid inference (the paper's section 4.3.5), as pure functions over probabilities.

Hierarchical taxonomy (groups exist):
  1. the coarse prototype classifier proposes a group with a confidence;
  2. if that confidence >= threshold the group is accepted ("prototype"),
     else the coarse head decides the group ("head");
  3. the within-group head of that group (side / state) gives the fine class;
     single-class groups (throat) need no head.
Flat taxonomy: the fine prototype prediction when confident, else the fine head.

Beyond the paper, flip test-time augmentation for mirror pairs: a horizontal
flip turns nose-left into nose-right, so p(left | x) is averaged with
p(right | flip(x)) (:func:`flip_tta`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def flip_tta(p: np.ndarray, p_flipped: np.ndarray, perm: np.ndarray) -> np.ndarray:
    """Average class probabilities of an image and of its horizontal flip.

    ``perm[i]`` is the index of the class that class ``i`` becomes under a flip
    (itself for classes without a mirror). Column ``i`` of the flipped image's
    probabilities that matter is therefore ``perm[i]``.
    """
    p = np.asarray(p, dtype=np.float64)
    p_flipped = np.asarray(p_flipped, dtype=np.float64)
    if p.shape != p_flipped.shape:
        raise ValueError(f"shape mismatch: {p.shape} vs flipped {p_flipped.shape}")
    perm = np.asarray(perm, dtype=np.int64)
    if sorted(perm.tolist()) != list(range(p.shape[1])):
        raise ValueError(f"perm {perm.tolist()} is not a permutation of {p.shape[1]} classes")
    return 0.5 * (p + p_flipped[:, perm])


def subset_permutation(members: list[int], full_perm: np.ndarray) -> np.ndarray:
    """Flip permutation restricted to a head's classes (``members`` are fine ids).

    Raises if a member's mirror falls outside the subset (a mirror pair must
    share a group, which the taxonomy guarantees).
    """
    pos = {c: i for i, c in enumerate(members)}
    try:
        return np.array([pos[int(full_perm[c])] for c in members], dtype=np.int64)
    except KeyError as e:
        raise ValueError(f"mirror of class id {e.args[0]} is outside the head's classes {members}") from None


@dataclass(frozen=True)
class HybridDecision:
    """Row-aligned outputs of the hybrid classifier."""

    fine: np.ndarray  # (N,) fine class ids
    group: np.ndarray  # (N,) group ids
    confidence: np.ndarray  # (N,) probability of the returned fine class
    from_prototype: np.ndarray  # (N,) bool: the prototype decided the group/class
    fine_proba: np.ndarray  # (N, C) hybrid probability over fine classes


def hierarchical_decide(
    proto_group_proba: np.ndarray,
    head_group_proba: np.ndarray,
    within_proba: dict[int, np.ndarray],
    members: list[list[int]],
    n_classes: int,
    threshold: float,
) -> HybridDecision:
    """Decide group then fine class.

    ``members[g]`` lists the fine ids of group ``g``; ``within_proba[g]`` is the
    (N, len(members[g])) output of that group's head (absent for single-class
    groups). Fine probability = p(group) * p(class | group), where p(group) is
    the prototype's distribution if it was confident, else the head's.
    """
    proto_group_proba = np.asarray(proto_group_proba, dtype=np.float64)
    head_group_proba = np.asarray(head_group_proba, dtype=np.float64)
    n, g = proto_group_proba.shape
    if head_group_proba.shape != (n, g) or len(members) != g:
        raise ValueError("group probabilities and members disagree in shape")
    confident = proto_group_proba.max(axis=1) >= threshold
    group_p = np.where(confident[:, None], proto_group_proba, head_group_proba)
    fine_p = np.zeros((n, n_classes), dtype=np.float64)
    for gi, cls in enumerate(members):
        if len(cls) == 1:
            fine_p[:, cls[0]] = group_p[:, gi]
            continue
        w = np.asarray(within_proba[gi], dtype=np.float64)
        if w.shape != (n, len(cls)):
            raise ValueError(f"within-group probabilities for group {gi} have shape {w.shape}, expected {(n, len(cls))}")
        fine_p[:, cls] = group_p[:, gi : gi + 1] * w
    group = group_p.argmax(axis=1)
    # the fine class is chosen inside the chosen group (the paper's path), not by global argmax
    fine = np.empty(n, dtype=np.int64)
    for i in range(n):
        cls = members[group[i]]
        fine[i] = cls[int(np.argmax(fine_p[i, cls]))]
    conf = fine_p[np.arange(n), fine]
    return HybridDecision(fine=fine, group=group, confidence=conf, from_prototype=confident, fine_proba=fine_p)


def flat_decide(proto_proba: np.ndarray, head_proba: np.ndarray, threshold: float) -> HybridDecision:
    """Flat taxonomy: prototype when confident, else the head."""
    proto_proba = np.asarray(proto_proba, dtype=np.float64)
    head_proba = np.asarray(head_proba, dtype=np.float64)
    confident = proto_proba.max(axis=1) >= threshold
    p = np.where(confident[:, None], proto_proba, head_proba)
    fine = p.argmax(axis=1)
    return HybridDecision(
        fine=fine, group=fine.copy(), confidence=p[np.arange(len(p)), fine], from_prototype=confident, fine_proba=p
    )


def tune_threshold(
    correct_if_proto: np.ndarray, correct_if_head: np.ndarray, confidence: np.ndarray, default: float = 0.99
) -> float:
    """Threshold on prototype confidence that maximises validation accuracy.

    ``correct_if_proto[i]`` / ``correct_if_head[i]``: whether the final answer
    for row i is right when the prototype / the head decides. Candidates are
    the observed confidences (plus ``default`` and 1.01 = never use prototypes);
    ties go to the highest threshold (defer to the head when in doubt).
    """
    conf = np.asarray(confidence, dtype=np.float64)
    cp = np.asarray(correct_if_proto, dtype=bool)
    ch = np.asarray(correct_if_head, dtype=bool)
    if conf.size == 0:
        return default
    candidates = np.unique(np.concatenate([conf, [default, 1.01]]))
    best_t, best_acc = 1.01, -1.0
    for t in candidates[::-1]:  # from high to low: ties keep the higher threshold
        use_p = conf >= t
        acc = float(np.mean(np.where(use_p, cp, ch)))
        if acc > best_acc + 1e-12:
            best_t, best_acc = float(t), acc
    return best_t
