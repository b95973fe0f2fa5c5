"""The torch-free half of an image encoder: decode, letterbox, normalise, batch, prefetch.

:class:`ImagePipeline` turns PIL images, paths or loaders into (N, dim) float32
vectors through one method a subclass provides, ``_encode_batch(x, normalize, split)``
on a preprocessed (B, 3, H, W) float32 batch, and ``_batch_workers()``, how many
batches its runtime can run at once (each on its own thread).
:class:`entrep.encoders.base.ImageEncoder` runs it on torch or ONNX Runtime;
:class:`entrep.encoders.graph_encoder.GraphImageEncoder` runs a cached ONNX graph
with no torch in the process. Both therefore decode and preprocess an image the
same way (see :mod:`entrep.encoders.base` for the letterbox and normalisation).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, Union

import numpy as np
from PIL import Image

from entrep.data.images import fit_size, load_rgb
from entrep.errors import UserError

log = logging.getLogger(__name__)

_INTERP = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
#: Pillow's integer pre-reduction before the resize filter (``Image.resize(reducing_gap=...)``):
#: 1.0 box-averages by the largest whole factor that keeps the image at least the target size,
#: then the filter does the rest. For 640x480 -> 299x224 (and 480x640 -> 168x224) that halves
#: the CPU time of the resize; the pixels differ from a plain bicubic resize by 0.3/255 on
#: average on synthetic ENT frames (less than a JPEG q90 re-encode changes them).
REDUCING_GAP = 1.0


def letterbox(img: Image.Image, size: tuple[int, int], interpolation: str = "bicubic") -> Image.Image:
    """Scale the whole image to fit (height, width) keeping aspect; pad with black, centred."""
    h, w = size
    nw, nh = fit_size(img.size, (w, h))
    resized = img.resize((nw, nh), _INTERP[interpolation], reducing_gap=REDUCING_GAP) if (
        (nw, nh) != img.size) else img
    if (nw, nh) == (w, h):
        return resized
    canvas = Image.new("RGB", (w, h), (0, 0, 0))
    canvas.paste(resized, ((w - nw) // 2, (h - nh) // 2))
    return canvas


def normalise_into(img: Image.Image, out: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Write the RGB ``img`` into ``out`` ((3, H, W) float32) as ``(x / 255 - mean) / std``, in numpy.

    One multiply-add per value (scale ``1 / (255 std)``, offset ``-mean / std``); it differs
    from the two-step formula by at most one float32 rounding (< 1e-6).
    """
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3 or out.shape != (3, *a.shape[:2]):
        raise ValueError(f"cannot write a {a.shape} image into a {out.shape} array")
    m, s = np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
    np.multiply(a.transpose(2, 0, 1), (1.0 / (np.float32(255.0) * s))[:, None, None], out=out, dtype=np.float32)
    out += (-m / s)[:, None, None]
    return out


