"""Profiles: which encoders a model uses for prototypes/retrieval (clip) and for heads.

- ``offline`` (default): EfficientNet-Lite0 with ``grid2`` pooling for both the
  clip and head image roles, MiniLM-L6 text; ``joint=False`` (image and text
  live in different spaces, so classify learns an alignment).
- ``paper``: BiomedCLIP image + text (``joint=True``), DINOv2 ViT-B/14 for the
  heads with ``grid2`` pooling (the paper mean-pools patch tokens: set
  ``head_image_pooling: mean`` in a custom profile to reproduce that exactly).
- custom: a YAML/JSON file naming any registered encoders, weights and options::

      name: surgenet
      clip_image: biomedclip
      clip_text: biomedclip
      head_image: dinov2-vitb14
      head_image_pooling: grid2
      joint: true
      weights:
        clip_image: local-dir:/models/BiomedCLIP
        clip_text: local-dir:/models/BiomedCLIP
        head_image: /models/surgenet_vitb14.pth
      options:
        clip_image: {tokenizer_dir: /models/BiomedBERT}
        clip_text: {tokenizer_dir: /models/BiomedBERT}
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from entrep.errors import UserError

ROLES = ("clip_image", "clip_text", "head_image")


@dataclass(frozen=True)
class Profile:
    """Encoder choices for one model. Build the encoders with :meth:`build`."""

    name: str
    clip_image: str
    clip_text: str
    head_image: str
    joint: bool
    clip_image_pooling: str | None = None
    head_image_pooling: str | None = None
    weights: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from entrep.encoders.registry import IMAGE, TEXT

        for role, reg in (("clip_image", IMAGE), ("clip_text", TEXT), ("head_image", IMAGE)):
            try:
                reg.canonical(getattr(self, role))
            except UserError as e:
                raise UserError(f"profile {self.name!r}, {role}: {e}") from None
        bad = sorted(set(self.weights) - set(ROLES)) + sorted(set(self.options) - set(ROLES))
        if bad:
            raise UserError(f"profile {self.name!r}: unknown roles {bad}; roles are {', '.join(ROLES)}")

    def build(self, role: str, *, device=None):
        """Build the encoder for ``role`` (clip_image, clip_text or head_image)."""
        from entrep.encoders import build_image_encoder, build_text_encoder

        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        opts = dict(self.options.get(role, {}))
        weights = self.weights.get(role)
        if role == "clip_text":
            return build_text_encoder(self.clip_text, weights=weights, device=device, **opts)
        pooling = self.clip_image_pooling if role == "clip_image" else self.head_image_pooling
        return build_image_encoder(getattr(self, role), weights=weights, pooling=pooling, device=device, **opts)

    def describe(self, role: str, *, device=None, build=None):
        """:class:`~entrep.encoders.config.EncoderInfo` (name, dim, fingerprint) of ``role``'s encoder,
        computed from its config and weights digest without building it (nor importing its library).

        Equal to what the built encoder reports. An encoder whose registration has no describer is
        built (that role only: ``build()`` when given, e.g. the Extractor's own build, else :meth:`build`).
        """
        from entrep.encoders import describe_encoder

        if role not in ROLES:
            raise UserError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        opts = dict(self.options.get(role, {}))
        weights = self.weights.get(role)
        if role == "clip_text":
            info = describe_encoder("text", self.clip_text, weights=weights, device=device, **opts)
        else:
            pooling = self.clip_image_pooling if role == "clip_image" else self.head_image_pooling
            info = describe_encoder("image", getattr(self, role), weights=weights, pooling=pooling, device=device,
                                    **opts)
        if info is None:
            from entrep.encoders.config import EncoderInfo

            enc = build() if build is not None else self.build(role, device=device)
            info = EncoderInfo(name=enc.config.name, dim=int(enc.config.dim), fingerprint=enc.fingerprint)
        return info

    def fingerprint(self, role: str, *, device=None) -> str:
        """The fingerprint of ``role``'s encoder without building it (see :meth:`describe`)."""
        return self.describe(role, device=device).fingerprint

    def build_clip_image(self, *, device=None):
        return self.build("clip_image", device=device)

    def build_clip_text(self, *, device=None):
        return self.build("clip_text", device=device)

    def build_head_image(self, *, device=None):
        return self.build("head_image", device=device)

    # flat views of the per-role choices (what entrep.features.Extractor reads)
    @property
    def clip_weights(self) -> str | None:
        return self.weights.get("clip_image")

    @property
    def head_weights(self) -> str | None:
        return self.weights.get("head_image")

    @property
    def text_weights(self) -> str | None:
        return self.weights.get("clip_text")

    @property
    def clip_pooling(self) -> str | None:
        return self.clip_image_pooling

    @property
    def head_pooling(self) -> str | None:
        return self.head_image_pooling

    @property
    def head_shares_clip(self) -> bool:
        """True when the head image encoder is the clip image encoder (same vectors)."""
        return (self.head_image == self.clip_image and self.head_image_pooling == self.clip_image_pooling
                and self.weights.get("head_image") == self.weights.get("clip_image")
                and dict(self.options.get("head_image", {})) == dict(self.options.get("clip_image", {})))

    def to_dict(self) -> dict:
        return {
            "name": self.name, "clip_image": self.clip_image, "clip_text": self.clip_text,
            "head_image": self.head_image, "joint": self.joint, "clip_image_pooling": self.clip_image_pooling,
            "head_image_pooling": self.head_image_pooling, "weights": dict(self.weights),
            "options": {k: dict(v) for k, v in self.options.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping, *, source: str = "profile") -> "Profile":
        if not isinstance(d, Mapping):
            raise UserError(f"{source}: a profile must be a mapping")
        known = {"name", "clip_image", "clip_text", "head_image", "joint", "clip_image_pooling",
                 "head_image_pooling", "weights", "options", "base"}
        extra = sorted(set(d) - known)
        if extra:
            raise UserError(f"{source}: unknown profile keys {extra}; known: {', '.join(sorted(known))}")
        base = get_profile(str(d["base"])).to_dict() if d.get("base") else {}
        merged = {**base, **{k: v for k, v in d.items() if k != "base"}}
        missing = [k for k in ("clip_image", "clip_text", "head_image", "joint") if k not in merged]
        if missing:
            raise UserError(f"{source}: profile lacks {missing} (or give 'base: offline' / 'base: paper')")
        if not isinstance(merged["joint"], bool):
            raise UserError(f"{source}: 'joint' must be true or false")
        return cls(
            name=str(merged.get("name", Path(source).stem)),
            clip_image=str(merged["clip_image"]), clip_text=str(merged["clip_text"]),
            head_image=str(merged["head_image"]), joint=merged["joint"],
            clip_image_pooling=merged.get("clip_image_pooling"), head_image_pooling=merged.get("head_image_pooling"),
            weights={k: str(v) for k, v in (merged.get("weights") or {}).items()},
            options={k: dict(v) for k, v in (merged.get("options") or {}).items()},
        )


#: the built-in profiles: YAML files shipped in the package, read by the same loader as users' files
BUILTIN_DIR = Path(__file__).with_name("profiles")


@functools.lru_cache(maxsize=1)
def builtin_profiles() -> Mapping[str, Profile]:
    """Name -> Profile of every ``encoders/profiles/*.yaml`` (built-ins never use ``base``)."""
    import types

    import entrep.encoders  # noqa: F401  (registers the encoder names the profiles use)

    out = {}
    for f in sorted(BUILTIN_DIR.glob("*.yaml")):
        p = load_profile(f)
        out[p.name] = p
    return types.MappingProxyType(out)


def list_profiles() -> list[str]:
    return sorted(builtin_profiles())


def load_profile(path: str | Path) -> Profile:
    """Read a custom profile from YAML or JSON (see module docstring)."""
    from entrep.io import read_structured

    path = Path(path)
    data = read_structured(path, what="profile", error=UserError)
    return Profile.from_dict(data, source=str(path))


def profile_from_dict(d: Mapping) -> Profile:
    """A profile saved with ``dataclasses.asdict`` / :meth:`Profile.to_dict` (model bundles)."""
    return Profile.from_dict(d, source="saved profile")


def get_profile(name: str | Profile) -> Profile:
    """A built-in profile by name, or a custom one from a .yaml/.yml/.json path."""
    if isinstance(name, Profile):
        return name
    builtins = builtin_profiles()
    if name in builtins:
        return builtins[name]
    p = Path(str(name))
    if p.suffix.lower() in (".yaml", ".yml", ".json"):
        if not p.is_file():
            raise UserError(f"profile file {p} not found")
        return load_profile(p)
    raise UserError(f"unknown profile {name!r}; built-in profiles: {', '.join(sorted(builtins))}, "
                    f"or give a .yaml/.json profile file")
