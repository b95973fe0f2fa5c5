"""A fitted entrep model: its learned parts, its inference policy, its gallery; inference over images.

The model works on feature arrays; its :class:`~entrep.features.Extractor`
(built from the model's profile, lazily) turns images into those arrays.
Training is in :mod:`entrep.model.train`, scoring in :mod:`entrep.model.evaluate`,
files in :mod:`entrep.model.bundle`. A new learned part is one field of
:class:`ModelParts` and one entry of ``PART_TYPES``: saving and loading follow.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from entrep.classify.fusion import l2_normalize
from entrep.classify.hybrid import HybridDecision
from entrep.classify.policy import InferencePolicy, PartOutputs, Structure, SystemOutputs, apply_policy
from entrep.config import FitConfig
from entrep.errors import ModelError
from entrep.taxonomy import Taxonomy

log = logging.getLogger(__name__)


def l2n(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation to float32 (what FAISS and the heads take)."""
    return l2_normalize(np.asarray(x, dtype=np.float32))


@dataclass
class ImageFeatures:
    """Row-aligned features of a batch of images: joint-space input, head input, flipped head input."""

    clip: np.ndarray
    head: np.ndarray
    head_flip: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.head)



def prediction_rows(images: Sequence, dec: HybridDecision, taxonomy: Taxonomy, sources: Sequence[str]) -> list[dict]:
    """One `predict --json` row per image (label, group, confidence, which part decided, probabilities)."""
    results = []
    for i, img in enumerate(images):
        label = taxonomy.class_name(int(dec.fine[i]))
        results.append({
            "image": str(img) if isinstance(img, (str, Path)) else getattr(img, "filename", None) or f"image-{i}",
            "label": label,
            "label_id": int(dec.fine[i]),
            "group": taxonomy.group_of(label),
            "confidence": round(float(dec.confidence[i]), 6),
            "source": sources[i],
            "probabilities": {c: round(float(dec.fine_proba[i, j]), 6) for j, c in enumerate(taxonomy.classes)},
        })
    return results

#: part name -> "module:Class" of its estimator (imported only when a saved model has that part)
PART_TYPES = {
    "align": "entrep.classify.align:JointAlignment",
    "proto_fine": "entrep.classify.prototypes:PrototypeClassifier",
    "proto_group": "entrep.classify.prototypes:PrototypeClassifier",
    "group_head": "entrep.classify.heads:HeadClassifier",
    "within_heads": "entrep.classify.heads:HeadClassifier",
    "baseline": "entrep.classify.heads:HeadClassifier",
    "metric_head": "entrep.finetune.metric:MetricHead",
}


def _part_type(name: str) -> type:
    import importlib

    module, cls = PART_TYPES[name].split(":")
    return getattr(importlib.import_module(module), cls)


@dataclass
class ModelParts:
    """Every learned component. Each has ``get_state()`` / ``from_state()``; ``None`` = not fitted."""

    proto_fine: Any  # PrototypeClassifier over fine classes (joint space)
    baseline: Any  # HeadClassifier over all fine classes
    align: Any | None = None  # JointAlignment when the profile's towers are not joint
    proto_group: Any | None = None  # PrototypeClassifier over groups (hierarchical)
    group_head: Any | None = None  # HeadClassifier over groups (hierarchical)
    within_heads: dict[int, Any] = field(default_factory=dict)  # group id -> HeadClassifier of its classes
    metric_head: Any | None = None  # dual-backbone retrieval head (retrieval space "metric")

    def get_state(self) -> dict:
        state: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, dict):
                state[f.name] = {str(k): c.get_state() for k, c in v.items()}
            else:
                state[f.name] = v.get_state() if v is not None else None
        return state

    @classmethod
    def from_state(cls, state: dict, *, source: str = "model") -> "ModelParts":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(state) - known
        if unknown:
            raise ModelError(f"{source}: unknown model parts {sorted(unknown)}; this entrep knows {sorted(known)}")
        kwargs: dict[str, Any] = {}
        for name, s in state.items():
            if s is None:
                kwargs[name] = None
                continue
            kind = _part_type(name)
            if name == "within_heads":
                kwargs[name] = {int(g): kind.from_state(v) for g, v in s.items()}
            else:
                kwargs[name] = kind.from_state(s)
        for required in ("proto_fine", "baseline"):
            if kwargs.get(required) is None:
                raise ModelError(f"{source}: the model lacks its {required} part; refit it")
        return cls(**kwargs)


