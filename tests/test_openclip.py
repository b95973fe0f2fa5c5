"""open_clip encoders: a tiny BiomedCLIP-architecture model saved in open_clip's local-dir layout
and loaded back through the same code path as the real BiomedCLIP, with the network unreachable."""

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from entrep.encoders import build_image_encoder, build_text_encoder
from entrep.errors import UserError, WeightsError

TINY_TIMM = "vit_entrep_test_tiny_patch16"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "spur", "on", "the", "septum", "ear", "nose", "left",
         "right", "##s", "tympanic", "membrane", "is", "intact", "cone", "of", "light"]
TEXT_FILES = ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def _register_tiny_vit():
    import timm
    from timm.models import register_model

    if TINY_TIMM in timm.list_models(TINY_TIMM):
        return

    @register_model
    def vit_entrep_test_tiny_patch16(pretrained=False, **kw):
        for k in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kw.pop(k, None)
        args = dict(img_size=64, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0)
        args.update(kw)
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, **args)


def _model_cfg():
    """BiomedCLIP's open_clip config, shrunk (same towers, pooler and projection types)."""
    return {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": TINY_TIMM, "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 64},
        "text_cfg": {"hf_model_name": "entrep-test/tiny-biomedbert", "hf_tokenizer_name": "entrep-test/tiny-biomedbert",
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 32},
    }


def _write_text_files(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    (d / "config.json").write_text(json.dumps({
        "model_type": "bert", "architectures": ["BertModel"], "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": len(VOCAB), "max_position_embeddings": 64,
        "pad_token_id": 0, "type_vocab_size": 2}))
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"do_lower_case": True, "tokenizer_class": "BertTokenizer", "model_max_length": 32}))
    (d / "special_tokens_map.json").write_text(json.dumps(
        {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]"}))


def build_tiny_biomedclip(d):
    """open_clip local-dir layout in ``d``: open_clip_config.json + open_clip_pytorch_model.bin + BERT config/tokenizer."""
    from open_clip.model import CustomTextCLIP

    _register_tiny_vit()
    _write_text_files(d)
    (d / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": _model_cfg(),
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}}))
    cfg = copy.deepcopy(_model_cfg())
    cfg["text_cfg"].update(hf_model_name=str(d), hf_model_pretrained=False)
    torch.manual_seed(0)
    model = CustomTextCLIP(**cfg)
    torch.save(model.state_dict(), d / "open_clip_pytorch_model.bin")
    return d


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    return build_tiny_biomedclip(tmp_path_factory.mktemp("tiny-biomedclip"))


def _frames(n=3):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(n)]


def test_tiny_biomedclip_loads_through_local_dir(tiny_clip_dir, no_network):
    img = build_image_encoder("biomedclip", weights=f"local-dir:{tiny_clip_dir}", device="cpu")
    txt = build_text_encoder("biomedclip", weights=f"local-dir:{tiny_clip_dir}", device="cpu")
    assert img.loaded is txt.loaded  # one model shared by both towers
    assert img.config.dim == 16 and txt.config.dim == 16  # embed_dim of the config
    assert img.config.image_size == (64, 64) and img.config.pooling == "proj"
    v = img.encode(_frames())
    t = txt.encode(["a spur on the septum", "the tympanic membrane is intact", "cone of light"])
    for a in (v, t):
        assert a.dtype == np.float32 and np.isfinite(a).all()
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(t[0], t[1])
    saved = torch.load(tiny_clip_dir / "open_clip_pytorch_model.bin", weights_only=True)
    loaded = img.model.state_dict()
    assert set(saved) == set(loaded)
    for k, w in saved.items():
        assert torch.equal(loaded[k].cpu(), w), k


def test_plain_folder_path_is_a_local_dir(tiny_clip_dir):
    enc = build_image_encoder("biomedclip", weights=str(tiny_clip_dir))
    assert enc.config.weights == f"local-dir:{tiny_clip_dir.resolve()}"


def test_per_layer_cls_tokens(tiny_clip_dir):
    ims = _frames(2)
    enc = build_image_encoder("biomedclip", weights=str(tiny_clip_dir), return_layers=[0, -1])
    assert enc.config.dim == 2 * 64 and enc.config.pooling == "cls-layers:0,1"
    v = enc.encode(ims)
    assert v.shape == (2, 128)
    layers = enc.encode_layers(ims, [0, 1])
    assert layers.shape == (2, 2, 64)
    np.testing.assert_allclose(np.linalg.norm(layers, axis=2), 1.0, atol=1e-5)
    # the last block's CLS (final norm applied) is the trunk's own CLS output
    x = torch.stack([enc.preprocess(im) for im in ims])
    with torch.no_grad():
        cls = enc.model.visual.trunk.forward_features(x)[:, 0]
    np.testing.assert_allclose(layers[:, 1], torch.nn.functional.normalize(cls, dim=-1).numpy(), atol=1e-5)
    with pytest.raises(UserError, match="out of range"):
        build_image_encoder("biomedclip", weights=str(tiny_clip_dir), return_layers=[5])


