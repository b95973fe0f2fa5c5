"""Common encoder machinery: preprocessing, batching, device, mixed precision, fingerprints.

Like sentence-transformers, every encoder has one ``encode()`` entry point
(batching, optional progress bar, L2 normalisation, numpy float32 out).
Subclasses only say how a preprocessed batch becomes vectors
(:meth:`ImageEncoder.forward` / :meth:`TextEncoder.forward`).

Image encoders also choose how ``forward`` runs (:meth:`ImageEncoder.use_runtime`:
ONNX Runtime on CPU, see :mod:`entrep.encoders.onnx_runtime`, or torch), decode
and preprocess the next batches in a small thread pool while the model runs
(PIL releases the GIL), and on CUDA cap the batch size by free memory, run conv
nets channels-last and copy from pinned host memory.

Preprocessing never crops: the whole frame is scaled to fit ``image_size``
(height, width) keeping its aspect ratio, and the rest is padded with black,
the colour of the endoscope surround. A centre crop could cut away the side
of the frame that tells left from right.

Preprocessing runs no torch ops: PIL letterboxes, numpy turns the uint8 frame
into the normalised float32 (3, H, W) array (``(x / 255 - mean) / std`` folded
into one multiply-add) and writes it straight into the batch array. The decode
threads therefore never start torch intra-op work that would fight the model's
threads for the cores; ONNX Runtime gets the numpy batch as it is and torch
wraps it with ``torch.from_numpy`` (no copy; pinned memory when bound for CUDA).
Image paths are decoded with ``load_rgb(..., draft_size=...)``: a large JPEG is
decoded by libjpeg at reduced scale, never below the size it is scaled to.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from entrep.encoders.config import ENCODER_CODE_VERSION, ImageEncoderConfig, TextEncoderConfig  # noqa: F401
# the torch-free image pipeline, re-exported where these names have always been importable from
from entrep.encoders.pipeline import (  # noqa: F401
    DEFAULT_BATCH_SIZE,
    ImageItem,
    ImagePipeline,
    progress_bar,
    letterbox,
    normalise_into,
    to_normalised_array,
)
from entrep.errors import UserError

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``"auto"``: cuda, else mps, else cpu. An unavailable choice is a UserError."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"device {device!r} requested but Apple MPS is not available; use --device cpu or auto")
    return dev


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """Mixed precision only on a GPU: ``auto`` is bf16/fp16 on cuda, fp16 on mps, fp32 on cpu."""
    precision = (precision or "auto").lower()
    if precision not in ("auto", "fp32", "fp16", "bf16"):
        raise UserError(f"unknown precision {precision!r}; choose auto, fp32, fp16 or bf16")
    if device.type == "cpu":
        return "fp32"
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp16"
    return precision


def autocast_for(device: torch.device, precision: str):
    if precision == "fp32" or device.type == "cpu":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)



def batch_size_from_memory(free_bytes: float, per_image_bytes: float, *, requested: int | None = None,
                           fixed_bytes: float = 0.0, headroom: float = 0.8, minimum: int = 1,
                           maximum: int = 512) -> int:
    """Images per GPU batch that fit in ``headroom`` of the free memory (pure; CUDA uses it).

    ``per_image_bytes`` is the measured activation memory of one image (from a probe
    batch), ``fixed_bytes`` what a batch needs whatever its size. The result is clamped
    to [minimum, maximum]; an explicit ``requested`` size is kept when it fits and
    lowered to what fits otherwise.
    """
    if per_image_bytes <= 0:
        raise ValueError(f"per-image memory must be > 0, got {per_image_bytes}")
    if minimum < 1 or maximum < minimum:
        raise ValueError(f"need 1 <= minimum <= maximum, got {minimum}, {maximum}")
    fits = int((free_bytes * headroom - fixed_bytes) // per_image_bytes)
    fits = max(minimum, min(maximum, fits))
    return fits if requested is None else max(minimum, min(int(requested), fits))


def is_conv_net(model: torch.nn.Module) -> bool:
    """More than a patch-embedding convolution: channels-last memory helps such nets on CUDA."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) > 2


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class _EncoderBase:
    def __init__(self, model: torch.nn.Module, *, device=None, precision: str | None = None,
                 weights_digest: str = "") -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = model.eval().to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.weights_digest = weights_digest

    @property
    def fingerprint(self) -> str:
        """sha256 over config + weights digest + pooling + preprocessing + effective precision
        (:func:`entrep.encoders.config.encoder_fingerprint`, also used without building the encoder)."""
        from entrep.encoders.config import encoder_fingerprint

        return encoder_fingerprint(self.config, self.weights_digest, self.precision,  # type: ignore[attr-defined]
                                   type(self).__name__)

    @property
    def name(self) -> str:
        return self.config.name  # type: ignore[attr-defined]

    @property
    def dim(self) -> int:
        return self.config.dim  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config.name!r}, dim={self.config.dim}, device={self.device.type})"  # type: ignore[attr-defined]


