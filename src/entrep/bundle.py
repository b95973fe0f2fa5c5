"""Save and load a fitted model as one folder, atomically; loading mirrors saving.

Layout::

    MODEL/
      model.json     format version, taxonomy, config, profile, encoder fingerprints,
                     thresholds, flip-TTA choice, training summary, component params
      arrays.npz     every learned array (prototypes, alignment, head weights)
      gallery/       the search index (FAISS + row-aligned metadata)
      report/        optional evaluation report written by `entrep demo`/`evaluate --report`

A crash while saving leaves any previous model untouched (the folder is built
beside it and renamed into place).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from entrep.config import FitConfig
from entrep.errors import ModelError
from entrep.io import atomic_path
from entrep.model import EntrepModel
from entrep.taxonomy import Taxonomy

log = logging.getLogger(__name__)

FORMAT = "entrep-model"
VERSION = 1


def _flatten(state: Any, prefix: str, arrays: dict[str, np.ndarray]) -> Any:
    """Move numpy arrays into ``arrays`` (keyed by path); return the JSON-able rest."""
    if isinstance(state, np.ndarray):
        arrays[prefix] = state
        return {"__array__": prefix}
    if isinstance(state, dict):
        return {str(k): _flatten(v, f"{prefix}/{k}", arrays) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [_flatten(v, f"{prefix}/{i}", arrays) for i, v in enumerate(state)]
    if isinstance(state, (np.integer,)):
        return int(state)
    if isinstance(state, (np.floating,)):
        return float(state)
    return state


def _unflatten(obj: Any, arrays) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            key = obj["__array__"]
            if key not in arrays:
                raise ModelError(f"arrays.npz lacks {key!r}: the model folder is incomplete")
            return np.array(arrays[key])
        return {k: _unflatten(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, arrays) for v in obj]
    return obj


def _profile_dict(profile) -> dict:
    if dataclasses.is_dataclass(profile):
        return dataclasses.asdict(profile)
    return dict(profile)


def save_model(model: EntrepModel, path: str | Path) -> Path:
    """Write ``model`` to the folder ``path`` atomically (replacing an older model there)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ModelError(f"{path}: exists and is not a folder; choose another --out")
    if path.is_dir() and any(path.iterdir()) and not (path / "model.json").is_file():
        raise ModelError(f"{path}: folder exists and is not an entrep model; refusing to replace it")
    arrays: dict[str, np.ndarray] = {}
    comps = {
        "align": model.align.get_state() if model.align is not None else None,
        "proto_fine": model.proto_fine.get_state(),
        "proto_group": model.proto_group.get_state() if model.proto_group is not None else None,
        "group_head": model.group_head.get_state() if model.group_head is not None else None,
        "within_heads": {str(g): h.get_state() for g, h in model.within_heads.items()},
        "baseline": model.baseline.get_state(),
    }
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "taxonomy": model.taxonomy.to_dict(),
        "config": model.config.to_dict(),
        "profile": _profile_dict(model.profile),
        "encoders": model.encoders,
        "threshold": model.threshold,
        "tuned_threshold": model.tuned_threshold,
        "use_tuned": model.use_tuned,
        "flip_tta": model.flip_tta,
        "within_blend": model.within_blend,
        "training": model.training,
        "components": _flatten(comps, "c", arrays),
    }
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        (tmp / "model.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        np.savez(tmp / "arrays.npz", **arrays)
        if model.gallery is not None:
            model.gallery.save(tmp / "gallery")
        src_report = (model.path / "report") if model.path else None  # a re-saved model keeps its report
        if src_report is not None and src_report.is_dir():
            import shutil

            shutil.copytree(src_report, tmp / "report")
    model.path = path
    return path


def load_model(path: str | Path, *, device: str | None = None) -> EntrepModel:
    """Read a model folder written by :func:`save_model`; clear errors when it is not one."""
    from entrep.classify.align import JointAlignment
    from entrep.classify.heads import HeadClassifier
    from entrep.classify.prototypes import PrototypeClassifier
    from entrep.encoders.profiles import profile_from_dict
    from entrep.retrieval.index import GalleryIndex

    path = Path(path)
    mj = path / "model.json"
    if not path.is_dir():
        raise ModelError(f"{path}: no such model folder; train one with `entrep fit --data DATA --out {path}`")
    if not mj.is_file():
        raise ModelError(f"{path}: not an entrep model (model.json missing)")
    try:
        meta = json.loads(mj.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{mj}: corrupt model.json ({e})") from None
    if meta.get("format") != FORMAT:
        raise ModelError(f"{mj}: not an entrep model file (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise ModelError(f"{mj}: model format version {meta.get('version')} is not supported by this entrep "
                         f"(expects {VERSION}); refit the model with this version")
    try:
        with np.load(path / "arrays.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise ModelError(f"{path / 'arrays.npz'}: missing or corrupt ({e})") from None
    comps = _unflatten(meta["components"], arrays)
    tax = Taxonomy.from_dict(meta["taxonomy"], source=str(mj))
    model = EntrepModel(
        taxonomy=tax,
        config=FitConfig.from_dict(meta["config"], source=str(mj)),
        profile=profile_from_dict(meta["profile"]),
        align=JointAlignment.from_state(comps["align"]) if comps["align"] is not None else None,
        proto_fine=PrototypeClassifier.from_state(comps["proto_fine"]),
        proto_group=PrototypeClassifier.from_state(comps["proto_group"]) if comps["proto_group"] else None,
        group_head=HeadClassifier.from_state(comps["group_head"]) if comps["group_head"] else None,
        within_heads={int(g): HeadClassifier.from_state(s) for g, s in comps["within_heads"].items()},
        baseline=HeadClassifier.from_state(comps["baseline"]),
        threshold=float(meta["threshold"]),
        tuned_threshold=meta.get("tuned_threshold"),
        use_tuned=bool(meta.get("use_tuned", False)),
        flip_tta=dict(meta.get("flip_tta") or {}),
        within_blend=bool(meta.get("within_blend", False)),
        encoders=meta.get("encoders") or {},
        training=meta.get("training") or {},
        path=path,
    )
    if (path / "gallery").is_dir():
        model.gallery = GalleryIndex.load(path / "gallery")
    model.featurizer(device=device)
    _check_encoders(model)
    return model


def _check_encoders(model: EntrepModel) -> None:
    """Refuse to run a model whose encoders' weights differ from those it was trained with."""
    saved = model.encoders or {}
    if not saved:
        return
    current = model.featurizer().describe()
    for key, info in saved.items():
        cur = current.get(key)
        if isinstance(info, dict) and cur and info.get("fingerprint") != cur.get("fingerprint"):
            raise ModelError(
                f"{model.path}: encoder {key} ({info.get('name')}) now has different weights or preprocessing "
                f"than at training time (fingerprint {cur.get('fingerprint', '')[:12]} != "
                f"{info.get('fingerprint', '')[:12]}); point it at the original weights or refit"
            )


def attach_report(model_dir: str | Path, report_dir: str | Path) -> Path:
    """Copy an evaluation report into ``model_dir/report`` (atomically), for `serve` to link."""
    import shutil

    model_dir, report_dir = Path(model_dir), Path(report_dir)
    if not (model_dir / "model.json").is_file():
        raise ModelError(f"{model_dir}: not an entrep model (model.json missing)")
    if not (report_dir / "report.html").is_file():
        raise ModelError(f"{report_dir}: no report.html to attach")
    with atomic_path(model_dir / "report") as tmp:
        shutil.copytree(report_dir, tmp)
    return model_dir / "report"
