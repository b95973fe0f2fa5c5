"""Encoders: a registry of named image and text encoders with one weights resolver.

>>> enc = build_image_encoder("effnet-lite0")          # offline default, no download
>>> vecs = enc.encode(["a.png", "b.png"])               # (2, 6400) float32, L2-normalised
>>> txt = build_text_encoder("minilm-l6").encode(["a spur on the septum"])

Registered names: :func:`list_encoders`. Weights sources: see
:mod:`entrep.encoders.resolver`. Pooling: :mod:`entrep.encoders.pooling`.

Importing this package does not import torch or any model library: the
registrations, configs and describers live in the torch-free ``*_spec``
modules, and each builder module (``effnet``, ``minilm``, ``openclip``,
``dinov2``, ``gastronet``, ``endovit``; torch at module level) is imported by
the first :func:`build_image_encoder` / :func:`build_text_encoder` that needs
it. ``ImageEncoder`` and ``TextEncoder`` are imported from
:mod:`entrep.encoders.base` when first used.
"""

from __future__ import annotations

from entrep.encoders import effnet_spec, minilm_spec, openclip_spec, vit_spec  # noqa: F401  (register encoders)
from entrep.encoders.config import EncoderInfo, ImageEncoderConfig, TextEncoderConfig, encoder_fingerprint
from entrep.encoders.pooling import flip_pooled, pooled_dim
from entrep.encoders.registry import IMAGE, TEXT, register_image_encoder, register_text_encoder

_FROM_BASE = ("ImageEncoder", "TextEncoder")


def __getattr__(name: str):
    """``ImageEncoder`` / ``TextEncoder`` (torch) on first use, so that importing the package stays torch-free."""
    if name in _FROM_BASE:
        from entrep.encoders import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def list_encoders(pattern: str = "*", *, kind: str | None = None, aliases: bool = False) -> list[str]:
    """Registered encoder names matching a glob ``pattern``; ``kind`` "image"/"text" filters.

    Families such as ``openclip:`` accept any ``openclip:ARCH`` name.
    """
    regs = {"image": (IMAGE,), "text": (TEXT,), None: (IMAGE, TEXT)}.get(kind)
    if regs is None:
        from entrep.errors import UserError

        raise UserError(f"unknown encoder kind {kind!r}; use 'image' or 'text'")
    return sorted({n for r in regs for n in r.names(pattern, aliases=aliases)})


def build_image_encoder(name: str, *, weights=None, pooling: str | None = None, device=None,
                        **options) -> "ImageEncoder":
    """Build a registered image encoder. ``weights``: a source string (default: the encoder's own,
    or ``$ENTREP_WEIGHTS_<NAME>``); ``pooling``: see :mod:`entrep.encoders.pooling`;
    ``device``: cuda/mps/cpu/auto; other options go to the builder (e.g. ``precision``,
    ``tokenizer_dir``, ``return_layers``)."""
    canonical = IMAGE.canonical(name)
    return IMAGE.entry(canonical).builder(canonical, weights=weights, pooling=pooling, device=device, **options)


def build_text_encoder(name: str, *, weights=None, device=None, **options) -> "TextEncoder":
    """Build a registered text encoder (see :func:`build_image_encoder`)."""
    canonical = TEXT.canonical(name)
    return TEXT.entry(canonical).builder(canonical, weights=weights, device=device, **options)


def describe_encoder(kind: str, name: str, *, weights=None, pooling: str | None = None, device=None,
                     **options) -> EncoderInfo | None:
    """Name, dim and fingerprint of a registered encoder, computed from its config and the resolved weights
    files (digests through the content-hash memo) without building the model or importing its library.

    Takes the arguments of :func:`build_image_encoder` / :func:`build_text_encoder` (``kind`` "image" or
    "text"; text encoders take no pooling). The fingerprint equals the built encoder's ``fingerprint``.
    None when the encoder has no describer (then only building it tells its fingerprint).
    """
    reg = {"image": IMAGE, "text": TEXT}.get(kind)
    if reg is None:
        from entrep.errors import UserError

        raise UserError(f"unknown encoder kind {kind!r}; use 'image' or 'text'")
    canonical = reg.canonical(name)
    fn = reg.describer_of(canonical)
    if fn is None:
        return None
    kw = dict(options, weights=weights, device=device)
    if kind == "image":
        kw["pooling"] = pooling
    described = fn(canonical, **kw)
    if described is None:  # this source or option needs the built model (e.g. a pretrained tag)
        return None
    config, digest, precision, cls_name = described
    return EncoderInfo(name=config.name, dim=int(config.dim),
                       fingerprint=encoder_fingerprint(config, digest, precision, cls_name), config=config)


__all__ = [
    "ImageEncoder", "ImageEncoderConfig", "TextEncoder", "TextEncoderConfig", "build_image_encoder",
    "EncoderInfo", "build_text_encoder", "describe_encoder", "flip_pooled", "list_encoders", "pooled_dim", "register_image_encoder",
    "register_text_encoder",
]
