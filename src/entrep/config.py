"""Training configuration: one frozen dataclass, read from YAML/JSON (``fit --config``).

Example::

    profile: offline          # or paper, or a profile file (see docs/encoders.md)
    taxonomy: ent             # or a taxonomy YAML/JSON file
    seed: 0
    n_aug: 2                  # augmented views per training image (plus their flips)
    threshold: 0.99           # prototype confidence threshold of the hybrid (the paper's)
    head: {lr: 0.001, max_epochs: 100, patience: 10, batch_size: 64}
    align: {dim: 256}
    retrieval: {space: concat, filter: fine}
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from entrep.errors import UserError

I2I_SPACES = ("joint", "head", "concat")
I2I_FILTERS = ("fine", "coarse", "none")


@dataclass(frozen=True)
class HeadConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_epochs: int = 100
    patience: int = 10
    batch_size: int = 64
    dropout: float = 0.3


@dataclass(frozen=True)
class AlignConfig:
    dim: int = 256
    epochs: int = 150
    lr: float = 1e-3
    temperature: float = 0.07


@dataclass(frozen=True)
class RetrievalConfig:
    space: str = "concat"  # joint | head | concat
    filter: str = "fine"  # fine | coarse | none


@dataclass(frozen=True)
class FitConfig:
    profile: str = "offline"
    taxonomy: str = "ent"
    seed: int = 0
    n_aug: int = 2
    flip_views: bool = True
    threshold: float = 0.99
    val_fraction: float = 0.1
    batch_size: int = 32
    head: HeadConfig = field(default_factory=HeadConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise UserError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.n_aug < 0:
            raise UserError(f"n_aug must be >= 0, got {self.n_aug}")
        if not 0.0 < self.val_fraction < 0.5:
            raise UserError(f"val_fraction must be in (0, 0.5), got {self.val_fraction}")
        if self.retrieval.space not in I2I_SPACES:
            raise UserError(f"retrieval.space must be one of {I2I_SPACES}, got {self.retrieval.space!r}")
        if self.retrieval.filter not in I2I_FILTERS:
            raise UserError(f"retrieval.filter must be one of {I2I_FILTERS}, got {self.retrieval.filter!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "config") -> "FitConfig":
        nested = {"head": HeadConfig, "align": AlignConfig, "retrieval": RetrievalConfig}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"{source}: unknown keys {sorted(unknown)}; known keys: {sorted(known)}")
        kwargs: dict[str, Any] = {}
        for k, v in d.items():
            if k in nested:
                if not isinstance(v, Mapping):
                    raise UserError(f"{source}: '{k}' must be a mapping")
                sub_known = {f.name for f in dataclasses.fields(nested[k])}
                bad = set(v) - sub_known
                if bad:
                    raise UserError(f"{source}: unknown keys {sorted(bad)} in '{k}'; known: {sorted(sub_known)}")
                kwargs[k] = nested[k](**v)
            else:
                kwargs[k] = v
        try:
            return cls(**kwargs)
        except TypeError as e:
            raise UserError(f"{source}: {e}") from None

    def replace(self, **changes: Any) -> "FitConfig":
        return dataclasses.replace(self, **changes)


def load_config(path: str | Path | None) -> FitConfig:
    if path is None:
        return FitConfig()
    from entrep.io import read_structured

    p = Path(path)
    data = read_structured(p, what="config", error=UserError)
    if data is None:
        return FitConfig()
    if not isinstance(data, Mapping):
        raise UserError(f"{p}: config must be a mapping of keys to values")
    return FitConfig.from_dict(data, source=str(p))
