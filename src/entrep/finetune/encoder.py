"""The adapted encoder: a frozen base encoder plus its adapter weights, usable wherever an encoder is.

:class:`AdaptedEncoder` is an :class:`entrep.encoders.ImageEncoder`: same
``encode()``/``config``/``fingerprint`` contract, so the feature cache and the
Extractor treat it like any other encoder. Its fingerprint covers the base
encoder's fingerprint and a digest of the adapter weights, so features cached
for the frozen encoder (or another adaptation) are never reused for it.

On disk (:meth:`AdaptedEncoder.save`, written atomically as one folder):
``adapter.safetensors`` (LoRA matrices, or the unfrozen blocks, plus the CLS
fusion weights) and ``adapter.json`` (method, hyper-parameters, resolved
target modules, base encoder name and fingerprint, digest).
:func:`load_adapted` rebuilds the structure on a freshly built base encoder
and loads strictly: missing, unexpected or mis-shaped keys are named in one line.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import torch
from torch import nn

from entrep.encoders.base import ImageEncoder
from entrep.encoders.vit import layer_cls
from entrep.errors import ModelError, UserError
from entrep.finetune.adapters import Backbone, apply_lora, apply_partial, backbone_of
from entrep.finetune.cls_fusion import CLSFusion, fusion_layers
from entrep.io import atomic_path

log = logging.getLogger(__name__)

FORMAT = 1
WEIGHTS_FILE = "adapter.safetensors"
SPEC_FILE = "adapter.json"


@dataclasses.dataclass
class Structure:
    """A trainable copy of a base encoder: cloned encoder object, its backbone, the optional CLS fusion."""

    clone: ImageEncoder
    backbone: Backbone
    fusion: CLSFusion | None
    layers: tuple[int, ...]
    config: object  # ImageEncoderConfig of the adapted encoder
    backbone_layers: int = 0  # partial: how many last blocks are trainable

    def modules(self) -> nn.ModuleDict:
        d = {"backbone": self.clone.model}
        if self.fusion is not None:
            d["fusion"] = self.fusion
        return nn.ModuleDict(d)


def _resize(clone: ImageEncoder, bb: Backbone, size: int) -> tuple[int, int]:
    h0, w0 = clone.config.image_size
    if int(size) == h0:
        return (h0, w0)
    new = (int(size), int(round(size * w0 / h0)))
    if bb.kind == "vit":
        vit_module = next((m for m in clone.model.modules() if hasattr(m, "set_input_size") and hasattr(m, "blocks")), None)
        if vit_module is None:
            raise UserError(f"{clone.config.name}: input_size {size} needs a timm ViT; this tower has a fixed size "
                            f"{h0}; use input_size {h0}")
        try:
            vit_module.set_input_size(img_size=new)
        except (AssertionError, ValueError, RuntimeError) as e:
            raise UserError(f"{clone.config.name}: cannot use input_size {size} ({e}); use a multiple of the patch size") from e
    return new


def build_structure(base: ImageEncoder, spec: dict) -> Structure:
    """Clone ``base`` and add the adapters ``spec`` describes (method, rank, ..., cls_layers, input_size)."""
    clone = copy.copy(base)
    clone.model = copy.deepcopy(base.model)
    bb = backbone_of(clone)
    size = _resize(clone, bb, int(spec.get("input_size") or base.config.image_size[0]))
    method = spec["method"]
    if method == "lora":
        names = apply_lora(bb, rank=spec["rank"], alpha=spec["alpha"], dropout=spec["dropout"],
                           targets=tuple(spec["targets"]), names=spec.get("modules"))
        spec["modules"] = names
    elif method == "partial":
        spec["modules"] = apply_partial(bb, int(spec["layers"]))
    else:
        raise UserError(f"unknown fine-tuning method {method!r}; use lora or partial")
    fusion, layers = None, ()
    if bb.kind == "vit" and int(spec.get("cls_layers") or 0) > 0:
        layers = fusion_layers(len(bb.blocks), int(spec["cls_layers"]))
        fusion = CLSFusion(len(layers))
    c = base.config
    width = int(c.width or c.dim)
    config = dataclasses.replace(
        c, name=f"{c.name}+{method}", image_size=size,
        dim=width if fusion is not None else c.dim,
        pooling=f"cls-fusion:{','.join(map(str, layers))}" if fusion is not None else c.pooling)
    return Structure(clone, bb, fusion, layers, config,
                     backbone_layers=int(spec["layers"]) if method == "partial" else 0)


def embed(st: Structure, x: torch.Tensor) -> torch.Tensor:
    """Unnormalised embedding of a preprocessed batch through the adapted structure (grad-capable)."""
    if st.fusion is not None:
        return st.fusion(layer_cls(st.clone.vit, x, st.layers))
    return st.clone.forward(x)


def adapter_keys(modules: nn.Module, spec: dict) -> list[str]:
    """State-dict keys that belong to the adapter (what is saved and loaded)."""
    keys = []
    prefixes = tuple(f"backbone.{m}." for m in spec.get("modules", ())) if spec["method"] == "partial" else ()
    for k in modules.state_dict():
        if k.startswith("fusion.") or ("lora_" in k if spec["method"] == "lora" else k.startswith(prefixes)):
            keys.append(k)
    return keys


def _state_digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class AdaptedEncoder(ImageEncoder):
    """A fine-tuned image encoder (see the module docstring)."""

    def __init__(self, structure: Structure, spec: dict, *, base_fingerprint: str, device=None, precision=None,
                 history: list | None = None, report: dict | None = None) -> None:
        modules = structure.modules()
        state = {k: v for k, v in modules.state_dict().items() if k in set(adapter_keys(modules, spec))}
        digest = _state_digest(state)
        super().__init__(structure.config, modules, device=device, precision=precision,
                         weights_digest=hashlib.sha256(f"{base_fingerprint}:{digest}".encode()).hexdigest())
        self.structure = structure
        self.structure.clone.device = self.device
        self.spec = dict(spec, base_fingerprint=base_fingerprint, base_name=spec.get("base_name"), digest=digest)
        self.history = list(history or [])
        self.report = dict(report or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return embed(self.structure, x)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        keys = set(adapter_keys(self.model, self.spec))
        return {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items() if k in keys}

    def save(self, folder: str | Path) -> Path:
        """Write ``adapter.safetensors`` + ``adapter.json`` into ``folder`` atomically."""
        from safetensors.torch import save_file

        folder = Path(folder)
        spec = dict(self.spec, format=FORMAT, config=self.config.to_dict(), history=self.history, report=self.report)
        with atomic_path(folder) as tmp:
            tmp.mkdir(parents=True)
            save_file(self.adapter_state(), str(tmp / WEIGHTS_FILE))
            (tmp / SPEC_FILE).write_text(json.dumps(spec, indent=2, default=str) + "\n", encoding="utf-8")
        return folder


def read_spec(folder: str | Path) -> dict:
    path = Path(folder) / SPEC_FILE
    if not path.is_file():
        raise ModelError(f"{folder}: no {SPEC_FILE}; not a saved adapted encoder")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: unreadable adapter description ({e})") from e
    if spec.get("format") != FORMAT:
        raise ModelError(f"{path}: adapter format {spec.get('format')!r}, this entrep reads format {FORMAT}")
    return spec


def load_adapted(folder: str | Path, base_encoder: ImageEncoder, *, device=None) -> AdaptedEncoder:
    """Rebuild an adapted encoder saved by :meth:`AdaptedEncoder.save` on ``base_encoder``; strict."""
    from safetensors.torch import load_file

    folder = Path(folder)
    spec = read_spec(folder)
    if spec["base_fingerprint"] != base_encoder.fingerprint:
        raise ModelError(f"{folder}: adapter was trained on encoder {spec.get('base_name')} with fingerprint "
                         f"{spec['base_fingerprint'][:12]}, but the encoder given is {base_encoder.config.name} "
                         f"{base_encoder.fingerprint[:12]} (other weights or options); load it with the original encoder")
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{folder}: {WEIGHTS_FILE} is missing")
    try:
        found = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types
        raise ModelError(f"{weights}: unreadable safetensors file ({e})") from e
    st = build_structure(base_encoder, {k: spec[k] for k in ("method", "rank", "alpha", "dropout", "targets", "layers",
                                                            "cls_layers", "input_size", "modules", "base_name")})
    modules = st.modules()
    expected = {k: v for k, v in modules.state_dict().items() if k in set(adapter_keys(modules, spec))}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k} {tuple(found[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in found and tuple(found[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        raise ModelError(f"{weights}: adapter weights do not fit: missing {len(missing)} {missing[:6]}, unexpected "
                         f"{len(unexpected)} {unexpected[:6]}, wrong shape {wrong[:4]}")
    modules.load_state_dict(found, strict=False)
    enc = AdaptedEncoder(st, spec, base_fingerprint=spec["base_fingerprint"], device=device or base_encoder.device,
                         history=spec.get("history"), report=spec.get("report"))
    if enc.spec["digest"] != spec.get("digest"):
        raise ModelError(f"{weights}: adapter weights digest differs from {SPEC_FILE}; the folder is corrupt")
    return enc
