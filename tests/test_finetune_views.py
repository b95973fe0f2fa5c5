"""Laterality in training views: flips swap labels through the taxonomy; mixup stays inside one class."""

from __future__ import annotations

import numpy as np
import torch
from helpers import finetune_taxonomy, laterality_images

from entrep.data.images import load_rgb
from entrep.finetune import flip_with_swap, same_class_mixup, same_class_partners

TAX = finetune_taxonomy()
PERM = torch.as_tensor(TAX.flip_permutation())


def test_a_flipped_training_image_carries_the_mirror_label(tmp_path):
    recs = laterality_images(tmp_path, TAX, per_class=1)
    x = torch.stack([torch.from_numpy(np.asarray(load_rgb(r.image), dtype=np.float32)).permute(2, 0, 1) for r in recs])
    y = torch.tensor([TAX.class_id(r.label) for r in recs])
    xf, yf = flip_with_swap(x, y, PERM, torch.ones(len(y), dtype=torch.bool))
    for r, img, label in zip(recs, xf, yf):
        assert TAX.class_name(int(label)) == TAX.mirror_of(r.label)
        assert torch.equal(img, torch.flip(x[recs.index(r)], dims=(-1,)))
    # the flipped nose-right image looks like the nose-left images (blob on the left) and is labelled so
    left = TAX.class_id("nose-left")
    i_right = [r.label for r in recs].index("nose-right")
    col = xf[i_right].mean(dim=(0, 1))
    assert col[: col.numel() // 2].sum() > col[col.numel() // 2:].sum() and int(yf[i_right]) == left


def test_flip_leaves_unflipped_items_and_their_labels_alone():
    x = torch.randn(4, 3, 5, 6)
    y = torch.tensor([0, 1, 2, 6])
    mask = torch.tensor([True, False, False, True])
    xf, yf = flip_with_swap(x, y, PERM, mask)
    assert torch.equal(xf[1:3], x[1:3]) and yf.tolist() == [1, 1, 2, 6]


def test_mixup_never_mixes_a_mirror_pair_or_any_two_classes():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0, 1, 0, 1, 2, 3, 2, 3, 4, 5, 6, 0, 1, 6])  # nose-right/left and ear-right/left interleaved
    x = torch.arange(len(y), dtype=torch.float32)[:, None].repeat(1, 3)
    for _ in range(20):
        partners = same_class_partners(y, g)
        assert torch.equal(y[partners], y)
        mixed, partners, lam = same_class_mixup(x, y, 0.4, g)
        assert torch.equal(y[partners], y)
        expected = lam[:, None] * x + (1 - lam[:, None]) * x[partners]
        assert torch.allclose(mixed, expected)
    # an item alone in its class is left unmixed
    partners = same_class_partners(torch.tensor([0, 1, 2]), g)
    assert partners.tolist() == [0, 1, 2]
