"""Inference policy: which part decides, at which threshold, with which test-time options.

Every "enabled only if validation improves" choice lives here, in one frozen
:class:`InferencePolicy`, and is made in one place, :func:`select_policy`,
which scores every candidate on validation data (each component alone
included) and keeps the best. A new inference option is a new policy field,
its use in :func:`apply_policy` and its candidates in
:func:`candidate_policies`: nothing outside this module changes.

Modes:

- ``prototype``: the fine prototype classifier alone (joint-space nearest class).
- ``baseline``:  the 7-class (flat) baseline head alone.
- ``heads``:     coarse head for the group, then the group's side/state head.
- ``hybrid``:    the paper's confidence-gated rule. With ``prototype_fine`` a
  fine prototype at least ``threshold`` confident returns its class directly
  (the paper returns the prototype's answer when it is confident); otherwise
  the coarse prototype decides the group when it is confident, else the coarse
  head, and the group's head decides the fine class.

Tie rule (documented in docs/classification.md): the highest validation
accuracy wins; among equals the candidate listed first by
:func:`candidate_policies` wins. That list starts with the paper's hybrid at
its default threshold, then its variants (tuned thresholds, flip TTA off,
blend on), then the components alone, so a variant must be strictly better on
validation to replace the paper's rule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from entrep.classify.hybrid import (
    HybridDecision,
    flat_decide,
    flip_tta,
    hierarchical_decide,
    subset_permutation,
    tune_threshold,
)

MODES = ("hybrid", "prototype", "baseline", "heads")


@dataclass(frozen=True)
class Structure:
    """What the policy needs to know of the taxonomy: class ids per group, the flip permutation."""

    members: tuple[tuple[int, ...], ...]  # fine ids of each group; empty when flat
    n_classes: int
    flip: tuple[int, ...]  # flip[c]: the class c becomes under a horizontal flip

    @classmethod
    def from_taxonomy(cls, taxonomy) -> "Structure":
        members: tuple[tuple[int, ...], ...] = ()
        if taxonomy.hierarchical:
            members = tuple(tuple(taxonomy.class_id(c) for c in taxonomy.members(g)) for g in taxonomy.group_names)
        return cls(members=members, n_classes=taxonomy.n_classes,
                   flip=tuple(int(i) for i in taxonomy.flip_permutation()))

    @property
    def hierarchical(self) -> bool:
        return bool(self.members)

    def group_of_class(self) -> np.ndarray:
        gid = np.zeros(self.n_classes, dtype=np.int64)
        for g, cls in enumerate(self.members):
            gid[list(cls)] = g
        return gid


@dataclass
class PartOutputs:
    """Raw probabilities of every fitted part for one batch; ``*_flip``: of the flipped images."""

    proto_fine: np.ndarray  # (N, C)
    baseline: np.ndarray  # (N, C)
    baseline_flip: np.ndarray | None = None
    proto_group: np.ndarray | None = None  # (N, G), hierarchical only
    head_group: np.ndarray | None = None
    head_group_flip: np.ndarray | None = None
    within: dict[int, np.ndarray] = field(default_factory=dict)  # group id -> (N, m)
    within_flip: dict[int, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.baseline)


@dataclass
class SystemOutputs:
    """Each system's probabilities after the policy's test-time options (what evaluation reads)."""

    proto_fine: np.ndarray
    baseline: np.ndarray
    proto_group: np.ndarray | None = None
    head_group: np.ndarray | None = None
    within: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class InferencePolicy:
    """One complete inference rule; saved in the model bundle as :meth:`to_dict`."""

    mode: str = "hybrid"
    threshold: float = 0.99
    prototype_fine: bool = True
    flip_tta_within: bool = True
    flip_tta_baseline: bool = True
    within_blend: bool = False  # average each side/state head with the baseline's within-group distribution

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown policy mode {self.mode!r}; use one of {MODES}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"policy threshold must be in [0, 1], got {self.threshold}")

    @property
    def name(self) -> str:
        if self.mode != "hybrid":
            opts = []
            if self.mode in ("baseline",) and self.flip_tta_baseline:
                opts.append("tta")
            if self.mode == "heads" and self.flip_tta_within:
                opts.append("tta")
            if self.mode == "heads" and self.within_blend:
                opts.append("blend")
            return "+".join([self.mode, *opts])
        opts = [f"t={self.threshold:.4f}"]
        if self.prototype_fine:
            opts.append("proto-fine")
        if self.flip_tta_within or self.flip_tta_baseline:
            opts.append("tta")
        if self.within_blend:
            opts.append("blend")
        return "hybrid(" + ",".join(opts) + ")"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "InferencePolicy":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown policy keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> "InferencePolicy":
        return dataclasses.replace(self, **changes)


def _within_group(p: np.ndarray, members: Sequence[int]) -> np.ndarray:
    """A fine distribution restricted to one group's classes and renormalised: p(class | group)."""
    sub = np.asarray(p, dtype=np.float64)[:, list(members)]
    return sub / np.maximum(sub.sum(axis=1, keepdims=True), 1e-12)


