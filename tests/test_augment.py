"""Deterministic augmentation views: reproducible, flip only where the view says so."""

import numpy as np
import pytest
from PIL import Image

from entrep.data.augment import (
    BLUR_SIGMA,
    MAX_ROTATION_DEG,
    apply_view,
    draw_params,
    is_flipped,
    list_views,
    parse_view,
)
from entrep.errors import UserError


def _frame(seed=0) -> Image.Image:
    """A 640x480 frame whose left half is clearly brighter than its right half."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 60, (480, 640, 3), dtype=np.uint8)
    a[:, 80:300] += 150
    return Image.fromarray(a)


def _arr(im):
    return np.asarray(im, dtype=np.int16)


def test_list_views():
    assert list_views(0) == ["orig", "flip"]
    assert list_views(0, flip=False) == ["orig"]
    assert list_views(2) == ["orig", "flip", "aug1", "aug1-flip", "aug2", "aug2-flip"]
    assert list_views(2, flip=False) == ["orig", "aug1", "aug2"]
    with pytest.raises(UserError):
        list_views(-1)


@pytest.mark.parametrize("bad", ["aug0", "rot", "flip-aug1", "aug", "aug1flip", "Aug1", ""])
def test_unknown_views_are_refused(bad):
    with pytest.raises(UserError, match="orig, flip, augK"):
        parse_view(bad)


def test_flipped_views():
    assert [is_flipped(v) for v in ("orig", "flip", "aug3", "aug3-flip")] == [False, True, False, True]


def test_orig_and_flip():
    im = _frame()
    assert _arr(apply_view(im, "orig", key="k")).tolist() == _arr(im).tolist()
    np.testing.assert_array_equal(_arr(apply_view(im, "flip", key="k")), _arr(im)[:, ::-1])


def test_views_are_reproducible_and_keyed():
    im = _frame()
    a1 = _arr(apply_view(im, "aug1", key="abc"))
    np.testing.assert_array_equal(a1, _arr(apply_view(_frame(), "aug1", key="abc")))
    assert a1.shape == (480, 640, 3)
    assert np.abs(a1 - _arr(apply_view(im, "aug2", key="abc"))).mean() > 1
    assert np.abs(a1 - _arr(apply_view(im, "aug1", key="other"))).mean() > 1
    assert np.abs(a1 - _arr(im)).mean() > 1  # it does change the image


def test_aug_flip_is_the_mirror_of_aug():
    im = _frame()
    np.testing.assert_array_equal(_arr(apply_view(im, "aug2-flip", key="k")), _arr(apply_view(im, "aug2", key="k"))[:, ::-1])


def test_augmentation_never_flips():
    """Whatever the drawn parameters, the bright (left) side stays on the left in augK."""
    im = _frame()
    for k in range(1, 9):
        a = _arr(apply_view(im, f"aug{k}", key=f"img{k}")).mean(axis=(0, 2))
        assert a[:320].mean() > a[320:].mean() + 30
        f = _arr(apply_view(im, f"aug{k}-flip", key=f"img{k}")).mean(axis=(0, 2))
        assert f[320:].mean() > f[:320].mean() + 30


def test_parameters_stay_in_their_ranges():
    params = [draw_params(f"key{i}", "aug1") for i in range(200)]
    assert all(abs(p.angle) <= MAX_ROTATION_DEG for p in params)
    assert all(BLUR_SIGMA[0] <= p.sigma <= BLUR_SIGMA[1] for p in params)
    assert all(0.8 <= p.brightness <= 1.2 and abs(p.hue) <= 0.03 for p in params)
    assert len({round(p.angle, 6) for p in params}) == 200  # actually random across images
    assert draw_params("k", "aug1") == draw_params("k", "aug1-flip")
