"""Training as stages that take and return values; the model is built once, at the end.

    check + split  ->  (adaptation)  ->  view features  ->  joint space  ->  prototypes
                   ->  heads  ->  (metric head)  ->  policy on validation  ->  model
                   ->  soft-ranking alpha on validation  ->  gallery

``fit`` trains on all of the given data, holding out a stratified part
internally for early stopping and the policy choice when no validation data
is given.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from entrep.classify.policy import Selection, Structure, candidate_policies, select_policy
from entrep.config import FitConfig
from entrep.data.records import Dataset, Record
from entrep.errors import UserError
from entrep.model.model import EntrepModel, ImageFeatures, ModelParts, l2n

log = logging.getLogger(__name__)

Stage = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def view_labels(y: np.ndarray, view: str, taxonomy) -> np.ndarray:
    """Labels of a training view: a flipped view carries the mirror class (nose-left -> nose-right);
    classes without a mirror (vc states, throat) keep theirs."""
    from entrep.data.augment import is_flipped

    y = np.asarray(y, dtype=np.int64)
    return taxonomy.flip_permutation()[y] if is_flipped(view) else y


# ---- stage 1: checks and the validation split ----------------------------------


def _check_labels(ds: Dataset, what: str) -> None:
    missing = [r.name for r in ds.records if r.label is None]
    if missing:
        raise UserError(f"{what}: {len(missing)} images have no label (first: {missing[0]}); fitting needs labels")


def split_for_fit(data: Dataset, val: Dataset | None, cfg: FitConfig) -> tuple[Dataset, Dataset, str]:
    """(train, val, description); checked up front so a bad set-up fails before any feature work."""
    from entrep.data.split import split_dataset

    tax = data.taxonomy
    _check_labels(data, data.source or "data")
    if val is not None:
        _check_labels(val, val.source or "val")
        if val.taxonomy.classes != tax.classes:
            raise UserError(f"{val.source or 'val'}: its classes differ from the training data's {list(tax.classes)}")
        train, source = data, val.source or "given validation data"
    else:
        parts = split_dataset(data, seed=cfg.seed, ratios=(1.0 - cfg.val_fraction, cfg.val_fraction, 0.0))
        train, val = parts["train"], parts["val"]
        source = f"internal {cfg.val_fraction:.0%} stratified hold-out"
        if len(val) == 0 or len(train) == 0:
            raise UserError(f"{data.source or 'data'}: too few images ({len(data)}) to hold out a validation part; "
                            "pass --val DATA")
    counts = {c: sum(r.label == c for r in train.records) for c in tax.classes}
    missing = [c for c, n in counts.items() if n == 0]
    if missing:
        raise UserError(f"training data has no images of {missing}; every class of taxonomy {tax.name!r} needs some")
    if tax.hierarchical:
        seen = {tax.group_of(r.label) for r in val.records}
        lacking = [g for g in tax.group_names if g not in seen]
        if lacking:
            log.warning("the validation part (%s, %d images) has no images of group(s) %s: their heads stop early on "
                        "a hold-out of their training rows and the policy is chosen without them; pass --val DATA "
                        "with every group for a better choice", source, len(val), lacking)
    return train, val, source


# ---- stage 2: features of every training view ----------------------------------


@dataclass(frozen=True)
class ViewFeatures:
    """Head features of every view of every training image, with labels and source image index."""

    X: np.ndarray
    y: np.ndarray
    src: np.ndarray
    views: tuple[str, ...]
    by_view: dict


def view_features(extractor, train: Dataset, cfg: FitConfig, stage: Stage) -> ViewFeatures:
    from entrep.data.augment import list_views

    tax = train.taxonomy
    views = tuple(list_views(cfg.n_aug, flip=cfg.flip_views))
    paths = [r.image for r in train.records]
    y = np.array([tax.class_id(r.label) for r in train.records])
    by_view = {}
    for v in views:
        stage(f"features: training images, view {v}")
        by_view[v] = extractor.images("head", paths, v)
    X = np.concatenate([by_view[v] for v in views])
    Y = np.concatenate([view_labels(y, v, tax) for v in views])
    src = np.concatenate([np.arange(len(paths)) for _ in views])
    return ViewFeatures(X=X, y=Y, src=src, views=views, by_view=by_view)


def image_features(extractor, ds: Dataset, *, flips: bool = True) -> ImageFeatures:
    paths = [r.image for r in ds.records]
    head = extractor.images("head", paths, "orig")
    clip = head if extractor.shares_encoder() else extractor.images("clip", paths, "orig")
    return ImageFeatures(clip=clip, head=head, head_flip=extractor.images("head", paths, "flip") if flips else None)


# ---- stage 3: the joint image-text space and prototypes ---------------------------


def _texts(records: list[Record], labels: list[str], taxonomy) -> list[str]:
    """A caption describes a finding (side-free); a prompt names the side, so it follows the label."""
    return [r.text or taxonomy.prompt(lbl) for r, lbl in zip(records, labels)]


def joint_space(extractor, train: Dataset, views: ViewFeatures, profile, cfg: FitConfig, stage: Stage):
    """Fit the alignment (offline profile) and return (align or None, joint image rows, joint text rows)."""
    from entrep.classify.align import JointAlignment

    tax = train.taxonomy
    paths = [r.image for r in train.records]
    stage("features: training clip view + captions")
    shares = extractor.shares_encoder()
    V = views.by_view["orig"] if shares else extractor.images("clip", paths, "orig")
    labels = [r.label for r in train.records]
    V_all, labels_all, src = [V], [labels], [np.arange(len(V))]
    if cfg.flip_views:
        V_all.append(views.by_view["flip"] if shares and "flip" in views.by_view else extractor.images("clip", paths, "flip"))
        labels_all.append([tax.mirror_of(lbl) for lbl in labels])
        src.append(np.arange(len(V)))
    texts = [t for lbls in labels_all for t in _texts(train.records, lbls, tax)]
    V_cat, src_cat = np.concatenate(V_all), np.concatenate(src)
    y_cat = np.array([tax.class_id(lbl) for lbls in labels_all for lbl in lbls])
    U = extractor.texts(texts)
    align = None
    if not getattr(profile, "joint", False):
        stage("alignment: projecting images and texts into one space")
        _, text_ids = np.unique(np.array(texts, dtype=object).astype(str), return_inverse=True)
        a = cfg.align
        align = JointAlignment(dim=a.dim, epochs=a.epochs, lr=a.lr, temperature=a.temperature, seed=cfg.seed).fit(
            V_cat, U, text_ids=text_ids, labels=y_cat, prompts=extractor.texts([tax.prompt(c) for c in tax.classes]),
            sample_groups=src_cat)
    project_i = (lambda X: l2n(align.transform_images(X))) if align is not None else l2n
    project_t = (lambda X: l2n(align.transform_texts(X))) if align is not None else l2n
    return align, project_i(V), project_t(U[: len(V)])  # the unflipped images' texts come first


def prototypes(v_joint: np.ndarray, u_joint: np.ndarray, y: np.ndarray, taxonomy, stage: Stage,
               fusion: str = "linear"):
    """Fine and group prototypes over fused image-text rows: ``linear`` z = s*v + (1-s)*u (the paper's
    eq. 2) or ``slerp`` z = slerp(v, u, 0.5) (``FitConfig.fusion``)."""
    from entrep.classify.fusion import fuse_by
    from entrep.classify.prototypes import PrototypeClassifier

    stage(f"prototypes: one per class and one per group ({fusion} fusion)")
    z = fuse_by(fusion, v_joint, u_joint)
    fine = PrototypeClassifier().fit(z, y, classes=list(range(taxonomy.n_classes)))
    group = None
    if taxonomy.hierarchical:
        gid = taxonomy.group_ids()
        group = PrototypeClassifier().fit(z, gid[y], classes=list(range(len(taxonomy.group_names))))
    return fine, group


# ---- stage 4: heads ---------------------------------------------------------------


def heads(views: ViewFeatures, val_feats: ImageFeatures, vy: np.ndarray, taxonomy, cfg: FitConfig, stage: Stage):
    """(baseline, group head or None, within-group heads) trained on every training view."""
    from entrep.classify.heads import HeadClassifier

    hc = cfg.head

    def new_head() -> HeadClassifier:
        return HeadClassifier(dropout=hc.dropout, lr=hc.lr, weight_decay=hc.weight_decay, max_epochs=hc.max_epochs,
                              batch_size=hc.batch_size, patience=hc.patience, oversample=True, seed=cfg.seed)

    H, Hy, src = views.X, views.y, views.src
    perm = taxonomy.flip_permutation()
    Xv = np.concatenate([val_feats.head, val_feats.head_flip])
    yv = np.concatenate([vy, perm[vy]])
    stage(f"heads: baseline over {taxonomy.n_classes} classes")
    baseline = new_head().fit(H, Hy, n_classes=taxonomy.n_classes, X_val=Xv, y_val=yv, sample_groups=src)
    group_head, within = None, {}
    if taxonomy.hierarchical:
        gid = taxonomy.group_ids()
        stage(f"heads: coarse over {len(taxonomy.group_names)} groups")
        group_head = new_head().fit(H, gid[Hy], n_classes=len(taxonomy.group_names), X_val=Xv, y_val=gid[yv],
                                    sample_groups=src)
        for g, cls in enumerate(Structure.from_taxonomy(taxonomy).members):
            if len(cls) < 2:
                continue
            stage(f"heads: {taxonomy.group_names[g]} ({' / '.join(taxonomy.classes[c] for c in cls)})")
            pos = {c: i for i, c in enumerate(cls)}
            rows, vrows = np.isin(Hy, cls), np.isin(yv, cls)
            has_val = bool(vrows.any())  # a group absent from validation: the head holds out its own rows
            within[g] = new_head().fit(
                H[rows], np.array([pos[c] for c in Hy[rows]]), n_classes=len(cls),
                X_val=Xv[vrows] if has_val else None,
                y_val=np.array([pos[c] for c in yv[vrows]]) if has_val else None, sample_groups=src[rows])
    return baseline, group_head, within


# ---- stage 5: the inference policy ---------------------------------------------------


def choose_policy(model: EntrepModel, val_feats: ImageFeatures, vy: np.ndarray, cfg: FitConfig, stage: Stage) -> Selection:
    stage("policy: hybrid threshold, flip TTA, blends and each part alone, scored on validation")
    parts = model.part_outputs(val_feats)
    structure = model.structure
    cands = candidate_policies(parts, vy, structure, default_threshold=cfg.threshold, has_flip=True)
    return select_policy(cands, parts, vy, structure)


# ---- stage 6: soft class-aware ranking ----------------------------------------------------


def rank_alpha(model: EntrepModel, train_feats: ImageFeatures, y: np.ndarray, val_feats: ImageFeatures,
               vy: np.ndarray, stage: Stage) -> dict:
    """alpha of soft ranking (``cosine + alpha * p_q(class of g)``) per level, by validation MRR.

    Validation images are the queries and training images the gallery, in the model's
    retrieval space, with the model's (policy's) class probabilities; relevance is the fine
    class. Returns the model's ``rank_tuning``: chosen alpha and the MRR of every alpha tried.
    """
    from entrep.finetune.metric import class_bins, tune_rank_alpha

    stage("retrieval: soft class-aware ranking alpha, validation images against training images")
    tax = model.taxonomy
    S = (model.image_query_vectors(val_feats) @ model.retrieval_vectors(train_feats).T) * model.score_scale("image")
    dec, _ = model.predict_features(val_feats)
    out: dict = {"alpha": {}, "validation_mrr": {}, "n_queries": int(len(vy)), "n_gallery": int(len(y)),
                 "space": model.config.retrieval.space}
    for level in ("fine", "coarse") if tax.hierarchical else ("fine",):
        P, bin_of_class, _ = class_bins(tax, dec.fine_proba, level)
        alpha, table = tune_rank_alpha(S, P, y, vy, gallery_bins=bin_of_class[y])
        out["alpha"][level] = alpha
        out["validation_mrr"][level] = [[a, round(v, 6)] for a, v in table.items()]
        log.info("soft ranking (%s): alpha %s, validation MRR %.4f (alpha 0: %.4f)", level, alpha, table[alpha],
                 table.get(0.0, float("nan")))
    return out


# ---- optional stages: backbone adaptation, metric head ------------------------------


def adapt_backbone(extractor, train: Dataset, val: Dataset, cfg: FitConfig, *, checkpoint_dir, resume: bool,
                   progress: bool, device, stage: Stage) -> dict:
    """Fine-tune the head image encoder (``finetune.method`` lora / partial); returns {role: adapted encoder}."""
    from entrep.finetune import finetune_encoder

    stage(f"fine-tuning: {cfg.finetune.method} on the head image encoder")
    adapted = finetune_encoder(extractor, train, val, train.taxonomy, cfg.finetune, role="head_image",
                               checkpoint_dir=checkpoint_dir, resume=resume, progress=progress, device=device)
    return {"head_image": adapted}


def metric_head(train_feats: ImageFeatures, y: np.ndarray, val_feats: ImageFeatures, vy: np.ndarray, taxonomy,
                cfg: FitConfig, stage: Stage):
    """The dual-backbone retrieval head over [joint-encoder, head-encoder] features (retrieval space "metric")."""
    from entrep.finetune import MetricHead

    stage("metric head: two backbones -> 512-d retrieval space (triplet loss, mirror-class negatives)")
    return MetricHead(seed=cfg.seed).fit([train_feats.clip, train_feats.head], y, taxonomy,
                                         X_val=[val_feats.clip, val_feats.head], y_val=vy)


# ---- the whole fit ----------------------------------------------------------------------


def _extractor(profile, cfg: FitConfig, cache, device, progress: bool, overrides: dict | None = None):
    from entrep.features import Extractor

    return Extractor(profile, cache_root=cache, device=device, batch_size=cfg.batch_size, progress=progress,
                     overrides=overrides or None, runtime=cfg.runtime)


def _with_metric_default(cfg: FitConfig) -> FitConfig:
    """Fine-tuning on and the retrieval space left at its default: the metric head's space (docs/finetune.md)."""
    import dataclasses

    if cfg.finetune.enabled and cfg.retrieval.space == "concat":
        return cfg.replace(retrieval=dataclasses.replace(cfg.retrieval, space="metric"))
    return cfg


