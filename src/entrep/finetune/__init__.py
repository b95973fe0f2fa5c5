"""Backbone adaptation (docs/finetune.md): LoRA / partial fine-tuning of an image encoder,
multi-level CLS fusion, CE + image-text contrastive training, the dual-backbone metric head
and soft class-aware ranking.

>>> adapted = finetune_encoder(extractor, train, val, taxonomy, cfg)   # cfg: entrep.config.FinetuneConfig
>>> adapted.save(folder); again = load_adapted(folder, extractor.image_encoder("head"))
"""

from entrep.finetune.cls_fusion import CLSFusion
from entrep.finetune.encoder import AdaptedEncoder, load_adapted
from entrep.finetune.metric import MetricHead, mirror_batches, recall_at_1, soft_class_rank, tune_rank_alpha
from entrep.finetune.trainer import finetune_encoder
from entrep.finetune.views import flip_with_swap, same_class_mixup, same_class_partners

__all__ = [
    "AdaptedEncoder", "CLSFusion", "MetricHead", "finetune_encoder", "flip_with_swap", "load_adapted", "mirror_batches",
    "recall_at_1", "same_class_mixup", "same_class_partners", "soft_class_rank", "tune_rank_alpha",
]
