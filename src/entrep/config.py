"""Training configuration: one frozen dataclass, read from YAML/JSON (``fit --config``).

Example::

    profile: offline          # or paper, or a profile file (see docs/encoders.md)
    taxonomy: ent             # or a taxonomy YAML/JSON file
    seed: 0
    n_aug: 2                  # augmented views per training image (plus their flips)
    threshold: 0.99           # prototype confidence threshold of the hybrid (the paper's)
    fusion: linear            # prototypes over z = s*v + (1-s)*u (the paper's eq. 2), or slerp(v, u, 0.5)
    head: {lr: 0.001, max_epochs: 100, patience: 10, batch_size: 64}
    align: {dim: 256}
    retrieval: {space: concat, filter: fine, ranking: soft}
    finetune: {method: none}  # or lora / partial (see docs/finetune.md)
    runtime: auto             # image encoders: auto (ONNX Runtime on CPU where it exports), torch, onnx
    ensemble: 1               # K > 1 trains K models on K group-aware folds

Every value is checked for type and range when the file is read, so a bad value
fails before any image is touched (``batch_size: 0``, ``lr: -1``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from entrep.errors import UserError

I2I_SPACES = ("joint", "head", "concat", "metric")
from entrep.retrieval.filters import FILTERS as I2I_FILTERS  # noqa: E402 - the one tuple of filter names
from entrep.classify.fusion import FUSIONS  # noqa: E402 - the one tuple of image-text fusion names
FINETUNE_METHODS = ("none", "lora", "partial")
RUNTIMES = ("auto", "torch", "onnx")  # image-encoder runtime: auto = ONNX Runtime on CPU when it exports, else torch
RANKINGS = ("soft", "hard")  # class-aware image search: soft = similarity + class probability, hard = filter


def _check(cls_name: str, checks: dict[str, tuple[Any, str]]) -> None:
    """Raise one UserError naming every value outside its range."""
    bad = [f"{cls_name}.{k} = {v!r} ({why})" for k, (v, why) in checks.items() if why]
    if bad:
        raise UserError("invalid config: " + "; ".join(bad))


def _pos(v: Any, *, integer: bool = False, zero: bool = False) -> str:
    kind = int if integer else (int, float)
    if isinstance(v, bool) or not isinstance(v, kind):
        return "must be an integer" if integer else "must be a number"
    if v < 0 or (v == 0 and not zero):
        return "must be >= 0" if zero else "must be > 0"
    return ""


@dataclass(frozen=True)
class HeadConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    max_epochs: int = 100
    patience: int = 10
    batch_size: int = 64
    dropout: float = 0.3

    def __post_init__(self) -> None:
        _check("head", {"lr": (self.lr, _pos(self.lr)), "weight_decay": (self.weight_decay, _pos(self.weight_decay, zero=True)),
                        "max_epochs": (self.max_epochs, _pos(self.max_epochs, integer=True)),
                        "patience": (self.patience, _pos(self.patience, integer=True)),
                        "batch_size": (self.batch_size, _pos(self.batch_size, integer=True)),
                        "dropout": (self.dropout, _unit(self.dropout))})


def _unit(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "must be a number"
    return "" if 0.0 <= v < 1.0 else "must be in [0, 1)"


@dataclass(frozen=True)
class AlignConfig:
    dim: int = 256
    epochs: int = 150
    lr: float = 1e-3
    temperature: float = 0.07

    def __post_init__(self) -> None:
        _check("align", {"dim": (self.dim, _pos(self.dim, integer=True)), "epochs": (self.epochs, _pos(self.epochs, integer=True)),
                         "lr": (self.lr, _pos(self.lr)), "temperature": (self.temperature, _pos(self.temperature))})


@dataclass(frozen=True)
class RetrievalConfig:
    space: str = "concat"  # joint | head | concat | metric (needs the metric head: fine-tuning on)
    filter: str = "fine"  # fine | coarse | none
    ranking: str = "soft"  # soft | hard (docs/retrieval.md: how the query's class probabilities weigh in)

    def __post_init__(self) -> None:
        _check("retrieval", {"ranking": (self.ranking, "" if self.ranking in RANKINGS else f"must be one of {RANKINGS}")})


@dataclass(frozen=True)
class FinetuneConfig:
    """Backbone adaptation (docs/finetune.md). ``method: none`` keeps the encoders frozen (the CPU default)."""

    method: str = "none"  # none | lora | partial
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")
    layers: int = 2  # partial: the last N blocks are trained
    epochs: int = 5
    lr: float = 1e-4
    batch_size: int = 32
    input_size: int = 224
    mixup: float = 0.2
    seed: int = 0
    patience: int = 2
    cls_layers: int = 4  # ViTs: class tokens of the last L blocks fused (0: keep the encoder's pooling)
    contrastive_weight: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))
        _check("finetune", {
            "method": (self.method, "" if self.method in FINETUNE_METHODS else f"must be one of {FINETUNE_METHODS}"),
            "rank": (self.rank, _pos(self.rank, integer=True)), "alpha": (self.alpha, _pos(self.alpha)),
            "dropout": (self.dropout, _unit(self.dropout)),
            "targets": (self.targets, "" if self.targets and all(isinstance(t, str) for t in self.targets)
                        else "must be a non-empty list of module names"),
            "layers": (self.layers, _pos(self.layers, integer=True)), "epochs": (self.epochs, _pos(self.epochs, integer=True)),
            "lr": (self.lr, _pos(self.lr)), "batch_size": (self.batch_size, _pos(self.batch_size, integer=True)),
            "input_size": (self.input_size, _pos(self.input_size, integer=True) or ("" if self.input_size >= 32 else "must be >= 32")),
            "mixup": (self.mixup, _unit(self.mixup)), "seed": (self.seed, _pos(self.seed, integer=True, zero=True)),
            "patience": (self.patience, _pos(self.patience, integer=True)),
            "cls_layers": (self.cls_layers, _pos(self.cls_layers, integer=True, zero=True)),
            "contrastive_weight": (self.contrastive_weight, _pos(self.contrastive_weight, zero=True)),
        })

    @property
    def enabled(self) -> bool:
        return self.method != "none"


@dataclass(frozen=True)
class FitConfig:
    profile: str = "offline"
    taxonomy: str = "ent"
    seed: int = 0
    n_aug: int = 2
    flip_views: bool = True
    threshold: float = 0.99
    fusion: str = "linear"  # linear | slerp: how image and text rows are fused before the prototypes
    val_fraction: float = 0.1
    batch_size: int = 32
    head: HeadConfig = field(default_factory=HeadConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    runtime: str = "auto"  # auto | torch | onnx (image encoders at inference; docs/encoders.md)
    ensemble: int = 1  # K > 1: K models on K group-aware folds, averaged at inference

    def __post_init__(self) -> None:
        num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
        _check("config", {
            "profile": (self.profile, "" if isinstance(self.profile, str) and self.profile else "must be a name or a file"),
            "taxonomy": (self.taxonomy, "" if isinstance(self.taxonomy, str) and self.taxonomy else "must be a name or a file"),
            "seed": (self.seed, _pos(self.seed, integer=True, zero=True)),
            "n_aug": (self.n_aug, _pos(self.n_aug, integer=True, zero=True)),
            "flip_views": (self.flip_views, "" if isinstance(self.flip_views, bool) else "must be true or false"),
            "threshold": (self.threshold, "" if num(self.threshold) and 0.0 <= self.threshold <= 1.0 else "must be in [0, 1]"),
            "fusion": (self.fusion, "" if self.fusion in FUSIONS else f"must be one of {FUSIONS}"),
            "val_fraction": (self.val_fraction,
                             "" if num(self.val_fraction) and 0.0 < self.val_fraction < 0.5 else "must be in (0, 0.5)"),
            "batch_size": (self.batch_size, _pos(self.batch_size, integer=True)),
            "runtime": (self.runtime, "" if self.runtime in RUNTIMES else f"must be one of {RUNTIMES}"),
            "ensemble": (self.ensemble, _pos(self.ensemble, integer=True)),
        })
        if self.retrieval.space not in I2I_SPACES:
            raise UserError(f"retrieval.space must be one of {I2I_SPACES}, got {self.retrieval.space!r}")
        if self.retrieval.filter not in I2I_FILTERS:
            raise UserError(f"retrieval.filter must be one of {I2I_FILTERS}, got {self.retrieval.filter!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "config") -> "FitConfig":
        nested = {"head": HeadConfig, "align": AlignConfig, "retrieval": RetrievalConfig, "finetune": FinetuneConfig}
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
                kwargs[k] = _build(nested[k], v, source)
            else:
                kwargs[k] = v
        return _build(cls, kwargs, source)

    def replace(self, **changes: Any) -> "FitConfig":
        return dataclasses.replace(self, **changes)


def _coerce(cls, values: Mapping[str, Any]) -> dict[str, Any]:
    """YAML 1.1 reads ``1e-3`` as a string: turn numeric strings of float fields into floats."""
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    out = dict(values)
    for k, v in values.items():
        if types.get(k) == "float" and isinstance(v, str):
            try:
                out[k] = float(v)
            except ValueError:
                pass  # left as is: the range check names it
    return out


def _build(cls, values: Mapping[str, Any], source: str):
    try:
        return cls(**_coerce(cls, values))
    except UserError as e:
        raise UserError(f"{source}: {e}") from None
    except TypeError as e:
        raise UserError(f"{source}: {e}") from None


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
