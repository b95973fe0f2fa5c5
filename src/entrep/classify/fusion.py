"""Image-text fusion maths (the paper's equations 1-2) and spherical interpolation.

Pure numpy functions on row-aligned embeddings: ``v`` (image) and ``u`` (text)
are ``(N, D)`` arrays, or ``(D,)`` vectors that broadcast against them.

    s = cos(v, u)                    (eq. 1)  alignment weight, in [-1, 1]
    z = s * v + (1 - s) * u          (eq. 2)  fused embedding

``v`` and ``u`` are L2-normalised before the weighted sum, as the paper's
BiomedCLIP embeddings are unit-norm; so inputs need not be normalised. The
fused ``z`` itself is *not* re-normalised (eq. 2 as written); everything
downstream compares by cosine, so its length does not matter there.

:func:`fuse_by` names the fusion the prototypes are built over (``FitConfig.fusion``):
``linear`` is eq. 2, ``slerp`` the unit-norm midpoint ``slerp(v, u, 0.5)`` on the
great circle from image to text (issue 10; docs/finetune.md).
"""

from __future__ import annotations

import numpy as np

from entrep.classify._common import FeatureError

__all__ = ["FUSIONS", "SLERP_T", "l2_normalize", "alignment_weight", "fuse", "slerp", "fuse_by"]

SLERP_T = 0.5  # fusion "slerp": halfway from the image vector (t=0) to the text vector (t=1)


def _float(X: object) -> np.ndarray:
    arr = np.asarray(X)
    return arr.astype(np.result_type(arr.dtype, np.float32), copy=False)


def l2_normalize(X: object, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """``X`` divided by its L2 norm along ``axis``; zero vectors stay zero.

    Keeps float32 as float32 (other inputs become float64).
    """
    arr = _float(X)
    norm = np.linalg.norm(arr, axis=axis, keepdims=True)
    return arr / np.maximum(norm, eps).astype(arr.dtype, copy=False)


def _pair(v: object, u: object) -> tuple[np.ndarray, np.ndarray]:
    vn, un = l2_normalize(v), l2_normalize(u)
    if vn.shape[-1] != un.shape[-1]:
        raise FeatureError(
            f"image and text embeddings differ in dimension ({vn.shape[-1]} vs {un.shape[-1]}); "
            "fusion needs both in one joint space (use the alignment projection for the offline profile)"
        )
    try:
        np.broadcast_shapes(vn.shape, un.shape)
    except ValueError:
        raise FeatureError(f"image rows {vn.shape} and text rows {un.shape} are not row-aligned") from None
    return vn, un


def alignment_weight(v: object, u: object) -> np.ndarray:
    """Row-wise cosine ``s = cos(v, u)`` (eq. 1), clipped to [-1, 1]; shape ``(N,)``."""
    vn, un = _pair(v, u)
    return np.clip(np.sum(vn * un, axis=-1), -1.0, 1.0)


def fuse(v: object, u: object) -> np.ndarray:
    """Fused embedding ``z = s*v + (1-s)*u`` with ``s = cos(v, u)`` (eq. 2), row-wise.

    ``v`` and ``u`` are L2-normalised first. When image and text agree
    (``s`` near 1) ``z`` leans to the image; when they disagree the text prior
    dominates. ``z`` is not re-normalised.
    """
    vn, un = _pair(v, u)
    s = alignment_weight(vn, un)[..., None]
    return s * vn + (1.0 - s) * un


def slerp(a: object, b: object, t: object) -> np.ndarray:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1), row-wise, unit-norm output.

    ``a`` and ``b`` are normalised first; ``t`` is a scalar or one value per
    row. The angle comes from ``2*atan2(|a-b|, |a+b|)`` and the weights from
    ``sinc``, so near-parallel vectors are exact (no 0/0), reducing to a
    normalised linear blend. Exactly opposite vectors have no unique great
    circle and raise :class:`FeatureError`.
    """
    an, bn = _pair(a, b)
    t_arr = _float(t)
    if t_arr.ndim > 0:
        t_arr = t_arr[..., None]
    diff = np.linalg.norm(an - bn, axis=-1, keepdims=True)
    summ = np.linalg.norm(an + bn, axis=-1, keepdims=True)
    omega = 2.0 * np.arctan2(diff, summ)  # angle in [0, pi]
    sin_omega_over = np.sinc(omega / np.pi)  # sin(omega)/omega, 1 at omega=0
    if np.any(sin_omega_over < 1e-6):
        raise FeatureError("slerp: some rows are exactly opposite vectors; the interpolation path is undefined")
    # sin(k*omega)/sin(omega) == k * sinc(k*omega/pi) / sinc(omega/pi)
    wa = (1.0 - t_arr) * np.sinc((1.0 - t_arr) * omega / np.pi) / sin_omega_over
    wb = t_arr * np.sinc(t_arr * omega / np.pi) / sin_omega_over
    out = wa * an + wb * bn
    return l2_normalize(out).astype(an.dtype, copy=False)


#: Fusions of image and text rows by name (``FitConfig.fusion``); each maps (v, u) -> fused rows.
_FUSIONS = {
    "linear": fuse,
    "slerp": lambda v, u: slerp(v, u, SLERP_T),
}
FUSIONS = tuple(_FUSIONS)


def fuse_by(method: str, v: object, u: object) -> np.ndarray:
    """Fused rows of ``v`` (image) and ``u`` (text) by the fusion named ``method`` (one of :data:`FUSIONS`)."""
    try:
        f = _FUSIONS[method]
    except (KeyError, TypeError):
        raise FeatureError(f"unknown fusion {method!r}; valid: {', '.join(FUSIONS)}") from None
    return f(v, u)
