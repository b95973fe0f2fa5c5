"""open_clip encoders without torch or open_clip: weights folders, configs read from JSON, describers and
registrations of ``biomedclip``, ``clip-vit-b16`` and the ``openclip:ARCH`` family.

The loaders, towers and builders (torch, open_clip) are in :mod:`entrep.encoders.openclip`, imported on
the first build. See that module for the weights sources and the text-tower folder.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from entrep.encoders.config import ImageEncoderConfig, TextEncoderConfig, options_tuple
from entrep.encoders.devices import describe_precision
from entrep.encoders.registry import IMAGE, TEXT
from entrep.encoders.resolver import choose_source, find_weights_file, how_to_point, hub_files, offline_mode, weights_digest
from entrep.errors import UserError, WeightsError

#: the built towers' class names (part of the fingerprint)
IMAGE_KIND, TEXT_KIND = "ClipImageEncoder", "ClipTextEncoder"

CONFIG_FILE = "open_clip_config.json"
CHECKPOINTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
               "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
#: what a text-tower folder (BERT config + tokenizer) may hold; config.json and vocab.txt or tokenizer.json needed
TEXT_DIR_FILES = ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
BIOMEDCLIP_HUB = "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDCLIP_EXAMPLE = "local-dir:/path/to/BiomedCLIP"
LICENCE = {"biomedclip": "MIT (microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224)"}


def tokenizer_env_var(encoder_name: str) -> str:
    """``ENTREP_TOKENIZER_DIR_<NAME>``: folder with the text tower's HF config + tokenizer."""
    from entrep.encoders.resolver import env_var_for

    return env_var_for(encoder_name).replace("ENTREP_WEIGHTS_", "ENTREP_TOKENIZER_DIR_", 1)


def is_text_dir(d: Path) -> bool:
    if not (d / "config.json").is_file() or not ((d / "vocab.txt").is_file() or (d / "tokenizer.json").is_file()):
        return False
    try:
        return "model_type" in json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def resolve_text_dir(hf_name: str, model_folder: Path | None, tokenizer_dir, *, encoder_name: str) -> Path:
    """Folder with the HF text tower's config.json + tokenizer (see module docstring for the order)."""
    explicit = tokenizer_dir or os.environ.get(tokenizer_env_var(encoder_name), "").strip() or None
    if explicit:
        d = Path(explicit).expanduser().resolve()
        if not is_text_dir(d):
            raise WeightsError(f"{encoder_name}: tokenizer_dir {d} must hold config.json (with model_type) and "
                               f"vocab.txt or tokenizer.json (copy them from hf-hub:{hf_name})")
        return d
    if model_folder is not None and is_text_dir(model_folder):
        return model_folder
    if Path(hf_name).is_dir() and is_text_dir(Path(hf_name)):
        return Path(hf_name).resolve()
    hint = (f"the text tower needs {hf_name}'s config.json, vocab.txt, tokenizer_config.json and "
            f"special_tokens_map.json: copy them into the model folder or pass tokenizer_dir=/path "
            f"(or set {tokenizer_env_var(encoder_name)})")
    try:
        files = hub_files(hf_name, ["config.json"], optional=["vocab.txt", "tokenizer.json", "tokenizer_config.json",
                                                              "special_tokens_map.json"],
                          encoder_name=encoder_name, example=BIOMEDCLIP_EXAMPLE)
    except WeightsError as e:
        why = "offline mode is on" if offline_mode() else str(e).split("(", 1)[-1].split(")")[0]
        raise WeightsError(f"{encoder_name}: cannot get the text tower's config and tokenizer from hf-hub:{hf_name} "
                           f"({why}); {hint}") from None
    return files["config.json"].parent


def prepare_cfg(model_cfg: dict, model_folder: Path | None, tokenizer_dir, *, encoder_name: str,
                 quick_gelu: bool | None) -> tuple[dict, Path | None]:
    """Copy of an open_clip model config with no downloads left in it; returns (cfg, text_dir)."""
    cfg = copy.deepcopy(model_cfg)
    text_cfg, vision_cfg = cfg.setdefault("text_cfg", {}), cfg.setdefault("vision_cfg", {})
    text_dir = None
    if "hf_model_name" in text_cfg:
        text_dir = resolve_text_dir(text_cfg["hf_model_name"], model_folder, tokenizer_dir, encoder_name=encoder_name)
        text_cfg["hf_model_name"] = str(text_dir)
        text_cfg["hf_tokenizer_name"] = str(text_dir)
        text_cfg["hf_model_pretrained"] = False
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False
    if quick_gelu is not None:
        cfg["quick_gelu"] = bool(quick_gelu)
    return cfg, text_dir


