"""Training views that respect laterality: flip with the label swapped, same-class mixup.

A horizontal flip turns a left-side image into a right-side one, so a flipped
image is trained with the *mirror* label (``taxonomy.flip_permutation()``),
never with its own. Mixup only blends two images of the same class: two
classes (above all a mirror pair such as nose-left / nose-right) are never
mixed, so the label of a mixed image is always one whole class.
All randomness comes from the ``torch.Generator`` passed in (seeded per epoch
by the trainer), so a run is reproducible and resumable.
"""

from __future__ import annotations

import numpy as np
import torch


def flip_with_swap(x: torch.Tensor, y: torch.Tensor, flip_perm: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror the rows of ``x`` where ``mask`` is true (last axis = image width) and swap their labels.

    ``x``: (B, C, H, W) images or (B, ..., W) activations with width last; ``y``: (B,) class ids;
    ``flip_perm[i]``: the class class ``i`` becomes under a horizontal flip.
    """
    if not bool(mask.any()):
        return x, y
    x = x.clone()
    x[mask] = torch.flip(x[mask], dims=(-1,))
    y = torch.where(mask, flip_perm.to(y.device)[y], y)
    return x, y


def random_flip_mask(n: int, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Which of ``n`` items to flip (Bernoulli ``p``, from ``generator``)."""
    return torch.rand(n, generator=generator) < p


def same_class_partners(y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For every item, the index of a random item of the *same* class in the batch (itself if alone)."""
    y_cpu = y.detach().cpu()
    partners = torch.arange(len(y_cpu))
    for c in torch.unique(y_cpu):
        idx = torch.nonzero(y_cpu == c).flatten()
        if len(idx) > 1:
            partners[idx] = idx[torch.randperm(len(idx), generator=generator)]
    return partners.to(y.device)


def same_class_mixup(x: torch.Tensor, y: torch.Tensor, alpha: float,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blend each item with a same-class partner, weight ~ Beta(alpha, alpha); labels are unchanged.

    Returns the mixed batch, the partner indices and the (B,) weights of the item itself
    (apply :func:`mix` with them to anything row-aligned). ``alpha <= 0`` disables mixing.
    """
    partners = same_class_partners(y, generator)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    if alpha <= 0:
        return x, partners, torch.ones(len(y), device=x.device)
    lam = torch.as_tensor(np.random.default_rng(seed).beta(alpha, alpha, len(y)), dtype=torch.float32, device=x.device)
    return mix(x, partners, lam), partners, lam


def mix(x: torch.Tensor, partners: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``lam * x + (1 - lam) * x[partners]``, row-wise."""
    w = lam.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
    return w * x + (1 - w) * x[partners]