def system_outputs(policy: InferencePolicy, parts: PartOutputs, structure: Structure) -> SystemOutputs:
    """Apply the policy's flip TTA and blend to the raw part outputs."""
    perm = np.asarray(structure.flip, dtype=np.int64)
    baseline = parts.baseline
    if policy.flip_tta_baseline and parts.baseline_flip is not None:
        baseline = flip_tta(baseline, parts.baseline_flip, perm)
    out = SystemOutputs(proto_fine=parts.proto_fine, baseline=baseline, proto_group=parts.proto_group)
    if structure.hierarchical:
        hg = parts.head_group
        if policy.flip_tta_within and parts.head_group_flip is not None:
            hg = 0.5 * (hg + parts.head_group_flip)  # a flip never changes the group (mirror pairs share one)
        out.head_group = hg
        for g, p in parts.within.items():
            members = structure.members[g]
            if policy.flip_tta_within and g in parts.within_flip:
                p = flip_tta(p, parts.within_flip[g], subset_permutation(list(members), perm))
            if policy.within_blend:
                p = 0.5 * (p + _within_group(baseline, members))
            out.within[g] = p
    return out


def _from_fine(p: np.ndarray, structure: Structure, from_prototype: np.ndarray) -> HybridDecision:
    p = np.asarray(p, dtype=np.float64)
    fine = p.argmax(axis=1)
    group = structure.group_of_class()[fine] if structure.hierarchical else fine.copy()
    return HybridDecision(fine=fine, group=group, confidence=p[np.arange(len(p)), fine],
                          from_prototype=from_prototype, fine_proba=p)


def decide(policy: InferencePolicy, out: SystemOutputs, structure: Structure) -> HybridDecision:
    """The policy's decision from system outputs (see the module docstring for each mode)."""
    n = len(out.baseline)
    if policy.mode == "prototype":
        return _from_fine(out.proto_fine, structure, np.ones(n, dtype=bool))
    if policy.mode == "baseline":
        return _from_fine(out.baseline, structure, np.zeros(n, dtype=bool))
    if not structure.hierarchical:  # flat: "heads" is the baseline head
        if policy.mode == "heads":
            return _from_fine(out.baseline, structure, np.zeros(n, dtype=bool))
        return flat_decide(out.proto_fine, out.baseline, policy.threshold)
    members = [list(m) for m in structure.members]
    thr = 1.01 if policy.mode == "heads" else policy.threshold  # 1.01: the group always from the head
    dec = hierarchical_decide(out.proto_group, out.head_group, out.within, members, structure.n_classes, thr)
    if policy.mode == "heads":
        return dec
    if policy.prototype_fine:
        conf = out.proto_fine.max(axis=1) >= policy.threshold
        if conf.any():
            p = np.where(conf[:, None], np.asarray(out.proto_fine, dtype=np.float64), dec.fine_proba)
            fine = np.where(conf, out.proto_fine.argmax(axis=1), dec.fine)
            group = np.where(conf, structure.group_of_class()[fine], dec.group)
            dec = HybridDecision(fine=fine, group=group, confidence=p[np.arange(n), fine],
                                 from_prototype=dec.from_prototype | conf, fine_proba=p)
    return dec


