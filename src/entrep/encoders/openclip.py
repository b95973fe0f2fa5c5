"""open_clip encoders: BiomedCLIP and any CLIP model + pretrained tag, image and text towers.

Sources
- ``biomedclip``: ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` (default)
  or ``local-dir:/path`` holding ``open_clip_config.json`` + ``open_clip_pytorch_model.bin``
  (or ``.safetensors``).
- ``clip-vit-b16``: open_clip ``ViT-B-16`` with the ``openai`` tag.
- ``openclip:ARCH``: any open_clip architecture; weights = a pretrained tag
  (``openai``, ``laion2b_s34b_b88k`` ...), a checkpoint file, a hub repo or a folder.

BiomedCLIP's text tower is a Hugging Face BERT (BiomedBERT). Its config and
tokenizer come from ``tokenizer_dir`` (option, or ``$ENTREP_TOKENIZER_DIR_BIOMEDCLIP``),
else from the model folder itself when it holds ``config.json`` + ``vocab.txt``,
else from the hub (``microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract``).
The loaded open_clip config is rewritten to point at that folder before the
model is built, so nothing reaches for the network.

The image and text towers are separate encoders sharing one loaded model
(cached per source within the process while an encoder holds it).
Image pooling ``proj`` (default) is the model's own projected embedding, in the
joint image-text space; token poolings (``mean``, ``cls``, ``lr``, ``grid2``)
give un-projected trunk features. ``return_layers=[...]`` gives the CLS token
after each named block (0-based, negatives from the end), each L2-normalised,
concatenated - for multi-level CLS fusion.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from entrep.encoders.base import ImageEncoder, TextEncoder
from entrep.encoders.config import ImageEncoderConfig, TextEncoderConfig, options_tuple
from entrep.encoders.pooling import TOKEN_POOLINGS, check_pooling, pooled_dim
from entrep.encoders.openclip_spec import (  # noqa: F401  (re-exported: the torch-free half of this module)
    BIOMEDCLIP_EXAMPLE,
    BIOMEDCLIP_HUB,
    CHECKPOINTS,
    CONFIG_FILE,
    LICENCE,
    OPENAI_MEAN,
    OPENAI_STD,
    TEXT_DIR_FILES,
    family_default,
    folder_of,
    prepare_cfg,
    read_folder,
    resolve_text_dir,
    tokenizer_env_var,
)
from entrep.encoders.resolver import WeightsSource, choose_source, how_to_point, hub_files, require_file, weights_digest
from entrep.encoders.vit import check_layers, layer_cls, open_clip_visual_parts, pooled_tokens
from entrep.errors import UserError, WeightsError

log = logging.getLogger(__name__)


# ---- loading ---------------------------------------------------------------
@dataclasses.dataclass(eq=False)
class LoadedClip:
    """One loaded open_clip model with what both towers need."""

    model: torch.nn.Module
    tokenizer: object
    embed_dim: int
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    files: list[Path]
    source: str


_LOADED: "weakref.WeakValueDictionary[tuple, LoadedClip]" = weakref.WeakValueDictionary()
_LOAD_LOCK = threading.Lock()


def _instantiate(model_cfg: dict, *, what: str) -> torch.nn.Module:
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(model_cfg)
    if "multimodal_cfg" in cfg:
        raise WeightsError(f"{what}: CoCa-style models (multimodal_cfg) are not supported")
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    try:
        return (CustomTextCLIP if custom else CLIP)(**cfg)
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise WeightsError(f"{what}: cannot build the model from its config ({str(e).splitlines()[0][:300]})") from None


def load_strict(model: torch.nn.Module, checkpoint: Path, *, what: str) -> None:
    """Load an open_clip checkpoint with open_clip's own key fixes, then insist every key matched."""
    from open_clip.factory import load_checkpoint

    try:
        res = load_checkpoint(model, str(checkpoint), strict=False)
    except RuntimeError as e:  # size mismatches
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln][:3]
        raise WeightsError(f"{what}: {checkpoint} does not fit the model config: {'; '.join(lines) or str(e)[:300]}") from None
    except Exception as e:
        raise WeightsError(f"{what}: cannot read checkpoint {checkpoint} ({type(e).__name__}: {str(e)[:300]})") from None
    missing = list(getattr(res, "missing_keys", []) or [])
    unexpected = list(getattr(res, "unexpected_keys", []) or [])
    if missing or unexpected:
        raise WeightsError(f"{what}: {checkpoint} does not match the model config: missing {missing[:8]} "
                           f"({len(missing)}), unexpected {unexpected[:8]} ({len(unexpected)})")