@dataclass
class EntrepModel:
    taxonomy: Taxonomy
    config: FitConfig
    profile: Any
    parts: ModelParts
    policy: InferencePolicy = field(default_factory=InferencePolicy)
    encoders: dict = field(default_factory=dict)  # fingerprints of the encoders at training time
    training: dict = field(default_factory=dict)  # summary: sizes, validation scores, policy selection
    adapters: dict = field(default_factory=dict)  # role -> adapted (fine-tuned) encoder
    gallery: Any | None = None  # GalleryIndex in the retrieval space
    path: Path | None = None
    cache: str | Path | None = None  # feature cache root (None: $ENTREP_CACHE or the default)
    device: str | None = None
    runtime: str | None = None  # image-encoder runtime override (None: the config's runtime)
    # soft class-aware ranking, tuned on validation at fit time (train.rank_alpha):
    # {"alpha": {"fine": a, "coarse": b}, "validation_mrr": {"fine": [[alpha, mrr], ...], ...}, ...}
    rank_tuning: dict = field(default_factory=dict)
    _extractor: Any = field(default=None, repr=False)

    # ---- structure ------------------------------------------------------
    @property
    def structure(self) -> Structure:
        return Structure.from_taxonomy(self.taxonomy)

    @property
    def metric_dim(self) -> int:
        """Width of the metric block of a ``metric`` gallery row (0 without a metric head)."""
        return int(self.parts.metric_head.dim) if self.parts.metric_head is not None else 0

    @property
    def extractor(self):
        """The feature extractor of the model's profile (and adapted encoders), built on first use."""
        if self._extractor is None:
            from entrep.features import Extractor

            self._extractor = Extractor(self.profile, cache_root=self.cache, device=self.device,
                                        batch_size=self.config.batch_size, overrides=self.adapters or None,
                                        runtime=self.runtime or self.config.runtime)
        return self._extractor

    # ---- features -------------------------------------------------------
    def image_features(self, images: Sequence, *, flips: bool = True) -> ImageFeatures:
        f = self.extractor
        head = f.images("head", images, "orig")
        clip = head if f.shares_encoder() else f.images("clip", images, "orig")
        head_flip = f.images("head", images, "flip") if flips else None
        return ImageFeatures(clip=clip, head=head, head_flip=head_flip)

    def file_hashes(self, paths: Sequence) -> list[str]:
        """sha256 of each file's bytes, remembered by the content-hash cache (no re-read of unchanged files)."""
        return self.extractor.file_hashes(paths)

    def joint_images(self, clip_feats: np.ndarray) -> np.ndarray:
        a = self.parts.align
        return l2n(a.transform_images(clip_feats) if a is not None else clip_feats)

    def joint_texts(self, text_feats: np.ndarray) -> np.ndarray:
        a = self.parts.align
        return l2n(a.transform_texts(text_feats) if a is not None else text_feats)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.joint_texts(self.extractor.texts(list(texts)))

    def head_embedding(self, head_feats: np.ndarray) -> np.ndarray:
        """The baseline head's penultimate layer: a compact, class-discriminative space."""
        return l2n(self.parts.baseline.embed(head_feats))

    def retrieval_vectors(self, feats: ImageFeatures, space: str | None = None) -> np.ndarray:
        """Gallery rows in the retrieval space (what the search index holds).

        For ``metric`` a row is ``[metric ; joint] / sqrt(2)``: image queries fill the metric
        block (:meth:`image_query_vectors`), text queries the joint block, so one index
        answers both (docs/retrieval.md).
        """
        space = space or self.config.retrieval.space
        if space == "metric":
            m = self.metric_vectors(feats)
            return np.concatenate([m, self.joint_images(feats.clip)], axis=1) / np.float32(np.sqrt(2.0))
        return self.image_query_vectors(feats, space)

    def image_query_vectors(self, feats: ImageFeatures, space: str | None = None) -> np.ndarray:
        """Image-query rows against :meth:`retrieval_vectors`; for ``metric`` the joint block is zero."""
        space = space or self.config.retrieval.space
        if space == "metric":
            m = self.metric_vectors(feats)
            return np.concatenate([m, np.zeros_like(self.joint_images(feats.clip))], axis=1)
        if space == "joint":
            return self.joint_images(feats.clip)
        if space == "head":
            return self.head_embedding(feats.head)
        if space == "concat":
            return l2n(np.concatenate([self.joint_images(feats.clip), self.head_embedding(feats.head)], axis=1))
        raise ModelError(f"unknown retrieval space {space!r}; use joint, head, concat or metric")

    def metric_vectors(self, feats: ImageFeatures) -> np.ndarray:
        """The dual-backbone metric head's embedding (retrieval space ``metric``)."""
        if self.parts.metric_head is None:
            raise ModelError(f"{self.path or 'model'}: retrieval space 'metric' needs the metric head; "
                             "refit with fine-tuning on or set retrieval.space to concat")
        return l2n(self.parts.metric_head.transform([feats.clip, feats.head]))

    def score_scale(self, query: str = "image", space: str | None = None) -> float:
        """Factor turning index scores into cosine similarities in the space the query searches.

        A block-padded query ([metric ; 0] or [0 ; text] against [metric ; joint] / sqrt(2), or
        [text ; 0] against concat's [joint ; head] / sqrt(2)) scores cosine / sqrt(2).
        """
        space = space or self.config.retrieval.space
        if space == "metric" or (space == "concat" and query == "text"):
            return float(np.sqrt(2.0))
        return 1.0

    def rank_alpha(self, level: str) -> float:
        """alpha of soft class-aware ranking at ``level`` (fine / coarse): tuned at fit time, else the default."""
        from entrep.finetune.metric import DEFAULT_RANK_ALPHA

        return float((self.rank_tuning.get("alpha") or {}).get(level, DEFAULT_RANK_ALPHA))

    # ---- classification -------------------------------------------------
    def part_outputs(self, feats: ImageFeatures) -> PartOutputs:
        """Raw probabilities of every part (with flipped-image outputs where flips are given)."""
        p = self.parts
        flip = feats.head_flip
        joint = self.joint_images(feats.clip)  # projected once, read by both prototype classifiers
        out = PartOutputs(
            proto_fine=p.proto_fine.predict_proba(joint),
            baseline=p.baseline.predict_proba(feats.head),
            baseline_flip=p.baseline.predict_proba(flip) if flip is not None else None,
        )
        if self.taxonomy.hierarchical:
            out.proto_group = p.proto_group.predict_proba(joint)
            out.head_group = p.group_head.predict_proba(feats.head)
            out.head_group_flip = p.group_head.predict_proba(flip) if flip is not None else None
            for g, head in p.within_heads.items():
                out.within[g] = head.predict_proba(feats.head)
                if flip is not None:
                    out.within_flip[g] = head.predict_proba(flip)
        return out

    def predict_features(self, feats: ImageFeatures, policy: InferencePolicy | None = None
                         ) -> tuple[HybridDecision, SystemOutputs]:
        return apply_policy(policy or self.policy, self.part_outputs(feats), self.structure)

    def predict(self, images: Sequence) -> list[dict]:
        """Predictions for image paths or PIL images, in the `predict --json` schema (plus probabilities)."""
        images = list(images)
        dec, _ = self.predict_features(self.image_features(images))
        return prediction_rows(images, dec, self.taxonomy,
                               ["prototype" if bool(p) else "head" for p in dec.from_prototype])

    # ---- search, evaluation, files: the public API of the other stages ------
    def search_image(self, image, *, k: int = 10, filter: str | None = None, hide_names: bool = False) -> dict:
        from entrep.retrieval.search import search_image

        return search_image(self, image, k=k, filter=filter, hide_names=hide_names)

    def search_text(self, text: str, *, k: int = 10, filter: str = "none", hide_names: bool = False) -> dict:
        from entrep.retrieval.search import search_text

        return search_text(self, text, k=k, filter=filter, hide_names=hide_names)

    def evaluate(self, data, *, stage=None) -> tuple[dict, dict]:
        from entrep.model.evaluate import evaluate

        return evaluate(self, _dataset(data, self.taxonomy), **({"stage": stage} if stage else {}))

    def index(self, gallery, *, rebuild: bool = False) -> dict:
        """(Re)build the search index over ``gallery`` (a DATA path, a folder of images or a Dataset)."""
        from entrep.retrieval.gallery import build_gallery, read_gallery

        ds = read_gallery(gallery, self.taxonomy) if isinstance(gallery, (str, Path)) else gallery
        if rebuild:
            self.gallery = None
        return build_gallery(self, ds)

    def save(self, path: str | Path | None = None) -> Path:
        from entrep.model.bundle import save_model

        target = path or self.path
        if target is None:
            raise ModelError("model.save() needs a folder: this model was never saved")
        return save_model(self, target)

    # ---- state -----------------------------------------------------------------
    def get_state(self) -> dict:
        """Everything the bundle writes except the gallery and adapters (they have files of their own)."""
        from entrep.encoders.profiles import Profile

        return {
            "taxonomy": self.taxonomy.to_dict(),
            "config": self.config.to_dict(),
            "profile": self.profile.to_dict() if isinstance(self.profile, Profile) else dict(self.profile),
            "encoders": self.encoders,
            "policy": self.policy.to_dict(),
            "training": self.training,
            "parts": self.parts.get_state(),
            "rank_tuning": self.rank_tuning,
        }

    @classmethod
    def from_state(cls, state: dict, *, source: str = "model", **kwargs: Any) -> "EntrepModel":
        from entrep.encoders.profiles import profile_from_dict

        missing = {"taxonomy", "config", "profile", "policy", "parts"} - set(state)
        if missing:
            raise ModelError(f"{source}: model state lacks {sorted(missing)}; refit the model")
        try:
            policy = InferencePolicy.from_dict(state["policy"])
        except (TypeError, ValueError) as e:
            raise ModelError(f"{source}: bad inference policy ({e}); refit the model") from None
        rank_tuning = state.get("rank_tuning")
        if rank_tuning is None:
            from entrep.finetune.metric import DEFAULT_RANK_ALPHA

            log.debug("%s: fitted before soft-ranking alpha was tuned; image search uses the default alpha %s "
                      "(refit to tune it)", source, DEFAULT_RANK_ALPHA)
        return cls(
            taxonomy=Taxonomy.from_dict(state["taxonomy"], source=source),
            config=FitConfig.from_dict(state["config"], source=source),
            profile=profile_from_dict(state["profile"]),
            parts=ModelParts.from_state(state["parts"], source=source),
            policy=policy,
            encoders=state.get("encoders") or {},
            training=state.get("training") or {},
            rank_tuning=dict(rank_tuning or {}),
            **kwargs,
        )


def _dataset(data, taxonomy):
    if isinstance(data, (str, Path)):
        from entrep.data.readers import read_dataset

        return read_dataset(data, taxonomy)
    return data
