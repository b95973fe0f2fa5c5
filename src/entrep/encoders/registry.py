"""Registry of named encoders: names map to builders, never if-chains over model names.

``@register_image_encoder("name", aliases=(...))`` registers a builder
``fn(name, *, weights, pooling, device, **options) -> ImageEncoder``; text
builders take no pooling. The built-in encoders are registered with
``IMAGE.add(name, "module:function", ...)``: the builder is a *lazy reference*,
imported on the first build, so listing, describing and fingerprinting never
import torch or the model libraries (the ``*_spec`` modules hold what those
need). A name ending in ``:`` registers a *family*: any
``family:ARG`` name goes to that builder (``openclip:ViT-L-14``). Unknown names
fail with the list of valid ones.

A builder may have a *describer* (``@IMAGE.describer("name")``): ``fn(name, *,
weights, pooling, device, **options) -> (config, weights_digest, precision, kind)``
computed from the config and the resolved weights files only, never building
the model; it returns None when this source or option needs the built model. :func:`entrep.encoders.describe_encoder` uses it for fingerprints;
an encoder without one is built to read its fingerprint.
"""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass
from typing import Callable

from entrep.errors import UserError


@dataclass(frozen=True)
class Entry:
    """One registered name: its builder (a callable, or a ``"module:function"`` reference imported on use)."""

    name: str
    kind: str  # "image" | "text"
    target: Callable | str
    summary: str = ""

    @property
    def builder(self) -> Callable:
        """The builder function (a lazy reference is imported now)."""
        if callable(self.target):
            return self.target
        module, _, attr = self.target.partition(":")
        return getattr(importlib.import_module(module), attr)


class Registry:
    """Name -> builder for one kind of encoder, with aliases and families."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._describers: dict[str, Callable] = {}

    def register(self, name: str, *, aliases: tuple[str, ...] = (), summary: str = "") -> Callable:
        """Decorator: register the builder function under ``name`` (and aliases)."""
        def deco(fn: Callable) -> Callable:
            self.add(name, fn, aliases=aliases, summary=summary or (fn.__doc__ or "").strip().split("\n")[0])
            return fn

        return deco

    def add(self, name: str, builder: Callable | str, *, aliases: tuple[str, ...] = (), summary: str = "") -> None:
        """Register ``builder`` (a callable, or ``"package.module:function"`` imported on the first build)."""
        if isinstance(builder, str) and (":" not in builder or not all(builder.partition(":")[::2])):
            raise ValueError(f"{self.kind} encoder {name!r}: lazy builder {builder!r} must be 'module:function'")
        for n in (name, *aliases):
            if n in self._entries or n in self._aliases:
                raise ValueError(f"{self.kind} encoder {n!r} registered twice")
        self._entries[name] = Entry(name, self.kind, builder, summary)
        for a in aliases:
            self._aliases[a] = name

    def describer(self, name: str) -> Callable:
        """Decorator: register the describer of the (already registered) builder ``name``."""
        def deco(fn: Callable) -> Callable:
            if name not in self._entries:
                raise ValueError(f"{self.kind} encoder {name!r}: register the builder before its describer")
            self._describers[name] = fn
            return fn

        return deco

    def describer_of(self, name: str) -> Callable | None:
        """The describer of ``name`` (alias or family member resolved), or None."""
        return self._describers.get(self.entry(name).name)

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` (alias resolved); UserError listing valid names."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        family, sep, arg = name.partition(":")
        if sep and arg and f"{family}:" in self._entries:
            return name
        valid = ", ".join(self.names(aliases=True))
        raise UserError(f"unknown {self.kind} encoder {name!r}; valid names: {valid}")

    def entry(self, name: str) -> Entry:
        name = self.canonical(name)
        if name in self._entries:
            return self._entries[name]
        return self._entries[name.partition(":")[0] + ":"]

    def names(self, pattern: str = "*", *, aliases: bool = False) -> list[str]:
        out = list(self._entries)
        if aliases:
            out += list(self._aliases)
        return sorted(n for n in out if fnmatch.fnmatchcase(n, pattern))


IMAGE = Registry("image")
TEXT = Registry("text")


def register_image_encoder(name: str, *, aliases: tuple[str, ...] = (), summary: str = "") -> Callable:
    """Decorator: register an image-encoder builder under ``name`` (and aliases)."""
    return IMAGE.register(name, aliases=aliases, summary=summary)


def register_text_encoder(name: str, *, aliases: tuple[str, ...] = (), summary: str = "") -> Callable:
    """Decorator: register a text-encoder builder under ``name`` (and aliases)."""
    return TEXT.register(name, aliases=aliases, summary=summary)
