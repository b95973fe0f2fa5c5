"""Multi-level CLS fusion for ViTs (seed B: "multilevel CLS fusion").

The class token after each of the last ``L`` blocks (final norm applied, as
:func:`entrep.encoders.vit.layer_cls` returns them) is L2-normalised on its
own and the ``L`` unit vectors are fused by learned softmax weights into one
embedding of the ViT's width. Weights start equal (uniform softmax), so an
untrained fusion is the mean of the normalised class tokens. The output is
not re-normalised here; encoders normalise at the end.
"""

from __future__ import annotations

import torch
from torch import nn


class CLSFusion(nn.Module):
    """(B, L, C) per-layer class tokens -> (B, C) fused embedding."""

    def __init__(self, n_layers: int) -> None:
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"CLS fusion needs at least one layer, got {n_layers}")
        self.n_layers = int(n_layers)
        self.logits = nn.Parameter(torch.zeros(self.n_layers))

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        if cls.ndim != 3 or cls.shape[1] != self.n_layers:
            raise ValueError(f"expected (B, {self.n_layers}, C) class tokens, got {tuple(cls.shape)}")
        unit = nn.functional.normalize(cls.float(), dim=-1)
        return torch.einsum("blc,l->bc", unit, self.weights())


def fusion_layers(depth: int, n_layers: int) -> tuple[int, ...]:
    """Indices of the last ``n_layers`` of ``depth`` blocks (all of them when the ViT is shallower)."""
    n = min(int(n_layers), int(depth))
    return tuple(range(depth - n, depth))