def test_token_pooling_of_the_image_tower(tiny_clip_dir):
    proj = build_image_encoder("biomedclip", weights=str(tiny_clip_dir))
    grid = build_image_encoder("biomedclip", weights=str(tiny_clip_dir), pooling="grid2")
    assert grid.config.dim == 5 * 64
    assert grid.encode(_frames(1)).shape == (1, 320)
    assert grid.fingerprint != proj.fingerprint


def test_tokenizer_dir_for_air_gapped_machines(tiny_clip_dir, tmp_path, no_network):
    model_only = tmp_path / "BiomedCLIP"
    model_only.mkdir()
    for f in ("open_clip_config.json", "open_clip_pytorch_model.bin"):
        shutil.copy(tiny_clip_dir / f, model_only / f)
    with pytest.raises(WeightsError) as e:
        build_text_encoder("biomedclip", weights=f"local-dir:{model_only}")
    assert "tokenizer_dir" in str(e.value) and "ENTREP_TOKENIZER_DIR_BIOMEDCLIP" in str(e.value)
    bert = tmp_path / "BiomedBERT"
    bert.mkdir()
    for f in TEXT_FILES:
        shutil.copy(tiny_clip_dir / f, bert / f)
    ref = build_text_encoder("biomedclip", weights=f"local-dir:{tiny_clip_dir}")
    txt = build_text_encoder("biomedclip", weights=f"local-dir:{model_only}", tokenizer_dir=str(bert))
    np.testing.assert_allclose(txt.encode(["a spur on the septum"]), ref.encode(["a spur on the septum"]), atol=1e-6)


def test_tokenizer_dir_from_env(tiny_clip_dir, tmp_path, monkeypatch):
    model_only = tmp_path / "m"
    model_only.mkdir()
    for f in ("open_clip_config.json", "open_clip_pytorch_model.bin"):
        shutil.copy(tiny_clip_dir / f, model_only / f)
    monkeypatch.setenv("ENTREP_TOKENIZER_DIR_BIOMEDCLIP", str(tiny_clip_dir))
    assert build_text_encoder("biomedclip", weights=str(model_only)).encode(["septum"]).shape == (1, 16)


def test_checkpoint_that_does_not_fit_is_refused(tiny_clip_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_clip_dir, bad)
    sd = torch.load(bad / "open_clip_pytorch_model.bin", weights_only=True)
    del sd["visual.trunk.blocks.1.attn.qkv.weight"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, bad / "open_clip_pytorch_model.bin")
    with pytest.raises(WeightsError) as e:
        build_image_encoder("biomedclip", weights=str(bad))
    assert "visual.trunk.blocks.1.attn.qkv.weight" in str(e.value) and "extra.weight" in str(e.value)


def test_folder_without_config_and_missing_folder(tmp_path):
    with pytest.raises(WeightsError, match="open_clip_config.json"):
        build_image_encoder("biomedclip", weights=f"local-dir:{tmp_path}")
    with pytest.raises(WeightsError, match="not found"):
        build_image_encoder("biomedclip", weights=f"local-dir:{tmp_path / 'nope'}")


def test_any_open_clip_architecture_from_a_checkpoint_file(tmp_path, no_network):
    """openclip:ARCH + a local checkpoint: open_clip's own ViT and BPE tokenizer (no download)."""
    import open_clip

    _register_tiny_vit()
    cfg = {"embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    cfg_file = tmp_path / "entrep-tiny-clip.json"
    cfg_file.write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_file)
    torch.manual_seed(1)
    ref = open_clip.model.CLIP(**cfg)
    ckpt = tmp_path / "tiny.pt"
    torch.save(ref.state_dict(), ckpt)
    img = build_image_encoder("openclip:entrep-tiny-clip", weights=str(ckpt), return_layers=[-1])
    txt = build_text_encoder("openclip:entrep-tiny-clip", weights=str(ckpt))
    frame = _frames(1)
    last_cls = img.encode(frame)
    assert last_cls.shape == (1, 32)
    # the last block's CLS after ln_post, projected, is the model's own image embedding
    x = img.preprocess(frame[0])[None]
    with torch.no_grad():
        own = torch.nn.functional.normalize(img.model.encode_image(x), dim=-1).numpy()
    ours = torch.nn.functional.normalize(torch.from_numpy(last_cls) @ img.model.visual.proj, dim=-1).numpy()
    np.testing.assert_allclose(ours, own, atol=1e-5)
    assert txt.encode(["the cone of light"]).shape == (1, 8)
    with pytest.raises(WeightsError, match="unknown pretrained tag"):
        build_image_encoder("openclip:ViT-B-16", weights="no-such-tag")
