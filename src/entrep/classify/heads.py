"""The paper's MLP classification head and a seeded, early-stopped trainer for it.

:class:`MLPHead` is section 4.3.3's head on frozen pooled features:
LayerNorm(in) -> Dropout(0.3) -> Linear(in, 256) -> GELU -> Linear(256, 128)
-> GELU -> Linear(128, C). The LayerNorm is the only input standardisation.

:class:`HeadClassifier` trains it with AdamW and cross-entropy on cached
feature rows (numpy in, numpy out): class-balanced oversampling for
imbalance, early stopping on validation loss with the best epoch's weights
restored, a group-aware internal holdout so augmented views of one image never
straddle train and validation, and bit-identical refits for a fixed seed.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np

from entrep.classify import npnets
from entrep.classify._common import (
    ClassifierEstimator,
    FeatureError,
    check_features,
    check_groups,
    check_kind,
    check_labels,
    group_holdout,
    require_fitted,
    seeded_torch,
    state_param,
)

log = logging.getLogger(__name__)

__all__ = ["MLPHead", "HeadClassifier"]


def __getattr__(name: str):
    if name == "MLPHead":  # the torch module lives with the other training modules (imports torch on use)
        from entrep.classify.torch_nets import MLPHead

        return MLPHead
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

#: an epoch must lower the validation loss by this much to count as progress (stops long tails)
_MIN_DELTA = 1e-4
_PARAMS = ("hidden", "dropout", "lr", "weight_decay", "max_epochs", "batch_size", "patience", "oversample", "seed", "device")


class HeadClassifier(ClassifierEstimator):
    """Train an :func:`MLPHead` on feature rows; sklearn-style classifier.

    Parameters: ``hidden`` widths and ``dropout`` of the head; ``lr`` and
    ``weight_decay`` for AdamW; at most ``max_epochs`` passes of
    ``batch_size`` rows; stop after ``patience`` epochs without a lower
    validation loss; ``oversample`` draws each epoch's rows with probability
    inversely proportional to their class size (a seeded
    WeightedRandomSampler); ``seed``; ``device`` to train on (the fitted head
    always lives on the CPU).

    Fitted: ``classes_`` (label ids, the column order of ``predict_proba``),
    ``weights_`` (the head's float32 arrays by ``state_dict`` key; :meth:`module` rebuilds the torch
    module, inference runs in numpy, :mod:`entrep.classify.npnets`), ``history_`` (per epoch: ``train_loss``,
    ``val_loss``, ``val_accuracy``), ``best_epoch_`` (1-based; its weights are
    the ones kept), ``n_features_in_``.
    """

    def __init__(
        self,
        hidden: Sequence[int] = (256, 128),
        dropout: float = 0.3,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        max_epochs: int = 200,
        batch_size: int = 64,
        patience: int = 15,
        oversample: bool = True,
        seed: int = 0,
        device: str = "cpu",
    ):
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.patience = patience
        self.oversample = oversample
        self.seed = seed
        self.device = device

    # ---- fitting ---------------------------------------------------------
    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        n_classes: int | None = None,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
        sample_groups: Sequence | None = None,
    ) -> "HeadClassifier":
        """Train on rows ``X`` (N, D) with class ids ``y``.

        ``n_classes`` makes the classes ``0..n_classes-1`` (default: the ids
        present in ``y``). Early stopping uses ``(X_val, y_val)``; without them
        a stratified ~10% of the rows is held out, split by ``sample_groups``
        (the source-image id of each row) so all views of one image stay on one
        side. Returns self.
        """
        self._check_params()
        X = check_features(X, "X")
        y = check_labels(y, X.shape[0])
        if n_classes is not None:
            if int(n_classes) < 2:
                raise FeatureError(f"n_classes must be at least 2, got {n_classes}")
            classes = np.arange(int(n_classes), dtype=np.int64)
        else:
            classes = np.unique(y)
        bad = sorted(set(np.unique(y).tolist()) - set(classes.tolist()))
        if bad:
            raise FeatureError(f"y: class ids {bad} lie outside 0..{len(classes) - 1} (n_classes={n_classes})")
        if np.unique(y).size < 2:
            raise FeatureError(f"y: a classifier needs rows of at least 2 classes; all rows are class {int(y[0])}")

        if (X_val is None) != (y_val is None):
            raise FeatureError("give both X_val and y_val, or neither")
        self.holdout_index_ = None
        if X_val is not None:
            Xv = check_features(X_val, "X_val", dim=X.shape[1])
            yv = check_labels(y_val, Xv.shape[0], "y_val")
            bad = sorted(set(np.unique(yv).tolist()) - set(classes.tolist()))
            if bad:
                raise FeatureError(f"y_val: class ids {bad} were not seen in training (classes {classes.tolist()})")
            Xt, yt = X, y
        else:
            groups = None if sample_groups is None else check_groups(sample_groups, X.shape[0])
            split = group_holdout(y, groups, 0.1, self.seed)
            if split is None:
                log.warning("head: too few rows to hold any out; training %d epochs without early stopping", self.max_epochs)
                Xt, yt, Xv, yv = X, y, None, None
            else:
                tr, va = split
                Xt, yt, Xv, yv = X[tr], y[tr], X[va], y[va]
                self.holdout_index_ = va
        self.classes_ = classes
        self.n_features_in_ = int(X.shape[1])
        col_t = np.searchsorted(classes, yt)
        col_v = None if yv is None else np.searchsorted(classes, yv)
        with seeded_torch(int(self.seed), device=self.device):
            self._train(Xt, col_t, Xv, col_v)
        return self

    def _check_params(self) -> None:
        for name in ("max_epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise FeatureError(f"HeadClassifier: {name} must be a positive integer, got {value!r}")
        if not 0 <= self.dropout < 1:
            raise FeatureError(f"HeadClassifier: dropout must lie in [0, 1), got {self.dropout!r}")
        if not self.lr > 0:
            raise FeatureError(f"HeadClassifier: lr must be positive, got {self.lr!r}")

    def _train(self, Xt: np.ndarray, yt: np.ndarray, Xv: np.ndarray | None, yv: np.ndarray | None) -> None:
        import torch
        import torch.nn.functional as F

        from entrep.classify.torch_nets import MLPHead

        dev = torch.device(self.device)
        C = len(self.classes_)
        head = MLPHead(Xt.shape[1], C, self.hidden, self.dropout).to(dev)
        # fused AdamW: one kernel per step instead of a dozen; a large share of a CPU step otherwise
        opt = torch.optim.AdamW(head.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                fused=dev.type in ("cpu", "cuda"))
        gen = torch.Generator().manual_seed(int(self.seed))
        X_t = torch.from_numpy(Xt).to(dev)
        y_t = torch.from_numpy(yt).to(dev)
        n = Xt.shape[0]
        counts = np.bincount(yt, minlength=C)
        row_weight = torch.from_numpy(1.0 / counts[yt])  # each class drawn equally often
        # validation loss weights: balanced when training is balanced, so both target the same prior
        val_w = None
        if yv is not None:
            cv = np.bincount(yv, minlength=C).astype(np.float64)
            val_w = torch.from_numpy(np.where(cv > 0, 1.0 / np.maximum(cv, 1), 0.0)).float() if self.oversample else None

        history: dict[str, list] = {"epoch": [], "train_loss": [], "val_loss": [], "val_accuracy": []}
        best_loss, best_state, best_epoch, stale = np.inf, None, 0, 0
        for epoch in range(1, self.max_epochs + 1):
            head.train()
            if self.oversample:
                order = torch.multinomial(row_weight, n, replacement=True, generator=gen)
            else:
                order = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, self.batch_size):
                b = order[start:start + self.batch_size].to(dev)
                loss = F.cross_entropy(head(X_t[b]), y_t[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item() * b.numel()
            history["epoch"].append(epoch)
            history["train_loss"].append(total / n)
            if Xv is None:
                history["val_loss"].append(None)
                history["val_accuracy"].append(None)
                best_epoch = epoch
                continue
            logits = _eval_logits(head, Xv, dev)
            yv_t = torch.from_numpy(yv)
            val_loss = float(F.cross_entropy(logits, yv_t, weight=val_w))
            history["val_loss"].append(val_loss)
            history["val_accuracy"].append(float((logits.argmax(1) == yv_t).float().mean()))
            if val_loss < best_loss - _MIN_DELTA:
                best_loss, best_epoch, stale = val_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
            else:
                stale += 1
                if stale >= self.patience:
                    break
        if best_state is not None:
            head.load_state_dict(best_state)
        self.weights_ = npnets.weights_of(head)
        self.history_ = history
        self.best_epoch_ = int(best_epoch)
        log.info(
            "head: %d epochs, best %d, val loss %s", len(history["epoch"]), best_epoch,
            "n/a" if Xv is None else f"{best_loss:.4f}",
        )

    # ---- inference -------------------------------------------------------
    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Logits ``(N, C)`` float32, columns in ``classes_`` order."""
        require_fitted(self, "weights_")
        X = check_features(X, "X", dim=self.n_features_in_)
        return npnets.mlp_forward(self.weights_, X, len(self.hidden))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Softmax class probabilities ``(N, C)`` float64, columns in ``classes_`` order."""
        logits = self.decision_function(X).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray) -> np.ndarray:
        scores = self.decision_function(X)
        return self.classes_[np.argmax(scores, axis=1)]

    def embed(self, X: np.ndarray) -> np.ndarray:
        """Penultimate activations ``(N, hidden[-1])`` float32: a compact, class-discriminative embedding
        (used as the "head" space of image->image search)."""
        require_fitted(self, "weights_")
        X = check_features(X, "X", dim=self.n_features_in_)
        return npnets.mlp_forward(self.weights_, X, len(self.hidden), penultimate=True)

    def module(self):
        """The fitted head as a torch :class:`~entrep.classify.torch_nets.MLPHead` in evaluation mode (a copy;
        inference here runs in numpy)."""
        import torch

        from entrep.classify.torch_nets import MLPHead

        require_fitted(self, "weights_")
        head = MLPHead(self.n_features_in_, len(self.classes_), self.hidden, self.dropout)
        head.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in self.weights_.items()}, strict=True)
        return head.eval()

    # ---- saving ----------------------------------------------------------
    def get_state(self) -> dict:
        """Fitted state: numpy arrays plus JSON-able values; :meth:`from_state` inverts it exactly."""
        require_fitted(self, "weights_")
        params = {k: getattr(self, k) for k in _PARAMS}
        params["hidden"] = [int(h) for h in self.hidden]
        params = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in params.items()}
        state = {
            "kind": "HeadClassifier",
            "params": params,
            "n_features_in_": self.n_features_in_,
            "classes_": self.classes_.copy(),
            "best_epoch_": self.best_epoch_,
            "history_": {k: list(v) for k, v in self.history_.items()},
        }
        state.update(npnets.state_arrays(self.weights_, "head."))
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, object]) -> "HeadClassifier":
        check_kind(state, "HeadClassifier")
        what = "HeadClassifier"
        params = dict(state_param(state, "params", what))
        params["hidden"] = tuple(int(h) for h in params.get("hidden", (256, 128)))
        model = cls(**{k: params[k] for k in _PARAMS if k in params})
        model.n_features_in_ = int(state_param(state, "n_features_in_", what))
        model.classes_ = np.asarray(state_param(state, "classes_", what), dtype=np.int64)
        model.best_epoch_ = int(state_param(state, "best_epoch_", what))
        model.history_ = {k: list(v) for k, v in dict(state_param(state, "history_", what)).items()}
        shapes = npnets.mlp_shapes(model.n_features_in_, len(model.classes_), model.hidden)
        model.weights_ = npnets.weights_from_state(state, "head.", shapes, what=what)
        return model


def _eval_logits(head, X: np.ndarray, dev):
    """Evaluation-mode logits of the torch head during training (chunked, on the CPU)."""
    import torch

    head.eval()
    with torch.no_grad():
        out = [head(torch.from_numpy(X[s:s + npnets.CHUNK]).to(dev)).float().cpu()
               for s in range(0, X.shape[0], npnets.CHUNK)]
    return torch.cat(out)
