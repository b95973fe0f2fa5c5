"""Seed C's dual-backbone retrieval head and soft class-aware ranking.

:class:`MetricHead`: the features of each backbone are L2-normalised and
concatenated, then ``Linear -> dim (512)``, ``BatchNorm1d``, ``GELU``, L2.
Trained with a cosine triplet loss and pytorch-metric-learning's semi-hard
``TripletMarginMiner`` (or its ``MultiSimilarityLoss`` + miner). Batches are
class-balanced (``m`` images per class, as ``MPerClassSampler`` draws them)
and every class drawn brings its *mirror* class along (nose-left with
nose-right), so the hardest negatives for laterality - the same structure seen
from the other side - are in every batch for the miner to find.
``history_["mirror_negative_share"]`` records, per epoch, the share of mined
negatives that are the anchor's mirror class.

:func:`soft_class_rank` replaces the hard class filter of image search.
"""

from __future__ import annotations

import logging
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from entrep.errors import ModelError, UserError
from entrep.finetune.objectives import metric_loss

log = logging.getLogger(__name__)

_PARAMS = ("dim", "loss", "epochs", "lr", "seed", "m", "batch_size", "margin")


def mirror_batches(y: np.ndarray, mirror: np.ndarray, *, m: int, batch_size: int,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of class-balanced batches: ``m`` items per class, mirror classes drawn together.

    ``mirror[c]`` is the class id a horizontal flip turns ``c`` into (``taxonomy.flip_permutation()``).
    """
    classes = [c for c in np.unique(y)]
    by_class = {c: np.flatnonzero(y == c) for c in classes}
    per_batch = max(2, batch_size // m)
    batches = []
    n_batches = max(1, int(np.ceil(len(y) / batch_size)))
    for _ in range(n_batches):
        order = list(rng.permutation(classes))
        chosen: list[int] = []
        for c in order:
            if len(chosen) >= per_batch:
                break
            for cc in (c, mirror[c]):
                if cc in by_class and cc not in chosen:
                    chosen.append(int(cc))
        idx = [rng.choice(by_class[c], size=m, replace=len(by_class[c]) < m) for c in chosen]
        batches.append(np.concatenate(idx))
    return batches


class ProjectionNet(nn.Module):
    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, dim)
        self.bn = nn.BatchNorm1d(dim)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.act(self.bn(self.linear(x))), dim=-1)


def concat_normalised(features: Sequence[np.ndarray]) -> np.ndarray:
    """Each backbone's rows L2-normalised, then concatenated (row-aligned arrays)."""
    if not features:
        raise UserError("MetricHead needs the features of at least one backbone")
    n = {len(f) for f in features}
    if len(n) != 1:
        raise UserError(f"MetricHead: backbone feature arrays are not row-aligned (row counts {sorted(n)})")
    from entrep.classify.fusion import l2_normalize

    return np.concatenate([l2_normalize(np.asarray(f, dtype=np.float32)) for f in features], axis=1)


class MetricHead:
    """Dual-backbone projection trained with metric learning (see the module docstring)."""

    def __init__(self, dim: int = 512, loss: str = "triplet", epochs: int = 30, lr: float = 1e-3, seed: int = 0,
                 m: int = 4, batch_size: int = 64, margin: float = 0.2) -> None:
        self.dim, self.loss, self.epochs, self.lr, self.seed = dim, loss, epochs, lr, seed
        self.m, self.batch_size, self.margin = m, batch_size, margin

    def fit(self, features: Sequence[np.ndarray], y, taxonomy, X_val=None, y_val=None) -> "MetricHead":
        X = concat_normalised(features)
        y = np.asarray(y, dtype=np.int64)
        if len(np.unique(y)) < 2:
            raise UserError("MetricHead needs at least two classes")
        mirror = taxonomy.flip_permutation()
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        net = ProjectionNet(X.shape[1], self.dim)
        loss_fn, miner = metric_loss(self.loss, self.margin)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=1e-4)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
        self.history_ = {"loss": [], "mirror_negative_share": [], "val_recall_at_1": []}
        self.n_features_in_ = X.shape[1]
        best, best_state = -1.0, None
        for _ in range(self.epochs):
            net.train()
            losses, mirror_neg, neg = [], 0, 0
            for idx in mirror_batches(y, mirror, m=self.m, batch_size=self.batch_size, rng=rng):
                e = net(Xt[idx])
                yb = yt[idx]
                pairs = miner(e, yb)
                loss = loss_fn(e, yb, pairs)
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(loss.item())
                a, n = (pairs[0], pairs[2]) if len(pairs) == 3 else (pairs[2], pairs[3])
                neg += len(n)
                mirror_neg += int((torch.from_numpy(mirror)[yb[a]] == yb[n]).sum()) if len(n) else 0
            self.history_["loss"].append(float(np.mean(losses)))
            self.history_["mirror_negative_share"].append(mirror_neg / neg if neg else 0.0)
            if X_val is not None and y_val is not None:
                self.net_ = net.eval()
                r1 = recall_at_1(self.transform(X_val), np.asarray(y_val))
                self.history_["val_recall_at_1"].append(r1)
                if r1 > best:
                    best, best_state = r1, {k: v.clone() for k, v in net.state_dict().items()}
        if best_state is not None:
            net.load_state_dict(best_state)
        self.net_ = net.eval()
        return self

    @torch.no_grad()
    def transform(self, features: Sequence[np.ndarray]) -> np.ndarray:
        if not hasattr(self, "net_"):
            raise ModelError("MetricHead is not fitted; call fit() first")
        X = concat_normalised(features)
        if X.shape[1] != self.n_features_in_:
            raise UserError(f"MetricHead was fitted on {self.n_features_in_} concatenated features, got {X.shape[1]}")
        return self.net_(torch.from_numpy(X)).numpy().astype(np.float32)

    def get_state(self) -> dict:
        if not hasattr(self, "net_"):
            raise ModelError("MetricHead is not fitted; nothing to save")
        state = {"kind": "MetricHead", "params": {k: getattr(self, k) for k in _PARAMS},
                 "n_features_in_": int(self.n_features_in_), "history_": self.history_}
        state.update({f"net.{k}": v.detach().cpu().numpy().copy() for k, v in self.net_.state_dict().items()})
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, object]) -> "MetricHead":
        if state.get("kind") != "MetricHead":
            raise ModelError(f"state of kind {state.get('kind')!r} is not a MetricHead")
        head = cls(**dict(state["params"]))
        head.n_features_in_ = int(state["n_features_in_"])
        head.history_ = dict(state.get("history_", {}))
        net = ProjectionNet(head.n_features_in_, head.dim)
        expected = net.state_dict()
        found = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
        missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
        if missing or unexpected:
            raise ModelError(f"MetricHead state does not fit: missing {missing}, unexpected {unexpected}")
        net.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in found.items()})
        head.net_ = net.eval()
        return head


