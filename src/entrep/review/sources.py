"""Where exam frames come from: a video file (decoded with PyAV, sampled at a rate) or a folder of frames.

Both are iterated one frame at a time, so an hour of video is never held in
memory. A video that fails part-way (truncated, corrupt) ends the iteration
with the frames decoded so far; :attr:`FrameSource.error` then says where
decoding stopped. A file PyAV cannot open, or whose codec this FFmpeg build
cannot decode, raises :class:`~entrep.errors.DataError` naming the file.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from PIL import Image

from entrep.data.images import ImageError, is_image_file, load_rgb
from entrep.data.records import DataError
from entrep.errors import UserError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg")
_TIME = re.compile(r"(\d+(?:\.\d+)?)s$")  # "..._12.5s" at the end of the stem: a time stamp
_NUMBER = re.compile(r"\d+")


@dataclass(frozen=True)
class Frame:
    """One exam frame: its position, its name (file name or "video@12.50s"), its time and pixels."""

    index: int
    name: str
    time_s: float
    image: Image.Image


def _natural_key(path: Path) -> tuple:
    parts = re.split(r"(\d+)", path.stem)
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in parts if p) + (path.name,)


class FrameSource:
    """The frames of one exam, in order. ``kind`` is "video" or "frames"."""

    def __init__(self, path: str | Path, *, fps: float = 2.0) -> None:
        self.path = Path(path)
        if fps <= 0:
            raise UserError(f"--fps must be > 0, got {fps}")
        self.fps = float(fps)
        self.error: str | None = None
        if self.path.is_dir():
            self.kind = "frames"
            self._files = sorted((p for p in self.path.iterdir() if is_image_file(p)), key=_natural_key)
            if not self._files:
                raise UserError(f"{self.path}: no image files in this folder (png, jpg, ...)")
        elif self.path.is_file():
            if self.path.suffix.lower() not in VIDEO_SUFFIXES:
                raise UserError(f"{self.path}: not a video ({', '.join(VIDEO_SUFFIXES)}) or a folder of frames")
            self.kind = "video"
            self._files = []
        else:
            raise UserError(f"{self.path}: no such file or folder")

    @property
    def expected(self) -> int | None:
        """How many frames the iteration should yield (for a progress bar), when known."""
        if self.kind == "frames":
            return len(self._files)
        import av

        try:
            with av.open(str(self.path)) as c:
                if not c.streams.video:
                    return None
                dur = _duration(c, c.streams.video[0])
        except (av.FFmpegError, OSError):
            return None
        return int(dur * self.fps) + 1 if dur else None

    def __iter__(self) -> Iterator[Frame]:
        return self._folder() if self.kind == "frames" else self._video()

    # ---- folders ------------------------------------------------------------
    def _folder(self) -> Iterator[Frame]:
        """Frames sorted naturally by name; the time is a trailing "12.5s" in the name, else rank / fps."""
        for i, p in enumerate(self._files):
            m = _TIME.search(p.stem)
            t = float(m.group(1)) if m else i / self.fps
            try:
                img = load_rgb(p)
            except ImageError as e:
                log.warning("skipping frame %s: %s", p.name, e)
                continue
            yield Frame(i, p.name, t, img)

    # ---- videos -------------------------------------------------------------
    def _video(self) -> Iterator[Frame]:
        import av

        try:
            container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as e:
            raise DataError(f"{self.path}: cannot open this video ({_msg(e)}); it may be truncated or not a video")
        with container:
            if not container.streams.video:
                raise DataError(f"{self.path}: the file has no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context.name if stream.codec_context else "unknown"
            stream.thread_type = "AUTO"
            step = 1.0 / self.fps
            next_t = 0.0
            n = 0
            last_t: float | None = None
            duration = _duration(container, stream)
            rate = float(stream.average_rate) if stream.average_rate else None
            frames = container.decode(stream)
            while True:
                try:
                    vf = next(frames)
                except StopIteration:
                    break
                except (av.FFmpegError, OSError) as e:
                    if last_t is None:
                        raise DataError(f"{self.path}: cannot decode its {codec} video ({_msg(e)}); "
                                        "re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4") from None
                    self._fail(f"decoding failed after {last_t:.2f} s ({_msg(e)})", n)
                    return
                t = float(vf.time) if vf.time is not None else (last_t + step if last_t is not None else 0.0)
                if rate and last_t is not None and t - last_t > 4.0 / rate and self.error is None:
                    self.error = (f"{self.path.name}: no decodable frames between {last_t:.2f} s and {t:.2f} s "
                                  "(corrupt data); reviewed the rest")
                    log.warning("%s", self.error)
                last_t = t
                if t + 1e-6 < next_t:
                    continue
                next_t = (math.floor(t / step + 1e-6) + 1) * step  # the next sampling instant after t
                yield Frame(n, f"{self.path.name}@{t:.2f}s", round(t, 3), vf.to_image())
                n += 1
            if last_t is None:
                raise DataError(f"{self.path}: no frame of its {codec} video could be decoded; "
                                "re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4")
            frame_s = 1.0 / rate if rate else step
            if duration is not None and last_t + 3 * frame_s < duration:
                self._fail(f"decoding stopped at {last_t:.2f} s of a {duration:.2f} s video (truncated or corrupt)", n)

    def _fail(self, what: str, n: int) -> None:
        self.error = f"{self.path.name}: {what}; kept the {n} sampled frames before"
        log.warning("%s", self.error)


def _duration(container, stream) -> float | None:
    """The duration the file declares (stream, else container), in seconds."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return container.duration / 1e6 if container.duration else None


def _msg(e: Exception) -> str:
    s = (getattr(e, "strerror", None) or str(e)).strip()
    return s.split("\n")[0][:200] or type(e).__name__
