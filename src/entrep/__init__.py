"""entrep: classify and search ENT endoscopy images.

The public Python API (see docs/api.md)::

    import entrep
    model = entrep.fit("train/", out="model/")      # or entrep.load("model/")
    model.predict(["a.png"])
    model.search_text("nose-left polyp", k=5)

Heavy modules (torch, faiss, transformers) are imported only when a function needs them.
"""

from __future__ import annotations

__version__ = "0.3.0"

__all__ = ["EntrepModel", "fit", "load", "review_exam", "__version__"]


def load(path, *, cache=None, device=None, runtime=None):
    """Read a fitted model folder (written by :func:`fit` or `entrep fit`).

    ``runtime`` (auto, torch, onnx) overrides the image-encoder runtime of the model's config.
    """
    from entrep.model import load_model

    return load_model(path, cache=cache, device=device, runtime=runtime)


def fit(data, *, out=None, val=None, config=None, profile=None, cache=None, device=None, progress=False,
        resume=False, stage=None, ensemble=None):
    """Train a model on ``data`` (a DATA path or a Dataset); saves it to ``out`` when given.

    ``config`` is a :class:`entrep.config.FitConfig` or a YAML/JSON file; ``stage`` an optional
    callable receiving one line per training stage (progress reporting). ``ensemble`` K > 1
    (default: the config's ``ensemble`` key) trains K models on K group-aware folds and returns
    an :class:`entrep.model.EnsembleModel` that averages them (docs/classification.md, *Ensembles*).
    """
    from entrep.model import fit_model

    return fit_model(data, out=out, val=val, config=config, profile=profile, cache=cache, device=device,
                     progress=progress, resume=resume, stage=stage, ensemble=ensemble)


def review_exam(model, exam, *, fps=2.0, require=None, out=None, progress=False, config=None) -> dict:
    """Review an exam (a video or a folder of frames) with a fitted model: sites, best frames, what is missing."""
    from entrep.review import review_exam as run_review

    return run_review(model, exam, fps=fps, require=require, out=out, progress=progress, config=config)


def __getattr__(name: str):
    if name == "EntrepModel":
        from entrep.model import EntrepModel

        return EntrepModel
    raise AttributeError(f"module 'entrep' has no attribute {name!r}")