def to_normalised_array(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """The RGB ``img`` as a normalised (3, H, W) float32 array (see :func:`normalise_into`)."""
    w, h = img.size
    return normalise_into(img, np.empty((3, h, w), dtype=np.float32), mean, std)


#: default images per model batch on CPU (and the most on CUDA when memory allows more is not asked for)
DEFAULT_BATCH_SIZE = 32
#: batches decoded ahead of the one the model is running (bounded: memory stays flat)
PREFETCH_BATCHES = 2

#: what ImageEncoder.encode accepts per item: a PIL image, an image path, or a zero-argument loader
ImageItem = Union[Image.Image, str, Path, Callable[[], Image.Image]]


def progress_bar(total: int, enabled: bool, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, disable=not enabled, leave=False)


class ImagePipeline:
    """Decode + preprocess + batch for an image encoder with ``config`` (an ImageEncoderConfig); subclasses
    implement ``_encode_batch``."""

    config: "object"

    def _encode_batch(self, x: np.ndarray, normalize: bool, split: bool = True) -> np.ndarray:  # pragma: no cover
        """(B, dim) float32 vectors of a preprocessed (B, 3, H, W) float32 batch (L2-normalised if asked).
        ``split=False``: the calling thread is one of ``_batch_workers()`` running a batch each, so the
        runtime should not spread this batch over more threads."""
        raise NotImplementedError

    def _batch_workers(self) -> int:
        """Batches the runtime can run at once, each on its own thread (ONNX Runtime on CPU: one per core);
        1: one batch at a time, spread over the runtime's own threads."""
        return 1

    def _decode_and_encode(self, chunk: Sequence[ImageItem], normalize: bool) -> np.ndarray:
        """One batch decoded and encoded on the calling thread (a data-parallel worker)."""
        return self._encode_batch(self._decode_batch(chunk), normalize, split=False)

    def effective_batch_size(self, requested: int | None) -> int:
        """``requested`` (default 32)."""
        if requested is not None and requested < 1:
            raise UserError(f"batch size must be >= 1, got {requested}")
        return requested or DEFAULT_BATCH_SIZE

    @property
    def draft_size(self) -> tuple[int, int]:
        """(width, height) an image is letterboxed into: what ``load_rgb(draft_size=...)`` needs."""
        h, w = self.config.image_size
        return w, h

    def load_image(self, path: str | Path) -> Image.Image:
        """Read ``path`` for this encoder: upright RGB, a large JPEG decoded at reduced scale."""
        return load_rgb(path, draft_size=self.draft_size)

    def _load_item(self, item: ImageItem) -> Image.Image:
        if isinstance(item, Image.Image):
            return item
        if isinstance(item, (str, Path)):
            return self.load_image(item)
        if callable(item):
            return item()
        raise UserError(f"cannot encode a {type(item).__name__}: pass PIL images, image paths or loaders")

    def preprocess_into(self, img: Image.Image, out: np.ndarray) -> np.ndarray:
        """Letterbox ``img`` and write it normalised into ``out``, a (3, H, W) float32 array."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        c = self.config
        return normalise_into(letterbox(img, c.image_size, c.interpolation), out, c.mean, c.std)

    def preprocess_array(self, img: Image.Image) -> np.ndarray:
        """PIL image -> normalised (3, H, W) float32 array; the whole frame, letterboxed."""
        h, w = self.config.image_size
        return self.preprocess_into(img, np.empty((3, h, w), dtype=np.float32))

    def _decode_batch(self, chunk: Sequence[ImageItem]) -> np.ndarray:
        """Load + preprocess one batch (run in the decode pool) straight into one (B, 3, H, W) float32 array."""
        h, w = self.config.image_size
        x = np.empty((len(chunk), 3, h, w), dtype=np.float32)
        for i, item in enumerate(chunk):
            self.preprocess_into(self._load_item(item), x[i])
        return x

    def iter_encode(
        self,
        images: Iterable[ImageItem],
        *,
        batch_size: int | None = None,
        normalize: bool = True,
        prefetch: int = PREFETCH_BATCHES,
        progress: bool = False,
    ) -> Iterator[np.ndarray]:
        """(B, dim) float32 arrays, one per batch, in input order.

        Items are PIL images, image paths (entrep.data.images.load_rgb) or zero-argument
        loaders returning a PIL image. With ``prefetch`` > 0 a pool of ``prefetch``
        threads decodes and preprocesses the next ``prefetch`` batches while the model
        runs the current one (never more ahead, so memory stays flat); 0 is serial.
        When the runtime runs batches data-parallel (``_batch_workers()`` > 1: ONNX Runtime
        on CPU), the pool has one thread per worker instead, each decoding a batch and
        running the model on it, with at most one batch more than the workers in flight.
        """
        items = list(images)
        bs = self.effective_batch_size(batch_size)
        if prefetch < 0:
            raise UserError(f"prefetch must be >= 0 batches, got {prefetch}")
        chunks = [items[s:s + bs] for s in range(0, len(items), bs)]
        workers = self._batch_workers() if prefetch and len(chunks) > 1 else 1
        together = workers > 1  # each pool thread decodes and encodes a whole batch
        threads = workers if together else prefetch
        pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="entrep-decode") if (
            threads and len(chunks) > 1) else None
        ahead = workers + 1 if together else 1 + (prefetch if pool is not None else 0)
        pending: deque = deque()
        nxt = 0

        def submit() -> None:
            nonlocal nxt
            if together:
                pending.append(pool.submit(self._decode_and_encode, chunks[nxt], normalize))
            elif pool is not None:
                pending.append(pool.submit(self._decode_batch, chunks[nxt]))
            else:
                pending.append(None)
            nxt += 1

        try:
            with progress_bar(len(items), progress, "img") as bar:
                while nxt < len(chunks) and len(pending) < ahead:
                    submit()
                for i, chunk in enumerate(chunks):
                    t0 = time.perf_counter()
                    fut = pending.popleft()
                    if together:
                        v = fut.result()
                        log.debug("%s: batch %d of %d, waited %.3fs for its worker (decode + model)",
                                  self.config.name, i + 1, len(chunks), time.perf_counter() - t0)
                    else:
                        x = fut.result() if fut is not None else self._decode_batch(chunk)
                        t1 = time.perf_counter()
                        v = self._encode_batch(x, normalize)
                        log.debug("%s: batch %d of %d, waited %.3fs for decode, model %.3fs", self.config.name,
                                  i + 1, len(chunks), t1 - t0, time.perf_counter() - t1)
                    if nxt < len(chunks):  # batch i is done: start batch i + ahead
                        submit()
                    bar.update(len(chunk))
                    yield v
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def encode(
        self,
        images: Iterable[ImageItem],
        *,
        batch_size: int | None = None,
        progress: bool = False,
        normalize: bool = True,
        prefetch: int = PREFETCH_BATCHES,
    ) -> np.ndarray:
        """Encode PIL images, image paths or loaders (see :meth:`iter_encode`) into (N, dim) float32.

        ``batch_size``: images per model batch (default 32 on CPU; on CUDA chosen from free
        memory and lowered to ``batch_size`` when one is given).
        """
        items = list(images)
        out = np.empty((len(items), self.config.dim), dtype=np.float32)
        start = 0
        for v in self.iter_encode(items, batch_size=batch_size, normalize=normalize, prefetch=prefetch,
                                  progress=progress):
            out[start:start + len(v)] = v
            start += len(v)
        return out
