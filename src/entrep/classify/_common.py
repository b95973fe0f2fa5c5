"""Shared checks and helpers for the trainable classification pieces.

Input validation (feature matrices, label vectors), the not-fitted error, a
seeded and deterministic torch context that leaves global state as it found
it, and the group-aware stratified holdout. Fitted weights are numpy arrays
(:mod:`entrep.classify.npnets`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import warnings
from typing import Any, Iterator, Mapping

import numpy as np

from entrep.errors import EntrepError, ModelError

log = logging.getLogger(__name__)


class FeatureError(EntrepError, ValueError):
    """A feature matrix or label vector that a model cannot use (shape, NaN, ...)."""


class NotFittedModelError(ModelError, ValueError, AttributeError):
    """A model used before ``fit`` (or ``from_state``); a ValueError and AttributeError like sklearn's NotFittedError."""


class Estimator:
    """The scikit-learn estimator protocol (``get_params``/``set_params``, so ``sklearn.base.clone`` and
    grid searches work) without importing scikit-learn, whose import (scipy.stats, pandas) is over a second
    of every ``entrep predict``. Parameters are the ``__init__`` arguments, stored under the same names.
    """

    @classmethod
    def _get_param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(n for n, p in sig.parameters.items()
                      if n != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {n: getattr(self, n) for n in self._get_param_names()}

    def set_params(self, **params: Any) -> "Estimator":
        valid = set(self._get_param_names())
        bad = sorted(set(params) - valid)
        if bad:
            raise ValueError(f"{type(self).__name__}: unknown parameters {bad}; valid: {sorted(valid)}")
        for k, v in params.items():
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class ClassifierEstimator(Estimator):
    """An :class:`Estimator` that classifies: ``score`` is accuracy, as in sklearn's ClassifierMixin."""

    _estimator_type = "classifier"

    def score(self, X, y, sample_weight=None) -> float:
        hit = np.asarray(self.predict(X)) == np.asarray(y)  # type: ignore[attr-defined]
        return float(np.average(hit, weights=sample_weight))


def require_fitted(model: object, attribute: str) -> None:
    """Raise :class:`NotFittedModelError` unless ``model`` has ``attribute`` set."""
    if getattr(model, attribute, None) is None:
        name = type(model).__name__
        raise NotFittedModelError(
            f"{name} is not fitted yet: call {name}.fit(...) or load one with {name}.from_state(...) first"
        )


def check_features(X: object, name: str = "X", *, dim: int | None = None, dtype=np.float32) -> np.ndarray:
    """Return ``X`` as a C-contiguous 2-D float array, or raise :class:`FeatureError`.

    A 1-D vector is read as one row. NaN or infinite values, an empty matrix or
    a column count other than ``dim`` are errors naming ``name``.
    """
    try:
        arr = np.asarray(X, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise FeatureError(f"{name}: cannot read as a numeric feature matrix ({exc})") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise FeatureError(f"{name}: expected a 2-D (rows, features) array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise FeatureError(f"{name}: empty feature matrix of shape {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise FeatureError(
            f"{name}: has {arr.shape[1]} features per row but the model was fitted on {dim}; "
            "use features from the same encoder the model was trained with"
        )
    if not np.isfinite(arr).all():
        bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
        raise FeatureError(
            f"{name}: {bad.size} row(s) contain NaN or infinite values (first: row {int(bad[0])}); "
            "re-extract those features or drop the rows"
        )
    return np.ascontiguousarray(arr)


def check_labels(y: object, n_rows: int, name: str = "y") -> np.ndarray:
    """Return integer class ids as int64, or raise :class:`FeatureError`."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise FeatureError(f"{name}: expected a 1-D vector of integer class ids, got shape {arr.shape}")
    if arr.shape[0] != n_rows:
        raise FeatureError(f"{name}: has {arr.shape[0]} labels for {n_rows} feature rows")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f" and np.isfinite(arr).all() and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise FeatureError(
        f"{name}: labels must be integer class ids (e.g. taxonomy.class_id(label)), got dtype {arr.dtype}"
    )


def check_groups(groups: object, n_rows: int, name: str = "sample_groups") -> np.ndarray:
    """Group ids (any hashable scalars) as a 1-D array with one entry per row."""
    arr = np.asarray(groups)
    if arr.ndim != 1 or arr.shape[0] != n_rows:
        raise FeatureError(f"{name}: expected one group id per row ({n_rows}), got shape {arr.shape}")
    return arr


def group_holdout(
    y: np.ndarray, groups: np.ndarray | None, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Stratified holdout of about ``fraction`` of the rows that never splits a group.

    Rows sharing a group id (augmented views of one source image, say) all land
    on the same side. Returns ``(train_idx, val_idx)``, or ``None`` when there
    are too few groups to hold any out.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    n = y.shape[0]
    if groups is None:
        groups = np.arange(n)
    group_codes = np.unique(groups, return_inverse=True)[1].ravel()
    n_groups = int(group_codes.max()) + 1
    if n_groups < 2 or n < 4:
        return None
    # StratifiedGroupKFold refuses more folds than the largest class has rows (small data sets): fewer folds
    # then, i.e. a somewhat larger holdout
    largest = int(np.unique(y, return_counts=True)[1].max())
    n_splits = min(max(2, int(round(1.0 / fraction))), n_groups, largest)
    if n_splits < 2:
        return None
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "least populated class has fewer members than n_splits" is expected for rare classes
        warnings.simplefilter("ignore", UserWarning)
        train_idx, val_idx = next(splitter.split(np.zeros(n), y, group_codes))
    # a class whose every group landed in validation could never be learned: give it back to training
    lost = np.setdiff1d(y[val_idx], y[train_idx])
    if lost.size:
        back = np.isin(group_codes[val_idx], group_codes[val_idx][np.isin(y[val_idx], lost)])
        train_idx, val_idx = np.concatenate([train_idx, val_idx[back]]), val_idx[~back]
    if val_idx.size == 0 or train_idx.size == 0:
        return None
    return np.sort(train_idx), np.sort(val_idx)


@contextlib.contextmanager
def seeded_torch(seed: int, *, device: str = "cpu") -> Iterator[None]:
    """Seed torch for one fit, restoring the global RNG state on exit.

    Fitting a model never changes randomness elsewhere in the process. On CUDA
    deterministic algorithms are switched on (warn-only) for the duration. On
    the CPU the kernels used here (linear, layer norm, GELU, dropout, softmax,
    cross-entropy, AdamW) are deterministic already, and the tests check
    bit-identical refits; the global flag is left alone there because turning
    it on imports torch's compiler stack (seconds per process).

    CPU fits run on one thread: these models are small matrices, where
    intra-op threading gains little on an idle machine and loses up to 10x
    when other processes hold the cores (measured here: a 3,000-row head
    took 19 s on one thread and 248 s on two under load).
    """
    import torch

    cuda = str(device).startswith("cuda")
    threads = torch.get_num_threads()
    if not cuda:
        torch.set_num_threads(1)
    devices = [torch.device(device).index or 0] if cuda else []
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if cuda:
            torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
            if cuda:
                torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)


def state_param(state: Mapping[str, object], key: str, what: str):
    """Fetch ``state[key]`` or raise a :class:`ModelError` naming the missing entry."""
    try:
        return state[key]
    except KeyError:
        raise ModelError(f"{what}: saved state lacks {key!r}; the model folder is incomplete or from another version") from None


def check_kind(state: Mapping[str, object], kind: str) -> None:
    found = state.get("kind")
    if found != kind:
        raise ModelError(f"saved state is for {found!r}, not {kind!r}")
