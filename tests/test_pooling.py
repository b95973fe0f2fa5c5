"""Laterality-preserving pooling: left/right (and up/down) survive pooling; flips are block permutations."""

import numpy as np
import pytest
import torch

from entrep.encoders.pooling import (
    BLOCKS,
    flip_exact,
    flip_pooled,
    pool_map,
    pool_tokens,
    pooled_dim,
)
from entrep.errors import UserError


def _asymmetric_map(h=7, w=10, c=6, seed=0):
    """A feature map whose left and right halves (and top/bottom) clearly differ."""
    g = torch.Generator().manual_seed(seed)
    fmap = torch.rand(2, c, h, w, generator=g)
    fmap[:, :, :, : w // 2] += 3.0  # bright left half
    fmap[:, :, : h // 2, :] += 1.0  # brighter top
    return fmap


@pytest.mark.parametrize("pooling", ["mean", "gem", "lr", "grid2"])
@pytest.mark.parametrize("hw", [(7, 10), (7, 9), (1, 1), (4, 4)])
def test_pooled_shapes_match_pooled_dim(pooling, hw):
    fmap = _asymmetric_map(*hw)
    out = pool_map(fmap, pooling)
    assert out.shape == (2, pooled_dim(pooling, 6))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("pooling", ["mean", "gem"])
def test_global_pooling_is_flip_invariant(pooling):
    fmap = _asymmetric_map()
    a, b = pool_map(fmap, pooling), pool_map(fmap.flip(-1), pooling)
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("pooling", ["lr", "grid2"])
@pytest.mark.parametrize("hw", [(7, 10), (7, 9), (5, 5)])
def test_block_pooling_keeps_side_and_flip_is_block_permutation(pooling, hw):
    fmap = _asymmetric_map(*hw)
    pooled = pool_map(fmap, pooling)
    pooled_of_flipped = pool_map(fmap.flip(-1), pooling)
    # the side survives: the flipped map pools to a different vector ...
    assert not torch.allclose(pooled, pooled_of_flipped)
    # ... and that vector is exactly the left<->right block swap of the original
    torch.testing.assert_close(flip_pooled(pooled, pooling, 6), pooled_of_flipped)
    # the global block is the same under the flip
    torch.testing.assert_close(pooled[:, :6], pooled_of_flipped[:, :6])


def test_grid2_keeps_up_down_but_lr_does_not():
    fmap = _asymmetric_map()
    up_down = fmap.flip(-2)
    torch.testing.assert_close(pool_map(fmap, "lr"), pool_map(up_down, "lr"))
    assert not torch.allclose(pool_map(fmap, "grid2"), pool_map(up_down, "grid2"))


def test_block_values_are_region_means():
    fmap = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    out = pool_map(fmap, "grid2").reshape(5, 2)
    torch.testing.assert_close(out[0], fmap.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(out[1], fmap[0, :, :2, :2].mean(dim=(1, 2)))  # top-left
    torch.testing.assert_close(out[4], fmap[0, :, 2:, 2:].mean(dim=(1, 2)))  # bottom-right
    assert BLOCKS["grid2"] == ("global", "top-left", "top-right", "bottom-left", "bottom-right")


def test_tokens_pool_like_the_map_on_their_grid():
    fmap = _asymmetric_map(4, 6, 8)
    tokens = fmap.flatten(2).transpose(1, 2)  # (B, N, C), row-major
    for pooling in ("mean", "lr", "grid2"):
        torch.testing.assert_close(pool_tokens(tokens, (4, 6), pooling), pool_map(fmap, pooling))
    cls = torch.randn(2, 8)
    torch.testing.assert_close(pool_tokens(tokens, (4, 6), "cls", cls=cls), cls)
    with pytest.raises(ValueError, match="grid"):
        pool_tokens(tokens, (5, 6), "mean")


def test_flip_pooled_numpy_batches_and_involution():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, 4, 5 * 7)).astype(np.float32)
    f = flip_pooled(v, "grid2", 7)
    assert f.shape == v.shape and isinstance(f, np.ndarray)
    np.testing.assert_array_equal(f[..., :7], v[..., :7])
    np.testing.assert_array_equal(f[..., 7:14], v[..., 14:21])  # top-left <- top-right
    np.testing.assert_array_equal(flip_pooled(f, "grid2", 7), v)
    np.testing.assert_array_equal(flip_pooled(v[..., :7], "mean", 7), v[..., :7])
    with pytest.raises(ValueError, match="blocks"):
        flip_pooled(v, "lr", 7)


def test_unknown_pooling_and_flip_exactness():
    with pytest.raises(UserError, match="grid2"):
        pool_map(_asymmetric_map(), "max")
    with pytest.raises(UserError):
        pool_map(_asymmetric_map(), "cls")  # maps have no class token
    assert flip_exact("grid2") and flip_exact("mean") and not flip_exact("cls")