class ImageEncoder(_EncoderBase, ImagePipeline):
    """An image encoder: PIL images or paths in, (N, dim) float32 out."""

    config: ImageEncoderConfig

    def __init__(self, config: ImageEncoderConfig, model: torch.nn.Module, **kw) -> None:
        self.config = config
        super().__init__(model, **kw)
        #: the runtime forward runs on: "torch" or "onnx" (see use_runtime)
        self.runtime = "torch"
        self.runtime_requested: str | None = None
        self.onnx_graph: Path | None = None  # the cached graph file when runtime is "onnx"
        self._onnx = None
        self._cuda_batch_limit: int | None = None
        self.channels_last = self.device.type == "cuda" and is_conv_net(self.model)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    # ---- runtime ----------------------------------------------------------------
    def use_runtime(self, runtime: str, cache_dir: Path | None = None) -> str:
        """Run ``forward`` on ``runtime`` ("auto", "torch" or "onnx"); returns the runtime used.

        ``auto`` and ``onnx`` on CPU export ``forward`` to ONNX (cached under ``cache_dir`` by
        fingerprint; ``None``: exported in memory, not cached) and run it with ONNX Runtime;
        ``auto`` on a GPU stays torch. When the export or the session is impossible, ``auto``
        falls back to torch with one log line and ``onnx`` is a UserError.
        """
        from entrep.config import RUNTIMES

        if runtime not in RUNTIMES:
            raise UserError(f"unknown runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
        self.runtime_requested = runtime
        self._onnx, self.onnx_graph, self.runtime = None, None, "torch"
        if runtime == "torch":
            return "torch"
        if self.device.type != "cpu":
            if runtime == "onnx":
                raise UserError(f"encoder {self.name}: runtime onnx runs on CPU and this encoder is on "
                                f"{self.device.type}; use --runtime auto or torch, or --device cpu")
            return "torch"
        from entrep.encoders import onnx_runtime

        t0 = time.perf_counter()
        try:
            runner, path, exported = onnx_runtime.prepare(self, cache_dir)
        except onnx_runtime.OnnxUnavailable as e:
            if runtime == "onnx":
                raise UserError(f"encoder {self.name}: runtime onnx is impossible ({e}); "
                                f"use --runtime auto or torch") from None
            log.warning("encoder %s: runtime torch (ONNX export impossible: %s)", self.name, e)
            return "torch"
        self._onnx, self.onnx_graph, self.runtime = runner, path, "onnx"
        where = f"graph cached at {path}" if path is not None else "graph in memory, not cached"
        log.info("encoder %s: runtime onnx (%s%s)", self.name, where,
                 f"; exported in {time.perf_counter() - t0:.1f}s" if exported else "")
        return "onnx"

    # ---- GPU batch size -----------------------------------------------------------
    def cuda_batch_limit(self, probe: int = 2) -> int | None:
        """Most images per batch that fit in free CUDA memory (measured once); None off CUDA."""
        if self.device.type != "cuda":
            return None
        if self._cuda_batch_limit is None:
            h, w = self.config.image_size
            x = torch.zeros(probe, 3, h, w, device=self.device)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            with torch.inference_mode(), autocast_for(self.device, self.precision):
                self.forward(x)
            torch.cuda.synchronize(self.device)
            per_image = (torch.cuda.max_memory_allocated(self.device) - before) / probe + x[0].numel() * 4
            free, _total = torch.cuda.mem_get_info(self.device)
            self._cuda_batch_limit = batch_size_from_memory(free, max(per_image, 1.0))
            log.info("encoder %s: %.1f MiB per image on %s, %.0f MiB free: at most %d images per batch", self.name,
                     per_image / 2**20, self.device, free / 2**20, self._cuda_batch_limit)
            del x
        return self._cuda_batch_limit

    def effective_batch_size(self, requested: int | None) -> int:
        """``requested`` (default 32) on CPU; on CUDA the memory-chosen size, lowered to ``requested`` if given."""
        if requested is not None and requested < 1:
            raise UserError(f"batch size must be >= 1, got {requested}")
        limit = self.cuda_batch_limit()
        if limit is None:
            return requested or DEFAULT_BATCH_SIZE
        return limit if requested is None else min(int(requested), limit)

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """PIL image -> normalised (3, H, W) tensor (:meth:`preprocess_array`, memory shared)."""
        return torch.from_numpy(self.preprocess_array(img))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Preprocessed batch (on device) -> (B, dim) unnormalised vectors."""
        raise NotImplementedError

    @torch.inference_mode()
    def encode_tensor(self, batch: torch.Tensor | np.ndarray, *, normalize: bool = True) -> torch.Tensor:
        """Vectors for an already preprocessed (B, 3, H, W) batch (tensor or float32 array); float32
        on the encoder's device (CPU for ONNX Runtime)."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(batch.shape)}")
        if self._onnx is not None:
            out = torch.from_numpy(self._onnx.run(batch))
        else:
            if isinstance(batch, np.ndarray):
                batch = torch.from_numpy(batch)
            x = batch.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_for(self.device, self.precision):
                out = self.forward(x)
        out = out.float()
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out

    def _decode_batch(self, chunk: Sequence[ImageItem]) -> np.ndarray | torch.Tensor:
        """Load + preprocess one batch (run in the decode pool) straight into one (B, 3, H, W) float32
        array: numpy on CPU, a pinned host tensor (filled through its numpy view) when bound for CUDA."""
        h, w = self.config.image_size
        if self.device.type == "cuda":
            pinned = torch.empty((len(chunk), 3, h, w), dtype=torch.float32, pin_memory=True)
            x = pinned.numpy()
        else:
            pinned, x = None, np.empty((len(chunk), 3, h, w), dtype=np.float32)
        for i, item in enumerate(chunk):
            self.preprocess_into(self._load_item(item), x[i])
        return x if pinned is None else pinned

    def _encode_batch(self, x, normalize: bool, split: bool = True) -> np.ndarray:
        if self._onnx is not None:  # numpy in and out, as the graph-alone encoder (GraphImageEncoder)
            return self._onnx.vectors(x, normalize, split=split)
        return self.encode_tensor(x, normalize=normalize).cpu().numpy()

    def _batch_workers(self) -> int:
        return self._onnx.workers if self._onnx is not None else 1


class TextEncoder(_EncoderBase):
    """A text encoder: strings in, (N, dim) float32 out."""

    config: TextEncoderConfig

    def __init__(self, config: TextEncoderConfig, model: torch.nn.Module, **kw) -> None:
        self.config = config
        super().__init__(model, **kw)

    def forward(self, texts: list[str]) -> torch.Tensor:  # pragma: no cover - abstract
        """A batch of strings -> (B, dim) unnormalised vectors on the device."""
        raise NotImplementedError

    @torch.inference_mode()
    def encode(self, texts: Iterable[str], *, batch_size: int = 64, progress: bool = False,
               normalize: bool = True) -> np.ndarray:
        if isinstance(texts, str):
            raise UserError("encode() takes a list of strings, not one string")
        items = list(texts)
        bad = [i for i, t in enumerate(items) if not isinstance(t, str)]
        if bad:
            raise UserError(f"text encoder {self.config.name}: item {bad[0]} is {type(items[bad[0]]).__name__}, not str")
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        out = np.empty((len(items), self.config.dim), dtype=np.float32)
        with progress_bar(len(items), progress, "text") as bar:
            for start in range(0, len(items), batch_size):
                chunk = items[start:start + batch_size]
                with autocast_for(self.device, self.precision):
                    v = self.forward(chunk)
                v = v.float()
                if normalize:
                    v = torch.nn.functional.normalize(v, dim=-1)
                out[start:start + len(chunk)] = v.cpu().numpy()
                bar.update(len(chunk))
        return out
