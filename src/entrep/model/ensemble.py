"""Ensembles: K models trained on K group-aware folds, averaged at inference (``entrep fit --ensemble K``).

Folds come from scikit-learn's ``StratifiedGroupKFold`` over the same groups
as :func:`entrep.data.split.split_dataset` (byte-identical images and records
sharing ``Record.group`` are one group), so no group is on both sides of a
fold. Member ``i`` is an ordinary :class:`~entrep.model.EntrepModel` fitted by
:func:`entrep.model.train.fit` on the other folds, with fold ``i`` as its
validation data (early stopping and its own inference policy).

Inference:

- classification: the mean of the members' fine-class probabilities (each the
  output of that member's inference policy); the label is its argmax.
- retrieval and text search: each member has its own joint projection and
  heads, so the members' vector spaces do not share coordinates and averaging
  the vectors themselves would mix unrelated axes. The ensemble's vector is the
  concatenation of the members' L2-normalised vectors, re-normalised: the
  cosine of two ensemble vectors is then exactly the mean of the members'
  cosines (the average similarity). Joint blocks come first, then head blocks,
  so a text vector padded with zeros (``retrieval.search.text_query_vector``)
  scores against the joint blocks only, as for a single model.
- members with no fine-tuned encoder share one :class:`~entrep.features.Extractor`:
  image features are computed once per image, not K times.

Files: ``MODEL/model.json`` (format entrep-model, kind ``ensemble``, K, folds,
member scores), ``MODEL/members/0..K-1/`` (each a normal model folder) and
``MODEL/gallery/`` (the ensemble's search index), written as one atomic folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from entrep.classify.hybrid import HybridDecision
from entrep.classify.policy import InferencePolicy, Structure, SystemOutputs
from entrep.config import FitConfig
from entrep.data.records import Dataset
from entrep.errors import ModelError, UserError
from entrep.model.model import EntrepModel, ImageFeatures, l2n

log = logging.getLogger(__name__)

Stage = Callable[[str], None]
KIND = "ensemble"
#: entries an ensemble folder holds (anything else there is the user's and is kept on re-save)
OWN_ENTRIES = frozenset({"model.json", "arrays.npz", "adapters", "members", "gallery", "report"})


def _noop(_: str) -> None:
    pass


# ---- folds -------------------------------------------------------------------------------


def image_groups(ds: Dataset, hashes=None) -> np.ndarray:
    """Group id of every record, by the split's rule: same file content or same ``Record.group``."""
    from entrep.data.hashing import HashCache, components_sharing
    from entrep.data.split import group_keys

    recs = ds.records
    sha = (hashes or HashCache()).sha256([r.image for r in recs])
    keys, _ = group_keys(recs, sha)
    gid = np.empty(len(recs), dtype=np.int64)
    for g, members in enumerate(components_sharing(keys)):
        gid[members] = g
    return gid


