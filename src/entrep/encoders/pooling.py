"""Laterality-preserving pooling: pure functions from feature maps / patch tokens to vectors.

Global average pooling forgets where things are, so a nose-left frame and its
mirror image (nose-right) get almost the same vector. The block poolings keep
the side:

- ``mean``   global average (the paper's mean-pooled patch tokens)          1 x C
- ``gem``    generalised mean, p=3 (CNN maps, non-negative activations)     1 x C
- ``cls``    the ViT class token                                            1 x C
- ``lr``     [global, left half, right half] means                          3 x C
- ``grid2``  [global, top-left, top-right, bottom-left, bottom-right] means 5 x C
             (left/right *and* up/down, e.g. the ear's cone of light at 5 vs 7 o'clock)

With an odd number of columns (rows) the middle column (row) belongs to both
halves, which keeps the split symmetric under a flip.

:func:`flip_pooled` maps a pooled vector to the pooled vector of the
horizontally flipped feature map by permuting blocks (left<->right); the
global block is unchanged. It is exact for the map; for a whole network it is
the usual approximation (a CNN/ViT is not exactly flip-equivariant) - encode
the ``flip`` view (:mod:`entrep.data.augment`) when exact features matter.

The names, dimensions and flips need no torch (this module imports it only
inside :func:`pool_map`), so configs and fingerprints are computed without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from entrep.errors import UserError

if TYPE_CHECKING:
    import torch

#: blocks of each pooling, in output order
BLOCKS: dict[str, tuple[str, ...]] = {
    "mean": ("global",),
    "gem": ("global",),
    "cls": ("cls",),
    "lr": ("global", "left", "right"),
    "grid2": ("global", "top-left", "top-right", "bottom-left", "bottom-right"),
}
#: block order after a horizontal flip (index into BLOCKS[pooling])
FLIP_ORDER: dict[str, tuple[int, ...]] = {
    "mean": (0,),
    "gem": (0,),
    "cls": (0,),
    "lr": (0, 2, 1),
    "grid2": (0, 2, 1, 4, 3),
}
POOLINGS = tuple(BLOCKS)
MAP_POOLINGS = ("mean", "gem", "lr", "grid2")  # for (B,C,H,W) maps
TOKEN_POOLINGS = ("mean", "cls", "lr", "grid2")  # for ViT patch tokens


def check_pooling(pooling: str, allowed: tuple[str, ...] = POOLINGS) -> str:
    if pooling not in allowed:
        raise UserError(f"unknown pooling {pooling!r}; choose one of {', '.join(allowed)}")
    return pooling


def n_blocks(pooling: str) -> int:
    return len(BLOCKS[check_pooling(pooling)])


def pooled_dim(pooling: str, channels: int) -> int:
    """Length of the pooled vector for ``channels`` feature channels."""
    return n_blocks(pooling) * channels


def _halves(n: int) -> tuple[slice, slice]:
    """First and second half of n cells; the middle cell of an odd n is in both."""
    return slice(0, (n + 1) // 2), slice(n // 2, n)


def pool_map(fmap: torch.Tensor, pooling: str, *, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Pool a CNN feature map (B, C, H, W) to (B, blocks*C)."""
    import torch

    check_pooling(pooling, MAP_POOLINGS)
    if fmap.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) feature map, got shape {tuple(fmap.shape)}")
    if pooling == "gem":
        return fmap.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)
    g = fmap.mean(dim=(2, 3))
    if pooling == "mean":
        return g
    h, w = fmap.shape[2], fmap.shape[3]
    left, right = _halves(w)
    if pooling == "lr":
        return torch.cat([g, fmap[:, :, :, left].mean(dim=(2, 3)), fmap[:, :, :, right].mean(dim=(2, 3))], dim=1)
    top, bottom = _halves(h)
    quads = [fmap[:, :, r, c].mean(dim=(2, 3)) for r in (top, bottom) for c in (left, right)]
    return torch.cat([g, *quads], dim=1)


def pool_tokens(
    tokens: torch.Tensor,
    grid: tuple[int, int],
    pooling: str,
    *,
    cls: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pool ViT patch tokens (B, N, C) laid out row-major on ``grid`` = (rows, cols).

    ``cls`` (B, C) is needed for ``pooling="cls"``. Prefix tokens (class,
    registers) must already be removed from ``tokens``.
    """
    check_pooling(pooling, TOKEN_POOLINGS)
    if pooling == "cls":
        if cls is None:
            raise ValueError("pooling 'cls' needs the class token")
        return cls
    b, n, c = tokens.shape
    gh, gw = grid
    if n != gh * gw:
        raise ValueError(f"{n} patch tokens do not fill a {gh}x{gw} grid")
    fmap = tokens.transpose(1, 2).reshape(b, c, gh, gw)
    return pool_map(fmap, pooling)


def flip_pooled(vec, pooling: str, channels: int):
    """Pooled vector(s) of the horizontally flipped map: a block permutation.

    Works on numpy arrays and torch tensors of shape (..., blocks*channels).
    ``mean``/``gem`` (and ``cls``, which has no layout) are returned unchanged.
    """
    order = FLIP_ORDER[check_pooling(pooling)]
    k = len(order)
    if vec.shape[-1] != k * channels:
        raise ValueError(f"vector length {vec.shape[-1]} != {k} blocks x {channels} channels for pooling {pooling!r}")
    if order == tuple(range(k)):
        return vec.copy() if isinstance(vec, np.ndarray) else vec.clone()
    lead = vec.shape[:-1]
    blocks = vec.reshape(*lead, k, channels)
    idx = list(order)
    flipped = blocks[..., idx, :]
    return flipped.reshape(*lead, k * channels)


def flip_exact(pooling: str) -> bool:
    """True when :func:`flip_pooled` is exact for the feature map (all but ``cls``)."""
    return check_pooling(pooling) != "cls"
