"""Procedural synthetic ENT endoscopy images in the exact ENTRep layouts.

``generate(out_dir, n=..., seed=...)`` writes a training folder (imgs/, cls.json,
i2i.json, t2i.json), optionally a public-release folder (data.json), and
held-out query CSVs with answer keys. ``render_image(label, findings, rng)``
draws one 640x480 frame. Modules: ``findings`` (vocabulary, captions),
``canvas`` (painting), ``anatomy`` (per region), ``camera`` (nuisance),
``render`` (one frame), ``plan`` (what to draw), ``layout`` (writing).
See docs/synthetic.md.
"""

from entrep.data.synthetic.camera import Nuisance, sample_nuisance
from entrep.data.synthetic.findings import CLASS_REGION, FINDINGS, Finding, sample_findings
from entrep.data.synthetic.layout import generate
from entrep.data.synthetic.plan import PUBLIC_COUNTS, TABLE1_COUNTS, allocate, make_plan
from entrep.data.synthetic.render import draw_scene, render_image

__all__ = [
    "CLASS_REGION",
    "FINDINGS",
    "Finding",
    "Nuisance",
    "PUBLIC_COUNTS",
    "TABLE1_COUNTS",
    "allocate",
    "draw_scene",
    "generate",
    "make_plan",
    "render_image",
    "sample_findings",
    "sample_nuisance",
]