def folder_of(source, *, encoder_name, example) -> Path | None:
    """The local open_clip model folder of an hf-hub or local-dir source (None for a file or tag)."""
    what = encoder_name
    folder: Path | None = None
    if source.kind == "hf-hub":
        files = hub_files(source.location, [CONFIG_FILE], optional=TEXT_DIR_FILES, any_of=CHECKPOINTS,
                          encoder_name=encoder_name, example=example)
        folder = files[CONFIG_FILE].parent
    elif source.kind == "local-dir":
        folder = Path(source.location)
        if not folder.is_dir():
            raise WeightsError(f"{what}: folder {folder} not found; {how_to_point(encoder_name, example)}")
        if not (folder / CONFIG_FILE).is_file():
            raise WeightsError(f"{what}: {folder} has no {CONFIG_FILE} (an open_clip model folder holds "
                               f"{CONFIG_FILE} + open_clip_pytorch_model.bin)")
    return folder


def read_folder(folder: Path, *, what: str) -> tuple[dict, tuple, tuple, Path]:
    """(model_cfg, mean, std, checkpoint) of an open_clip model folder; reads JSON only (no open_clip import)."""
    try:
        full = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
        model_cfg = full["model_cfg"]
    except (OSError, ValueError, KeyError) as e:
        raise WeightsError(f"{what}: {folder / CONFIG_FILE} is not a valid open_clip config ({e})") from None
    pre = full.get("preprocess_cfg", {})
    mean, std = tuple(pre.get("mean", OPENAI_MEAN)), tuple(pre.get("std", OPENAI_STD))
    return model_cfg, mean, std, find_weights_file(folder, CHECKPOINTS, what=what)


def family_default(name: str, weights) -> None:
    """A family name has no default weights: the user names a tag, file, repo or folder."""
    from entrep.encoders.resolver import env_var_for

    if weights is None and not os.environ.get(env_var_for(name)):
        raise UserError(f"{name}: give weights: an open_clip pretrained tag (e.g. openai), a checkpoint file, "
                        f"hf-hub:org/repo or local-dir:/path")


def describe_folder(name: str, default: str, example: str, weights, tokenizer_dir, quick_gelu):
    """(prepared cfg, mean, std, files) of an hf-hub/local-dir source from its JSON files; None otherwise."""
    source = choose_source(name, weights, default)
    folder = folder_of(source, encoder_name=name, example=example)
    if folder is None:  # a checkpoint file or pretrained tag: only open_clip knows the architecture
        return None
    model_cfg, mean, std, checkpoint = read_folder(folder, what=name)
    cfg, text_dir = prepare_cfg(model_cfg, folder, tokenizer_dir, encoder_name=name, quick_gelu=quick_gelu)
    files = [folder / CONFIG_FILE, checkpoint]
    if text_dir is not None:
        files += [text_dir / f for f in TEXT_DIR_FILES if (text_dir / f).is_file()]
    return source, cfg, mean, std, files


def describe_image_tower(name: str, default: str, example: str, *, weights, pooling, device, precision=None,
                    tokenizer_dir=None, return_layers=None, quick_gelu=None, **rest):
    if rest:
        raise UserError(f"{name}: unknown options {sorted(rest)}; known: precision, tokenizer_dir, return_layers, quick_gelu")
    if return_layers or (pooling or "proj") != "proj":
        return None  # token widths and block counts come from the built tower
    plan = describe_folder(name, default, example, weights, tokenizer_dir, quick_gelu)
    if plan is None:
        return None
    source, cfg, mean, std, files = plan
    size = cfg["vision_cfg"].get("image_size", 224)  # open_clip towers keep to_2tuple(image_size)
    size = (int(size), int(size)) if isinstance(size, int) else tuple(int(v) for v in size)
    embed = int(cfg["embed_dim"])
    config = ImageEncoderConfig(
        name=name, dim=embed, image_size=size, mean=tuple(mean), std=tuple(std), weights=str(source),
        pooling="proj", width=embed, interpolation="bicubic", licence=LICENCE.get(name, "see the model card of the weights"),
        architecture="open_clip", options=options_tuple({"quick_gelu": quick_gelu}))
    return config, weights_digest(files), describe_precision(precision, device), IMAGE_KIND


