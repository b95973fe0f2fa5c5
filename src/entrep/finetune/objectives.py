"""Training objectives: cross-entropy plus image-text contrastive, and the metric losses.

Joint objective (seed B): ``loss = CE(head(z), y) + w * (L_prompt + L_caption) / 2`` where
``z`` is the image embedding, ``p = normalize(proj(z))`` its joint-space image vector,
``L_prompt = CE(p @ P.T / tau, y)`` against the frozen text vectors ``P`` of the class
prompts (``taxonomy.prompt(label)``), and ``L_caption`` the symmetric InfoNCE between
``p`` and the frozen vectors of the images' captions (rows sharing a caption count as
positives of each other). Items without a caption are left out of ``L_caption``.
"""

from __future__ import annotations

import torch
from torch import nn

TAU = 0.07


def prompt_loss(img: torch.Tensor, prompts: torch.Tensor, y: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """CE of cosine-similarity logits between joint image vectors and class-prompt vectors."""
    logits = nn.functional.normalize(img, dim=-1) @ nn.functional.normalize(prompts, dim=-1).T / tau
    return nn.functional.cross_entropy(logits, y)


def caption_loss(img: torch.Tensor, captions: torch.Tensor, caption_ids: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE between image vectors and their captions' vectors.

    ``captions``: (T, D) vectors of the distinct captions; ``caption_ids[i]``: row of item ``i``'s caption,
    negative for an item without one (left out)."""
    keep = caption_ids >= 0
    if int(keep.sum()) < 2:
        return img.new_zeros(())
    ids = caption_ids[keep]
    a = nn.functional.normalize(img[keep], dim=-1)
    b = nn.functional.normalize(captions[ids], dim=-1)
    logits = a @ b.T / tau
    pos = (ids[:, None] == ids[None, :]).float()
    target = pos / pos.sum(dim=1, keepdim=True)
    return 0.5 * (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target))


def joint_loss(logits: torch.Tensor, y: torch.Tensor, img_joint: torch.Tensor | None, prompts: torch.Tensor | None,
               captions: torch.Tensor | None, caption_ids: torch.Tensor | None, weight: float) -> torch.Tensor:
    """CE over classes plus ``weight`` x the mean of the prompt and caption contrastive terms."""
    loss = nn.functional.cross_entropy(logits, y)
    if weight > 0 and img_joint is not None and prompts is not None:
        c = prompt_loss(img_joint, prompts, y)
        if captions is not None and caption_ids is not None:
            c = 0.5 * (c + caption_loss(img_joint, captions, caption_ids))
        loss = loss + weight * c
    return loss


def metric_loss(kind: str, margin: float = 0.2):
    """(loss, miner) from pytorch-metric-learning on cosine similarity: ``triplet`` with a semi-hard
    ``TripletMarginMiner`` or ``multi_similarity`` with its ``MultiSimilarityMiner``."""
    from pytorch_metric_learning import distances, losses, miners

    cos = distances.CosineSimilarity()
    if kind == "triplet":
        return (losses.TripletMarginLoss(margin=margin, distance=cos),
                miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=cos))
    if kind == "multi_similarity":
        return losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5), miners.MultiSimilarityMiner(epsilon=0.1)
    raise ValueError(f"unknown metric loss {kind!r}; use 'triplet' or 'multi_similarity'")
