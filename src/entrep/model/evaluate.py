"""Score a fitted model on labelled data: every classification system, the policy, retrieval.

Returns the evaluation in the GUIDE's ``evaluate --json`` schema plus the
artefacts the report plots (confusions, embeddings).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from entrep.classify.policy import apply_policy
from entrep.data.records import Dataset
from entrep.errors import UserError
from entrep.model.model import EntrepModel, l2n
from entrep.model.train import image_features

Stage = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def _systems(model: EntrepModel, parts, y: list[str]) -> tuple[dict, dict, dict]:
    """Per-system summaries, confusions and decisions: each component alone, the best hybrid, the policy."""
    from entrep.classify.policy import InferencePolicy
    from entrep.report.metrics import classification_summary, fine_and_coarse_summary

    tax = model.taxonomy
    names, groups = list(tax.classes), list(tax.group_names)
    y_group = [tax.group_of(lbl) for lbl in y]
    pol = model.policy
    hybrid = pol if pol.mode == "hybrid" else _best_hybrid(model)
    decisions = {
        "prototype": apply_policy(InferencePolicy(mode="prototype", flip_tta_within=False, flip_tta_baseline=False),
                                  parts, model.structure)[0],
        "baseline": apply_policy(InferencePolicy(mode="baseline", flip_tta_baseline=pol.flip_tta_baseline),
                                 parts, model.structure)[0],
        "hybrid": apply_policy(hybrid, parts, model.structure)[0],
    }
    if pol.mode != "hybrid":
        decisions["policy"] = apply_policy(pol, parts, model.structure)[0]
    systems, confusions = {}, {}
    for name, dec in decisions.items():
        pred = [names[int(i)] for i in dec.fine]
        # every decision's group is its fine class's group, except the prototypes', which have their own
        systems[name] = fine_and_coarse_summary(y, pred, tax)
        confusions[f"{name}-fine"] = (y, pred, names)
        if tax.hierarchical and name == "prototype":
            g_pred = [groups[i] for i in parts.proto_group.argmax(1)]
            systems[name]["coarse"] = classification_summary(y_group, g_pred, groups)
        if tax.hierarchical and name != "baseline":
            confusions[f"{name}-coarse"] = (y_group, g_pred if name == "prototype" else
                                            [tax.group_of(p) for p in pred], groups)
    return systems, confusions, decisions


def _best_hybrid(model: EntrepModel):
    """The best hybrid candidate of the validation selection (the paper's "hybrid" row)."""
    from entrep.classify.policy import InferencePolicy, best_candidate

    sel = (model.training or {}).get("policy_selection") or {}
    return best_candidate(sel, "hybrid") or InferencePolicy(threshold=model.config.threshold)


def check_labelled(data: Dataset, tax) -> None:
    """Evaluation data must have the model's classes and a label on every image (one UserError otherwise)."""
    if data.taxonomy.classes != tax.classes:
        raise UserError(
            f"{data.source}: its classes {list(data.taxonomy.classes)} differ from the model's {list(tax.classes)}")
    missing = [r.name for r in data.records if r.label is None]
    if missing:
        raise UserError(f"{data.source or 'data'}: {len(missing)} images have no label (first: {missing[0]}); "
                        "evaluation needs labels")


def model_and_data(model, data: Dataset, y: list, names: list, trained_on, **model_extra) -> dict:
    """The evaluation's ``model`` and ``data`` entries (single models and ensembles)."""
    return {
        "model": {
            **model_extra,
            "profile": getattr(model.profile, "name", str(model.profile)),
            "taxonomy": model.taxonomy.name,
            "encoders": {k: v.get("name") for k, v in model.encoders.items() if isinstance(v, dict)},
            "trained_on": trained_on,
        },
        "data": {"source": "(hidden)", "n_images": len(data), "class_counts": {c: sum(v == c for v in y) for c in names}},
    }


def retrieval_scores(model, data: Dataset, feats, decision, stage: Stage = _noop) -> dict:
    """Leave-one-out image->image and text->image scores, plus the gallery index's build-time recall."""
    from entrep.retrieval.search import evaluate_retrieval

    stage("retrieval: image->image and text->image, leave-one-out")
    out = evaluate_retrieval(model, data, feats, decision)
    approx = getattr(model.gallery, "approximation", None) if model.gallery is not None else None
    if approx:
        out["index"] = approx
    return out


def evaluate(model: EntrepModel, data: Dataset, *, stage: Stage = _noop) -> tuple[dict, dict]:
    """Score every system on ``data``. Returns (evaluation dict in the GUIDE schema, artefacts for plots)."""
    from entrep.report.metrics import classification_summary

    tax = model.taxonomy
    check_labelled(data, tax)
    stage("features: evaluation images")
    feats = image_features(model.extractor, data)
    y = [r.label for r in data.records]
    stage("classification: prototypes, heads, hybrid, policy")
    parts = model.part_outputs(feats)
    systems, confusions, decisions = _systems(model, parts, y)
    chosen = decisions.get("policy", decisions["hybrid"])
    names, groups = list(tax.classes), list(tax.group_names)
    pol = model.policy
    results_at = {}
    hybrid_pol = pol if pol.mode == "hybrid" else _best_hybrid(model)
    for thr in sorted({model.config.threshold, hybrid_pol.threshold}):
        d = apply_policy(hybrid_pol.replace(threshold=thr), parts, model.structure)[0]
        entry = {"fine": classification_summary(y, [names[int(i)] for i in d.fine], names),
                 "deferred_fraction": float(np.mean(~d.from_prototype))}
        if tax.hierarchical:
            entry["coarse"] = classification_summary([tax.group_of(v) for v in y], [groups[int(i)] for i in d.group],
                                                     groups)
        results_at[f"{thr:.4f}"] = entry
    top = "policy" if "policy" in systems else "hybrid"
    evaluation: dict = {
        "n_images": len(data),
        "classification": {
            "fine": systems[top]["fine"],
            **({"coarse": systems[top]["coarse"]} if tax.hierarchical else {}),
            "systems": systems,
        },
        "hybrid": {
            "threshold": hybrid_pol.threshold,
            "default_threshold": model.config.threshold,
            "tuned_threshold": hybrid_pol.threshold if hybrid_pol.threshold != model.config.threshold else None,
            "flip_tta": bool(hybrid_pol.flip_tta_within or hybrid_pol.flip_tta_baseline),
            "within_blend": hybrid_pol.within_blend,
            "prototype_fine": hybrid_pol.prototype_fine,
            "deferred_fraction": float(np.mean(~chosen.from_prototype)),
            "results_at_thresholds": results_at,
        },
        "policy": {"chosen": pol.name, "policy": pol.to_dict(),
                   "validation": (model.training or {}).get("policy_selection", {}).get("validation_accuracy", {})},
        **model_and_data(model, data, y, names, model.training.get("n_train")),
    }
    evaluation["retrieval"] = retrieval_scores(model, data, feats, chosen, stage)
    y_group = [tax.group_of(v) for v in y]
    artefacts = {
        "confusions": confusions,
        "embeddings": {"joint space": (model.joint_images(feats.clip), y, y_group),
                       "head features": (l2n(feats.head), y, y_group)},
    }
    return evaluation, artefacts
