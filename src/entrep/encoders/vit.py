"""ViT helpers shared by the open_clip and DINOv2 encoders: patch tokens and per-layer CLS.

Works on timm ``VisionTransformer`` modules (``blocks``, ``norm``,
``num_prefix_tokens``, ``patch_embed.grid_size``) and on open_clip's own
``VisionTransformer`` (``transformer.resblocks``, ``ln_post``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from entrep.encoders.pooling import pool_tokens
from entrep.errors import UserError


@dataclass
class ViTParts:
    """The pieces of a ViT the pooling and per-layer CLS code needs."""

    blocks: Sequence[nn.Module]
    norm: nn.Module
    width: int
    num_prefix_tokens: int
    grid: tuple[int, int]
    tokens: Callable[[torch.Tensor], torch.Tensor] | None  # x -> (B, prefix+N, C) final normed tokens
    run: Callable[[torch.Tensor], object]  # x -> anything; runs all blocks (for hooks)


def timm_vit_parts(vit: nn.Module) -> ViTParts:
    """Parts of a timm VisionTransformer."""
    return ViTParts(
        blocks=list(vit.blocks),
        norm=vit.norm,
        width=int(vit.num_features),
        num_prefix_tokens=int(getattr(vit, "num_prefix_tokens", 1)),
        grid=tuple(int(g) for g in vit.patch_embed.grid_size),
        tokens=vit.forward_features,
        run=vit.forward_features,
    )


def open_clip_visual_parts(visual: nn.Module) -> ViTParts:
    """Parts of an open_clip image tower: a timm trunk or open_clip's own ViT."""
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "patch_embed"):
        return timm_vit_parts(trunk)
    tr = getattr(visual, "transformer", None)
    if tr is not None and hasattr(tr, "resblocks") and hasattr(visual, "ln_post"):
        return ViTParts(
            blocks=list(tr.resblocks),
            norm=visual.ln_post,
            width=int(tr.width),
            num_prefix_tokens=1,
            grid=tuple(int(g) for g in visual.grid_size),
            tokens=None,
            run=visual,
        )
    raise UserError(f"image tower {type(visual).__name__} is not a ViT; only its projected embedding is available")


def pooled_tokens(parts: ViTParts, x: torch.Tensor, pooling: str) -> torch.Tensor:
    """Laterality-preserving pooling of the final patch tokens (see entrep.encoders.pooling)."""
    if parts.tokens is None:
        raise UserError("token pooling needs a timm ViT image tower; use pooling 'proj' for this model")
    t = parts.tokens(x)
    npt = parts.num_prefix_tokens
    return pool_tokens(t[:, npt:], parts.grid, pooling, cls=t[:, 0])


def check_layers(layers: Sequence[int], depth: int) -> tuple[int, ...]:
    """Block indices (0-based; negative counts from the end) -> non-negative, validated."""
    out = []
    for i in layers:
        j = int(i) + depth if int(i) < 0 else int(i)
        if not 0 <= j < depth:
            raise UserError(f"layer {i} out of range for a ViT with {depth} blocks (use 0..{depth - 1} or negatives)")
        out.append(j)
    if not out:
        raise UserError("return_layers is empty; name at least one block")
    return tuple(out)


def layer_cls(parts: ViTParts, x: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """CLS token after each block in ``layers`` (final norm applied), shape (B, L, C)."""
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for j in set(layers):
        def hook(_m, _inp, out, j=j):
            t = out[0] if isinstance(out, tuple) else out
            captured[j] = t[:, 0]
        handles.append(parts.blocks[j].register_forward_hook(hook))
    try:
        parts.run(x)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([parts.norm(captured[j]) for j in layers], dim=1)