def recall_at_1(emb: np.ndarray, y: np.ndarray) -> float:
    """Image->image Recall@1 with class relevance, the query itself left out."""
    s = emb @ emb.T
    np.fill_diagonal(s, -np.inf)
    return float(np.mean(y[np.argmax(s, axis=1)] == y))


#: alpha of :func:`soft_class_rank` for models fitted before alpha was tuned at fit time (docs/retrieval.md)
DEFAULT_RANK_ALPHA = 0.5

#: the alphas :func:`tune_rank_alpha` tries on validation (0 = pure similarity; 4 is a near-hard filter)
RANK_ALPHAS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)


def soft_class_rank(similarity: np.ndarray, class_proba_of_query: np.ndarray, gallery_labels: np.ndarray,
                    alpha: float) -> np.ndarray:
    """Ranking scores ``score[q, g] = sim[q, g] + alpha * p_q(class of g)``.

    ``similarity``: (Q, G) cosine similarities; ``class_proba_of_query``: (Q, C) class
    probabilities of each query; ``gallery_labels``: (G,) class ids (``-1``: no class, bonus 0).
    ``alpha = 0`` is pure similarity; a large ``alpha`` approaches the hard filter (predicted
    class first), but a gallery image of another class can still outrank same-class ones when
    it is much more similar or when the prediction is unsure, so a wrong prediction no longer
    makes every result wrong. Sort each row descending to rank.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    p = np.asarray(class_proba_of_query, dtype=np.float64)
    g = np.asarray(gallery_labels, dtype=np.int64)
    if sim.shape != (p.shape[0], g.shape[0]):
        raise UserError(f"soft_class_rank: similarity {sim.shape} does not match {p.shape[0]} queries x {g.shape[0]} gallery")
    bonus = np.where(g[None, :] >= 0, p[:, np.maximum(g, 0)], 0.0)
    return sim + float(alpha) * bonus


def class_bins(taxonomy, fine_proba: np.ndarray, level: str) -> tuple[np.ndarray, np.ndarray, list[frozenset]]:
    """What soft ranking weighs at ``level`` "fine" (classes) or "coarse" (groups).

    Returns ``(proba, bin_of_class, labels_of_bin)``: the (Q, B) probability of each bin for
    each query (a group's probability is the sum of its classes'), the (C,) bin id of each fine
    class, and the label set of each bin (what a class-restricted search allows).
    """
    p = np.asarray(fine_proba, dtype=np.float64)
    if level == "fine":
        return p, np.arange(taxonomy.n_classes), [frozenset({c}) for c in taxonomy.classes]
    if level != "coarse":
        raise UserError(f"class_bins: level must be fine or coarse, got {level!r}")
    if not taxonomy.group_names:  # a flat taxonomy: the coarse level is the fine one
        return class_bins(taxonomy, p, "fine")
    gid = np.asarray(taxonomy.group_ids(), dtype=np.int64)
    onehot = np.zeros((taxonomy.n_classes, len(taxonomy.group_names)))
    onehot[np.arange(taxonomy.n_classes), gid] = 1.0
    return p @ onehot, gid, [frozenset(taxonomy.members(g)) for g in taxonomy.group_names]


def mean_reciprocal_rank(scores: np.ndarray, gallery_labels: np.ndarray, query_labels: np.ndarray) -> float:
    """MRR with class relevance (first gallery item of the query's class)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    rel = np.asarray(gallery_labels)[order] == np.asarray(query_labels)[:, None]
    first = np.where(rel.any(axis=1), rel.argmax(axis=1) + 1, np.inf)
    return float(np.mean(1.0 / first))


def tune_rank_alpha(similarity, class_proba_of_query, gallery_labels, query_labels,
                    alphas: Sequence[float] = RANK_ALPHAS, *, gallery_bins=None) -> tuple[float, dict]:
    """The ``alpha`` of :func:`soft_class_rank` with the best validation MRR (smallest on ties), and all MRRs.

    Relevance is the fine class (``gallery_labels`` vs ``query_labels``); the bonus is read from
    ``class_proba_of_query`` at ``gallery_bins`` (default: the gallery's class ids; pass group ids
    with group probabilities for the coarse level, see :func:`class_bins`).
    """
    bins = gallery_labels if gallery_bins is None else gallery_bins
    table = {float(a): mean_reciprocal_rank(soft_class_rank(similarity, class_proba_of_query, bins, a),
                                            gallery_labels, query_labels) for a in alphas}
    best = max(table.items(), key=lambda kv: (kv[1], -kv[0]))[0]
    return best, table
