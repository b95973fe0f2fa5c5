"""A fitted entrep model: prototypes + heads + hybrid + gallery, and inference over images.

The model works on feature arrays; a :class:`~entrep.featurize.Featurizer`
(built from the model's profile) turns images into those arrays. Training is
in :mod:`entrep.pipeline`, saving/loading in :mod:`entrep.bundle`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from entrep.classify.fusion import l2_normalize
from entrep.classify.hybrid import HybridDecision, flat_decide, flip_tta, hierarchical_decide, subset_permutation
from entrep.config import FitConfig
from entrep.taxonomy import Taxonomy

log = logging.getLogger(__name__)


def l2n(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation to float32 (what FAISS and the heads take)."""
    return l2_normalize(np.asarray(x, dtype=np.float32))


def within_group(p: np.ndarray, members: list[int]) -> np.ndarray:
    """A fine-class distribution restricted to one group's classes and renormalised: p(class | group)."""
    sub = np.asarray(p, dtype=np.float64)[:, members]
    return sub / np.maximum(sub.sum(axis=1, keepdims=True), 1e-12)


@dataclass
class ImageFeatures:
    """Row-aligned features of a batch of images: joint-space input, head input, flipped head input."""

    clip: np.ndarray
    head: np.ndarray
    head_flip: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.head)


@dataclass
class SystemOutputs:
    """Every system's probabilities for a batch (what evaluation and prediction read)."""

    proto_fine: np.ndarray  # (N, C)
    baseline: np.ndarray  # (N, C)
    proto_group: np.ndarray | None = None  # (N, G)
    head_group: np.ndarray | None = None  # (N, G)
    within: dict[int, np.ndarray] = field(default_factory=dict)  # group id -> (N, m)


