"""Prototype (nearest-centroid) classifier over fused image-text embeddings.

One unit-norm prototype per class: the mean of the class's L2-normalised
members, normalised again. A query is scored by cosine against every prototype
(one matrix product: a handful of prototypes needs no index), and

    p(c | x) = softmax_c( cos(x, prototype_c) / temperature )

is the *confidence* the hybrid classifier compares with its threshold (0.99 in
the paper). With two close classes, p >= 0.99 needs a cosine margin of
``temperature * ln(99)``: about 0.046 at the default temperature 0.01.

Coarse (group) prototypes are the same estimator fitted on group ids.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from entrep.classify._common import (
    ClassifierEstimator,
    FeatureError,
    check_features,
    check_kind,
    check_labels,
    require_fitted,
    state_param,
)
from entrep.classify.fusion import l2_normalize

log = logging.getLogger(__name__)

__all__ = ["PrototypeClassifier", "class_prototypes"]

_METRICS = ("cosine",)


def class_prototypes(Z: np.ndarray, y: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm mean of the normalised members of each class in ``classes``.

    Returns ``(prototypes (C, D) float32, counts (C,))``; a class without
    members gets a zero row and count 0.
    """
    Zn = l2_normalize(Z.astype(np.float64))
    index = {int(c): i for i, c in enumerate(classes)}
    rows = np.array([index[int(c)] for c in y], dtype=np.int64)
    sums = np.zeros((len(classes), Zn.shape[1]))
    np.add.at(sums, rows, Zn)
    counts = np.bincount(rows, minlength=len(classes))
    protos = l2_normalize(sums / np.maximum(counts, 1)[:, None])
    return protos.astype(np.float32), counts


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    m = np.max(logits, axis=1, keepdims=True)
    shifted = logits - m
    with np.errstate(invalid="ignore"):  # -inf - finite is fine; rows always hold a finite value
        return shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))


class PrototypeClassifier(ClassifierEstimator):
    """Nearest-prototype classifier by cosine similarity, with softmax confidence.

    Parameters
    ----------
    metric : only ``"cosine"`` (queries and prototypes are L2-normalised and
        compared by inner product).
    temperature : softmax temperature turning cosines into probabilities.

    Fitted attributes: ``classes_`` (int64 class ids, column order of every
    output), ``prototypes_`` ((C, D) float32, unit rows; zero rows for empty
    classes), ``counts_`` (members per class), ``temperature_`` (the temperature in use), ``n_features_in_``.
    """

    def __init__(self, metric: str = "cosine", temperature: float = 0.01):
        self.metric = metric
        self.temperature = temperature

    # ---- fitting ---------------------------------------------------------
    def fit(
        self,
        Z: np.ndarray,
        y: np.ndarray,
        classes: Sequence[int] | None = None,
        *,
        allow_empty: bool = False,
    ) -> "PrototypeClassifier":
        """Build one prototype per class from fused embeddings ``Z`` (N, D) and ids ``y``.

        ``classes`` fixes the class ids and their column order (default: the
        sorted ids in ``y``). A listed class with no rows is an error unless
        ``allow_empty=True``, in which case it gets score ``-inf`` and
        probability 0.
        """
        if self.metric not in _METRICS:
            raise FeatureError(f"PrototypeClassifier: unknown metric {self.metric!r}; valid: {', '.join(_METRICS)}")
        self._check_temperature(self.temperature)
        Z = check_features(Z, "Z")
        y = check_labels(y, Z.shape[0])
        if classes is None:
            cls = np.unique(y)
        else:
            cls = check_labels(np.asarray(list(classes)), len(list(classes)), name="classes")
            if len(np.unique(cls)) != len(cls):
                raise FeatureError(f"classes: duplicate class ids in {cls.tolist()}")
            unknown = sorted(set(np.unique(y).tolist()) - set(cls.tolist()))
            if unknown:
                raise FeatureError(f"y: class ids {unknown} are not in classes {cls.tolist()}")
        protos, counts = class_prototypes(Z, y, cls)
        empty = cls[counts == 0]
        if empty.size and not allow_empty:
            raise FeatureError(
                f"class id(s) {empty.tolist()} have no training rows; add examples or pass allow_empty=True"
            )
        if empty.size:
            log.warning("prototype classes %s have no training rows; they will never be predicted", empty.tolist())
        self.classes_ = cls
        self.prototypes_ = protos
        self.counts_ = counts.astype(np.int64)
        self.n_features_in_ = int(Z.shape[1])
        self.temperature_ = float(self.temperature)
        return self

    @staticmethod
    def _check_temperature(t: float) -> None:
        if not (isinstance(t, (int, float, np.floating)) and np.isfinite(t) and t > 0):
            raise FeatureError(f"PrototypeClassifier: temperature must be a positive number, got {t!r}")

    # ---- inference -------------------------------------------------------
    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Cosine similarity of each row to every prototype, ``(N, C)`` float32.

        Columns follow ``classes_``; empty classes score ``-inf``.
        """
        require_fitted(self, "prototypes_")
        Xn = l2_normalize(check_features(X, "X", dim=self.n_features_in_))
        out = (Xn.astype(np.float32, copy=False) @ self.prototypes_.T).astype(np.float32, copy=False)
        out[:, self.counts_ == 0] = -np.inf
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``softmax(cos / temperature_)`` over ``classes_``, ``(N, C)`` float64."""
        return np.exp(self.predict_log_proba(X))

    def predict_log_proba(self, X: np.ndarray) -> np.ndarray:
        return _log_softmax(self.decision_function(X).astype(np.float64) / self.temperature_)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class id of the most similar prototype (ties: the first in ``classes_``)."""
        scores = self.decision_function(X)
        return self.classes_[np.argmax(scores, axis=1)]

    def confidence(self, X: np.ndarray) -> np.ndarray:
        """Largest class probability per row: what the hybrid's threshold is compared with."""
        return self.predict_proba(X).max(axis=1)

    # ---- saving ----------------------------------------------------------
    def get_state(self) -> dict:
        """Fitted state: numpy arrays plus JSON-able values; :meth:`from_state` inverts it exactly."""
        require_fitted(self, "prototypes_")
        return {
            "kind": "PrototypeClassifier",
            "metric": self.metric,
            "temperature": float(self.temperature),
            "temperature_": float(self.temperature_),
            "classes_": self.classes_.copy(),
            "prototypes_": self.prototypes_.copy(),
            "counts_": self.counts_.copy(),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, object]) -> "PrototypeClassifier":
        check_kind(state, "PrototypeClassifier")
        what = "PrototypeClassifier"
        model = cls(metric=str(state_param(state, "metric", what)), temperature=float(state_param(state, "temperature", what)))
        model.classes_ = np.asarray(state_param(state, "classes_", what), dtype=np.int64)
        model.prototypes_ = np.ascontiguousarray(state_param(state, "prototypes_", what), dtype=np.float32)
        model.counts_ = np.asarray(state_param(state, "counts_", what), dtype=np.int64)
        model.temperature_ = float(state_param(state, "temperature_", what))
        if model.prototypes_.ndim != 2 or not (len(model.classes_) == len(model.counts_) == model.prototypes_.shape[0]):
            raise FeatureError(f"{what}: saved classes, counts and prototypes disagree in length")
        model.n_features_in_ = int(model.prototypes_.shape[1])
        return model

