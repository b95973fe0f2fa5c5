"""timm ViT encoders without torch or timm: DINOv2, GastroNet and EndoViT configs, weights files,
describers and registrations.

The builders and checkpoint converters (torch, timm) are in :mod:`entrep.encoders.dinov2`,
:mod:`entrep.encoders.gastronet` and :mod:`entrep.encoders.endovit`, imported on the first build.
"""

from __future__ import annotations

from pathlib import Path

from entrep.encoders.config import ImageEncoderConfig, options_tuple
from entrep.encoders.devices import describe_precision
from entrep.encoders.pooling import TOKEN_POOLINGS, check_pooling, pooled_dim
from entrep.encoders.registry import IMAGE
from entrep.encoders.resolver import choose_source, file_digest, find_weights_file, how_to_point, hub_files, require_file
from entrep.errors import UserError, WeightsError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the built encoders' class names (part of the fingerprint)
DINOV2_KIND, DOMAIN_KIND = "DinoV2Encoder", "DomainViTEncoder"

#: registered name -> (timm architecture, feature width)
VARIANTS = {
    "dinov2-vits14": ("vit_small_patch14_dinov2", 384),
    "dinov2-vitb14": ("vit_base_patch14_dinov2", 768),
    "dinov2-vitl14": ("vit_large_patch14_dinov2", 1024),
    "dinov2-vitg14": ("vit_giant_patch14_dinov2", 1536),
    "dinov2-vits14-reg4": ("vit_small_patch14_reg4_dinov2", 384),
    "dinov2-vitb14-reg4": ("vit_base_patch14_reg4_dinov2", 768),
    "dinov2-vitl14-reg4": ("vit_large_patch14_reg4_dinov2", 1024),
    "dinov2-vitg14-reg4": ("vit_giant_patch14_reg4_dinov2", 1536),
}
DINOV2_LICENCE = "Apache-2.0 (DINOv2); check the licence of domain checkpoints such as SurgeNet"
#: timm architecture -> its ViT width (``num_features``), for describing without building
ARCH_WIDTH = {"vit_small_patch16_224": 384, "vit_base_patch16_224": 768}
#: domain backbone -> (timm architecture, example weights path, licence)
DOMAIN = {
    "gastronet-vits16": ("vit_small_patch16_224", "/path/to/gastronet_dino_vits16.pth",
                         "check the GastroNet-5M weights' licence (research use)"),
    "endovit-vitb16": ("vit_base_patch16_224", "/path/to/endovit_mae_vitb16.pth",
                       "check the EndoViT weights' licence (research use)"),
}
OPTIONS = "precision, image_size, return_layers, model_kwargs"


def vit_config(name: str, arch: str, image_size, pooling: str, width: int, source: str, licence: str,
               model_kwargs: dict, layers: list[int] | None = None) -> ImageEncoderConfig:
    """The config of a timm ViT encoder (DINOv2, GastroNet, EndoViT): built and described alike.

    ``layers`` (class tokens of those blocks, concatenated) replaces the token pooling.
    """
    if layers:
        pooling, dim = "cls-layers:" + ",".join(map(str, layers)), len(layers) * width
    else:
        dim = pooled_dim(pooling, width)
    return ImageEncoderConfig(
        name=name, dim=dim, image_size=(int(image_size), int(image_size)), mean=IMAGENET_MEAN, std=IMAGENET_STD,
        weights=source, pooling=pooling, width=width, interpolation="bicubic", licence=licence,
        architecture=arch, options=options_tuple({"model_kwargs": tuple(sorted(model_kwargs.items())) or None}))


# ---- DINOv2 --------------------------------------------------------------------
def dinov2_weights_file(name: str, arch: str, weights) -> tuple[Path, str]:
    """(weights file, source string) of a DINOv2 encoder: hub repo (default ``timm/ARCH.lvd142m``), folder or file."""
    source = choose_source(name, weights, f"hf-hub:timm/{arch}.lvd142m")
    example = f"/path/to/{arch}.pth"
    if source.kind == "hf-hub":
        path = hub_files(source.location, [], any_of=["model.safetensors", "pytorch_model.bin"],
                         encoder_name=name, example=example)["*"]
    elif source.kind == "file":
        path = require_file(source, what=name)
    elif source.kind == "local-dir":
        path = find_weights_file(Path(source.location), ("model.safetensors", "pytorch_model.bin"), what=name)
    else:
        raise WeightsError(f"{name}: weights source {source} is not a hub repo, folder or file; "
                           f"{how_to_point(name, example)}")
    return path, str(source)


