"""Per-site summaries of a classified exam: segments, best frame, completeness (pure functions).

A site's *segments* are the runs of consecutive kept frames labelled with it
(dropped frames do not break a run), each as ``[start_s, end_s]``. Its *best
frame* maximises ``confidence x sharpness_score`` among the frames labelled with
it, where the sharpness score maps the Laplacian variance to (0, 1)
(:func:`entrep.review.cleanse.sharpness_score`). A required site is *missing*
when no kept frame is labelled with it, and *low confidence* when it is seen
but its best frame's confidence is below ``low_confidence`` or it is seen in
fewer than ``min_frames`` frames.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from entrep.errors import UserError


def segments(labels: Sequence[str], times: Sequence[float]) -> dict[str, list[list[float]]]:
    """Runs of equal consecutive labels, per label, as ``[start_s, end_s]``."""
    out: dict[str, list[list[float]]] = {}
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            out.setdefault(labels[start], []).append([round(float(times[start]), 3), round(float(times[i - 1]), 3)])
            start = i
    return out


def site_summaries(names: Sequence[str], times: Sequence[float], labels: Sequence[str],
                   confidence: np.ndarray, sharpness: np.ndarray, eligible: np.ndarray | None = None
                   ) -> dict[str, dict]:
    """``{site: {"best_frame", "time_s", "confidence", "score", "frames", "segments"}}`` over kept frames.

    ``eligible`` (bool per frame) restricts the best-frame choice where a site has eligible frames
    (the streaming review keeps images of a few candidates per site only).
    """
    conf = np.asarray(confidence, np.float64)
    score = conf * np.asarray(sharpness, np.float64)
    segs = segments(labels, times)
    out: dict[str, dict] = {}
    lab = np.asarray(labels, dtype=object)
    for site in segs:
        idx = np.flatnonzero(lab == site)
        pool = idx[eligible[idx]] if eligible is not None and eligible[idx].any() else idx
        best = int(pool[np.argmax(score[pool])])
        out[site] = {"best_frame": names[best], "time_s": round(float(times[best]), 3),
                     "confidence": round(float(conf[best]), 4), "score": round(float(score[best]), 4),
                     "frames": int(len(idx)), "segments": segs[site]}
    return out


def completeness(sites: dict[str, dict], required: Sequence[str], classes: Sequence[str], *,
                 low_confidence: float, min_frames: int) -> tuple[list[str], list[str]]:
    """(missing, low_confidence): required sites never seen, and those seen too weakly or briefly."""
    unknown = [s for s in required if s not in classes]
    if unknown:
        raise UserError(f"required sites {unknown} are not classes of the model's taxonomy {list(classes)}")
    missing = [s for s in required if s not in sites]
    weak = [s for s in required if s in sites
            and (sites[s]["confidence"] < low_confidence or sites[s]["frames"] < min_frames)]
    return missing, weak