def describe_text_tower(name: str, default: str, example: str, *, weights, device, precision=None, tokenizer_dir=None,
                   quick_gelu=None, **rest):
    if rest:
        raise UserError(f"{name}: unknown options {sorted(rest)}; known: precision, tokenizer_dir, quick_gelu")
    plan = describe_folder(name, default, example, weights, tokenizer_dir, quick_gelu)
    if plan is None:
        return None
    source, cfg, _, _, files = plan
    config = TextEncoderConfig(name=name, dim=int(cfg["embed_dim"]), weights=str(source),
                               max_tokens=int(cfg["text_cfg"].get("context_length", 77)), languages=("en",),
                               pooling="model", licence=LICENCE.get(name, "see the model card"),
                               architecture="open_clip", options=options_tuple({"quick_gelu": quick_gelu}))
    return config, weights_digest(files), describe_precision(precision, device), TEXT_KIND


# ---- registration: builders are imported on the first build -------------------------
_SUMMARIES = {
    "biomedclip": ("BiomedCLIP ViT-B/16 image tower (joint space with its text tower)",
                   "BiomedCLIP PubMedBERT text tower (joint space with its image tower)"),
    "clip-vit-b16": ("OpenAI CLIP ViT-B/16 image tower (open_clip, tag openai)",
                     "OpenAI CLIP ViT-B/16 text tower (open_clip, tag openai)"),
    "openclip:": ("any open_clip architecture: openclip:ARCH + weights tag/file/hub/folder",) * 2,
}
_FUNCS = {"biomedclip": "biomedclip", "clip-vit-b16": "clip_b16", "openclip:": "openclip"}
for _name, (_image, _text) in _SUMMARIES.items():
    IMAGE.add(_name, f"entrep.encoders.openclip:build_{_FUNCS[_name]}_image", summary=_image)
    TEXT.add(_name, f"entrep.encoders.openclip:build_{_FUNCS[_name]}_text", summary=_text)


@IMAGE.describer("biomedclip")
def describe_biomedclip_image(name, *, weights=None, pooling=None, device=None, **options):
    return describe_image_tower(name, BIOMEDCLIP_HUB, BIOMEDCLIP_EXAMPLE, weights=weights, pooling=pooling, device=device,
                           **options)


@TEXT.describer("biomedclip")
def describe_biomedclip_text(name, *, weights=None, device=None, **options):
    return describe_text_tower(name, BIOMEDCLIP_HUB, BIOMEDCLIP_EXAMPLE, weights=weights, device=device, **options)


@IMAGE.describer("clip-vit-b16")
def describe_clip_b16_image(name, *, weights=None, pooling=None, device=None, **options):
    return describe_image_tower(name, "openai", "/path/to/ViT-B-16-openai.bin", weights=weights, pooling=pooling,
                           device=device, **options)


@TEXT.describer("clip-vit-b16")
def describe_clip_b16_text(name, *, weights=None, device=None, **options):
    return describe_text_tower(name, "openai", "/path/to/ViT-B-16-openai.bin", weights=weights, device=device, **options)


@IMAGE.describer("openclip:")
def describe_openclip_image(name, *, weights=None, pooling=None, device=None, **options):
    family_default(name, weights)
    return describe_image_tower(name, "", f"/path/to/{name.partition(':')[2]}.bin", weights=weights, pooling=pooling,
                           device=device, **options)


@TEXT.describer("openclip:")
def describe_openclip_text(name, *, weights=None, device=None, **options):
    family_default(name, weights)
    return describe_text_tower(name, "", f"/path/to/{name.partition(':')[2]}.bin", weights=weights, device=device,
                          **options)
