"""EndoViT: MAE ViT-B/16 pretrained on endoscopy video frames (Endo700k), from a local file.

Used by an ENTRep Track 2/3 entry. Give the file you have (``weights=PATH``,
``$ENTREP_WEIGHTS_ENDOVIT_VITB16`` or a profile's ``weights:``).

Recognised layouts (converted by the named functions, loaded strictly into
timm's ``vit_base_patch16_224``):

- the MAE pre-training checkpoint: ``{"model": ...}`` (plus ``optimizer``/
  ``epoch``/``args``), encoder keys as timm names them, and the training-only
  decoder (``decoder_*``) and ``mask_token``, dropped by name,
- a plain encoder state dict, with or without ``module.``/``encoder.`` prefixes.

A fine-tuned MAE classifier checkpoint (global-pool ``fc_norm`` instead of the
final ``norm``) is refused with a line saying so: its features are a different
function of the tokens than the pooling here expects.
"""

from __future__ import annotations

from pathlib import Path

import torch

from entrep.encoders.dinov2 import LoadReport
from entrep.encoders.gastronet import (
    DomainViTEncoder,
    build_domain_vit,
    load_strict,
    strip_known_prefixes,
    unwrap_dino,
)
from entrep.encoders.vit_spec import DOMAIN, OPTIONS
from entrep.encoders.resolver import load_checkpoint_file
from entrep.errors import UserError, WeightsError

MAE_TRAINING_ONLY = ("decoder_", "mask_token")


def is_mae_checkpoint(sd: dict) -> bool:
    """Tell-tale keys of an MAE pre-training checkpoint."""
    return any(k.startswith(MAE_TRAINING_ONLY) for k in sd)


def mae_to_timm(sd: dict, report: LoadReport) -> dict:
    """MAE layout -> timm ViT: drop the decoder and mask token; refuse a global-pool fine-tuned checkpoint."""
    sd = strip_known_prefixes(sd, report)
    if is_mae_checkpoint(sd):
        report.layout = "MAE pre-training checkpoint"
        dropped = [k for k in sd if k.startswith(MAE_TRAINING_ONLY)]
        report.dropped.setdefault("training-only MAE decoder and mask token", []).extend(dropped)
        sd = {k: v for k, v in sd.items() if not k.startswith(MAE_TRAINING_ONLY)}
    if "fc_norm.weight" in sd and "norm.weight" not in sd:
        raise WeightsError(f"endovit: {report.path} is a fine-tuned MAE classifier (fc_norm, global pooling); "
                           f"use the MAE pre-training checkpoint (with norm.weight)")
    return sd


def load_endovit_weights(model: torch.nn.Module, path: str | Path) -> LoadReport:
    """Load an EndoViT (MAE ViT-B/16) checkpoint file into a timm ViT, strictly."""
    report = LoadReport(path=str(path), layout="timm")
    sd = mae_to_timm(unwrap_dino(load_checkpoint_file(path, what="endovit"), report), report)
    return load_strict(model, sd, report, "endovit")


def build_endovit(name: str, *, weights=None, pooling=None, device=None, precision=None, image_size: int = 224,
                  return_layers=None, model_kwargs: dict | None = None, **rest) -> DomainViTEncoder:
    """EndoViT (registered as ``endovit-vitb16`` in :mod:`entrep.encoders.vit_spec`). ``model_kwargs``
    overrides timm architecture arguments (embed_dim/depth/num_heads)."""
    if rest:
        raise UserError(f"{name}: unknown options {sorted(rest)}; known: {OPTIONS}")
    arch, example, licence = DOMAIN["endovit-vitb16"]
    return build_domain_vit(name, arch, load_endovit_weights, weights=weights, pooling=pooling, device=device,
                            precision=precision, image_size=image_size, return_layers=return_layers,
                            model_kwargs=model_kwargs, example=example, licence=licence)