def ensemble_folds(ds: Dataset, k: int, seed: int = 0) -> np.ndarray:
    """Fold (0..k-1) of every record: stratified on the fine label, whole groups per fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    where = ds.source or str(ds.root)
    if not isinstance(k, int) or k < 2:
        raise UserError(f"--ensemble needs K >= 2 folds, got {k!r}")
    missing = [r.name for r in ds.records if r.label is None]
    if missing:
        raise UserError(f"{where}: {len(missing)} images have no label (first: {missing[0]}); fitting needs labels")
    groups = image_groups(ds)
    labels = np.array([r.label for r in ds.records], dtype=object)
    n_groups = {c: len(set(groups[labels == c].tolist())) for c in ds.taxonomy.classes}
    c = min(n_groups, key=lambda name: n_groups[name])  # the class that limits K (first of equals)
    n = n_groups[c]
    if n < k:
        raise UserError(f"{where}: class {c!r} has {n} independent image group(s), fewer than the {k} folds of "
                        f"--ensemble {k}; use --ensemble {n} or fewer" if n >= 2 else
                        f"{where}: class {c!r} has {n} independent image group(s); an ensemble needs at least 2 "
                        "per class (one to train on, one to validate on): add images or fit a single model")
    y = np.array([ds.taxonomy.class_id(lbl) for lbl in labels])
    folds = np.full(len(y), -1, dtype=np.int64)
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for i, (_, test) in enumerate(cv.split(np.zeros(len(y)), y, groups)):
        folds[test] = i
    empty = [i for i in range(k) if not np.any(folds == i)]
    if empty or np.any(folds < 0):
        raise UserError(f"{where}: {len(set(groups.tolist()))} image groups cannot fill {k} folds; use a smaller --ensemble")
    return folds


def fold_summary(ds: Dataset, folds: np.ndarray) -> list[dict]:
    groups = image_groups(ds)
    out = []
    for i in range(int(folds.max()) + 1):
        rows = np.flatnonzero(folds == i)
        out.append({"fold": i, "n_images": int(len(rows)), "n_groups": int(len(set(groups[rows].tolist()))),
                    "class_counts": {c: int(sum(ds.records[j].label == c for j in rows)) for c in ds.taxonomy.classes}})
    return out


# ---- the model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnsemblePolicy:
    """The ensemble's inference rule: the mean of the members' policy probabilities (each member keeps its own)."""

    k: int
    members: tuple[InferencePolicy, ...] = ()

    mode = "ensemble"

    @property
    def name(self) -> str:
        return f"ensemble(mean of {self.k})"

    def to_dict(self) -> dict:
        return {"mode": self.mode, "k": self.k, "members": [p.to_dict() for p in self.members]}


@dataclass
class EnsembleFeatures:
    """Features of a batch for every member (the same object K times when the members share an extractor)."""

    per_member: list[ImageFeatures]

    def __len__(self) -> int:
        return len(self.per_member[0])

    @property
    def clip(self):
        """Joint-encoder features: one array when shared, else the list of each member's."""
        first = self.per_member[0]
        return first.clip if all(f is first for f in self.per_member) else [f.clip for f in self.per_member]


