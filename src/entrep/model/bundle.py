"""Save and load a fitted model as one folder, atomically; loading mirrors saving. Files only.

Layout::

    MODEL/
      model.json     format, version, and the model's state (taxonomy, config, profile, encoder
                     fingerprints, inference policy, training summary, every part's parameters)
      arrays.npz     every learned array of that state, keyed by its path in the state
      adapters/ROLE/ adapted (fine-tuned) encoder weights (safetensors + config), when fine-tuned
      gallery/       the search index
      report/        optional evaluation report (`entrep demo`, `evaluate --report`)

Format version 2 (entrep 0.2) stores one state tree produced by
``EntrepModel.get_state()``; version 1 folders (entrep 0.1) are refused with one
line saying to refit.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from entrep.errors import ModelError
from entrep.io import atomic_dir, atomic_path, recover_dir
from entrep.model.model import EntrepModel

log = logging.getLogger(__name__)

FORMAT = "entrep-model"
VERSION = 2
#: what entrep writes in a model folder; anything else there is the user's and is kept on re-save
OWN_ENTRIES = frozenset({"model.json", "arrays.npz", "adapters", "gallery", "report", "members"})


def flatten_state(state: Any, prefix: str, arrays: dict[str, np.ndarray]) -> Any:
    """Move numpy arrays into ``arrays`` (keyed by path); return the JSON-able rest."""
    if isinstance(state, np.ndarray):
        arrays[prefix] = state
        return {"__array__": prefix}
    if isinstance(state, dict):
        return {str(k): flatten_state(v, f"{prefix}/{k}", arrays) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return [flatten_state(v, f"{prefix}/{i}", arrays) for i, v in enumerate(state)]
    if isinstance(state, np.integer):
        return int(state)
    if isinstance(state, np.floating):
        return float(state)
    if isinstance(state, np.bool_):
        return bool(state)
    return state


def unflatten_state(obj: Any, arrays) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            key = obj["__array__"]
            if key not in arrays:
                raise ModelError(f"arrays.npz lacks {key!r}: the model folder is incomplete")
            return np.array(arrays[key])
        return {k: unflatten_state(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unflatten_state(v, arrays) for v in obj]
    return obj


def save_model(model: EntrepModel, path: str | Path) -> Path:
    """Write ``model`` to the folder ``path`` atomically (replacing an older model there)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ModelError(f"{path}: exists and is not a folder; choose another --out")
    if path.is_dir() and any(path.iterdir()) and not (path / "model.json").is_file():
        raise ModelError(f"{path}: folder exists and is not an entrep model; refusing to replace it")
    arrays: dict[str, np.ndarray] = {}
    meta = {"format": FORMAT, "version": VERSION, "state": flatten_state(model.get_state(), "s", arrays)}
    src_report = (model.path / "report") if model.path else None
    # crash-safe swap of the whole folder; files a user put in it are carried over (entrep.io.atomic_dir)
    with atomic_dir(path, own=OWN_ENTRIES, foreign="keep") as tmp:
        (tmp / "model.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        with open(tmp / "arrays.npz", "wb") as f:
            np.savez(f, **arrays)
        for role, adapted in model.adapters.items():
            _save_adapter(adapted, tmp / "adapters" / role)
        if model.gallery is not None:
            model.gallery.save(tmp / "gallery")
        if src_report is not None and src_report.is_dir():  # a re-saved model keeps its report
            shutil.copytree(src_report, tmp / "report")
    model.path = path
    return path


def _read_meta(path: Path) -> dict:
    mj = path / "model.json"
    if not path.is_dir():
        raise ModelError(f"{path}: no such model folder; train one with `entrep fit --data DATA --out {path}`")
    if not mj.is_file():
        raise ModelError(f"{path}: not an entrep model (model.json missing)")
    try:
        meta = json.loads(mj.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelError(f"{mj}: corrupt model.json ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{mj}: not an entrep model file")
    if meta.get("version") != VERSION:
        raise ModelError(f"{mj}: model format version {meta.get('version')!r} is not supported by this entrep "
                         f"(expects {VERSION}); refit the model: entrep fit --data DATA --out {path}")
    if not isinstance(meta.get("state"), dict):
        raise ModelError(f"{mj}: model.json lacks its state; refit the model")
    return meta


def load_model(path: str | Path, *, cache: str | Path | None = None, device: str | None = None,
               runtime: str | None = None) -> EntrepModel:
    """Read a model folder written by :func:`save_model`; one clear line when it is not one."""
    path = Path(path).expanduser()
    if path.parent.is_dir():
        recover_dir(path)  # an interrupted replacement (rare fallback mode) is finished or undone first
    meta = _read_meta(path)
    try:
        with np.load(path / "arrays.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as e:
        raise ModelError(f"{path / 'arrays.npz'}: missing or corrupt ({e}); refit or restore the model") from None
    try:
        state = unflatten_state(meta["state"], arrays)
        model = EntrepModel.from_state(state, source=str(path / "model.json"), path=path, cache=cache, device=device,
                                     runtime=runtime)
    except ModelError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ModelError(f"{path / 'model.json'}: malformed model state ({type(e).__name__}: {e}); refit the model") from None
    model.adapters = _load_adapters(path, model)
    if (path / "gallery").is_dir():
        from entrep.retrieval.index import GalleryIndex

        model.gallery = GalleryIndex.load(path / "gallery")
    _check_encoders(model)
    return model


def _save_adapter(adapted, folder: Path) -> None:
    """An adapted encoder into ``folder``; one loaded but never built is copied from its own folder."""
    from entrep.features.extractor import Deferred

    if isinstance(adapted, Deferred):
        if not adapted.built and adapted.source is not None and adapted.source.is_dir():
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(adapted.source, folder)
            return
        adapted = adapted.get()
    adapted.save(folder)


def _load_adapters(path: Path, model: EntrepModel) -> dict:
    """role -> adapted encoder, deferred: the base encoder is built only when a cache miss needs it."""
    folder = path / "adapters"
    if not folder.is_dir():
        return {}
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        out[sub.name] = _deferred_adapter(sub, model)
    return out


def _deferred_adapter(sub: Path, model: EntrepModel):
    """The adapted encoder saved in ``sub``, its fingerprint from adapter.json and the base encoder's lazy one.

    Same formula as :class:`entrep.finetune.encoder.AdaptedEncoder` (weights digest = sha256 of
    ``base_fingerprint:digest``, device/precision of the base encoder) without building anything.
    """
    import hashlib

    from entrep.encoders.base import resolve_device, resolve_precision
    from entrep.encoders.config import EncoderInfo, encoder_fingerprint
    from entrep.features.extractor import Deferred
    from entrep.finetune.encoder import AdaptedEncoder, read_spec

    role = sub.name
    if role not in ("clip_image", "head_image"):
        raise ModelError(f"{sub}: adapted encoder for unknown role {role!r}; roles are clip_image, head_image")
    spec = read_spec(sub)
    base_fp = model.profile.fingerprint(role, device=model.device)
    try:
        saved_base, digest, config = str(spec["base_fingerprint"]), str(spec["digest"]), dict(spec["config"])
        name, dim = str(config["name"]), int(config["dim"])
    except (KeyError, TypeError, ValueError) as e:
        raise ModelError(f"{sub}: adapter.json lacks its base fingerprint, digest or config ({e}); refit") from None
    if saved_base != base_fp:
        raise ModelError(f"{sub}: adapter was trained on encoder {spec.get('base_name')} with fingerprint "
                         f"{saved_base[:12]}, but the encoder given is {name} {base_fp[:12]} "
                         f"(other weights or options); load it with the original encoder")
    precision = resolve_precision(None, resolve_device(model.device))
    weights = hashlib.sha256(f"{saved_base}:{digest}".encode()).hexdigest()
    info = EncoderInfo(name=name, dim=dim,
                       fingerprint=encoder_fingerprint(config, weights, precision, AdaptedEncoder.__name__))

    def build():
        from entrep.finetune import load_adapted

        log.info("building adapted %s encoder from %s", role, sub)
        return load_adapted(sub, model.profile.build(role, device=model.device))

    return Deferred(info, build, source=sub)


def _check_encoders(model: EntrepModel) -> None:
    """Refuse to run a model whose encoders' weights differ from those it was trained with.

    Reads fingerprints from the encoders' configs and weights digests: builds no encoder.
    """
    saved = model.encoders or {}
    if not saved:
        return
    current = model.extractor.describe()
    for key, info in saved.items():
        cur = current.get(key)
        if isinstance(info, dict) and isinstance(cur, dict) and info.get("fingerprint") != cur.get("fingerprint"):
            raise ModelError(
                f"{model.path}: encoder {key} ({info.get('name')}) now has different weights or preprocessing "
                f"than at training time (fingerprint {cur.get('fingerprint', '')[:12]} != "
                f"{info.get('fingerprint', '')[:12]}); point it at the original weights or refit")


def attach_report(model_dir: str | Path, report_dir: str | Path) -> Path:
    """Copy an evaluation report into ``model_dir/report`` (atomically), for `serve` to link."""
    model_dir, report_dir = Path(model_dir), Path(report_dir)
    if not (model_dir / "model.json").is_file():
        raise ModelError(f"{model_dir}: not an entrep model (model.json missing)")
    if not (report_dir / "report.html").is_file():
        raise ModelError(f"{report_dir}: no report.html to attach")
    with atomic_path(model_dir / "report") as tmp:
        shutil.copytree(report_dir, tmp)
    return model_dir / "report"
