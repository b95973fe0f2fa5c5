"""Inference of the fitted heads and towers in numpy: loading and applying a model never imports torch.

Training runs in torch (:mod:`entrep.classify.torch_nets`); a fitted estimator
keeps its weights as the ``state_dict``'s float32 arrays and applies them here,
with the same maths as the torch modules in evaluation mode (LayerNorm, Linear,
exact erf GELU, L2 normalisation).
Outputs equal the torch modules' within float32 rounding (checked in
tests/test_heads.py and tests/test_align.py). ``import torch`` costs seconds
per process; ``entrep predict`` on cached features pays none of it.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from entrep.classify.fusion import l2_normalize  # F.normalize's maths (eps 1e-12)
from entrep.errors import ModelError

#: torch's default for nn.LayerNorm
LN_EPS = 1e-5
#: rows per matrix product (bounds the activations' memory on large galleries)
CHUNK = 4096


def linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y = x @ w.T
    if b is not None:
        y += b
    return y


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, as ``nn.GELU()``; float32 in, float32 out."""
    from scipy.special import erf

    return (0.5 * x * (1.0 + erf(x * np.float32(1.0 / np.sqrt(2.0))))).astype(np.float32, copy=False)


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = LN_EPS) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=-1, keepdims=True)
    return xc / np.sqrt(var + np.float32(eps)) * w + b


def chunked(fn, X: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
    """``fn`` applied to ``X`` (float32) in row chunks, concatenated as float32."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if X.shape[0] <= chunk:
        return np.asarray(fn(X), dtype=np.float32)
    return np.concatenate([np.asarray(fn(X[s:s + chunk]), dtype=np.float32) for s in range(0, X.shape[0], chunk)])


# ---- the paper's head: LayerNorm -> Dropout -> [Linear -> GELU]* -> Linear ------------------------------
def mlp_shapes(in_dim: int, n_classes: int, hidden: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """``state_dict`` key -> shape of :class:`entrep.classify.torch_nets.MLPHead` (``net.0`` LayerNorm, ``net.1``
    Dropout, then Linear/GELU pairs)."""
    shapes = {"net.0.weight": (in_dim,), "net.0.bias": (in_dim,)}
    width, i = in_dim, 2
    for h in (*hidden, n_classes):
        shapes[f"net.{i}.weight"], shapes[f"net.{i}.bias"] = (h, width), (h,)
        width, i = h, i + 2
    return shapes


def mlp_forward(w: Mapping[str, np.ndarray], X: np.ndarray, n_hidden: int, *, penultimate: bool = False) -> np.ndarray:
    """Logits (or, with ``penultimate``, the last hidden activations) of an MLPHead's weights ``w``."""
    def run(x):
        x = layer_norm(x, w["net.0.weight"], w["net.0.bias"])
        for i in range(2, 2 + 2 * n_hidden, 2):
            x = gelu(linear(x, w[f"net.{i}.weight"], w[f"net.{i}.bias"]))
        if penultimate:
            return x
        i = 2 + 2 * n_hidden
        return linear(x, w[f"net.{i}.weight"], w[f"net.{i}.bias"])

    return chunked(run, X)


# ---- the alignment tower: standardise -> Linear [-> GELU -> Linear] -> L2-normalise ----------------------
def tower_shapes(in_dim: int, out_dim: int, hidden: int | None) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {"mean": (in_dim,), "scale": (1,)}
    if hidden:
        shapes.update({"proj.0.weight": (hidden, in_dim), "proj.0.bias": (hidden,),
                       "proj.2.weight": (out_dim, hidden), "proj.2.bias": (out_dim,)})
    else:
        shapes.update({"proj.weight": (out_dim, in_dim), "proj.bias": (out_dim,)})
    return shapes


def tower_forward(w: Mapping[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    def run(x):
        x = (x - w["mean"]) / w["scale"]
        if "proj.0.weight" in w:
            x = linear(gelu(linear(x, w["proj.0.weight"], w["proj.0.bias"])), w["proj.2.weight"], w["proj.2.bias"])
        else:
            x = linear(x, w["proj.weight"], w["proj.bias"])
        return l2_normalize(x)

    return chunked(run, X)


# ---- saved weights ----------------------------------------------------------------------------------------
def weights_from_state(state: Mapping[str, object], prefix: str, shapes: Mapping[str, tuple[int, ...]], *,
                       what: str) -> dict[str, np.ndarray]:
    """The ``prefix``-ed arrays of ``state`` as float32 copies, checked key by key and shape by shape against
    ``shapes``."""
    found = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = sorted(set(shapes) - set(found)), sorted(set(found) - set(shapes))
    if missing or unexpected:
        raise ModelError(f"{what}: saved weights do not match the architecture (missing {missing}, unexpected {unexpected})")
    out = {}
    for k, shape in shapes.items():
        a = np.array(found[k], dtype=np.float32, copy=True)
        if a.shape != tuple(shape):
            raise ModelError(f"{what}: saved weights do not fit the architecture: {k} has shape {a.shape}, "
                             f"expected {tuple(shape)}")
        if not np.all(np.isfinite(a)):
            raise ModelError(f"{what}: saved weight {k} holds non-finite values; the model file is damaged")
        out[k] = a
    return out


def weights_of(module) -> dict[str, np.ndarray]:
    """A trained torch module's ``state_dict`` as float32 numpy copies."""
    return {k: v.detach().cpu().float().numpy().copy() for k, v in module.state_dict().items()}


def state_arrays(weights: Mapping[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {prefix + k: v.copy() for k, v in weights.items()}
