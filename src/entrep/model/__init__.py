"""The fitted model and its stages: :mod:`.model` (the type and its state), :mod:`.train`
(stage functions), :mod:`.evaluate` (scores), :mod:`.bundle` (files)."""

from __future__ import annotations

from pathlib import Path

from entrep.model.bundle import FORMAT, VERSION, attach_report, load_model, save_model
from entrep.model.model import EntrepModel, ImageFeatures, ModelParts

__all__ = ["EntrepModel", "FORMAT", "ImageFeatures", "ModelParts", "VERSION", "attach_report", "config_taxonomy",
           "fit_model",
           "load_model", "save_model"]


def fit_model(data, *, out=None, val=None, config=None, profile=None, cache=None, device=None, progress=False,
              stage=None, resume=False) -> EntrepModel:
    """``entrep.fit``: read DATA paths when given, train, and save to ``out`` when given."""
    from entrep.config import FitConfig, load_config
    from entrep.data.readers import read_dataset
    from entrep.model.train import fit

    if isinstance(config, (str, Path)):
        config = load_config(config)
    cfg = config or FitConfig()
    if isinstance(data, (str, Path)):
        data = read_dataset(data, config_taxonomy(cfg))
    if isinstance(val, (str, Path)):
        val = read_dataset(val, data.taxonomy)
    kwargs = {"stage": stage} if stage is not None else {}
    if out is not None:  # fine-tuning checkpoints live beside the model folder until it is saved
        kwargs["checkpoint_dir"] = Path(out).parent / f".{Path(out).name}.finetune"
    model = fit(data, val=val, config=cfg, profile=profile, cache=cache, device=device, progress=progress,
                resume=resume, **kwargs)
    if out is not None:
        model.save(out)
    return model


def config_taxonomy(cfg):
    """The config's ``taxonomy:`` key: ``ent`` (built in) or a file; None lets the reader infer it."""
    from entrep.taxonomy import load_taxonomy

    return None if cfg.taxonomy == "ent" else load_taxonomy(cfg.taxonomy)