@dataclass
class EntrepModel:
    taxonomy: Taxonomy
    config: FitConfig
    profile: Any
    align: Any | None  # JointAlignment when the profile's towers are not joint
    proto_fine: Any  # PrototypeClassifier over fine classes
    proto_group: Any | None  # PrototypeClassifier over groups (hierarchical only)
    group_head: Any | None  # HeadClassifier over groups (hierarchical only)
    within_heads: dict[int, Any]  # group id -> HeadClassifier over that group's classes
    baseline: Any  # HeadClassifier over all fine classes
    threshold: float = 0.99
    tuned_threshold: float | None = None
    use_tuned: bool = False
    flip_tta: dict[str, bool] = field(default_factory=lambda: {"within": True, "baseline": True})
    within_blend: bool = False  # average each group head with the baseline's within-group distribution
    encoders: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    gallery: Any | None = None  # GalleryIndex in the retrieval space
    path: Path | None = None
    _featurizer: Any = field(default=None, repr=False)

    # ---- structure ------------------------------------------------------
    @property
    def hierarchical(self) -> bool:
        return self.taxonomy.hierarchical

    @property
    def members(self) -> list[list[int]]:
        t = self.taxonomy
        return [[t.class_id(c) for c in t.members(g)] for g in t.group_names]

    @property
    def active_threshold(self) -> float:
        if self.use_tuned and self.tuned_threshold is not None:
            return self.tuned_threshold
        return self.threshold

    def featurizer(self, *, cache_root=None, device=None, progress=False):
        from entrep.featurize import Featurizer

        if self._featurizer is None:
            self._featurizer = Featurizer(
                self.profile, cache_root=cache_root, device=device, batch_size=self.config.batch_size, progress=progress
            )
        return self._featurizer

    # ---- features -------------------------------------------------------
    def image_features(self, images: Sequence, *, flips: bool = True) -> ImageFeatures:
        f = self.featurizer()
        head = f.images("head", images, "orig")
        clip = head if f.shares_encoder() else f.images("clip", images, "orig")
        head_flip = f.images("head", images, "flip") if flips else None
        return ImageFeatures(clip=clip, head=head, head_flip=head_flip)

    def file_hashes(self, paths: Sequence) -> list[str]:
        """sha256 of each file's bytes, remembered by the feature cache (no re-read of unchanged files)."""
        return self.featurizer().cache.file_hashes(paths)

    def joint_images(self, clip_feats: np.ndarray) -> np.ndarray:
        if self.align is not None:
            return l2n(self.align.transform_images(clip_feats))
        return l2n(clip_feats)

    def joint_texts(self, text_feats: np.ndarray) -> np.ndarray:
        if self.align is not None:
            return l2n(self.align.transform_texts(text_feats))
        return l2n(text_feats)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.joint_texts(self.featurizer().texts(list(texts)))

    def head_embedding(self, head_feats: np.ndarray) -> np.ndarray:
        """The baseline head's penultimate layer: a compact, class-discriminative space."""
        return l2n(self.baseline.embed(head_feats))

    def retrieval_vectors(self, feats: ImageFeatures, space: str | None = None) -> np.ndarray:
        space = space or self.config.retrieval.space
        if space == "joint":
            return self.joint_images(feats.clip)
        if space == "head":
            return self.head_embedding(feats.head)
        if space == "concat":
            return l2n(np.concatenate([self.joint_images(feats.clip), self.head_embedding(feats.head)], axis=1))
        raise ValueError(f"unknown retrieval space {space!r}; use joint, head or concat")

    # ---- classification -------------------------------------------------
    def system_outputs(self, feats: ImageFeatures) -> SystemOutputs:
        t = self.taxonomy
        joint = self.joint_images(feats.clip)
        perm = t.flip_permutation()
        baseline = self.baseline.predict_proba(feats.head)
        if feats.head_flip is not None and self.flip_tta.get("baseline", False):
            baseline = flip_tta(baseline, self.baseline.predict_proba(feats.head_flip), perm)
        out = SystemOutputs(proto_fine=self.proto_fine.predict_proba(joint), baseline=baseline)
        if self.hierarchical:
            out.proto_group = self.proto_group.predict_proba(joint)
            hg = self.group_head.predict_proba(feats.head)
            if feats.head_flip is not None and self.flip_tta.get("within", False):
                # groups are unchanged by a flip (mirror pairs share a group)
                hg = 0.5 * (hg + self.group_head.predict_proba(feats.head_flip))
            out.head_group = hg
            for g, head in self.within_heads.items():
                p = head.predict_proba(feats.head)
                if feats.head_flip is not None and self.flip_tta.get("within", False):
                    sub = subset_permutation(self.members[g], perm)
                    p = flip_tta(p, head.predict_proba(feats.head_flip), sub)
                if self.within_blend:
                    p = 0.5 * (p + within_group(baseline, self.members[g]))
                out.within[g] = p
        return out

    def decide(self, out: SystemOutputs, threshold: float | None = None) -> HybridDecision:
        thr = self.active_threshold if threshold is None else threshold
        if self.hierarchical:
            return hierarchical_decide(
                out.proto_group, out.head_group, out.within, self.members, self.taxonomy.n_classes, thr
            )
        return flat_decide(out.proto_fine, out.baseline, thr)

    def predict_features(self, feats: ImageFeatures) -> tuple[HybridDecision, SystemOutputs]:
        out = self.system_outputs(feats)
        return self.decide(out), out

    def predict(self, images: Sequence) -> list[dict]:
        """Predictions for image paths or PIL images, in the `predict --json` schema."""
        feats = self.image_features(images)
        dec, _ = self.predict_features(feats)
        t = self.taxonomy
        results = []
        for i, img in enumerate(images):
            label = t.class_name(int(dec.fine[i]))
            results.append(
                {
                    "image": str(img) if isinstance(img, (str, Path)) else getattr(img, "filename", None) or f"image-{i}",
                    "label": label,
                    "label_id": int(dec.fine[i]),
                    "group": t.group_of(label),
                    "confidence": round(float(dec.confidence[i]), 6),
                    "source": "prototype" if bool(dec.from_prototype[i]) else "head",
                    "probabilities": {c: round(float(dec.fine_proba[i, j]), 6) for j, c in enumerate(t.classes)},
                }
            )
        return results