def dinov2_options(name: str, image_size, pooling, rest: dict) -> tuple[str, int, str]:
    """(timm arch, width, pooling) of a DINOv2 variant, or one UserError for a bad option (builder and describer)."""
    if rest:
        raise UserError(f"{name}: unknown options {sorted(rest)}; known: {OPTIONS}")
    arch, width = VARIANTS[name]
    if int(image_size) % 14:
        raise UserError(f"{name}: image_size {image_size} must be a multiple of the 14-pixel patch (e.g. 224, 518)")
    return arch, width, check_pooling(pooling or "grid2", TOKEN_POOLINGS)


def describe_dinov2(name: str, *, weights=None, pooling=None, device=None, precision=None, image_size: int = 224,
                    return_layers=None, model_kwargs: dict | None = None, **rest):
    """(config, weights digest, precision, kind) of a DINOv2 encoder without importing timm or building it.

    The width is the variant's (or ``model_kwargs["embed_dim"]``, timm's ``num_features`` for a ViT);
    ``return_layers`` needs the built model's block count (returns None: the caller builds).
    """
    arch, width, pooling = dinov2_options(name, image_size, pooling, rest)
    if return_layers:
        return None
    path, source = dinov2_weights_file(name, arch, weights)
    kwargs = dict(model_kwargs or {})
    config = vit_config(name, arch, image_size, pooling, int(kwargs.get("embed_dim", width)), source,
                        DINOV2_LICENCE, kwargs)
    return config, file_digest(path), describe_precision(precision, device), DINOV2_KIND


# ---- domain backbones (local files only) ------------------------------------------
def weights_path(name: str, weights, example: str) -> tuple[Path, str]:
    """A local weights file for a domain backbone (file or folder holding one); no download exists."""
    try:
        source = choose_source(name, weights, "")
    except WeightsError:
        raise WeightsError(f"{name}: no weights given and none can be downloaded; {how_to_point(name, example)}") from None
    if source.kind == "file":
        return require_file(source, what=name), str(source)
    if source.kind == "local-dir":
        return find_weights_file(Path(source.location), ("model.safetensors", "pytorch_model.bin",
                                                         "checkpoint.pth", "model.pth"), what=name), str(source)
    raise WeightsError(f"{name}: weights source {source} is not a local file or folder; {how_to_point(name, example)}")


def check_patch(name: str, image_size, patch: int = 16) -> None:
    if int(image_size) % patch:
        raise UserError(f"{name}: image_size {image_size} must be a multiple of the {patch}-pixel patch (e.g. 224, 384)")


def describe_domain_vit(name: str, arch: str, *, weights, pooling, device, precision, image_size: int,
                        return_layers, model_kwargs, example: str, licence: str, patch: int = 16):
    """(config, weights digest, precision, kind) of :func:`entrep.encoders.gastronet.build_domain_vit` without
    timm or building; None with ``return_layers`` (the block count comes from the built model)."""
    if return_layers:
        return None
    check_patch(name, image_size, patch)
    pooling = check_pooling(pooling or "grid2", TOKEN_POOLINGS)
    path, source = weights_path(name, weights, example)
    kwargs = dict(model_kwargs or {})
    config = vit_config(name, arch, image_size, pooling, int(kwargs.get("embed_dim", ARCH_WIDTH[arch])), source,
                        licence, kwargs)
    return config, file_digest(path), describe_precision(precision, device), DOMAIN_KIND


def describe_domain(name: str, *, weights=None, pooling=None, device=None, precision=None, image_size: int = 224,
                    return_layers=None, model_kwargs: dict | None = None, **rest):
    """The describer of GastroNet and EndoViT (see :func:`describe_domain_vit`)."""
    if rest:
        raise UserError(f"{name}: unknown options {sorted(rest)}; known: {OPTIONS}")
    arch, example, licence = DOMAIN[name]
    return describe_domain_vit(name, arch, weights=weights, pooling=pooling, device=device, precision=precision,
                               image_size=image_size, return_layers=return_layers, model_kwargs=model_kwargs,
                               example=example, licence=licence)


for _name, (_arch, _w) in VARIANTS.items():
    IMAGE.add(_name, "entrep.encoders.dinov2:build_dinov2", aliases=(f"{_arch}.lvd142m",),
              summary=f"DINOv2 {_arch} (timm), laterality pooling; raw/SurgeNet checkpoints")
    IMAGE.describer(_name)(describe_dinov2)
IMAGE.add("gastronet-vits16", "entrep.encoders.gastronet:build_gastronet", aliases=("gastronet",),
          summary="GastroNet-5M DINO ViT-S/16 (local checkpoint file), laterality pooling")
IMAGE.add("endovit-vitb16", "entrep.encoders.endovit:build_endovit", aliases=("endovit",),
          summary="EndoViT MAE ViT-B/16 endoscopy (local checkpoint file), laterality pooling")
for _name in DOMAIN:
    IMAGE.describer(_name)(describe_domain)
