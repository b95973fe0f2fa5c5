"""Learned image-text alignment for encoders that do not share a space (offline profile).

EfficientNet image features and MiniLM text features live in unrelated
spaces, so ``cos(v, u)`` (fusion, text-to-image search) means nothing until
both are mapped into one joint space. :class:`JointAlignment` learns two
projections (standardise, then linear, then L2-normalise) on the training
set's (image, text) pairs, where the text is the image's caption or, lacking
one, its class fallback prompt.

Objective (temperature ``tau``, a batch of B pairs, unit rows ``a_i``, ``b_j``):

* multi-positive symmetric InfoNCE: ``L_pair = (CE(a b^T/tau, T) + CE(b a^T/tau, T^T)) / 2``
  where target row ``T_i`` is uniform over every text ``j`` in the batch that
  is a positive for image ``i``: the identical text (same ``text_ids``) or,
  with ``class_positives``, any text of the same class. Many images share one
  prompt, so one-hot CLIP targets would push identical texts apart;
* prompt classification: ``L_cls = CE(a q^T/tau, y)`` against the C projected
  class prompts ``q`` (or class text centroids), so that ``cos(v, u_prompt)``
  ranks the right class first, as fusion and zero-shot prototypes need;
* ``L = L_pair + prompt_weight * L_cls``, AdamW, early stopping on
  text-to-image recall@5 of held-out pairs (ties: lower held-out loss).
"""

from __future__ import annotations

import logging
import numbers
from typing import Mapping, Sequence

import numpy as np

