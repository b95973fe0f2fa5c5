"""The torch modules the heads and the alignment train (imported only when training, or on request).

A fitted estimator keeps these modules' weights as numpy arrays and runs
inference in :mod:`entrep.classify.npnets`, whose ``*_shapes`` functions
describe the same ``state_dict`` layouts.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from entrep.classify._common import FeatureError

__all__ = ["MLPHead", "Tower"]


class MLPHead(nn.Module):
    """The paper's head: LayerNorm -> Dropout -> [Linear -> GELU] per hidden width -> Linear.

    ``MLPHead(in_dim, n_classes)`` is LayerNorm(in_dim), Dropout(0.3),
    Linear(in_dim, 256), GELU, Linear(256, 128), GELU, Linear(128, n_classes);
    ``forward`` returns logits. ``.net`` is the ``nn.Sequential``.
    """

    def __init__(self, in_dim: int, n_classes: int, hidden: Sequence[int] = (256, 128), dropout: float = 0.3) -> None:
        super().__init__()
        in_dim, n_classes, hidden = int(in_dim), int(n_classes), tuple(int(h) for h in hidden)
        if in_dim < 1 or n_classes < 1 or any(h < 1 for h in hidden):
            raise FeatureError(f"MLPHead: bad sizes in_dim={in_dim}, n_classes={n_classes}, hidden={hidden}")
        layers: list[nn.Module] = [nn.LayerNorm(in_dim), nn.Dropout(float(dropout))]
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.GELU()]
            width = h
        layers.append(nn.Linear(width, n_classes))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.n_classes = in_dim, n_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Tower(nn.Module):
    """Standardise (centre, one global scale), project, L2-normalise.

    The mean and scale are buffers, so they travel in the ``state_dict``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_dim))
        self.register_buffer("scale", torch.ones(1))
        if hidden:
            self.proj = nn.Sequential(nn.Linear(in_dim, int(hidden)), nn.GELU(), nn.Linear(int(hidden), out_dim))
        else:
            self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj((x - self.mean) / self.scale), dim=-1)
