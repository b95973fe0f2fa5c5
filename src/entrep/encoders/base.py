"""Common encoder machinery: preprocessing, batching, device, mixed precision, fingerprints.

Like sentence-transformers, every encoder has one ``encode()`` entry point
(batching, optional progress bar, L2 normalisation, numpy float32 out).
Subclasses only say how a preprocessed batch becomes vectors
(:meth:`ImageEncoder.forward` / :meth:`TextEncoder.forward`).

Preprocessing never crops: the whole frame is scaled to fit ``image_size``
(height, width) keeping its aspect ratio, and the rest is padded with black,
the colour of the endoscope surround. A centre crop could cut away the side
of the frame that tells left from right.
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

from entrep.encoders.config import ImageEncoderConfig, TextEncoderConfig
from entrep.errors import UserError

log = logging.getLogger(__name__)

#: bump when preprocessing or pooling code changes what vectors come out
ENCODER_CODE_VERSION = 1

_INTERP = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


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


def letterbox(img: Image.Image, size: tuple[int, int], interpolation: str = "bicubic") -> Image.Image:
    """Scale the whole image to fit (height, width) keeping aspect; pad with black, centred."""
    h, w = size
    iw, ih = img.size
    s = min(w / iw, h / ih)
    nw, nh = max(1, min(w, round(iw * s))), max(1, min(h, round(ih * s)))
    resized = img.resize((nw, nh), _INTERP[interpolation]) if (nw, nh) != (iw, ih) else img
    if (nw, nh) == (w, h):
        return resized
    canvas = Image.new("RGB", (w, h), (0, 0, 0))
    canvas.paste(resized, ((w - nw) // 2, (h - nh) // 2))
    return canvas


def to_normalised_tensor(img: Image.Image, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    a = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (a - m) / s


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _progress(total: int, enabled: bool, unit: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, disable=not enabled, leave=False)


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
        """sha256 over config + weights digest + pooling + preprocessing + effective precision."""
        return _digest({
            "config": self.config.to_dict(),  # type: ignore[attr-defined]
            "weights": self.weights_digest,
            "precision": self.precision,
            "code": ENCODER_CODE_VERSION,
            "kind": type(self).__name__,
        })

    @property
    def name(self) -> str:
        return self.config.name  # type: ignore[attr-defined]

    @property
    def dim(self) -> int:
        return self.config.dim  # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config.name!r}, dim={self.config.dim}, device={self.device.type})"  # type: ignore[attr-defined]


class ImageEncoder(_EncoderBase):
    """An image encoder: PIL images or paths in, (N, dim) float32 out."""

    config: ImageEncoderConfig

    def __init__(self, config: ImageEncoderConfig, model: torch.nn.Module, **kw) -> None:
        self.config = config
        super().__init__(model, **kw)

    def preprocess(self, img: Image.Image) -> torch.Tensor:
        """PIL image -> normalised (3, H, W) tensor; the whole frame, letterboxed."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        c = self.config
        return to_normalised_tensor(letterbox(img, c.image_size, c.interpolation), c.mean, c.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Preprocessed batch (on device) -> (B, dim) unnormalised vectors."""
        raise NotImplementedError

    @torch.inference_mode()
    def encode_tensor(self, batch: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        """Vectors for an already preprocessed (B, 3, H, W) batch; float32 on the encoder's device."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(batch.shape)}")
        with autocast_for(self.device, self.precision):
            out = self.forward(batch.to(self.device, non_blocking=True))
        out = out.float()
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out

    def encode(
        self,
        images: Iterable[Image.Image | str | Path],
        *,
        batch_size: int = 32,
        progress: bool = False,
        normalize: bool = True,
    ) -> np.ndarray:
        """Encode PIL images or image paths (loaded with entrep.data.images.load_rgb)."""
        from entrep.data.images import load_rgb

        items = list(images)
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        out = np.empty((len(items), self.config.dim), dtype=np.float32)
        with _progress(len(items), progress, "img") as bar:
            for start in range(0, len(items), batch_size):
                t0 = time.perf_counter()
                chunk = items[start:start + batch_size]
                pil = [im if isinstance(im, Image.Image) else load_rgb(im) for im in chunk]
                x = torch.stack([self.preprocess(im) for im in pil])
                t1 = time.perf_counter()
                out[start:start + len(chunk)] = self.encode_tensor(x, normalize=normalize).cpu().numpy()
                log.debug("%s: batch of %d, load+preprocess %.3fs, model %.3fs", self.config.name, len(chunk),
                          t1 - t0, time.perf_counter() - t1)
                bar.update(len(chunk))
        return out


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
        with _progress(len(items), progress, "text") as bar:
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