from entrep.classify import npnets
from entrep.classify._common import (
    Estimator,
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

__all__ = ["JointAlignment", "text_to_image_recall"]

_MIN_DELTA = 1e-3  # held-out loss must drop by this much to count as an improvement
_PARAMS = (
    "dim", "epochs", "lr", "temperature", "seed", "weight_decay", "batch_size", "patience",
    "prompt_weight", "class_positives", "image_hidden", "val_fraction",
)


def _standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre on the training mean; scale so the mean centred row has norm 1."""
    mean = X.mean(axis=0, dtype=np.float64)
    Xc = X - mean.astype(np.float32)
    scale = float(max(np.linalg.norm(Xc, axis=1).mean(), 1e-8))
    return (Xc / np.float32(scale)).astype(np.float32), mean.astype(np.float32), scale


def _row_space_basis(Xc: np.ndarray) -> np.ndarray | None:
    """Orthonormal basis (r, D) of the span of the training rows, when D > N.

    A first linear layer only ever sees the training data through ``X @ W``,
    and its gradient lies in the rows' span; training in that r <= N
    dimensional basis and folding back ``W = W_r @ B`` gives the same kind of
    model at a fraction of the cost (6400-d features, ~1k images).
    """
    n, d = Xc.shape
    if d <= n:
        return None
    gram = (Xc @ Xc.T).astype(np.float64)
    w, Q = np.linalg.eigh(gram)
    keep = w > w[-1] * 1e-6
    w, Q = w[keep][::-1], Q[:, keep][:, ::-1]
    basis = (Q.T.astype(np.float32) @ Xc) / np.sqrt(w).astype(np.float32)[:, None]
    return np.ascontiguousarray(basis, dtype=np.float32)


def _fold(trained, hidden: int | None, mean: np.ndarray, scale: float, basis: np.ndarray | None) -> dict:
    """The deployable tower's weights (:func:`npnets.tower_shapes` layout): raw features in, the trained reduced
    tower's maths inside."""
    w = npnets.weights_of(trained.proj)
    if basis is not None:
        first = "0.weight" if hidden else "weight"
        w[first] = (w[first] @ basis).astype(np.float32)
    out = {"mean": np.asarray(mean, dtype=np.float32).copy(), "scale": np.full(1, scale, dtype=np.float32)}
    out.update({f"proj.{k}": v for k, v in w.items()})
    return out


def text_to_image_recall(
    img: np.ndarray, txt: np.ndarray, relevant: np.ndarray, k: int = 5
) -> float:
    """Share of text queries whose top-``k`` images (by inner product) hold a relevant one.

    ``relevant[q, i]`` is True when image ``i`` is relevant to text query ``q``.
    """
    sims = txt @ img.T
    k = min(k, img.shape[0])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return float(np.mean(np.take_along_axis(relevant, top, axis=1).any(axis=1)))


class JointAlignment(Estimator):
    """Contrastive linear projections of image and text features into one joint space.

    Parameters: ``dim`` joint dimension; ``epochs`` maximum passes; ``lr`` and
    ``weight_decay`` for AdamW; ``temperature`` of the contrastive softmax;
    ``batch_size`` pairs per step; ``patience`` epochs without held-out
    improvement before stopping; ``prompt_weight`` weight of the prompt
    classification term; ``class_positives`` count same-class texts as
    positives (else only identical texts); ``image_hidden`` width of an
    optional hidden layer (GELU) in the image tower (None: linear, which
    generalises best with ~1k images); ``val_fraction`` of pairs held out for
    early stopping when no ``val`` is given; ``seed``.

    Fitted: ``image_tower_``, ``text_tower_`` (float32 weight arrays, :func:`npnets.tower_shapes`; applied in numpy), ``history_``,
    ``best_epoch_``, ``n_image_features_in_``, ``n_text_features_in_``.
    """

    def __init__(
        self,
        dim: int = 256,
        epochs: int = 150,
        lr: float = 1e-3,
        temperature: float = 0.07,
        seed: int = 0,
        weight_decay: float = 1e-2,
        batch_size: int = 512,
        patience: int = 15,
        prompt_weight: float = 0.25,
        class_positives: bool = True,
        image_hidden: int | None = None,
        val_fraction: float = 0.1,
    ):
        self.dim = dim
        self.epochs = epochs
        self.lr = lr
        self.temperature = temperature
        self.seed = seed
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.patience = patience
        self.prompt_weight = prompt_weight
        self.class_positives = class_positives
        self.image_hidden = image_hidden
        self.val_fraction = val_fraction

    # ---- fitting ---------------------------------------------------------
    def fit(
        self,
        V_img: np.ndarray,
        U_txt: np.ndarray,
        *,
        text_ids: Sequence,
        labels: Sequence[int],
        prompts: np.ndarray | None = None,
        sample_groups: Sequence | None = None,
    ) -> "JointAlignment":
        """Learn the projections from row-aligned pairs ``V_img[i]`` <-> ``U_txt[i]``.

        ``text_ids`` groups identical texts (the text strings themselves work);
        ``labels`` are class ids. ``prompts`` ((C, D_txt), row c = class id c's
        fallback prompt features) feed the prompt-classification term; without
        them the class centroids of ``U_txt`` stand in. For early stopping a
        stratified ``val_fraction`` of the pairs is held out, keeping rows of
        one ``sample_groups`` id (one source image) on the same side.
        """
        self._check_params()
        V = check_features(V_img, "V_img")
        U = check_features(U_txt, "U_txt")
        if U.shape[0] != V.shape[0]:
            raise FeatureError(f"U_txt: {U.shape[0]} text rows for {V.shape[0]} image rows; pairs must be row-aligned")
        y = check_labels(labels, V.shape[0], "labels")
        tid = np.unique(check_groups(text_ids, V.shape[0], "text_ids"), return_inverse=True)[1].ravel()
        classes = np.unique(y)
        if prompts is not None:
            P = check_features(prompts, "prompts", dim=U.shape[1])
            if y.min() < 0 or y.max() >= P.shape[0]:
                raise FeatureError(f"labels: class ids must lie in 0..{P.shape[0] - 1} (one prompt row per class id)")
            cls_target = y
        else:
            P, cls_target = None, np.searchsorted(classes, y)

        groups = None if sample_groups is None else check_groups(sample_groups, V.shape[0])
        split = group_holdout(y, groups, self.val_fraction, self.seed)
        if split is None:
            log.warning("alignment: too few pairs to hold any out; training %d epochs without early stopping", self.epochs)
            train_idx, Vv = np.arange(V.shape[0]), None
        else:
            train_idx, val_idx = split
            Vv, Uv, tv, yv = V[val_idx], U[val_idx], tid[val_idx], y[val_idx]

        if P is None:  # class text centroids of the training pairs stand in for prompts
            in_train = np.zeros(V.shape[0], dtype=bool)
            in_train[train_idx] = True
            P = np.stack([U[(y == c) & in_train].mean(axis=0) if np.any((y == c) & in_train) else U[y == c].mean(axis=0)
                          for c in classes]).astype(np.float32)
        self.n_image_features_in_ = int(V.shape[1])
        self.n_text_features_in_ = int(U.shape[1])
        # standardise on the training rows, then train in their row space (see _row_space_basis)
        Vs, v_mean, v_scale = _standardise(V[train_idx])
        Us, u_mean, u_scale = _standardise(U[train_idx])
        v_basis, u_basis = _row_space_basis(Vs), _row_space_basis(Us)

        import torch

        def prepare(X, mean, scale, basis):
            Xs = (X - mean) / np.float32(scale)
            return torch.from_numpy(np.ascontiguousarray(Xs if basis is None else Xs @ basis.T, dtype=np.float32))

        val_t = None
        if Vv is not None:
            if prompts is not None:
                cls_v = np.where((yv >= 0) & (yv < P.shape[0]), yv, -1)
            else:
                cls_v = np.where(np.isin(yv, classes), np.searchsorted(classes, yv), -1)
            val_t = (prepare(Vv, v_mean, v_scale, v_basis), prepare(Uv, u_mean, u_scale, u_basis),
                     torch.from_numpy(tv), torch.from_numpy(yv), torch.from_numpy(cls_v.astype(np.int64)))
        with seeded_torch(self.seed):
            img, txt = self._train(
                prepare(V[train_idx], v_mean, v_scale, v_basis), prepare(U[train_idx], u_mean, u_scale, u_basis),
                torch.from_numpy(tid[train_idx]), torch.from_numpy(y[train_idx]),
                prepare(P, u_mean, u_scale, u_basis), torch.from_numpy(cls_target[train_idx]), val_t,
            )
            self.image_tower_ = _fold(img, self.image_hidden, v_mean, v_scale, v_basis)
            self.text_tower_ = _fold(txt, None, u_mean, u_scale, u_basis)
        return self

    def _check_params(self) -> None:
        for name in ("dim", "epochs", "batch_size", "patience"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise FeatureError(f"JointAlignment: {name} must be a positive integer, got {value!r}")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if not (isinstance(value, numbers.Real) and value > 0):
                raise FeatureError(f"JointAlignment: {name} must be positive, got {value!r}")
        if not 0 < self.val_fraction < 1:
            raise FeatureError(f"JointAlignment: val_fraction must lie in (0, 1), got {self.val_fraction!r}")

    def _positives(self, tid, y):
        pos = tid[:, None] == tid[None, :]
        if self.class_positives:
            pos = pos | (y[:, None] == y[None, :])
        return pos.float()

    def _pair_loss(self, a, b, tid, y):
        """Multi-positive symmetric InfoNCE between unit image rows ``a`` and text rows ``b``."""
        import torch.nn.functional as F

        logits = a @ b.T / self.temperature
        pos = self._positives(tid, y)
        i2t = -(pos / pos.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
        t2i = -(pos / pos.sum(0, keepdim=True) * F.log_softmax(logits, dim=0)).sum(0).mean()
        return (i2t + t2i) / 2

    def _prompt_loss(self, a, q, cls_target):
        """Cross-entropy of images against the projected class prompts ``q``."""
        import torch.nn.functional as F

        return F.cross_entropy(a @ q.T / self.temperature, cls_target)

    def _train(self, V, U, tid, y, P, cls_target, val):
        """Optimise both towers (torch_nets.Tower) on standardised (and row-space reduced) inputs; returns them."""
        import torch

        from entrep.classify.torch_nets import Tower

        img = Tower(V.shape[1], self.dim, self.image_hidden)
        txt = Tower(U.shape[1], self.dim, None)
        params = list(img.parameters()) + list(txt.parameters())
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        gen = torch.Generator().manual_seed(int(self.seed))
        n = V.shape[0]
        history = {"epoch": [], "train_loss": [], "val_loss": [], "val_recall@5": []}
        best_key, best_state, best_epoch, stale = None, None, 0, 0
        for epoch in range(1, self.epochs + 1):
            img.train(), txt.train()
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, self.batch_size):
                b = order[start:start + self.batch_size]
                if b.numel() < 2:
                    continue
                a = img(V[b])
                loss = self._pair_loss(a, txt(U[b]), tid[b], y[b])
                if self.prompt_weight:
                    loss = loss + self.prompt_weight * self._prompt_loss(a, txt(P), cls_target[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach().item() * b.numel()
            history["epoch"].append(epoch)
            history["train_loss"].append(total / n)
            if val is None:
                history["val_loss"].append(None)
                history["val_recall@5"].append(None)
                best_epoch = epoch
                continue
            val_loss, recall = self._evaluate(img, txt, val, P)
            history["val_loss"].append(val_loss)
            history["val_recall@5"].append(recall)
            better = best_key is None or recall > best_key[0] or (
                recall == best_key[0] and val_loss < best_key[1] - _MIN_DELTA)
            if better:
                best_key, best_epoch, stale = (recall, val_loss), epoch, 0
                best_state = ({k: v.clone() for k, v in img.state_dict().items()},
                              {k: v.clone() for k, v in txt.state_dict().items()})
            else:
                stale += 1
                if stale >= self.patience:
                    break
        if best_state is not None:
            img.load_state_dict(best_state[0])
            txt.load_state_dict(best_state[1])
        self.history_ = history
        self.best_epoch_ = int(best_epoch)
        log.info(
            "alignment: %d epochs, best %d (held-out t2i recall@5 %s)", len(history["epoch"]), best_epoch,
            "n/a" if val is None else f"{history['val_recall@5'][best_epoch - 1]:.3f}",
        )
        return img.eval(), txt.eval()

    def _evaluate(self, img, txt, val, P) -> tuple[float, float]:
        """Held-out loss (same objective as training) and text-to-image recall@5.

        Relevance for the recall is the positives rule (same text, or same class).
        """
        import torch

        Vv, Uv, tv, yv, cls_v = val
        img.eval(), txt.eval()
        with torch.no_grad():
            a, b = img(Vv), txt(Uv)
            loss = float(self._pair_loss(a, b, tv, yv))
            known = cls_v >= 0
            if self.prompt_weight and bool(known.any()):
                loss += self.prompt_weight * float(self._prompt_loss(a[known], txt(P), cls_v[known]))
            rel = self._positives(tv, yv).bool().numpy()
        first = np.unique(tv.numpy(), return_index=True)[1]  # one query per distinct text
        recall = text_to_image_recall(a.numpy(), b.numpy()[first], rel[first], k=5)
        return loss, recall

    # ---- inference -------------------------------------------------------
    def _apply(self, tower: dict, X, name: str, dim: int) -> np.ndarray:
        return npnets.tower_forward(tower, check_features(X, name, dim=dim))

    def transform_images(self, V: np.ndarray) -> np.ndarray:
        """Image features -> unit-norm joint embeddings, ``(N, dim)`` float32."""
        require_fitted(self, "image_tower_")
        return self._apply(self.image_tower_, V, "V", self.n_image_features_in_)

    def transform_texts(self, U: np.ndarray) -> np.ndarray:
        """Text features -> unit-norm joint embeddings, ``(N, dim)`` float32."""
        require_fitted(self, "text_tower_")
        return self._apply(self.text_tower_, U, "U", self.n_text_features_in_)

    # ---- saving ----------------------------------------------------------
    def get_state(self) -> dict:
        """Fitted state: numpy arrays plus JSON-able values; :meth:`from_state` inverts it exactly."""
        require_fitted(self, "image_tower_")
        state = {"kind": "JointAlignment", "params": {k: getattr(self, k) for k in _PARAMS}}
        state["params"] = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in state["params"].items()}
        state["n_image_features_in_"] = self.n_image_features_in_
        state["n_text_features_in_"] = self.n_text_features_in_
        state["best_epoch_"] = self.best_epoch_
        state["history_"] = {k: list(v) for k, v in self.history_.items()}
        state.update(npnets.state_arrays(self.image_tower_, "image_tower."))
        state.update(npnets.state_arrays(self.text_tower_, "text_tower."))
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, object]) -> "JointAlignment":
        check_kind(state, "JointAlignment")
        what = "JointAlignment"
        params = dict(state_param(state, "params", what))
        model = cls(**{k: params[k] for k in _PARAMS if k in params})
        model.n_image_features_in_ = int(state_param(state, "n_image_features_in_", what))
        model.n_text_features_in_ = int(state_param(state, "n_text_features_in_", what))
        model.best_epoch_ = int(state_param(state, "best_epoch_", what))
        model.history_ = {k: list(v) for k, v in dict(state_param(state, "history_", what)).items()}
        img = npnets.tower_shapes(model.n_image_features_in_, int(model.dim), model.image_hidden)
        txt = npnets.tower_shapes(model.n_text_features_in_, int(model.dim), None)
        model.image_tower_ = npnets.weights_from_state(state, "image_tower.", img, what=f"{what} image tower")
        model.text_tower_ = npnets.weights_from_state(state, "text_tower.", txt, what=f"{what} text tower")
        return model
