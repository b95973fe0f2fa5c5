"""Synthetic exams: a frame sequence moving through ENT sites, with the defects real exams have.

An exam visits sites in a clinical order (by default every class of the ENT
taxonomy, each for ``dwell_s`` seconds). Within a visit the anatomy is fixed
(one scene drawn by :func:`entrep.data.synthetic.draw_scene`) and the camera
moves smoothly: field of view position, rotation and zoom are interpolated
between two sampled poses (:func:`sample_nuisance`). Defective frames replace
good ones at random: ``dark`` (exposure x0.06), ``overexposed`` (exposure x4,
flattened gamma), ``blurred`` (strong optical blur), ``out_of_field`` (the scope
outside the patient: a grey room-like frame with no circular field) and
``duplicate`` (the previous frame again, with fresh sensor noise: a camera held
still). Every frame carries its ground truth: site (None when out of field),
defect (None for a good frame) and time.

:func:`write_exam` writes the frames as PNGs (``frame_00012.png``), an mp4
(H.264 through PyAV) and ``truth.json``. See docs/review.md.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from entrep.data.synthetic.camera import HEIGHT, WIDTH, Nuisance, photograph, sample_nuisance
from entrep.data.synthetic.findings import CLASS_REGION, sample_findings
from entrep.data.synthetic.render import draw_scene
from entrep.errors import UserError
from entrep.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

#: A plausible order of an ENT exam: nose, throat and larynx, then ears.
DEFAULT_ROUTE = ("nose-left", "nose-right", "throat", "vc-open", "vc-closed", "ear-left", "ear-right")
DEFECTS = ("dark", "overexposed", "blurred", "out_of_field", "duplicate")


@dataclass(frozen=True)
class ExamSpec:
    """What to generate: the route of sites, seconds per site, frame rate and defect rates."""

    route: tuple[str, ...] = DEFAULT_ROUTE
    dwell_s: float = 6.0
    fps: float = 2.0
    defect_rate: float = 0.25  # share of frames replaced by a defect, split evenly over ``defects``
    defects: tuple[str, ...] = DEFECTS
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [s for s in self.route if s not in CLASS_REGION]
        if unknown:
            raise UserError(f"exam route names unknown sites {unknown}; sites are {sorted(CLASS_REGION)}")
        bad = [d for d in self.defects if d not in DEFECTS]
        if bad:
            raise UserError(f"unknown exam defects {bad}; defects are {list(DEFECTS)}")
        if self.fps <= 0 or self.dwell_s <= 0 or not 0 <= self.defect_rate < 1:
            raise UserError("exam fps and dwell_s must be > 0 and defect_rate in [0, 1)")


@dataclass(frozen=True)
class ExamFrame:
    """One generated frame and its ground truth."""

    index: int
    time_s: float
    site: str | None  # None when the scope is outside the patient
    defect: str | None
    image: np.ndarray  # HxWx3 uint8

    def truth(self) -> dict:
        return {"frame": self.index, "time_s": round(self.time_s, 3), "site": self.site, "defect": self.defect}


def _lerp(a: Nuisance, b: Nuisance, t: float) -> Nuisance:
    """A pose on the way from ``a`` to ``b`` (position, rotation, zoom); optics and lighting from ``a``."""
    return replace(a, cx=a.cx + (b.cx - a.cx) * t, cy=a.cy + (b.cy - a.cy) * t,
                   rotation=a.rotation + (b.rotation - a.rotation) * t, zoom=a.zoom + (b.zoom - a.zoom) * t)


def _shake(nz: Nuisance, rng: np.random.Generator) -> Nuisance:
    """Hand-held tremor on top of the smooth path: a few pixels, degrees and per cent of zoom."""
    return replace(nz, cx=nz.cx + float(rng.normal(0, 10)), cy=nz.cy + float(rng.normal(0, 8)),
                   rotation=nz.rotation + float(rng.normal(0, 4)), zoom=nz.zoom * float(np.exp(rng.normal(0, 0.04))))


def _steady(rng: np.random.Generator) -> Nuisance:
    """A sampled camera with little blur (sharp frames are the good ones)."""
    return replace(sample_nuisance(rng), blur=float(rng.uniform(0.0, 0.6)))


def _outside(rng: np.random.Generator) -> np.ndarray:
    """The scope outside the patient: a dim greyish room, a lamp gradient, no circular field."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    grad = (xs * np.cos(ang) + ys * np.sin(ang)) / WIDTH
    base = rng.uniform(90, 150) + 50 * grad
    tint = np.array([rng.uniform(0.8, 0.95), rng.uniform(0.9, 1.0), rng.uniform(0.95, 1.1)], np.float32)
    img = base[..., None] * tint + rng.normal(0, 3, (HEIGHT, WIDTH, 1)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _defect(kind: str, scene: np.ndarray, nz: Nuisance, rng: np.random.Generator) -> np.ndarray:
    if kind == "dark":
        return photograph(scene, replace(nz, brightness=0.06, noise=0.004), rng)
    if kind == "overexposed":
        return photograph(scene, replace(nz, brightness=4.0, gamma=0.5, vignette=0.0), rng)
    if kind == "blurred":
        return photograph(scene, replace(nz, blur=float(rng.uniform(7.0, 10.0)), noise=0.003), rng)
    return _outside(rng)


def exam_frames(spec: ExamSpec = ExamSpec()) -> Iterator[ExamFrame]:
    """Generate the frames of an exam, one at a time (nothing is held but the current site's scene)."""
    rng = np.random.default_rng(spec.seed)
    per_site = max(2, int(round(spec.dwell_s * spec.fps)))
    weights = {d: spec.defect_rate / len(spec.defects) for d in spec.defects}
    index = 0
    prev: tuple[np.ndarray, Nuisance, str] | None = None
    for site in spec.route:
        scene = draw_scene(site, sample_findings(CLASS_REGION[site][0], rng), rng)
        start, end = _steady(rng), _steady(rng)
        for j in range(per_site):
            nz = _shake(_lerp(start, end, j / (per_site - 1)), rng)
            u = rng.random()
            kind = None
            acc = 0.0
            for d, w in weights.items():
                acc += w
                if u < acc:
                    kind = d
                    break
            t = index / spec.fps
            if kind == "duplicate" and prev is None:
                kind = None
            if kind is None:
                img = photograph(scene, nz, rng)
                prev = (scene, nz, site)
                yield ExamFrame(index, t, site, None, img)
            elif kind == "duplicate":
                pscene, pnz, psite = prev  # type: ignore[misc]
                yield ExamFrame(index, t, psite, "duplicate", photograph(pscene, pnz, rng))
            else:
                img = _defect(kind, scene, nz, rng)
                yield ExamFrame(index, t, None if kind == "out_of_field" else site, kind, img)
            index += 1


def write_exam(out: str | Path, spec: ExamSpec = ExamSpec(), *, frames: bool = True, video: bool = True,
               codec: str = "libx264", container_format: str = "mp4") -> dict:
    """Write an exam to ``out``: ``frames/frame_00000.png``..., ``exam.<format>``, ``truth.json``; returns the truth.

    The video (H.264 in mp4 by default; ``container_format="mkv"`` for Matroska) is written at
    ``spec.fps`` frames per second, one video frame per exam frame.
    """
    out = Path(out)
    (out / "frames" if frames else out).mkdir(parents=True, exist_ok=True)
    truth: list[dict] = []
    with contextlib.ExitStack() as stack:
        sink = None
        if video:
            tmp = stack.enter_context(atomic_path(out / f"exam.{container_format}", suffix=f".{container_format}"))
            sink = stack.enter_context(_VideoSink(tmp, spec.fps, codec))
        for fr in exam_frames(spec):
            truth.append(fr.truth())
            if frames:
                Image.fromarray(fr.image).save(out / "frames" / f"frame_{fr.index:05d}.png", compress_level=1)
            if sink is not None:
                sink.write(fr.image)
    doc = {"fps": spec.fps, "route": list(spec.route), "dwell_s": spec.dwell_s, "seed": spec.seed,
           "frames": truth}
    write_json_atomic(out / "truth.json", doc)
    log.info("wrote a %d-frame synthetic exam to %s", len(truth), out)
    return doc


class _VideoSink:
    """A PyAV encoder writing RGB frames to one video file (closed, with its packets flushed, on exit)."""

    def __init__(self, path: Path, fps: float, codec: str) -> None:
        import av

        self._av = av
        self.container = av.open(str(path), "w")
        self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
        self.stream.width, self.stream.height, self.stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        if codec == "libx264":
            self.stream.options = {"crf": "18", "preset": "veryfast"}

    def write(self, image: np.ndarray) -> None:
        for pkt in self.stream.encode(self._av.VideoFrame.from_ndarray(image, format="rgb24")):
            self.container.mux(pkt)

    def __enter__(self) -> "_VideoSink":
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                for pkt in self.stream.encode():
                    self.container.mux(pkt)
        finally:
            self.container.close()


def sites_in(truth: Sequence[dict]) -> list[str]:
    """The sites an exam's ground truth shows in at least one good frame, in route order."""
    seen: list[str] = []
    for t in truth:
        if t["site"] is not None and t["defect"] is None and t["site"] not in seen:
            seen.append(t["site"])
    return seen