def fit(data: Dataset, *, val: Dataset | None = None, config: FitConfig | None = None, profile=None,
        cache: str | Path | None = None, device: str | None = None, progress: bool = False,
        stage: Stage = _noop, checkpoint_dir: str | Path | None = None, resume: bool = False) -> EntrepModel:
    """Train a model on ``data``; returns it unsaved (``model.save(path)``)."""
    from entrep.encoders.profiles import get_profile

    cfg = _with_metric_default(config or FitConfig())
    tax = data.taxonomy
    t0 = time.perf_counter()
    train, val, val_source = split_for_fit(data, val, cfg)
    prof = profile if profile is not None else get_profile(cfg.profile)
    extractor = _extractor(prof, cfg, cache, device, progress)
    adapters: dict = {}
    if cfg.finetune.enabled:
        adapters = adapt_backbone(extractor, train, val, cfg, checkpoint_dir=checkpoint_dir, resume=resume,
                                  progress=progress, device=device, stage=stage)
        extractor = _extractor(prof, cfg, cache, device, progress, overrides=adapters)

    views = view_features(extractor, train, cfg, stage)
    stage("features: validation images")
    val_feats = image_features(extractor, val)
    vy = np.array([tax.class_id(r.label) for r in val.records])
    y = np.array([tax.class_id(r.label) for r in train.records])
    align, v_joint, u_joint = joint_space(extractor, train, views, prof, cfg, stage)
    proto_fine, proto_group = prototypes(v_joint, u_joint, y, tax, stage, fusion=cfg.fusion)
    baseline, group_head, within = heads(views, val_feats, vy, tax, cfg, stage)
    metric = None
    train_feats = image_features(extractor, train, flips=False)  # cached: the training views' "orig"
    if cfg.retrieval.space == "metric":
        metric = metric_head(train_feats, y, val_feats, vy, tax, cfg, stage)
    parts = ModelParts(proto_fine=proto_fine, baseline=baseline, align=align, proto_group=proto_group,
                       group_head=group_head, within_heads=within, metric_head=metric)
    model = EntrepModel(taxonomy=tax, config=cfg, profile=prof, parts=parts, adapters=adapters, cache=cache,
                        device=device, _extractor=extractor)
    selection = choose_policy(model, val_feats, vy, cfg, stage)
    model.policy = selection.policy
    model.rank_tuning = rank_alpha(model, train_feats, y, val_feats, vy, stage)
    model.encoders = extractor.describe()
    model.training = {
        "n_train": len(train), "n_val": len(val), "validation": val_source,
        "class_counts": {c: sum(r.label == c for r in train.records) for c in tax.classes},
        "views": list(views.views), "policy_selection": selection.to_dict(),
        "finetune": cfg.finetune.method, "seconds": None,
    }
    stage("gallery: indexing the fitting images for search")
    model.index(data)
    model.training["seconds"] = round(time.perf_counter() - t0, 1)
    return model