def _tokenizer(text_cfg: dict, text_dir: Path | None):
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    ctx = int(text_cfg.get("context_length", 77))
    if text_dir is not None:
        return HFTokenizer(str(text_dir), context_length=ctx, **text_cfg.get("tokenizer_kwargs", {}))
    return SimpleTokenizer(context_length=ctx)


def load_open_clip(
    source: WeightsSource,
    *,
    arch: str | None,
    encoder_name: str,
    example: str,
    tokenizer_dir=None,
    quick_gelu: bool | None = None,
    device=None,
) -> LoadedClip:
    """Resolve ``source`` to local files and build the open_clip model strictly.

    Cached per (source, architecture, tokenizer folder, quick_gelu, device) while
    an encoder holds it, so the image and text towers share one model.
    """
    from entrep.encoders.base import resolve_device

    key = (str(source), arch, str(tokenizer_dir or os.environ.get(tokenizer_env_var(encoder_name), "")), quick_gelu,
           str(resolve_device(device)))
    with _LOAD_LOCK:
        hit = _LOADED.get(key)
        if hit is not None:
            return hit
        loaded = _load(source, arch=arch, encoder_name=encoder_name, example=example, tokenizer_dir=tokenizer_dir,
                       quick_gelu=quick_gelu)
        _LOADED[key] = loaded
        return loaded


def _load(source, *, arch, encoder_name, example, tokenizer_dir, quick_gelu) -> LoadedClip:
    what = encoder_name
    mean, std = OPENAI_MEAN, OPENAI_STD
    folder = folder_of(source, encoder_name=encoder_name, example=example)
    if folder is not None:
        model_cfg, mean, std, checkpoint = read_folder(folder, what=what)
        files = [folder / CONFIG_FILE, checkpoint]
    else:
        import open_clip

        if not arch:
            raise WeightsError(f"{what}: a checkpoint file or tag needs an architecture name (openclip:ARCH)")
        model_cfg = open_clip.get_model_config(arch)
        if model_cfg is None:
            raise UserError(f"{what}: unknown open_clip architecture {arch!r}; see open_clip.list_models()")
        if source.kind == "file":
            checkpoint = require_file(source, what=what)
        elif source.kind == "tag":
            tag_cfg = open_clip.get_pretrained_cfg(arch, source.location)
            if not tag_cfg:
                tags = open_clip.list_pretrained_tags_by_model(arch)
                raise WeightsError(f"{what}: unknown pretrained tag {source.location!r} for {arch}; tags: {', '.join(tags)}")
            hub = tag_cfg.get("hf_hub", "")
            if not hub:
                raise WeightsError(f"{what}: tag {source.location!r} has no hub copy; download it and pass the file")
            parts = hub.split("/")
            repo, fname = "/".join(parts[:2]), "/".join(parts[2:])
            names = [fname] if fname else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
            checkpoint = hub_files(repo, [], any_of=names, encoder_name=encoder_name,
                                   example=f"/path/to/{arch}-{source.location}.bin")["*"]
            mean, std = tuple(tag_cfg.get("mean", mean)), tuple(tag_cfg.get("std", std))
            if quick_gelu is None:
                quick_gelu = bool(tag_cfg.get("quick_gelu", False)) or None
        else:
            raise WeightsError(f"{what}: weights source {source} is not usable here; {how_to_point(encoder_name, example)}")
        files = [checkpoint]
    cfg, text_dir = prepare_cfg(model_cfg, folder, tokenizer_dir, encoder_name=encoder_name, quick_gelu=quick_gelu)
    if text_dir is not None:
        files += [text_dir / f for f in TEXT_DIR_FILES if (text_dir / f).is_file()]
    model = _instantiate(cfg, what=what)
    load_strict(model, checkpoint, what=what)
    size = getattr(model.visual, "image_size", cfg["vision_cfg"].get("image_size", 224))
    size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
    log.info("%s: loaded %s (%s)", what, source, checkpoint)
    return LoadedClip(model=model.eval(), tokenizer=_tokenizer(cfg["text_cfg"], text_dir), embed_dim=int(cfg["embed_dim"]),
                      image_size=size, mean=mean, std=std, files=files, source=str(source))


