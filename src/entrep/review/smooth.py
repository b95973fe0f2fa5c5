"""Temporal smoothing of per-frame class probabilities (sites change slowly).

``hmm`` (the default): a hidden Markov model over the sites with a sticky,
time-aware transition: between two kept frames ``dt`` seconds apart the site
stays the same with probability ``exp(-switch_rate * dt)``, otherwise it moves
to any other site uniformly. The classifier's per-frame probabilities are the
emissions (scaled likelihoods, with a uniform prior); forward-backward gives
each frame's posterior given the whole exam. Frames dropped by cleansing are
not observations, so a long gap loosens the chain.

``ema``: a causal exponential moving average with a time constant of
``1 / switch_rate`` seconds, usable live (it only looks back) but lagging at
every site change.

``none``: the classifier's probabilities unchanged (for unrelated photographs).
"""

from __future__ import annotations

import numpy as np

from entrep.errors import UserError

METHODS = ("hmm", "ema", "none")


def _check(proba: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(proba, np.float64)
    t = np.asarray(times, np.float64)
    if p.ndim != 2 or len(t) != len(p):
        raise ValueError(f"probabilities {p.shape} and times {t.shape} must be (N, C) and (N,)")
    return p, t


def hmm_smooth(proba: np.ndarray, times: np.ndarray, *, switch_rate: float = 0.2, floor: float = 1e-4) -> np.ndarray:
    """Posterior site probabilities (N, C) by forward-backward under a sticky time-aware transition.

    ``floor`` keeps one overconfident frame from vetoing a site outright.
    """
    p, t = _check(proba, times)
    n, c = p.shape
    if n == 0 or c == 1:
        return p.astype(np.float32)
    e = np.clip(p, floor, None)
    e /= e.sum(1, keepdims=True)
    dt = np.clip(np.diff(t), 0.0, None)
    stay = np.exp(-switch_rate * dt)  # (N-1,)

    def step(v: np.ndarray, s: float) -> np.ndarray:  # v @ A for A = s*I + (1-s)/(C-1)*(1-I)
        return s * v + (1.0 - s) / (c - 1) * (v.sum() - v)

    alpha = np.empty_like(e)
    a = e[0] / c
    alpha[0] = a / a.sum()
    for i in range(1, n):
        a = step(alpha[i - 1], stay[i - 1]) * e[i]
        alpha[i] = a / a.sum()
    beta = np.ones_like(e)
    for i in range(n - 2, -1, -1):
        b = step(beta[i + 1] * e[i + 1], stay[i])  # A is symmetric
        beta[i] = b / b.sum()
    post = alpha * beta
    return (post / post.sum(1, keepdims=True)).astype(np.float32)


def ema_smooth(proba: np.ndarray, times: np.ndarray, *, switch_rate: float = 0.2) -> np.ndarray:
    """Causal exponential moving average with time constant ``1 / switch_rate`` seconds."""
    p, t = _check(proba, times)
    out = np.empty_like(p)
    for i in range(len(p)):
        if i == 0:
            out[i] = p[i]
            continue
        w = np.exp(-switch_rate * max(0.0, t[i] - t[i - 1]))
        out[i] = w * out[i - 1] + (1 - w) * p[i]
    return out.astype(np.float32)


def smooth(proba: np.ndarray, times: np.ndarray, method: str = "hmm", *, switch_rate: float = 0.2) -> np.ndarray:
    """Smoothed probabilities by ``method`` (one of :data:`METHODS`)."""
    if method == "hmm":
        return hmm_smooth(proba, times, switch_rate=switch_rate)
    if method == "ema":
        return ema_smooth(proba, times, switch_rate=switch_rate)
    if method == "none":
        return _check(proba, times)[0].astype(np.float32)
    raise UserError(f"unknown smoothing {method!r}; use one of {', '.join(METHODS)}")
