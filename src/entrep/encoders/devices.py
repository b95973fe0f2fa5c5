"""Device and precision for fingerprints without importing torch where the machine has no accelerator.

A fingerprint includes the *effective* precision, which is "fp32" on a CPU and
depends on the GPU otherwise. Asking ``torch.cuda`` costs an ``import torch``
(seconds), so a fully cached run on a machine that cannot have a GPU answers
from the operating system instead: on Linux, CUDA needs ``/dev/nvidiactl`` or
``/dev/nvidia0`` (``/dev/dxg`` under WSL) and ROCm needs ``/dev/kfd``. Anywhere
else (a GPU device file present, macOS, Windows, an explicit ``cuda``/``mps``)
torch is imported and asked through :func:`entrep.encoders.base.resolve_device`,
so both functions always name the same device type.
"""

from __future__ import annotations

import os
import sys

from entrep.errors import UserError

#: device files of which at least one exists on a Linux machine where torch can see a GPU
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def may_have_accelerator() -> bool:
    """False only where torch cannot find a GPU: Linux without any of :data:`GPU_DEVICE_FILES`."""
    if not sys.platform.startswith("linux"):
        return True  # macOS (MPS), Windows: only torch knows
    return any(os.path.exists(p) for p in GPU_DEVICE_FILES)


def _device_type(device) -> str:
    return str(getattr(device, "type", None) or device).split(":", 1)[0].strip().lower()


def resolve_device_type(device=None) -> str:
    """"cpu", "cuda" or "mps" for ``device`` (None/"auto": the best available), like
    ``entrep.encoders.base.resolve_device(device).type``; imports torch only when a GPU may exist
    or one is asked for."""
    kind = "auto" if device is None else _device_type(device)
    if kind == "cpu" or (kind == "auto" and not may_have_accelerator()):
        return "cpu"
    from entrep.encoders.base import resolve_device

    return resolve_device(device).type


def effective_precision(precision: str | None, device_type: str) -> str:
    """The precision an encoder runs at: "fp32" on cpu; on a GPU ``auto`` is bf16/fp16 (torch asked),
    like ``entrep.encoders.base.resolve_precision``."""
    p = (precision or "auto").lower()
    if p not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose auto, fp32, fp16 or bf16")
    if device_type == "cpu":
        return "fp32"
    import torch

    from entrep.encoders.base import resolve_precision

    return resolve_precision(p, torch.device(device_type))


def describe_precision(precision: str | None, device=None) -> str:
    """The effective precision of an encoder described for ``device`` (what its fingerprint records)."""
    return effective_precision(precision, resolve_device_type(device))
