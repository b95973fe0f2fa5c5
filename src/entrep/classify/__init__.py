"""Classification models on precomputed feature arrays (numpy in, numpy out).

- :mod:`~entrep.classify.fusion`: image-text fusion maths (eq. 1-2), slerp.
- :mod:`~entrep.classify.prototypes`: :class:`PrototypeClassifier`, nearest
  class prototype by cosine (FAISS), softmax confidence.
- :mod:`~entrep.classify.align`: :class:`JointAlignment`, contrastive
  projections putting image and text features into one space (offline profile).
- :mod:`~entrep.classify.heads`: the paper's :class:`MLPHead` and its trainer
  :class:`HeadClassifier`.
- :mod:`~entrep.classify.hybrid`: the paper's confidence-gated rule and flip TTA,
  as pure functions over probabilities.
- :mod:`~entrep.classify.policy`: :class:`InferencePolicy` (which part decides,
  thresholds, test-time options) and :func:`select_policy` on validation.

Names are imported lazily so ``import entrep.classify.fusion`` does not pull in torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "l2_normalize": "fusion",
    "alignment_weight": "fusion",
    "fuse": "fusion",
    "slerp": "fusion",
    "PrototypeClassifier": "prototypes",
    "class_prototypes": "prototypes",
    "JointAlignment": "align",
    "MLPHead": "heads",
    "HeadClassifier": "heads",
    "InferencePolicy": "policy",
    "select_policy": "policy",
    "FeatureError": "_common",
    "NotFittedModelError": "_common",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
