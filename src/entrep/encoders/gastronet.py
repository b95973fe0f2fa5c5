"""GastroNet: DINO (v1) ViT-S/16 pretrained on GastroNet-5M endoscopy images, from a local file.

The dual-backbone retrieval paper's second backbone. The weights are not on
any hub this toolkit can reach; give the file you have (``weights=PATH``,
``$ENTREP_WEIGHTS_GASTRONET_VITS16`` or a profile's ``weights:``).

Recognised layouts (converted by the named functions below, then loaded strictly
into timm's ``vit_small_patch16_224``):

- a plain backbone state dict (timm / DINO key names are the same for ViTs),
- a DINO training checkpoint: ``teacher`` (preferred) or ``student`` dicts with
  ``module.`` / ``backbone.`` prefixes and the DINO projection ``head.*``
  (training-only, dropped by name), beside ``optimizer``/``epoch``/``args`` metadata,
- ``state_dict`` / ``model`` wrappers.

Position embeddings are resampled to the chosen input size (default 224).
:class:`DomainViTEncoder` (shared with EndoViT) pools the patch tokens with a
laterality-preserving pooling (default ``grid2``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from entrep.encoders.dinov2 import (
    DinoV2Encoder,
    LoadReport,
    resample_pos_embed,
    strip_common_prefixes,
    unwrap_checkpoint,
)
from entrep.encoders.pooling import TOKEN_POOLINGS, check_pooling
from entrep.encoders.resolver import compare_state_dicts, file_digest, load_checkpoint_file
from entrep.encoders.vit import check_layers
from entrep.encoders.vit_spec import (  # noqa: F401  (re-exported: the torch-free half of this module)
    ARCH_WIDTH,
    DOMAIN,
    OPTIONS,
    check_patch,
    describe_domain,
    describe_domain_vit,
    vit_config,
    weights_path,
)
from entrep.errors import UserError, WeightsError

log = logging.getLogger(__name__)

DINO_WRAPPERS = ("teacher", "student", "state_dict", "model")
DINO_PREFIXES = ("module.", "backbone.", "_orig_mod.", "encoder.")


class DomainViTEncoder(DinoV2Encoder):
    """A timm ViT with domain-pretrained weights (GastroNet, EndoViT): pooled patch tokens or per-layer CLS."""


def unwrap_dino(obj: dict, report: LoadReport) -> dict:
    """The tensor dict of a DINO checkpoint: teacher, else student / state_dict / model; metadata dropped."""
    return unwrap_checkpoint(obj, report, DINO_WRAPPERS)


def strip_known_prefixes(sd: dict, report: LoadReport, prefixes=DINO_PREFIXES) -> dict:
    """Strip ``module.``/``backbone.``... when every key carries them (repeatedly: ``module.backbone.``)."""
    return strip_common_prefixes(sd, report, prefixes)


def dino_to_timm(sd: dict, report: LoadReport) -> dict:
    """DINO v1 training layout -> timm ViT: keep ``backbone.*`` and drop the DINO projection ``head.*``."""
    if any(k.startswith(("backbone.", "module.backbone.")) for k in sd):
        report.layout = "DINO training checkpoint"
        heads = [k for k in sd if not k.startswith(("backbone.", "module.backbone."))]
        unknown = [k for k in heads if not k.startswith(("head.", "module.head."))]
        if unknown:
            raise WeightsError(f"{report.path}: keys outside backbone. that are not the DINO head: {unknown[:8]}")
        if heads:
            report.dropped.setdefault("training-only DINO projection head", []).extend(heads)
        sd = {k: v for k, v in sd.items() if k not in set(heads)}
    sd = strip_known_prefixes(sd, report)
    if any(k.startswith("head.") for k in sd) and "head.weight" not in sd:
        heads = [k for k in sd if k.startswith("head.")]
        report.dropped.setdefault("training-only DINO projection head", []).extend(heads)
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    return sd


def drop_classifier(sd: dict, model: torch.nn.Module, report: LoadReport) -> dict:
    """A classifier ``head.weight/bias`` is unused for features (the model is built without one)."""
    if any(k.startswith("head.") for k in model.state_dict()):
        return sd
    heads = [k for k in sd if k.startswith("head.")]
    if heads:
        report.dropped.setdefault("classifier head unused for features", []).extend(heads)
    return {k: v for k, v in sd.items() if not k.startswith("head.")}


def load_strict(model: torch.nn.Module, sd: dict, report: LoadReport, what: str) -> LoadReport:
    sd = resample_pos_embed(drop_classifier(sd, model, report), model, report)
    missing, unexpected, wrong = compare_state_dicts(model.state_dict(), sd)
    if missing or unexpected or wrong:
        raise WeightsError(f"{what}: {report.path} does not fit {type(model).__name__} ({report.summary()}): "
                           f"missing {len(missing)} key(s) {missing[:10]}, unexpected {len(unexpected)} "
                           f"{unexpected[:10]}, wrong shape {wrong[:4]}")
    model.load_state_dict(sd, strict=True)
    log.info("%s: loaded %s (%s)", what, report.path, report.summary())
    return report


def load_gastronet_weights(model: torch.nn.Module, path: str | Path) -> LoadReport:
    """Load a GastroNet (DINO ViT-S/16) checkpoint file into a timm ViT, strictly."""
    report = LoadReport(path=str(path), layout="timm/DINO backbone")
    sd = dino_to_timm(unwrap_dino(load_checkpoint_file(path, what="gastronet"), report), report)
    return load_strict(model, sd, report, "gastronet")


def build_domain_vit(name: str, arch: str, loader, *, weights, pooling, device, precision, image_size: int,
                     return_layers, model_kwargs, licence: str, example: str, patch: int = 16,
                     extra_kwargs: dict | None = None) -> DomainViTEncoder:
    import timm

    check_patch(name, image_size, patch)
    pooling = check_pooling(pooling or "grid2", TOKEN_POOLINGS)
    path, source = weights_path(name, weights, example)
    kwargs = dict(model_kwargs or {})
    model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=int(image_size),
                              **{**(extra_kwargs or {}), **kwargs})
    report = loader(model, path)
    width = int(model.num_features)
    layers = check_layers(return_layers, len(model.blocks)) if return_layers else None
    config = vit_config(name, arch, image_size, pooling, width, source, licence, kwargs, layers)
    return DomainViTEncoder(config, model, return_layers=layers, report=report, device=device, precision=precision,
                            weights_digest=file_digest(path))


def build_gastronet(name: str, *, weights=None, pooling=None, device=None, precision=None, image_size: int = 224,
                    return_layers=None, model_kwargs: dict | None = None, **rest) -> DomainViTEncoder:
    """GastroNet (registered as ``gastronet-vits16`` in :mod:`entrep.encoders.vit_spec`). ``model_kwargs``
    overrides timm architecture arguments (embed_dim/depth/num_heads) for other sizes."""
    if rest:
        raise UserError(f"{name}: unknown options {sorted(rest)}; known: {OPTIONS}")
    arch, example, licence = DOMAIN["gastronet-vits16"]
    return build_domain_vit(name, arch, load_gastronet_weights, weights=weights, pooling=pooling, device=device,
                            precision=precision, image_size=image_size, return_layers=return_layers,
                            model_kwargs=model_kwargs, example=example, licence=licence)
