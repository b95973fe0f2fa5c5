"""Render one synthetic endoscopy frame: anatomy (mirrored for the right side) + camera.

The scene is always drawn in the canonical LEFT orientation and mirrored for
right-side classes, so ``render_image("nose-right", f, rng)`` shows exactly the
mirror geometry of ``render_image("nose-left", f, rng)`` drawn from the same
generator state; the camera nuisance is sampled afterwards from one
distribution for all classes. Unpaired classes (vc, throat) are mirrored at
random so their small asymmetries carry no side.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from entrep.data.synthetic import anatomy
from entrep.data.synthetic.camera import Nuisance, photograph, sample_nuisance
from entrep.data.synthetic.canvas import Canvas
from entrep.data.synthetic.findings import CLASS_REGION, canonical_order
from entrep.errors import UserError


def draw_scene(label: str, findings: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """The anatomy of ``label`` with ``findings`` as a float scene, in the label's own orientation."""
    if label not in CLASS_REGION:
        raise UserError(f"cannot render unknown class {label!r}; classes are {sorted(CLASS_REGION)}")
    region, side = CLASS_REGION[label]
    try:
        fs = set(canonical_order(region, list(findings)))
    except KeyError as e:
        raise UserError(str(e.args[0])) from None
    cv = Canvas(rng)
    if region == "nose":
        anatomy.draw_nose(cv, fs, rng)
    elif region == "ear":
        anatomy.draw_ear(cv, fs, rng)
    elif region == "vc":
        anatomy.draw_larynx(cv, fs, rng, open_glottis=label == "vc-open")
    else:
        anatomy.draw_throat(cv, fs, rng)
    scene = cv.finish()
    flip = side == "right" if side is not None else bool(rng.integers(2))
    return np.ascontiguousarray(scene[:, ::-1]) if flip else scene


def render_image(label: str, findings: Sequence[str], rng: np.random.Generator,
                 *, nuisance: Nuisance | None = None) -> np.ndarray:
    """A 480x640x3 uint8 endoscopy frame of class ``label`` showing ``findings``.

    ``findings`` are English finding texts from :data:`FINDINGS` of the label's
    region (1-3 is typical; an empty list draws plain anatomy). ``nuisance``
    fixes the camera (e.g. ``Nuisance.neutral()``); by default it is sampled
    from ``rng``.
    """
    scene = draw_scene(label, findings, rng)
    nz = nuisance if nuisance is not None else sample_nuisance(rng)
    return photograph(scene, nz, rng)