def _stack(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate unit rows and re-normalise: the cosine of two stacks is the mean of the blocks' cosines."""
    return l2n(np.concatenate(list(vectors), axis=1))


def mean_decision(decisions: Sequence[HybridDecision], structure: Structure) -> HybridDecision:
    """Average the members' fine probabilities; label = argmax. ``from_prototype``: every member's prototype decided."""
    p = np.mean([np.asarray(d.fine_proba, dtype=np.float64) for d in decisions], axis=0)
    fine = p.argmax(axis=1)
    group = structure.group_of_class()[fine] if structure.hierarchical else fine.copy()
    return HybridDecision(fine=fine, group=group, confidence=p[np.arange(len(p)), fine],
                          from_prototype=np.all([np.asarray(d.from_prototype, bool) for d in decisions], axis=0),
                          fine_proba=p)


def mean_outputs(outputs: Sequence[SystemOutputs]) -> SystemOutputs:
    """Each system's probabilities averaged over the members (after each member's test-time options)."""
    def avg(xs):
        return None if any(x is None for x in xs) else np.mean([np.asarray(x, np.float64) for x in xs], axis=0)

    first = outputs[0]
    return SystemOutputs(proto_fine=avg([o.proto_fine for o in outputs]), baseline=avg([o.baseline for o in outputs]),
                         proto_group=avg([o.proto_group for o in outputs]),
                         head_group=avg([o.head_group for o in outputs]),
                         within={g: avg([o.within[g] for o in outputs]) for g in first.within})


class EnsembleModel:
    """K fitted :class:`EntrepModel` members (same taxonomy and profile) used as one model."""

    def __init__(self, members: Sequence[EntrepModel], *, config: FitConfig, training: dict | None = None,
                 gallery=None, path: Path | None = None) -> None:
        members = list(members)
        if len(members) < 2:
            raise ModelError(f"{path or 'ensemble'}: an ensemble needs at least 2 members, got {len(members)}")
        first = members[0]
        for i, m in enumerate(members[1:], 1):
            if m.taxonomy.classes != first.taxonomy.classes:
                raise ModelError(f"{path or 'ensemble'}: member {i}'s classes differ from member 0's; refit the ensemble")
            if _profile_dict(m.profile) != _profile_dict(first.profile):
                raise ModelError(f"{path or 'ensemble'}: member {i}'s encoder profile differs from member 0's; "
                                 "refit the ensemble")
        self.members = members
        self.config = config
        self.training = training or {}
        self.gallery = gallery
        self.path = path
        if self.shared:  # one extractor: features of an image are computed once for every member
            ext = first._extractor
            for m in members[1:]:
                m._extractor = ext

    # ---- what the other stages read ------------------------------------------------------
    @property
    def k(self) -> int:
        return len(self.members)

    @property
    def shared(self) -> bool:
        """True when no member has a fine-tuned encoder: they all see the same features."""
        return not any(m.adapters for m in self.members)

    taxonomy = property(lambda self: self.members[0].taxonomy)
    profile = property(lambda self: self.members[0].profile)
    encoders = property(lambda self: self.members[0].encoders)
    cache = property(lambda self: self.members[0].cache)
    device = property(lambda self: self.members[0].device)
    runtime = property(lambda self: self.members[0].runtime)
    adapters = property(lambda self: {})  # each member keeps its own (members/I/adapters)

    @property
    def structure(self) -> Structure:
        return Structure.from_taxonomy(self.taxonomy)

    @property
    def policy(self) -> EnsemblePolicy:
        return EnsemblePolicy(self.k, tuple(m.policy for m in self.members))

    @property
    def extractor(self):
        """The shared extractor (member 0's; the text encoder is never fine-tuned, so text features are shared)."""
        ext = self.members[0].extractor
        if self.shared:
            for m in self.members[1:]:
                m._extractor = ext
        return ext

    # ---- features ----------------------------------------------------------------------------
    def image_features(self, images: Sequence, *, flips: bool = True) -> EnsembleFeatures:
        images = list(images)
        if self.shared:
            self.extractor  # noqa: B018 - binds every member to the one extractor
            f = self.members[0].image_features(images, flips=flips)
            return EnsembleFeatures([f] * self.k)
        return EnsembleFeatures([m.image_features(images, flips=flips) for m in self.members])

    def _per_member(self, feats) -> list[ImageFeatures]:
        if isinstance(feats, EnsembleFeatures):
            return feats.per_member
        if not self.shared:
            raise ModelError(f"{self.path or 'ensemble'}: its members have their own fine-tuned encoders, so one set of "
                             "features (e.g. embedding shards) cannot serve them all; index from images instead "
                             "(entrep index --model M --gallery DATA)")
        return [feats] * self.k

    def file_hashes(self, paths: Sequence) -> list[str]:
        return self.extractor.file_hashes(paths)

    def joint_images(self, clip) -> np.ndarray:
        clips = clip if isinstance(clip, list) else [clip] * self.k
        return _stack([m.joint_images(c) for m, c in zip(self.members, clips)])

    def joint_texts(self, text_feats: np.ndarray) -> np.ndarray:
        return _stack([m.joint_texts(text_feats) for m in self.members])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.joint_texts(self.extractor.texts(list(texts)))

    def head_embedding(self, head_feats) -> np.ndarray:
        heads = head_feats if isinstance(head_feats, list) else [head_feats] * self.k
        return _stack([m.head_embedding(h) for m, h in zip(self.members, heads)])

    def retrieval_vectors(self, feats, space: str | None = None) -> np.ndarray:
        """Gallery rows: the members' vectors stacked (cosine = mean of the members' cosines).

        ``concat``: all joint blocks, then all head blocks; ``metric``: ``[metric blocks ; joint
        blocks] / sqrt(2)``: the layouts of :meth:`EntrepModel.retrieval_vectors`, block by block.
        """
        space = space or self.config.retrieval.space
        if space == "metric":
            per = self._per_member(feats)
            joint = _stack([m.joint_images(f.clip) for m, f in zip(self.members, per)])
            return np.concatenate([self._metric(per), joint], axis=1) / np.float32(np.sqrt(2.0))
        return self.image_query_vectors(feats, space)

    def image_query_vectors(self, feats, space: str | None = None) -> np.ndarray:
        """Image-query rows against :meth:`retrieval_vectors` (for ``metric`` the joint blocks are zero)."""
        space = space or self.config.retrieval.space
        per = self._per_member(feats)
        if space == "metric":
            metric = self._metric(per)
            n_joint = sum(m.joint_images(f.clip[:1]).shape[1] for m, f in zip(self.members, per))
            return np.concatenate([metric, np.zeros((len(metric), n_joint), dtype=np.float32)], axis=1)
        if space == "concat":
            joint = _stack([m.joint_images(f.clip) for m, f in zip(self.members, per)])
            head = _stack([m.head_embedding(f.head) for m, f in zip(self.members, per)])
            return l2n(np.concatenate([joint, head], axis=1))
        if space in ("joint", "head"):
            return _stack([m.image_query_vectors(f, space) for m, f in zip(self.members, per)])
        raise ModelError(f"unknown retrieval space {space!r}; use joint, head, concat or metric")

    @property
    def metric_dim(self) -> int:
        """Width of the metric blocks of a ``metric`` gallery row (0 without metric heads)."""
        return sum(int(m.parts.metric_head.dim) for m in self.members if m.parts.metric_head is not None)

    def _metric(self, per: list[ImageFeatures]) -> np.ndarray:
        return _stack([m.metric_vectors(f) for m, f in zip(self.members, per)])

    def score_scale(self, query: str = "image", space: str | None = None) -> float:
        """Index score -> cosine factor; the ensemble's layouts are the members' (see :meth:`retrieval_vectors`)."""
        return self.members[0].score_scale(query, space or self.config.retrieval.space)

    def rank_alpha(self, level: str) -> float:
        """alpha of soft class-aware ranking: the mean of the members' (each tuned on its own fold)."""
        return float(np.mean([m.rank_alpha(level) for m in self.members]))

    @property
    def rank_tuning(self) -> dict:
        levels = ("fine", "coarse") if self.taxonomy.hierarchical else ("fine",)
        return {"alpha": {lv: self.rank_alpha(lv) for lv in levels}, "rule": "mean of the members' tuned alphas"}

    # ---- classification -----------------------------------------------------------------------
    def member_decisions(self, feats, policy: InferencePolicy | None = None
                         ) -> list[tuple[HybridDecision, SystemOutputs]]:
        """Each member's decision under its own policy (or ``policy`` for all)."""
        return [m.predict_features(f, policy) for m, f in zip(self.members, self._per_member(feats))]

    def predict_features(self, feats, policy: InferencePolicy | None = None) -> tuple[HybridDecision, SystemOutputs]:
        if isinstance(policy, EnsemblePolicy):
            policy = None
        outs = self.member_decisions(feats, policy)
        return mean_decision([d for d, _ in outs], self.structure), mean_outputs([s for _, s in outs])

    def predict(self, images: Sequence) -> list[dict]:
        """Predictions in the `predict --json` schema; ``source`` is ``ensemble``."""
        from entrep.model.model import prediction_rows

        images = list(images)
        dec, _ = self.predict_features(self.image_features(images))
        return prediction_rows(images, dec, self.taxonomy, ["ensemble"] * len(images))

    # ---- search, evaluation, files ----------------------------------------------------------
    def search_image(self, image, *, k: int = 10, filter: str | None = None, hide_names: bool = False) -> dict:
        from entrep.retrieval.search import search_image

        return search_image(self, image, k=k, filter=filter, hide_names=hide_names)

    def search_text(self, text: str, *, k: int = 10, filter: str = "none", hide_names: bool = False) -> dict:
        from entrep.retrieval.search import search_text

        return search_text(self, text, k=k, filter=filter, hide_names=hide_names)

    def index(self, gallery, *, rebuild: bool = False) -> dict:
        """(Re)build the ensemble's search index over ``gallery`` (a DATA path, a folder of images or a Dataset)."""
        from entrep.retrieval.gallery import build_gallery, read_gallery

        ds = read_gallery(gallery, self.taxonomy) if isinstance(gallery, (str, Path)) else gallery
        if rebuild:
            self.gallery = None
        return build_gallery(self, ds)

    def evaluate(self, data, *, stage: Stage | None = None) -> tuple[dict, dict]:
        return evaluate_ensemble(self, data, stage=stage or _noop)

    def fit_summary(self) -> str:
        """One line for `entrep fit`: where it was saved, the members' fold scores, the --val scores."""
        tr = self.training or {}
        fmt = lambda a: "n/a" if a is None else f"{a:.3f}"  # noqa: E731
        accs = ", ".join(fmt(m.get("validation_accuracy")) for m in tr.get("members", []))
        line = (f"ensemble of {self.k} models to {self.path}  (each member's accuracy on its held-out fold: {accs}"
                f"; mean {fmt(tr.get('mean_member_validation_accuracy'))}")
        v = tr.get("val")
        if v:
            line += (f"; on --val ({v['n_images']} images): ensemble {fmt(v['ensemble_accuracy'])}, "
                     f"mean member {fmt(v['mean_member_accuracy'])}")
        return line + f"; {tr.get('seconds')} s)"

    def save(self, path: str | Path | None = None) -> Path:
        target = path or self.path
        if target is None:
            raise ModelError("model.save() needs a folder: this model was never saved")
        return save_ensemble(self, target)


def _profile_dict(profile) -> dict:
    from entrep.encoders.profiles import Profile

    return profile.to_dict() if isinstance(profile, Profile) else dict(profile)


# ---- evaluation ---------------------------------------------------------------------------


def evaluate_ensemble(model: EnsembleModel, data, *, stage: Stage = _noop) -> tuple[dict, dict]:
    """Score the ensemble on labelled ``data``: the ensemble, each member, each part averaged, and retrieval.

    Same schema as :func:`entrep.model.evaluate.evaluate` (``evaluate --json``); the systems are
    ``ensemble`` (the headline), ``prototype`` and ``baseline`` (that part's probabilities averaged
    over the members) and ``member-1`` .. ``member-K`` (each member alone, under its own policy).
    """
    from entrep.report.metrics import classification_summary, fine_and_coarse_summary

    tax = model.taxonomy
    if isinstance(data, (str, Path)):
        from entrep.data.readers import read_dataset

        data = read_dataset(data, tax)
    from entrep.model.evaluate import check_labelled, model_and_data, retrieval_scores

    check_labelled(data, tax)
    names, groups = list(tax.classes), list(tax.group_names)
    y = [r.label for r in data.records]
    y_group = [tax.group_of(v) for v in y]
    stage("features: evaluation images")
    feats = model.image_features([r.image for r in data.records])
    stage(f"classification: {model.k} members and their mean")
    per = model.member_decisions(feats)
    structure = model.structure
    dec = mean_decision([d for d, _ in per], structure)
    outs = mean_outputs([s for _, s in per])

    def pred_of(fine) -> list[str]:
        return [names[int(i)] for i in fine]

    systems, confusions = {}, {}
    ens_pred = pred_of(dec.fine)
    systems["ensemble"] = fine_and_coarse_summary(y, ens_pred, tax)
    confusions["ensemble-fine"] = (y, ens_pred, names)
    if tax.hierarchical:
        confusions["ensemble-coarse"] = (y_group, [tax.group_of(p) for p in ens_pred], groups)
    proto_pred = pred_of(np.asarray(outs.proto_fine).argmax(1))
    systems["prototype"] = fine_and_coarse_summary(y, proto_pred, tax)
    confusions["prototype-fine"] = (y, proto_pred, names)
    if tax.hierarchical:  # the prototypes have a group classifier of their own
        g_pred = [groups[i] for i in np.asarray(outs.proto_group).argmax(1)]
        systems["prototype"]["coarse"] = classification_summary(y_group, g_pred, groups)
    base_pred = pred_of(np.asarray(outs.baseline).argmax(1))
    systems["baseline"] = fine_and_coarse_summary(y, base_pred, tax)
    confusions["baseline-fine"] = (y, base_pred, names)
    member_acc = []
    for i, (d, _) in enumerate(per, 1):
        systems[f"member-{i}"] = fine_and_coarse_summary(y, pred_of(d.fine), tax)
        member_acc.append(systems[f"member-{i}"]["fine"]["accuracy"])
    tr = model.training or {}
    evaluation: dict = {
        "n_images": len(data),
        "classification": {
            "fine": systems["ensemble"]["fine"],
            **({"coarse": systems["ensemble"]["coarse"]} if tax.hierarchical else {}),
            "systems": systems,
        },
        "ensemble": {"k": model.k, "member_accuracy": member_acc,
                     "mean_member_accuracy": float(np.mean(member_acc)),
                     "member_policies": [m.policy.name for m in model.members]},
        "policy": {"chosen": model.policy.name, "policy": model.policy.to_dict(),
                   "validation": {f"member-{m['member']}": m["validation_accuracy"] for m in tr.get("members", [])}},
        **model_and_data(model, data, y, names, tr.get("n_train"), kind=KIND, k=model.k),
    }
    evaluation["retrieval"] = retrieval_scores(model, data, feats, dec, stage)
    artefacts = {
        "confusions": confusions,
        "embeddings": {"joint space": (model.joint_images(feats.clip), y, y_group),
                       "retrieval space": (model.retrieval_vectors(feats), y, y_group)},
    }
    return evaluation, artefacts


# ---- fitting --------------------------------------------------------------------------------


def _member_validation(m: EntrepModel) -> float | None:
    acc = ((m.training or {}).get("policy_selection") or {}).get("validation_accuracy", {}).get(m.policy.name)
    return None if acc is None else float(acc)


def fit_ensemble(data: Dataset, *, val: Dataset | None = None, config: FitConfig | None = None, profile=None,
                 cache=None, device=None, progress: bool = False, stage: Stage = _noop,
                 checkpoint_dir: str | Path | None = None, resume: bool = False) -> EnsembleModel:
    """Train ``config.ensemble`` members on group-aware folds of ``data``; ``val`` (optional) only scores them."""
    from entrep.model.train import fit

    cfg = config or FitConfig()
    k = cfg.ensemble
    t0 = time.perf_counter()
    if val is not None and val.taxonomy.classes != data.taxonomy.classes:
        raise UserError(f"{val.source or 'val'}: its classes differ from the training data's {list(data.taxonomy.classes)}")
    folds = ensemble_folds(data, k, cfg.seed)
    member_cfg = cfg.replace(ensemble=1)
    members, scores = [], []
    for i in range(k):
        stage(f"member {i + 1}/{k}: training on {k - 1} fold{'s' if k > 2 else ''}, validating on fold {i + 1}")
        train_ds = data.subset(np.flatnonzero(folds != i).tolist())
        fold_ds = data.subset(np.flatnonzero(folds == i).tolist())
        kwargs = {}
        if checkpoint_dir is not None:
            kwargs["checkpoint_dir"] = Path(checkpoint_dir) / f"member-{i}"
        m = fit(train_ds, val=fold_ds, config=member_cfg, profile=profile, cache=cache, device=device,
                progress=progress, stage=lambda s, i=i: stage(f"member {i + 1}/{k}: {s}"), resume=resume, **kwargs)
        m.gallery = None  # the ensemble has one gallery, in its own space
        members.append(m)
        scores.append({"member": i + 1, "fold": i + 1, "n_train": len(train_ds), "n_val": len(fold_ds),
                       "policy": m.policy.name, "validation_accuracy": _member_validation(m),
                       "seconds": m.training.get("seconds")})
    # the members' config (train.fit may settle defaults, e.g. the metric space when fine-tuned)
    model = EnsembleModel(members, config=members[0].config.replace(ensemble=k))
    model.training = {
        "kind": KIND, "k": k, "n_train": len(data), "seed": cfg.seed,
        "folds": fold_summary(data, folds),
        "members": scores,
        "validation": "each member: its held-out fold (early stopping and that member's policy choice)",
        "mean_member_validation_accuracy": _mean([s["validation_accuracy"] for s in scores]),
    }
    if val is not None:
        stage(f"validation: scoring the ensemble and its members on {len(val)} images")
        model.training["val"] = score_on(model, val)
    stage("gallery: indexing the fitting images for search")
    model.index(data)
    model.training["seconds"] = round(time.perf_counter() - t0, 1)
    return model


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(float(np.mean(xs)), 6) if xs else None


def score_on(model: EnsembleModel, ds: Dataset) -> dict:
    """Fine accuracy of the ensemble and of each member on ``ds`` (same features for all)."""
    y = np.array([ds.taxonomy.class_id(r.label) for r in ds.records])
    feats = model.image_features([r.image for r in ds.records])
    per = model.member_decisions(feats)
    ens = mean_decision([d for d, _ in per], model.structure)
    member = [round(float(np.mean(d.fine == y)), 6) for d, _ in per]
    return {"n_images": len(ds), "source": ds.source, "ensemble_accuracy": round(float(np.mean(ens.fine == y)), 6),
            "member_accuracy": member, "mean_member_accuracy": _mean(member)}


# ---- files --------------------------------------------------------------------------------------


def save_ensemble(model: EnsembleModel, path: str | Path) -> Path:
    """Write the whole ensemble folder atomically: model.json, members/0..K-1/, gallery/ (and a report kept)."""
    from entrep.io import atomic_dir
    from entrep.model.bundle import FORMAT, VERSION, save_model

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ModelError(f"{path}: exists and is not a folder; choose another --out")
    if path.is_dir() and any(path.iterdir()) and not (path / "model.json").is_file():
        raise ModelError(f"{path}: folder exists and is not an entrep model; refusing to replace it")
    meta = {"format": FORMAT, "version": VERSION, "kind": KIND, "k": model.k, "config": model.config.to_dict(),
            "members": [f"members/{i}" for i in range(model.k)], "training": model.training}
    src_report = (model.path / "report") if model.path else None
    with atomic_dir(path, own=OWN_ENTRIES, foreign="keep") as tmp:
        (tmp / "members").mkdir()
        for i, m in enumerate(model.members):
            gallery, m.gallery = m.gallery, None
            try:
                save_model(m, tmp / "members" / str(i))
            finally:
                m.gallery = gallery
        if model.gallery is not None:
            model.gallery.save(tmp / "gallery")
        if src_report is not None and src_report.is_dir():  # a re-saved model keeps its report
            shutil.copytree(src_report, tmp / "report")
        (tmp / "model.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    model.path = path
    for i, m in enumerate(model.members):
        m.path = path / "members" / str(i)
    return path


def is_ensemble_meta(meta: Any) -> bool:
    return isinstance(meta, dict) and meta.get("kind") == KIND


def load_ensemble(path: Path, meta: dict, *, cache=None, device=None, runtime=None) -> EnsembleModel:
    """Read an ensemble folder (``meta``: its parsed model.json); one clear line when it is incomplete."""
    from entrep.model.bundle import FORMAT, VERSION, load_model

    mj = path / "model.json"
    if meta.get("format") != FORMAT:
        raise ModelError(f"{mj}: not an entrep model file")
    if meta.get("version") != VERSION:
        raise ModelError(f"{mj}: model format version {meta.get('version')!r} is not supported by this entrep "
                         f"(expects {VERSION}); refit the model: entrep fit --data DATA --out {path} --ensemble K")
    k = meta.get("k")
    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ModelError(f"{mj}: ensemble size k={k!r} is not an integer >= 2; the file is damaged: refit the model")
    try:
        config = FitConfig.from_dict(meta.get("config") or {}, source=str(mj))
    except UserError as e:
        raise ModelError(str(e)) from None
    members = []
    for i in range(k):
        folder = path / "members" / str(i)
        if not (folder / "model.json").is_file():
            raise ModelError(f"{path}: ensemble of {k} lacks members/{i}/model.json; the folder is incomplete: "
                             "restore it or refit the ensemble")
        members.append(load_model(folder, cache=cache, device=device, runtime=runtime))
    training = meta.get("training") if isinstance(meta.get("training"), dict) else {}
    model = EnsembleModel(members, config=config, training=training, path=path)
    if (path / "gallery").is_dir():
        from entrep.retrieval.index import GalleryIndex

        model.gallery = GalleryIndex.load(path / "gallery")
    return model
