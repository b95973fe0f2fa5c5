"""Fusion maths: normalisation, alignment weight (eq. 1), fused embedding (eq. 2), slerp."""

from __future__ import annotations

import numpy as np
import pytest

from entrep.classify.fusion import alignment_weight, fuse, l2_normalize, slerp
from entrep.errors import EntrepError


def _rows(n=6, d=16, seed=0, scale=3.0):
    r = np.random.default_rng(seed)
    return (scale * r.normal(size=(n, d))).astype(np.float32), (scale * r.normal(size=(n, d))).astype(np.float32)


def test_l2_normalize_unit_rows_zero_row_stays_zero_and_dtype_kept():
    X, _ = _rows()
    X[2] = 0.0
    out = l2_normalize(X)
    assert out.dtype == np.float32
    norms = np.linalg.norm(out, axis=1)
    np.testing.assert_allclose(np.delete(norms, 2), 1.0, atol=1e-6)
    assert np.all(out[2] == 0.0) and np.isfinite(out).all()
    cols = l2_normalize(X.astype(np.float64), axis=0)
    np.testing.assert_allclose(np.linalg.norm(cols, axis=0), 1.0, atol=1e-12)


def test_alignment_weight_is_rowwise_cosine_and_scale_free():
    v, u = _rows()
    expected = np.sum(v * u, axis=1) / (np.linalg.norm(v, axis=1) * np.linalg.norm(u, axis=1))
    s = alignment_weight(v, u)
    assert s.shape == (6,)
    np.testing.assert_allclose(s, expected, atol=1e-6)
    np.testing.assert_allclose(alignment_weight(5 * v, 0.1 * u), s, atol=1e-6)
    assert np.all(np.abs(alignment_weight(v, v) - 1.0) < 1e-6)
    assert np.all(np.abs(alignment_weight(v, -v) + 1.0) < 1e-6)


def test_fuse_is_equation_2_on_normalised_inputs():
    v, u = _rows(seed=1)
    vn, un = l2_normalize(v), l2_normalize(u)
    s = np.sum(vn * un, axis=1, keepdims=True)
    np.testing.assert_allclose(fuse(v, u), s * vn + (1 - s) * un, atol=1e-6)


def test_fuse_limits_image_when_aligned_text_when_orthogonal():
    v = np.array([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    u = np.array([[5.0, 0.0, 0.0], [0.0, 0.0, 0.5]])
    z = fuse(v, u)
    np.testing.assert_allclose(z[0], [1.0, 0.0, 0.0])  # s = 1: the (normalised) image
    np.testing.assert_allclose(z[1], [0.0, 0.0, 1.0])  # s = 0: the (normalised) text


def test_fuse_broadcasts_one_text_against_many_images_and_rejects_mismatch():
    v, _ = _rows(n=4, d=8, seed=2)
    prompt = np.random.default_rng(3).normal(size=8)
    z = fuse(v, prompt)
    assert z.shape == (4, 8)
    np.testing.assert_allclose(z[1], fuse(v[1:2], prompt[None])[0], atol=1e-6)
    with pytest.raises(EntrepError, match="dimension"):
        fuse(v, np.ones(7))
    with pytest.raises(EntrepError, match="row-aligned"):
        fuse(v, np.ones((3, 8)))


def test_slerp_endpoints_midpoint_and_constant_speed():
    a, b = _rows(n=5, d=12, seed=4)
    an, bn = l2_normalize(a), l2_normalize(b)
    np.testing.assert_allclose(slerp(a, b, 0.0), an, atol=1e-6)
    np.testing.assert_allclose(slerp(a, b, 1.0), bn, atol=1e-6)
    omega = np.arccos(np.clip(np.sum(an * bn, axis=1), -1, 1))
    for t in (0.25, 0.5, 0.8):
        out = slerp(a, b, t)
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
        # the path runs along the great circle at constant angular speed
        np.testing.assert_allclose(np.arccos(np.clip(np.sum(out * an, axis=1), -1, 1)), t * omega, atol=1e-4)
        np.testing.assert_allclose(np.arccos(np.clip(np.sum(out * bn, axis=1), -1, 1)), (1 - t) * omega, atol=1e-4)
    e1, e2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    np.testing.assert_allclose(slerp(e1, e2, 0.5), [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)  # 1-D in, 1-D out


def test_slerp_is_stable_for_near_parallel_vectors_and_takes_per_row_t():
    a = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    b = a + np.array([[0.0, 1e-9, 0.0], [0.0, 0.0, 0.0]])  # near-parallel and exactly parallel
    out = slerp(a, b, np.array([0.3, 0.7]))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, a, atol=1e-8)
    t = np.array([0.0, 1.0])
    c = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(slerp(a, c, t), np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]), atol=1e-12)


def test_slerp_rejects_opposite_vectors():
    with pytest.raises(EntrepError, match="opposite"):
        slerp(np.array([1.0, 0.0]), np.array([-2.0, 0.0]), 0.5)
