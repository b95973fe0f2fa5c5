"""The review's settings: cleansing thresholds, smoothing, completeness rules; from a YAML/JSON file.

A config file (``entrep review --config FILE``) holds any of::

    cleanse: {dark_brightness: 45, overexposed_share: 0.2, min_tissue: 0.08,
              min_sharpness: 7, duplicate_bits: 2}
    smoothing: hmm          # hmm, ema or none
    switch_rate: 0.2        # expected site changes per second
    low_confidence: 0.6     # a site whose best frame is less sure than this is "low confidence"
    min_frames: 2           # ... as is a site seen in fewer kept frames than this
    require: [nose-left, nose-right]   # sites the exam must document (default: every class)

``entrep review-calibrate`` writes the ``cleanse`` section from good frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from entrep.errors import UserError
from entrep.review.cleanse import CleanseConfig
from entrep.review.smooth import METHODS


@dataclass(frozen=True)
class ReviewConfig:
    """Everything :func:`entrep.review.review_exam` can be told besides the model and the exam."""

    cleanse: CleanseConfig = field(default_factory=CleanseConfig)
    smoothing: str = "hmm"
    switch_rate: float = 0.2
    low_confidence: float = 0.6
    min_frames: int = 2
    require: tuple[str, ...] | None = None
    batch_size: int = 32  # kept frames classified together
    candidates: int = 6  # best-frame candidates (thumbnails) kept per site while streaming
    thumb_px: int = 320  # longest side of the kept thumbnails

    def __post_init__(self) -> None:
        if self.smoothing not in METHODS:
            raise UserError(f"unknown smoothing {self.smoothing!r}; use one of {', '.join(METHODS)}")
        if self.switch_rate <= 0:
            raise UserError(f"switch_rate must be > 0 (site changes per second), got {self.switch_rate}")
        if not 0 <= self.low_confidence <= 1:
            raise UserError(f"low_confidence must be in [0, 1], got {self.low_confidence}")
        if self.min_frames < 1 or self.batch_size < 1 or self.candidates < 1 or self.thumb_px < 16:
            raise UserError("min_frames, batch_size and candidates must be >= 1 and thumb_px >= 16")

    @classmethod
    def from_dict(cls, d: Mapping, *, source: str = "review config") -> "ReviewConfig":
        if not isinstance(d, Mapping):
            raise UserError(f"{source}: expected a mapping of review settings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"{source}: unknown review settings {sorted(unknown)}; known are {sorted(known)}")
        kw = dict(d)
        if "cleanse" in kw:
            kw["cleanse"] = CleanseConfig.from_dict(kw["cleanse"] or {}, source=source)
        if kw.get("require") is not None:
            req = kw["require"]
            kw["require"] = tuple(parse_sites(req) if isinstance(req, str) else (str(s) for s in req))
        try:
            return cls(**kw)
        except TypeError as e:
            raise UserError(f"{source}: {e}") from None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["require"] = list(self.require) if self.require is not None else None
        return d


def parse_sites(text: str) -> list[str]:
    """``"nose-left, nose-right"`` -> ``["nose-left", "nose-right"]``."""
    return [s.strip() for s in text.split(",") if s.strip()]


def load_review_config(path: str | Path) -> ReviewConfig:
    """Read a review config file (YAML or JSON)."""
    from entrep.io import read_structured

    doc = read_structured(path, what="review config", error=UserError)
    return ReviewConfig.from_dict(doc or {}, source=str(path))


def write_review_config(path: str | Path, config: ReviewConfig, *, only: tuple[str, ...] | None = None) -> Path:
    """Write ``config`` (or only its ``only`` sections) as YAML (.yaml/.yml) or JSON, atomically."""
    from entrep.io import write_json_atomic, write_text_atomic

    doc = config.to_dict()
    if only is not None:
        doc = {k: doc[k] for k in only}
    path = Path(path)
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        return write_text_atomic(path, yaml.safe_dump(doc, sort_keys=False))
    return write_json_atomic(path, doc)


def calibrate_files(paths, *, margin: float = 0.5, base: CleanseConfig | None = None) -> CleanseConfig:
    """:func:`entrep.review.cleanse.calibrate` over image files and folders of them (read one at a time)."""
    from entrep.data.images import is_image_file, load_rgb
    from entrep.review.cleanse import calibrate

    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(q for q in p.iterdir() if is_image_file(q)))
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    return calibrate((load_rgb(f) for f in files), base=base or CleanseConfig(), margin=margin)
