"""DINOv2 ViTs through timm: hub weights, raw official DINOv2 and SurgeNet checkpoints.

Names: ``dinov2-vits14``, ``dinov2-vitb14``, ``dinov2-vitl14``, ``dinov2-vitg14`` and
their ``-reg4`` (4 register tokens) variants; the timm names
(``vit_base_patch14_dinov2.lvd142m``, ``vit_base_patch14_reg4_dinov2.lvd142m`` ...)
are aliases. Default weights: ``hf-hub:timm/<timm name>`` (from the local HF
cache when there). A local file may be in timm layout or in the *official*
DINOv2 layout, as released by Meta and as written by DINOv2 training code
(SurgeNet and other domain-pretrained checkpoints):

- wrapper dicts ``teacher`` / ``model`` / ``state_dict`` / ``student`` (teacher preferred),
- ``backbone.`` / ``module.`` / ``_orig_mod.`` prefixes,
- FSDP block chunks ``blocks.C.I.`` -> ``blocks.I.``,
- ``register_tokens`` (-> timm ``reg_token``, class-token position folded in),
- SwiGLU ``mlp.w12`` / ``mlp.w3`` (-> ``mlp.fc1`` / ``mlp.fc2``).

Formats are recognised by tell-tale keys and converted by the named functions
below. Position embeddings are resampled to the chosen input size. Loading is
strict: the only keys dropped are named (``mask_token``: training-only; DINO /
iBOT heads: training-only; a classifier ``head``: unused for features). Any
missing backbone weight is refused with the keys listed.

Default input: 224 x 224 (16 x 16 patches of 14 px), the whole frame padded
to a square - DINOv2 needs no crop.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from entrep.encoders.base import ImageEncoder
from entrep.encoders.resolver import file_digest, load_checkpoint_file
from entrep.encoders.vit import check_layers, layer_cls, pooled_tokens, timm_vit_parts
from entrep.encoders.vit_spec import (  # noqa: F401  (re-exported: the torch-free half of this module)
    DINOV2_LICENCE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    VARIANTS,
    describe_dinov2,
    dinov2_options,
    dinov2_weights_file,
    vit_config,
)
from entrep.errors import WeightsError

log = logging.getLogger(__name__)

#: wrapper keys, in order of preference (the DINO teacher is the evaluation model)
WRAPPERS = ("teacher", "model", "state_dict", "student", "module")
#: key prefixes stripped when every remaining key carries them
PREFIXES = ("module.", "_orig_mod.", "backbone.", "encoder.")
#: keys dropped by name, with the reason
TRAINING_ONLY = {"mask_token": "training-only masked-image-modelling token"}
TRAINING_HEADS = ("dino_head.", "ibot_head.", "dino_loss.", "ibot_patch_loss.", "koleo_loss.")

@dataclass
class LoadReport:
    """What loading did to a checkpoint, for logs and tests."""

    path: str
    layout: str = "timm"
    wrapper: list[str] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)
    converted: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.layout} layout"]
        if self.wrapper:
            parts.append("unwrapped " + "/".join(self.wrapper))
        if self.prefixes:
            parts.append("stripped " + ", ".join(self.prefixes))
        if self.converted:
            parts.append("converted " + ", ".join(self.converted))
        for reason, keys in self.dropped.items():
            parts.append(f"dropped {len(keys)} key(s) ({reason})")
        return "; ".join(parts)


# ---- named conversion steps ------------------------------------------------
def unwrap_checkpoint(obj: dict, report: LoadReport, wrappers: tuple[str, ...] = WRAPPERS) -> dict:
    """Descend through wrapper keys (teacher/model/state_dict/student/module by default) to the tensor dict;
    training metadata beside the tensors is reported as dropped."""
    d = obj
    while isinstance(d, dict) and not all(isinstance(v, torch.Tensor) for v in d.values()):
        for w in wrappers:
            if isinstance(d.get(w), dict):
                report.wrapper.append(w)
                d = d[w]
                break
        else:
            break
    tensors = {k: v for k, v in d.items() if isinstance(v, torch.Tensor)}
    other = sorted(k for k in d if k not in tensors)
    if other:
        report.dropped.setdefault("not tensors (training metadata)", []).extend(other)
    if not tensors:
        raise WeightsError(f"{report.path}: holds no tensors (top-level keys: {sorted(obj)[:10]})")
    return tensors


def strip_prefixes(sd: dict, report: LoadReport) -> dict:
    """Keep the ``backbone.`` part of a training checkpoint; strip wrapper prefixes."""
    if any(k.startswith("backbone.") for k in sd) and not all(k.startswith("backbone.") for k in sd):
        heads = [k for k in sd if not k.startswith("backbone.")]
        unknown = [k for k in heads if not k.startswith(TRAINING_HEADS)]
        if unknown:
            raise WeightsError(f"dinov2: {report.path}: keys outside 'backbone.' that are not DINO/iBOT training "
                               f"heads: {unknown[:8]}")
        report.dropped.setdefault("training-only DINO/iBOT heads", []).extend(heads)
        sd = {k: v for k, v in sd.items() if k.startswith("backbone.")}
    return strip_common_prefixes(sd, report)


def strip_common_prefixes(sd: dict, report: LoadReport, prefixes: tuple[str, ...] = PREFIXES) -> dict:
    """Strip ``module.``/``backbone.``... when every key carries them (repeatedly: ``module.backbone.``)."""
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if sd and all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                report.prefixes.append(p)
                changed = True
    return sd


_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")


def unchunk_blocks(sd: dict, report: LoadReport) -> dict:
    """FSDP block chunks ``blocks.C.I.rest`` -> ``blocks.I.rest`` (I is the global block index)."""
    if not any(_CHUNKED.match(k) for k in sd):
        return sd
    out: dict = {}
    for k, v in sd.items():
        m = _CHUNKED.match(k)
        nk = f"blocks.{m.group(2)}.{m.group(3)}" if m else k
        if nk in out:
            raise WeightsError(f"dinov2: {report.path}: chunked block key {k} collides with {nk}")
        out[nk] = v
    report.converted.append("chunked blocks")
    return out


def is_official_dinov2(sd: dict) -> bool:
    """Tell-tale keys of Meta's DINOv2 layout (timm's differs only in these)."""
    return "mask_token" in sd or "register_tokens" in sd or any(".mlp.w12." in k for k in sd)


def official_to_timm(sd: dict, model: torch.nn.Module, report: LoadReport) -> dict:
    """Convert the official DINOv2 layout to timm's VisionTransformer names."""
    sd = dict(sd)
    report.layout = "official DINOv2"
    for k, reason in TRAINING_ONLY.items():
        if k in sd:
            sd.pop(k)
            report.dropped.setdefault(reason, []).append(k)
    if "register_tokens" in sd:
        sd["reg_token"] = sd.pop("register_tokens")
        report.converted.append("register_tokens->reg_token")
        if getattr(model, "no_embed_class", False) and "pos_embed" in sd and "cls_token" in sd:
            # timm's register models keep class/register tokens out of pos_embed: fold the class position in
            sd["cls_token"] = sd["cls_token"] + sd["pos_embed"][:, :1]
            sd["pos_embed"] = sd["pos_embed"][:, 1:]
            report.converted.append("class position folded into cls_token")
    for k in list(sd):
        if ".mlp.w12." in k or ".mlp.w3." in k:
            sd[k.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")] = sd.pop(k)
            if "SwiGLU w12/w3->fc1/fc2" not in report.converted:
                report.converted.append("SwiGLU w12/w3->fc1/fc2")
    return sd


def check_registers(sd: dict, model: torch.nn.Module, report: LoadReport) -> None:
    """Register tokens must match: a -reg4 model needs a checkpoint with registers and vice versa."""
    want = "reg_token" in model.state_dict()
    have = "reg_token" in sd
    if want and not have:
        raise WeightsError(f"dinov2: {report.path} has no register tokens (reg_token/register_tokens) but the model "
                           f"expects them; use the encoder name without -reg4")
    if have and not want:
        raise WeightsError(f"dinov2: {report.path} has {sd['reg_token'].shape[1]} register tokens (reg_token) but the "
                           f"model has none; use the -reg4 encoder name")


def resample_pos_embed(sd: dict, model: torch.nn.Module, report: LoadReport) -> dict:
    """Resample ``pos_embed`` to the model's patch grid (timm.layers.resample_abs_pos_embed)."""
    from timm.layers import resample_abs_pos_embed

    if "pos_embed" not in sd or getattr(model, "pos_embed", None) is None:
        return sd
    v, target = sd["pos_embed"], model.pos_embed
    if tuple(v.shape) == tuple(target.shape):
        return sd
    prefix = 0 if getattr(model, "no_embed_class", False) else int(getattr(model, "num_prefix_tokens", 1))
    n_old = v.shape[1] - prefix
    side = int(round(n_old ** 0.5))
    if side * side != n_old or v.shape[-1] != target.shape[-1]:
        raise WeightsError(f"dinov2: {report.path}: pos_embed {tuple(v.shape)} cannot be resampled to "
                           f"{tuple(target.shape)} (prefix tokens {prefix})")
    sd = dict(sd)
    sd["pos_embed"] = resample_abs_pos_embed(v, new_size=list(model.patch_embed.grid_size), old_size=[side, side],
                                             num_prefix_tokens=prefix)
    report.converted.append(f"pos_embed {side}x{side}->{'x'.join(map(str, model.patch_embed.grid_size))}")
    return sd


def load_dinov2_weights(model: torch.nn.Module, path: str | Path) -> LoadReport:
    """Load a timm or official DINOv2 checkpoint file into a timm ViT, strictly."""
    report = LoadReport(path=str(path))
    sd = unwrap_checkpoint(load_checkpoint_file(path, what="dinov2"), report)
    sd = strip_prefixes(sd, report)
    sd = unchunk_blocks(sd, report)
    if is_official_dinov2(sd):
        sd = official_to_timm(sd, model, report)
    check_registers(sd, model, report)
    sd = resample_pos_embed(sd, model, report)
    expected = model.state_dict()
    if not any(k.startswith("head.") for k in expected):
        heads = [k for k in sd if k.startswith("head.")]
        if heads:
            for k in heads:
                sd.pop(k)
            report.dropped.setdefault("classifier head unused for features", []).extend(heads)
    from entrep.encoders.resolver import compare_state_dicts

    missing, unexpected, wrong = compare_state_dicts(expected, sd)
    if missing or unexpected or wrong:
        raise WeightsError(
            f"dinov2: {path} does not fit {type(model).__name__} ({report.summary()}): "
            f"missing {len(missing)} key(s) {missing[:10]}, unexpected {len(unexpected)} {unexpected[:10]}, "
            f"wrong shape {wrong[:4]}; refusing to run with missing backbone weights")
    model.load_state_dict(sd, strict=True)
    log.info("dinov2: loaded %s (%s)", path, report.summary())
    return report


# ---- encoder -------------------------------------------------------------------
class DinoV2Encoder(ImageEncoder):
    """DINOv2 patch tokens -> laterality-preserving pooled vector (or per-layer CLS)."""

    def __init__(self, config, model, *, return_layers=None, report: LoadReport | None = None, **kw) -> None:
        super().__init__(config, model, **kw)
        self.return_layers = tuple(return_layers) if return_layers else None
        self.load_report = report

    @property
    def vit(self):
        return timm_vit_parts(self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.return_layers:
            cls = layer_cls(self.vit, x, self.return_layers)
            return torch.nn.functional.normalize(cls.float(), dim=-1).flatten(1)
        return pooled_tokens(self.vit, x, self.config.pooling)

    def encode_layers(self, images, layers: Sequence[int], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        """CLS token after each block in ``layers``: (N, L, width) float32."""
        from entrep.encoders.openclip import encode_layers

        return encode_layers(self, images, layers, batch_size=batch_size, normalize=normalize)


def build_dinov2(name: str, *, weights=None, pooling=None, device=None, precision=None, image_size: int = 224,
                 return_layers=None, model_kwargs: dict | None = None, **rest) -> DinoV2Encoder:
    """Build a DINOv2 encoder. ``model_kwargs`` overrides timm architecture arguments
    (e.g. ``embed_dim``/``depth``/``num_heads`` for a non-standard checkpoint)."""
    import timm

    arch, width, pooling = dinov2_options(name, image_size, pooling, rest)
    path, source = dinov2_weights_file(name, arch, weights)
    kwargs = dict(model_kwargs or {})
    model = timm.create_model(arch, pretrained=False, num_classes=0, img_size=int(image_size), **kwargs)
    report = load_dinov2_weights(model, path)
    width = int(model.num_features)
    layers = check_layers(return_layers, len(model.blocks)) if return_layers else None
    config = vit_config(name, arch, image_size, pooling, width, source, DINOV2_LICENCE, kwargs, layers)
    return DinoV2Encoder(config, model, return_layers=layers, report=report, device=device, precision=precision,
                         weights_digest=file_digest(path))
