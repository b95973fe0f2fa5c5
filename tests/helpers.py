"""Helpers shared by test modules (import as `from helpers import ...`)."""

from __future__ import annotations

import json

import numpy as np


def roundtrip_state(state: dict, tmp_path) -> dict:
    """Store a fitted state exactly as a model bundle does (arrays in npz, the rest in JSON) and read it back."""
    from entrep.model.bundle import flatten_state, unflatten_state

    arrays: dict[str, np.ndarray] = {}
    rest = flatten_state(state, "s", arrays)
    np.savez(tmp_path / "state.npz", **arrays)
    (tmp_path / "state.json").write_text(json.dumps(rest, allow_nan=False))
    with np.load(tmp_path / "state.npz") as npz:
        loaded = {k: npz[k] for k in npz.files}
    return unflatten_state(json.loads((tmp_path / "state.json").read_text()), loaded)
