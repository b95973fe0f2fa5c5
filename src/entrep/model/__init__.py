"""The fitted model and its stages: :mod:`.model` (the type and its state), :mod:`.train`
(stage functions), :mod:`.evaluate` (scores), :mod:`.bundle` (files), :mod:`.ensemble`
(K members on group-aware folds, averaged)."""

from __future__ import annotations

import json
from pathlib import Path

from entrep.model.bundle import FORMAT, VERSION, attach_report, save_model
from entrep.model.model import EntrepModel, ImageFeatures, ModelParts

__all__ = ["EnsembleModel", "EntrepModel", "FORMAT", "ImageFeatures", "ModelParts", "VERSION", "attach_report",
           "config_taxonomy", "fit_model", "load_model", "save_model"]


def fit_model(data, *, out=None, val=None, config=None, profile=None, cache=None, device=None, progress=False,
              stage=None, resume=False, ensemble=None):
    """``entrep.fit``: read DATA paths when given, train, and save to ``out`` when given.

    ``ensemble`` (or the config's ``ensemble`` key) K > 1 trains K members on K group-aware folds
    (:mod:`entrep.model.ensemble`) and returns an :class:`EnsembleModel`.
    """
    from entrep.config import FitConfig, load_config
    from entrep.data.readers import read_dataset

    if isinstance(config, (str, Path)):
        config = load_config(config)
    cfg = config or FitConfig()
    if ensemble is not None:
        cfg = cfg.replace(ensemble=ensemble)
    if isinstance(data, (str, Path)):
        data = read_dataset(data, config_taxonomy(cfg))
    if isinstance(val, (str, Path)):
        val = read_dataset(val, data.taxonomy)
    kwargs = {"stage": stage} if stage is not None else {}
    if out is not None:  # fine-tuning checkpoints live beside the model folder until it is saved
        kwargs["checkpoint_dir"] = Path(out).parent / f".{Path(out).name}.finetune"
    if cfg.ensemble > 1:
        from entrep.model.ensemble import fit_ensemble

        model = fit_ensemble(data, val=val, config=cfg, profile=profile, cache=cache, device=device,
                             progress=progress, resume=resume, **kwargs)
    else:
        from entrep.model.train import fit

        model = fit(data, val=val, config=cfg, profile=profile, cache=cache, device=device, progress=progress,
                    resume=resume, **kwargs)
    if out is not None:
        model.save(out)
    return model


def load_model(path, *, cache=None, device=None, runtime=None):
    """Read a model folder: a single model (:func:`entrep.model.bundle.load_model`) or an ensemble,
    told apart by the ``kind`` of its top-level model.json."""
    from entrep.io import recover_dir
    from entrep.model import bundle

    path = Path(path).expanduser()
    if path.parent.is_dir():
        recover_dir(path)  # an interrupted replacement is finished or undone first
    try:
        meta = json.loads((path / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        meta = None  # missing or corrupt: the single-model loader names the problem
    from entrep.model.ensemble import is_ensemble_meta

    if is_ensemble_meta(meta):
        from entrep.model.ensemble import load_ensemble

        return load_ensemble(path, meta, cache=cache, device=device, runtime=runtime)
    return bundle.load_model(path, cache=cache, device=device, runtime=runtime)


def config_taxonomy(cfg):
    """The config's ``taxonomy:`` key: ``ent`` (built in) or a file; None lets the reader infer it."""
    from entrep.taxonomy import load_taxonomy

    return None if cfg.taxonomy == "ent" else load_taxonomy(cfg.taxonomy)


def __getattr__(name: str):
    if name == "EnsembleModel":
        from entrep.model.ensemble import EnsembleModel

        return EnsembleModel
    raise AttributeError(f"module 'entrep.model' has no attribute {name!r}")
