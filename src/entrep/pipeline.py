"""Fit and evaluate orchestration: data -> features -> models -> hybrid -> gallery -> scores.

``fit`` trains every part of an :class:`~entrep.model.EntrepModel` on all of the
given data (holding out a stratified part internally for early stopping,
threshold tuning and the flip-TTA decision when no validation data is given).
``evaluate`` scores all of the given data: every classification system
(prototype, baseline head, hybrid) and retrieval (leave-one-out over the data).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import numpy as np

from entrep.classify.hybrid import tune_threshold
from entrep.config import FitConfig
from entrep.data.records import Dataset, Record
from entrep.errors import UserError
from entrep.model import EntrepModel, ImageFeatures, l2n

log = logging.getLogger(__name__)

Stage = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def _text_for(r: Record, taxonomy, label: str | None = None) -> str:
    """The caption of an image, or its class's fallback prompt (paper Table 3)."""
    return r.text or taxonomy.prompt(label or r.label)


def internal_split(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Stratified, duplicate-aware train/val split of the fitting data."""
    from entrep.data.split import split_dataset

    parts = split_dataset(ds, seed=seed, ratios=(1.0 - fraction, fraction, 0.0))
    train, val = parts["train"], parts["val"]
    if len(val) == 0 or len(train) == 0:
        raise UserError(
            f"{ds.source or 'data'}: too few images ({len(ds)}) to hold out a validation part; pass --val DATA"
        )
    return train, val


def view_labels(y: np.ndarray, view: str, taxonomy) -> np.ndarray:
    """Labels of a training view: a flipped view carries the mirror class (nose-left -> nose-right);
    classes without a mirror (vc states, throat) keep theirs."""
    from entrep.data.augment import is_flipped

    y = np.asarray(y, dtype=np.int64)
    return taxonomy.flip_permutation()[y] if is_flipped(view) else y


def _check_labels(ds: Dataset, what: str) -> None:
    missing = [r.name for r in ds.records if r.label is None]
    if missing:
        raise UserError(f"{what}: {len(missing)} images have no label (first: {missing[0]}); fitting needs labels")


def _features(model: EntrepModel, ds: Dataset, views=("orig", "flip")) -> ImageFeatures:
    return model.image_features([r.image for r in ds.records], flips="flip" in views)


def fit(
    data: Dataset,
    *,
    val: Dataset | None = None,
    config: FitConfig | None = None,
    profile=None,
    cache_root: str | Path | None = None,
    device: str | None = None,
    progress: bool = False,
    stage: Stage = _noop,
) -> EntrepModel:
    """Train a model on ``data``; returns it unsaved (see :func:`entrep.bundle.save_model`)."""
    from entrep.classify.align import JointAlignment
    from entrep.classify.fusion import fuse
    from entrep.classify.heads import HeadClassifier
    from entrep.classify.prototypes import PrototypeClassifier
    from entrep.data.augment import list_views
    from entrep.encoders.profiles import resolve_profile

    cfg = config or FitConfig()
    tax = data.taxonomy
    _check_labels(data, data.source or "data")
    t0 = time.perf_counter()
    if val is None:
        train, val = internal_split(data, cfg.val_fraction, cfg.seed)
        val_source = f"internal {cfg.val_fraction:.0%} stratified hold-out"
    else:
        _check_labels(val, val.source or "val")
        train, val_source = data, val.source or "given validation data"
    counts = {c: sum(r.label == c for r in train.records) for c in tax.classes}
    missing = [c for c, n in counts.items() if n == 0]
    if missing:
        raise UserError(f"training data has no images of {missing}; every class of taxonomy {tax.name!r} needs some")

    prof = profile if profile is not None else resolve_profile(cfg.profile)
    model = EntrepModel(
        taxonomy=tax, config=cfg, profile=prof, align=None, proto_fine=None, proto_group=None,
        group_head=None, within_heads={}, baseline=None, threshold=cfg.threshold,
    )
    feat = model.featurizer(cache_root=cache_root, device=device, progress=progress)

    # ---- features: every view of every training image ---------------------
    views = list_views(cfg.n_aug, flip=cfg.flip_views)
    paths = [r.image for r in train.records]
    y = np.array([tax.class_id(r.label) for r in train.records])
    perm = tax.flip_permutation()
    head_X, head_y, head_src = [], [], []
    for v in views:
        stage(f"features: training images, view {v}")
        head_X.append(feat.images("head", paths, v))
        head_y.append(view_labels(y, v, tax))
        head_src.append(np.arange(len(paths)))
    H = np.concatenate(head_X)
    Hy = np.concatenate(head_y)
    Hsrc = np.concatenate(head_src)
    stage("features: validation images")
    vfeats = _features(model, val)
    vy = np.array([tax.class_id(r.label) for r in val.records])

    # ---- joint space: alignment (offline) and prototypes -------------------
    stage("features: training clip view + captions")
    V = head_X[0] if feat.shares_encoder() else feat.images("clip", paths, "orig")
    labels = [r.label for r in train.records]
    texts = [_text_for(r, tax) for r in train.records]
    if cfg.flip_views:
        V_flip = head_X[1] if feat.shares_encoder() and views[1] == "flip" else feat.images("clip", paths, "flip")
        flip_labels = [tax.mirror_of(lbl) for lbl in labels]
        # a caption describes a finding (side-free); a prompt names the side, so it follows the flip
        flip_texts = [r.text or tax.prompt(fl) for r, fl in zip(train.records, flip_labels)]
        V_all = np.concatenate([V, V_flip])
        src_all = np.concatenate([np.arange(len(V)), np.arange(len(V))])
        texts_all = texts + flip_texts
        labels_all = labels + flip_labels
    else:
        V_all, texts_all, labels_all = V, texts, labels
        src_all = np.arange(len(V))
    U_all = feat.texts(texts_all)
    y_all = np.array([tax.class_id(lbl) for lbl in labels_all])
    if not getattr(prof, "joint", False):
        stage("alignment: projecting images and texts into one space")
        _, text_ids = np.unique(np.array(texts_all, dtype=object).astype(str), return_inverse=True)
        prompts_U = feat.texts([tax.prompt(c) for c in tax.classes])
        model.align = JointAlignment(
            dim=cfg.align.dim, epochs=cfg.align.epochs, lr=cfg.align.lr, temperature=cfg.align.temperature,
            seed=cfg.seed,
        ).fit(V_all, U_all, text_ids=text_ids, labels=y_all, prompts=prompts_U, sample_groups=src_all)
    v_joint = model.joint_images(V)
    u_joint = model.joint_texts(U_all[: len(texts)])  # the unflipped images' texts come first
    z = fuse(v_joint, u_joint)
    stage("prototypes: one per class and one per group")
    model.proto_fine = PrototypeClassifier().fit(z, y, classes=list(range(tax.n_classes)))
    gid = tax.group_ids()
    if tax.hierarchical:
        model.proto_group = PrototypeClassifier().fit(z, gid[y], classes=list(range(len(tax.group_names))))

    # ---- heads -------------------------------------------------------------
    hc = cfg.head

    def new_head() -> HeadClassifier:
        return HeadClassifier(
            dropout=hc.dropout, lr=hc.lr, weight_decay=hc.weight_decay, max_epochs=hc.max_epochs,
            batch_size=hc.batch_size, patience=hc.patience, oversample=True, seed=cfg.seed,
        )

    Xv = np.concatenate([vfeats.head, vfeats.head_flip])
    yv = np.concatenate([vy, perm[vy]])
    stage(f"heads: baseline over {tax.n_classes} classes")
    model.baseline = new_head().fit(H, Hy, n_classes=tax.n_classes, X_val=Xv, y_val=yv, sample_groups=Hsrc)
    if tax.hierarchical:
        stage(f"heads: coarse over {len(tax.group_names)} groups")
        model.group_head = new_head().fit(
            H, gid[Hy], n_classes=len(tax.group_names), X_val=Xv, y_val=gid[yv], sample_groups=Hsrc
        )
        for g, cls in enumerate(model.members):
            if len(cls) < 2:
                continue
            stage(f"heads: {tax.group_names[g]} ({' / '.join(tax.classes[c] for c in cls)})")
            pos = {c: i for i, c in enumerate(cls)}
            rows = np.isin(Hy, cls)
            vrows = np.isin(yv, cls)
            model.within_heads[g] = new_head().fit(
                H[rows], np.array([pos[c] for c in Hy[rows]]), n_classes=len(cls),
                X_val=Xv[vrows], y_val=np.array([pos[c] for c in yv[vrows]]), sample_groups=Hsrc[rows],
            )

    # ---- hybrid: flip TTA decision and threshold tuning on validation --------
    stage("hybrid: flip test-time augmentation and threshold on validation")
    model.flip_tta, tta_report = _choose_flip_tta(model, vfeats, vy)
    blend_report = _choose_within_blend(model, vfeats, vy, cfg.threshold) if tax.hierarchical else None
    out = model.system_outputs(vfeats)
    tuned = None
    if tax.hierarchical:
        conf = out.proto_group.max(axis=1)
        proto_dec = model.decide(out, threshold=-1.0)  # group always from prototypes
        head_dec = model.decide(out, threshold=1.01)  # group always from the head
        tuned = tune_threshold(proto_dec.fine == vy, head_dec.fine == vy, conf, default=cfg.threshold)
    else:
        conf = out.proto_fine.max(axis=1)
        tuned = tune_threshold(out.proto_fine.argmax(1) == vy, out.baseline.argmax(1) == vy, conf, cfg.threshold)
    model.tuned_threshold = tuned
    acc_default = float(np.mean(model.decide(out, threshold=cfg.threshold).fine == vy))
    acc_tuned = float(np.mean(model.decide(out, threshold=tuned).fine == vy))
    model.use_tuned = acc_tuned > acc_default
    model.encoders = feat.describe()
    model.training = {
        "n_train": len(train),
        "n_val": len(val),
        "validation": val_source,
        "class_counts": counts,
        "views": views,
        "val_accuracy": {"threshold_default": acc_default, "threshold_tuned": acc_tuned},
        "flip_tta_validation": tta_report,
        "within_blend_validation": blend_report,
        "seconds": None,
    }

    # ---- gallery: every image of the fitting data ----------------------------
    stage("gallery: indexing the fitting images for search")
    build_gallery(model, data)
    model.training["seconds"] = round(time.perf_counter() - t0, 1)
    return model


def _choose_flip_tta(model: EntrepModel, vfeats: ImageFeatures, vy: np.ndarray) -> tuple[dict, dict]:
    """Keep flip TTA for the within-group heads / baseline only where it does not hurt on validation."""
    report = {}
    choice = {}
    for part in ("within", "baseline"):
        accs = {}
        for on in (False, True):
            model.flip_tta = {**choice, part: on}
            out = model.system_outputs(vfeats)
            if part == "baseline":
                pred = out.baseline.argmax(1)
            else:
                pred = model.decide(out, threshold=1.01).fine  # heads only: isolates the within-group heads
            accs[on] = float(np.mean(pred == vy))
        choice[part] = accs[True] >= accs[False]
        report[part] = {"without": accs[False], "with": accs[True], "enabled": choice[part]}
    model.flip_tta = choice
    return choice, report


def _choose_within_blend(model: EntrepModel, vfeats: ImageFeatures, vy: np.ndarray, threshold: float) -> dict:
    """Blend each side/state head with the baseline head only where that raises validation accuracy."""
    accs = {}
    for on in (False, True):
        model.within_blend = on
        accs[on] = float(np.mean(model.decide(model.system_outputs(vfeats), threshold=threshold).fine == vy))
    model.within_blend = accs[True] > accs[False]
    return {"without": accs[False], "with": accs[True], "enabled": model.within_blend}


def gallery_metadata(records: list[Record], taxonomy, hashes: list[str],
                     labels: list[str | None] | None = None) -> list[dict]:
    """Row metadata of a gallery; ``labels`` overrides missing labels (predicted ones)."""
    out = []
    for i, (r, h) in enumerate(zip(records, hashes)):
        label = r.label if r.label is not None else (labels[i] if labels else None)
        out.append({
            "path": str(r.image),
            "name": r.name,
            "label": label,
            "group": taxonomy.group_of(label) if label else None,
            "caption": r.text,
            "content_hash": h,
        })
    return out


def _gallery_rows(model: EntrepModel, data: Dataset) -> tuple[np.ndarray, list[dict]]:
    unlabelled = any(r.label is None for r in data.records)
    # flipped views only matter for predicting missing labels (flip TTA)
    feats = _features(model, data, views=("orig", "flip") if unlabelled else ("orig",))
    labels = None
    if unlabelled:
        dec, _ = model.predict_features(feats)
        labels = [model.taxonomy.class_name(int(i)) for i in dec.fine]
    hashes = model.file_hashes([r.image for r in data.records])
    return model.retrieval_vectors(feats), gallery_metadata(data.records, model.taxonomy, hashes, labels)


def build_gallery(model: EntrepModel, data: Dataset) -> dict:
    """(Re)build the model's search index over ``data``.

    With an existing gallery, rows whose image content is no longer present are
    removed and only new images are embedded and added (the feature cache makes
    unchanged images free). Unlabelled images get the model's predicted label.
    """
    from entrep.retrieval.index import GalleryIndex

    if model.gallery is not None:
        old = model.gallery
        old_hash = {m.content_hash: m.id for m in old.items}
        hashes = model.file_hashes([r.image for r in data.records])
        new_hash = set(hashes)
        gone = [i for h, i in old_hash.items() if h not in new_hash]
        add_idx = [k for k, h in enumerate(hashes) if h not in old_hash]
        if gone:
            old.remove(gone)
        if add_idx:
            vecs, meta = _gallery_rows(model, data.subset(add_idx))
            old.add(vecs, meta)
        return {"removed": len(gone), "added": len(add_idx), "size": len(old)}
    vecs, meta = _gallery_rows(model, data)
    index = GalleryIndex(vecs.shape[1])
    index.add(vecs, meta)
    model.gallery = index
    return {"removed": 0, "added": len(meta), "size": len(index)}


# ---------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------


def evaluate(model: EntrepModel, data: Dataset, *, stage: Stage = _noop) -> tuple[dict, dict]:
    """Score every system on ``data``. Returns (evaluation dict in GUIDE schema, artefacts for plots)."""
    from entrep.report.metrics import classification_summary

    tax = model.taxonomy
    if data.taxonomy.classes != tax.classes:
        raise UserError(
            f"{data.source}: its classes {list(data.taxonomy.classes)} differ from the model's {list(tax.classes)}"
        )
    _check_labels(data, data.source or "data")
    stage("features: evaluation images")
    feats = _features(model, data)
    y = [r.label for r in data.records]
    stage("classification: prototypes, heads, hybrid")
    out = model.system_outputs(feats)
    dec = model.decide(out)
    names = list(tax.classes)
    fine_name = lambda ids: [names[int(i)] for i in ids]  # noqa: E731
    groups = list(tax.group_names)
    y_group = [tax.group_of(lbl) for lbl in y]
    systems: dict = {
        "prototype": {"fine": classification_summary(y, fine_name(out.proto_fine.argmax(1)), names)},
        "baseline": {"fine": classification_summary(y, fine_name(out.baseline.argmax(1)), names)},
        "hybrid": {"fine": classification_summary(y, fine_name(dec.fine), names)},
    }
    confusions = {
        "prototype-fine": (y, fine_name(out.proto_fine.argmax(1)), names),
        "baseline-fine": (y, fine_name(out.baseline.argmax(1)), names),
        "hybrid-fine": (y, fine_name(dec.fine), names),
    }
    results_at = {}
    if tax.hierarchical:
        proto_g = [groups[i] for i in out.proto_group.argmax(1)]
        hyb_g = [groups[i] for i in dec.group]
        base_g = [tax.group_of(n) for n in fine_name(out.baseline.argmax(1))]
        systems["prototype"]["coarse"] = classification_summary(y_group, proto_g, groups)
        systems["baseline"]["coarse"] = classification_summary(y_group, base_g, groups)
        systems["hybrid"]["coarse"] = classification_summary(y_group, hyb_g, groups)
        confusions["prototype-coarse"] = (y_group, proto_g, groups)
        confusions["hybrid-coarse"] = (y_group, hyb_g, groups)
    thresholds = {model.threshold}
    if model.tuned_threshold is not None:
        thresholds.add(model.tuned_threshold)
    for thr in sorted(thresholds):
        d = model.decide(out, threshold=thr)
        entry = {"fine": classification_summary(y, fine_name(d.fine), names), "deferred_fraction": float(np.mean(~d.from_prototype))}
        if tax.hierarchical:
            entry["coarse"] = classification_summary(y_group, [groups[i] for i in d.group], groups)
        results_at[f"{thr:.4f}"] = entry
    evaluation: dict = {
        "n_images": len(data),
        "classification": {
            "fine": systems["hybrid"]["fine"],
            **({"coarse": systems["hybrid"]["coarse"]} if tax.hierarchical else {}),
            "systems": systems,
        },
        "hybrid": {
            "threshold": model.threshold,
            "tuned_threshold": model.tuned_threshold,
            "active_threshold": model.active_threshold,
            "flip_tta": model.flip_tta,
            "within_blend": model.within_blend,
            "deferred_fraction": float(np.mean(~dec.from_prototype)),
            "results_at_thresholds": results_at,
        },
        "model": {
            "profile": getattr(model.profile, "name", str(model.profile)),
            "taxonomy": tax.name,
            "encoders": {k: v.get("name") for k, v in model.encoders.items() if isinstance(v, dict)},
            "trained_on": model.training.get("n_train"),
        },
        "data": {
            "source": "(hidden)",
            "n_images": len(data),
            "class_counts": {c: sum(lbl == c for lbl in y) for c in names},
        },
    }
    stage("retrieval: image->image and text->image, leave-one-out")
    from entrep.retrieval.search import evaluate_retrieval

    evaluation["retrieval"] = evaluate_retrieval(model, data, feats, dec)
    joint = model.joint_images(feats.clip)
    artefacts = {
        "confusions": confusions,
        "embeddings": {
            "joint space": (joint, y, y_group),
            "head features": (l2n(feats.head), y, y_group),
        },
    }
    return evaluation, artefacts