def apply_policy(policy: InferencePolicy, parts: PartOutputs, structure: Structure) -> tuple[HybridDecision, SystemOutputs]:
    out = system_outputs(policy, parts, structure)
    return decide(policy, out, structure), out


def _tuned_threshold(policy: InferencePolicy, parts: PartOutputs, y: np.ndarray, structure: Structure,
                     default: float) -> float:
    """The prototype-confidence threshold that maximises validation accuracy for this variant."""
    out = system_outputs(policy, parts, structure)
    lo = decide(policy.replace(threshold=0.0), out, structure).fine == y  # the prototype always decides
    hi = decide(policy.replace(mode="heads"), out, structure).fine == y  # the heads always decide
    conf = (out.proto_group if structure.hierarchical and not policy.prototype_fine else out.proto_fine).max(axis=1)
    t = tune_threshold(lo, hi, conf, default=default)
    return float(min(max(t, 0.0), 1.0))


def candidate_policies(parts: PartOutputs, y: np.ndarray, structure: Structure, *, default_threshold: float = 0.99,
                       has_flip: bool = True) -> list[InferencePolicy]:
    """Every candidate, in preference order (the tie rule keeps the first of equals)."""
    tta = (True, False) if has_flip else (False,)
    blends = (False, True) if structure.hierarchical else (False,)
    protos = (True, False) if structure.hierarchical else (True,)
    out: list[InferencePolicy] = []
    for pf in protos:
        for t_on in tta:
            for blend in blends:
                base = InferencePolicy(mode="hybrid", threshold=default_threshold, prototype_fine=pf,
                                       flip_tta_within=t_on, flip_tta_baseline=t_on, within_blend=blend)
                out.append(base)
                tuned = _tuned_threshold(base, parts, y, structure, default_threshold)
                if not np.isclose(tuned, default_threshold):
                    out.append(base.replace(threshold=tuned))
    if structure.hierarchical:
        for t_on in tta:
            for blend in blends:
                out.append(InferencePolicy(mode="heads", flip_tta_within=t_on, flip_tta_baseline=t_on,
                                           within_blend=blend, prototype_fine=False))
    for t_on in tta:
        out.append(InferencePolicy(mode="baseline", flip_tta_within=t_on, flip_tta_baseline=t_on, prototype_fine=False))
    out.append(InferencePolicy(mode="prototype", flip_tta_within=False, flip_tta_baseline=False, prototype_fine=False))
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class Selection:
    policy: InferencePolicy
    scores: tuple[tuple[InferencePolicy, float], ...]  # (candidate, validation accuracy) in candidate order

    def to_dict(self) -> dict:
        return {"chosen": self.policy.name, "policy": self.policy.to_dict(),
                "candidates": [{"name": p.name, "policy": p.to_dict(), "validation_accuracy": round(a, 6)}
                               for p, a in self.scores],
                "validation_accuracy": {p.name: round(a, 6) for p, a in self.scores},
                "tie_rule": TIE_RULE}


TIE_RULE = "highest validation accuracy; among equals the first candidate (the paper's hybrid first)"


def best_candidate(selection: Mapping[str, Any], mode: str) -> InferencePolicy | None:
    """The best candidate of one mode in a saved selection (``Selection.to_dict()``), by the tie rule."""
    best, best_acc = None, -1.0
    for c in selection.get("candidates") or []:
        pol = InferencePolicy.from_dict(c["policy"])
        if pol.mode == mode and c["validation_accuracy"] > best_acc + 1e-12:
            best, best_acc = pol, c["validation_accuracy"]
    return best


def select_policy(candidates: Sequence[InferencePolicy], parts: PartOutputs, y: np.ndarray,
                  structure: Structure) -> Selection:
    """Score every candidate on validation (fine accuracy) and keep the best by the tie rule."""
    if not candidates:
        raise ValueError("select_policy needs at least one candidate")
    y = np.asarray(y, dtype=np.int64)
    scores = []
    best, best_acc = None, -1.0
    for pol in candidates:
        dec, _ = apply_policy(pol, parts, structure)
        acc = float(np.mean(dec.fine == y)) if len(y) else 0.0
        scores.append((pol, acc))
        if acc > best_acc + 1e-12:
            best, best_acc = pol, acc
    return Selection(policy=best, scores=tuple(scores))
