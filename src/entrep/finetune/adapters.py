"""Where and how a frozen encoder is adapted: peft LoRA or partial unfreezing.

Two backbone kinds are understood:

- ``vit``: an encoder with a ``.vit`` view of a timm VisionTransformer
  (DINOv2, GastroNet, EndoViT, open_clip towers with a timm trunk such as
  BiomedCLIP; open_clip's own ViT for LoRA only). Blocks are its transformer blocks.
- ``cnn``: EfficientNet-Lite (``model._blocks``); the head convolution counts as the last block.

LoRA (:func:`apply_lora`) goes through ``peft.inject_adapter_in_model`` on the
modules *inside the blocks* whose last name part is one of ``targets``
(ViT default: attention ``qkv``/``proj`` and MLP ``fc1``/``fc2``). On a CNN
whose modules carry none of those names, the targets are its 1x1 convolutions
(expand/project convs and the head conv; peft supports ``Conv2d``).
Partial fine-tuning (:func:`apply_partial`) unfreezes the last ``layers`` blocks
(plus the final norm of a ViT).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from entrep.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Backbone:
    """The adaptable parts of an encoder's torch module."""

    kind: str  # "vit" | "cnn"
    root: nn.Module  # the encoder's ``.model`` (what state dict keys are relative to)
    blocks: list[nn.Module]
    tail: list[nn.Module]  # unfrozen with the last block: ViT final norm, CNN head conv

    def block_names(self) -> list[str]:
        names = {id(m): n for n, m in self.root.named_modules()}
        return [names[id(b)] for b in self.blocks]


def backbone_of(encoder) -> Backbone:
    """Introspect an encoder (or a clone of one) for its blocks; UserError if it cannot be adapted."""
    model = encoder.model
    vit = None
    try:
        vit = encoder.vit if hasattr(type(encoder), "vit") else None
    except UserError:
        vit = None
    if vit is not None:
        return Backbone("vit", model, list(vit.blocks), [vit.norm])
    if hasattr(model, "_blocks") and hasattr(model, "_conv_head"):
        return Backbone("cnn", model, list(model._blocks), [model._conv_head])
    raise UserError(f"encoder {encoder.config.name} ({type(model).__name__}) cannot be fine-tuned: "
                    f"only ViT towers and EfficientNet-Lite are supported")


def lora_targets(bb: Backbone, targets: tuple[str, ...]) -> list[str]:
    """Full module names (relative to ``bb.root``) that LoRA adapts."""
    inside: list[tuple[str, nn.Module]] = []
    block_ids = {id(m) for b in [*bb.blocks, *bb.tail] for m in b.modules()}
    for name, m in bb.root.named_modules():
        if id(m) in block_ids and isinstance(m, (nn.Linear, nn.Conv2d)):
            inside.append((name, m))
    wanted = set(targets)
    chosen = [n for n, _ in inside if n.rsplit(".", 1)[-1] in wanted]
    if not chosen and bb.kind == "cnn":
        chosen = [n for n, m in inside if isinstance(m, nn.Conv2d) and tuple(m.kernel_size) == (1, 1)]
        log.info("LoRA on the CNN's %d 1x1 convolutions (targets %s name none of its modules)", len(chosen), list(targets))
    if not chosen:
        leaves = sorted({n.rsplit(".", 1)[-1] for n, _ in inside})
        raise UserError(f"LoRA targets {list(targets)} match no Linear/Conv2d module inside the blocks; "
                        f"module names there: {', '.join(leaves)}")
    return chosen


def apply_lora(bb: Backbone, *, rank: int, alpha: float, dropout: float, targets: tuple[str, ...],
               names: list[str] | None = None) -> list[str]:
    """Inject LoRA adapters into ``bb.root`` in place; only their parameters stay trainable.

    ``names``: exact module names (as a saved adapter records them); default: resolved from ``targets``."""
    from peft import LoraConfig, inject_adapter_in_model

    names = list(names) if names else lora_targets(bb, targets)
    for n in names:
        _plain_conv(bb.root, n)
    for p in bb.root.parameters():
        p.requires_grad_(False)
    cfg = LoraConfig(r=int(rank), lora_alpha=float(alpha), lora_dropout=float(dropout), target_modules=names, bias="none")
    inject_adapter_in_model(cfg, bb.root)
    for n, p in bb.root.named_parameters():
        p.requires_grad_("lora_" in n)
    log.info("LoRA r=%d alpha=%g on %d modules", rank, alpha, len(names))
    return names


def _plain_conv(root: nn.Module, name: str) -> None:
    """Replace a 1x1 stride-1 ``Conv2d`` subclass (EfficientNet's static "same" padding conv) by an
    equal plain ``nn.Conv2d``: peft rebuilds adapters with ``type(base_layer)``, which such subclasses refuse."""
    m = root.get_submodule(name)
    if not isinstance(m, nn.Conv2d) or type(m) is nn.Conv2d:
        return
    pad = getattr(m, "static_padding", None)
    if tuple(m.kernel_size) != (1, 1) or tuple(m.stride) != (1, 1) or not (pad is None or type(pad).__name__ == "Identity"):
        raise UserError(f"LoRA target {name} ({type(m).__name__}, kernel {m.kernel_size}) is not a plain convolution; "
                        f"choose 1x1 convolutions or Linear layers as targets")
    plain = nn.Conv2d(m.in_channels, m.out_channels, 1, stride=1, padding=m.padding, groups=m.groups,
                      bias=m.bias is not None).to(m.weight.device, m.weight.dtype)
    plain.load_state_dict(m.state_dict())
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, plain)


def apply_partial(bb: Backbone, layers: int) -> list[str]:
    """Unfreeze the last ``layers`` blocks (and the tail); returns their module names."""
    if layers > len(bb.blocks):
        raise UserError(f"finetune layers={layers} but the backbone has only {len(bb.blocks)} blocks")
    for p in bb.root.parameters():
        p.requires_grad_(False)
    for m in [*bb.blocks[len(bb.blocks) - layers:], *bb.tail]:
        for p in m.parameters():
            p.requires_grad_(True)
    names = {id(m): n for n, m in bb.root.named_modules()}
    return bb.block_names()[len(bb.blocks) - layers:] + [names[id(t)] for t in bb.tail]


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Detached CPU copies of the parameters that require grad, by name."""
    return {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}


def count_trainable(module: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in module.parameters())
    return sum(p.numel() for p in module.parameters() if p.requires_grad), total