# ---- encoders ----------------------------------------------------------------
class ClipImageEncoder(ImageEncoder):
    """open_clip image tower: projected embedding, pooled trunk tokens, or per-layer CLS."""

    def __init__(self, config: ImageEncoderConfig, loaded: LoadedClip, *, return_layers=None, **kw) -> None:
        super().__init__(config, loaded.model, **kw)
        self.loaded = loaded
        self.return_layers = tuple(return_layers) if return_layers else None

    @property
    def vit(self):
        return open_clip_visual_parts(self.model.visual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.return_layers:
            cls = layer_cls(self.vit, x, self.return_layers)
            return torch.nn.functional.normalize(cls.float(), dim=-1).flatten(1)
        if self.config.pooling == "proj":
            return self.model.encode_image(x)
        return pooled_tokens(self.vit, x, self.config.pooling)

    def encode_layers(self, images, layers: Sequence[int], *, batch_size: int = 32, normalize: bool = True) -> np.ndarray:
        """CLS token after each block in ``layers``: (N, L, width) float32."""
        return encode_layers(self, images, layers, batch_size=batch_size, normalize=normalize)


def encode_layers(enc: ImageEncoder, images, layers, *, batch_size: int, normalize: bool) -> np.ndarray:
    from entrep.data.images import load_rgb

    parts = enc.vit
    layers = check_layers(layers, len(parts.blocks))
    items = list(images)
    out = np.empty((len(items), len(layers), parts.width), dtype=np.float32)
    for s in range(0, len(items), batch_size):
        pil = [im if not isinstance(im, (str, Path)) else load_rgb(im) for im in items[s:s + batch_size]]
        x = torch.stack([enc.preprocess(im) for im in pil]).to(enc.device)
        from entrep.encoders.base import autocast_for

        with torch.inference_mode(), autocast_for(enc.device, enc.precision):
            v = layer_cls(parts, x, layers).float()
        if normalize:
            v = torch.nn.functional.normalize(v, dim=-1)
        out[s:s + len(pil)] = v.cpu().numpy()
    return out


class ClipTextEncoder(TextEncoder):
    """open_clip text tower: tokenizer + encode_text (the joint space)."""

    def __init__(self, config: TextEncoderConfig, loaded: LoadedClip, **kw) -> None:
        super().__init__(config, loaded.model, **kw)
        self.loaded = loaded

    def forward(self, texts: list[str]) -> torch.Tensor:
        tokens = self.loaded.tokenizer(texts)
        return self.model.encode_text(tokens.to(self.device))


def _image_config(name: str, loaded: LoadedClip, pooling: str, return_layers, options: dict) -> ImageEncoderConfig:
    width = loaded.embed_dim
    if return_layers:
        parts = open_clip_visual_parts(loaded.model.visual)
        layers = check_layers(return_layers, len(parts.blocks))
        pooling, width, dim = "cls-layers:" + ",".join(map(str, layers)), parts.width, len(layers) * parts.width
    elif pooling == "proj":
        dim = loaded.embed_dim
    else:
        check_pooling(pooling, TOKEN_POOLINGS)
        width = open_clip_visual_parts(loaded.model.visual).width
        dim = pooled_dim(pooling, width)
    return ImageEncoderConfig(
        name=name, dim=dim, image_size=loaded.image_size, mean=tuple(loaded.mean), std=tuple(loaded.std),
        weights=loaded.source, pooling=pooling, width=width, interpolation="bicubic",
        licence=LICENCE.get(name, "see the model card of the weights"), architecture="open_clip",
        options=options_tuple(options))


def _build_image(name: str, arch: str | None, default: str, example: str, *, weights, pooling, device,
                 precision=None, tokenizer_dir=None, return_layers=None, quick_gelu=None, **rest) -> ClipImageEncoder:
    if rest:
        raise UserError(f"{name}: unknown options {sorted(rest)}; known: precision, tokenizer_dir, return_layers, quick_gelu")
    source = choose_source(name, weights, default)
    loaded = load_open_clip(source, arch=arch, encoder_name=name, example=example, tokenizer_dir=tokenizer_dir,
                            quick_gelu=quick_gelu, device=device)
    layers = None
    if return_layers:
        layers = check_layers(return_layers, len(open_clip_visual_parts(loaded.model.visual).blocks))
    config = _image_config(name, loaded, pooling or "proj", layers, {"quick_gelu": quick_gelu})
    return ClipImageEncoder(config, loaded, return_layers=layers, device=device, precision=precision,
                            weights_digest=weights_digest(loaded.files))


def _build_text(name: str, arch: str | None, default: str, example: str, *, weights, device, precision=None,
                tokenizer_dir=None, quick_gelu=None, **rest) -> ClipTextEncoder:
    if rest:
        raise UserError(f"{name}: unknown options {sorted(rest)}; known: precision, tokenizer_dir, quick_gelu")
    source = choose_source(name, weights, default)
    loaded = load_open_clip(source, arch=arch, encoder_name=name, example=example, tokenizer_dir=tokenizer_dir,
                            quick_gelu=quick_gelu, device=device)
    ctx = int(getattr(loaded.tokenizer, "context_length", 77) or 77)
    config = TextEncoderConfig(name=name, dim=loaded.embed_dim, weights=loaded.source, max_tokens=ctx,
                               languages=("en",), pooling="model", licence=LICENCE.get(name, "see the model card"),
                               architecture="open_clip", options=options_tuple({"quick_gelu": quick_gelu}))
    return ClipTextEncoder(config, loaded, device=device, precision=precision,
                           weights_digest=weights_digest(loaded.files))


def build_biomedclip_image(name, *, weights=None, pooling=None, device=None, **options):
    return _build_image(name, None, BIOMEDCLIP_HUB, BIOMEDCLIP_EXAMPLE, weights=weights, pooling=pooling,
                        device=device, **options)


def build_biomedclip_text(name, *, weights=None, device=None, **options):
    return _build_text(name, None, BIOMEDCLIP_HUB, BIOMEDCLIP_EXAMPLE, weights=weights, device=device, **options)


def build_clip_b16_image(name, *, weights=None, pooling=None, device=None, **options):
    return _build_image(name, "ViT-B-16", "openai", "/path/to/ViT-B-16-openai.bin", weights=weights,
                        pooling=pooling, device=device, **options)


def build_clip_b16_text(name, *, weights=None, device=None, **options):
    return _build_text(name, "ViT-B-16", "openai", "/path/to/ViT-B-16-openai.bin", weights=weights, device=device,
                       **options)


def build_openclip_image(name, *, weights=None, pooling=None, device=None, **options):
    arch = name.partition(":")[2]
    family_default(name, weights)
    return _build_image(name, arch, "", f"/path/to/{arch}.bin", weights=weights, pooling=pooling,
                        device=device, **options)


def build_openclip_text(name, *, weights=None, device=None, **options):
    arch = name.partition(":")[2]
    family_default(name, weights)
    return _build_text(name, arch, "", f"/path/to/{arch}.bin", weights=weights, device=device,
                       **options)
