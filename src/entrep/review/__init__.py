"""Exam review: from a raw exam (video or frames) to the documented sites, their best frames, what is missing.

Stages, one module each: :mod:`.sources` (frames from a video or a folder,
streamed), :mod:`.cleanse` (informativeness scores and drop reasons,
calibration), :mod:`.smooth` (temporal smoothing of per-frame probabilities),
:mod:`.sites` (segments, best frames, completeness), :mod:`.exam` (the
streaming review), :mod:`.html` (the self-contained page). See docs/review.md.
"""

from entrep.review.cleanse import REASONS, CleanseConfig, FrameQuality, calibrate, drop_reason, frame_quality
from entrep.review.config import ReviewConfig, calibrate_files, load_review_config, write_review_config
from entrep.review.exam import SCHEMA, ExamReview, review, review_exam, write_review
from entrep.review.smooth import METHODS, smooth
from entrep.review.sources import Frame, FrameSource

__all__ = ["CleanseConfig", "ExamReview", "Frame", "FrameQuality", "FrameSource", "METHODS", "REASONS",
           "ReviewConfig", "SCHEMA", "calibrate", "calibrate_files", "drop_reason", "frame_quality", "load_review_config",
           "review", "review_exam", "smooth", "write_review", "write_review_config"]
