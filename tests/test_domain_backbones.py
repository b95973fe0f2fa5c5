"""GastroNet (DINO ViT-S/16) and EndoViT (MAE ViT-B/16) checkpoints: layouts recognised, loaded strictly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from entrep.encoders import build_image_encoder
from entrep.errors import WeightsError

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
SIZE = 32  # 2 x 2 patches of 16 px


def _tiny_vit(arch: str, seed: int = 0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False, num_classes=0, img_size=SIZE, **TINY).eval()


def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 52, 3), dtype=np.uint8)) for _ in range(3)]


def _reference(model, enc, images):
    """Grid-pooled tokens computed straight from the original timm model."""
    from entrep.encoders.pooling import pool_tokens

    x = torch.stack([enc.preprocess(im) for im in images])
    with torch.no_grad():
        t = model.forward_features(x)
        v = pool_tokens(t[:, 1:], tuple(model.patch_embed.grid_size), "grid2", cls=t[:, 0])
    return torch.nn.functional.normalize(v, dim=-1).numpy()


def test_gastronet_dino_training_checkpoint_is_converted_and_matches_the_model(tmp_path):
    model = _tiny_vit("vit_small_patch16_224")
    sd = model.state_dict()
    ckpt = {
        "teacher": {**{f"backbone.{k}": v for k, v in sd.items()},
                    "head.mlp.0.weight": torch.zeros(8, 32), "head.last_layer.weight_g": torch.ones(8, 1)},
        "student": {f"module.backbone.{k}": torch.zeros_like(v) for k, v in sd.items()},
        "epoch": 100, "args": {"arch": "vit_small"},
    }
    torch.save(ckpt, tmp_path / "gastronet.pth")
    enc = build_image_encoder("gastronet-vits16", weights=str(tmp_path / "gastronet.pth"), image_size=SIZE,
                              model_kwargs=TINY, device="cpu")
    assert "teacher" in enc.load_report.wrapper
    assert any("DINO projection head" in r for r in enc.load_report.dropped)
    ims = _images()
    np.testing.assert_allclose(enc.encode(ims), _reference(model, enc, ims), atol=1e-6)


def test_gastronet_plain_backbone_file_with_module_prefix_loads(tmp_path):
    model = _tiny_vit("vit_small_patch16_224", seed=3)
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, tmp_path / "plain.pth")
    enc = build_image_encoder("gastronet", weights=str(tmp_path / "plain.pth"), image_size=SIZE, model_kwargs=TINY,
                              device="cpu")
    ims = _images()
    np.testing.assert_allclose(enc.encode(ims), _reference(model, enc, ims), atol=1e-6)


def test_endovit_mae_pretraining_checkpoint_drops_the_decoder(tmp_path):
    model = _tiny_vit("vit_base_patch16_224", seed=1)
    sd = dict(model.state_dict())
    sd.update({"mask_token": torch.zeros(1, 1, 16), "decoder_embed.weight": torch.zeros(16, 32),
               "decoder_blocks.0.attn.qkv.weight": torch.zeros(48, 16), "decoder_pred.weight": torch.zeros(768, 16)})
    torch.save({"model": sd, "epoch": 400}, tmp_path / "endovit.pth")
    enc = build_image_encoder("endovit-vitb16", weights=str(tmp_path / "endovit.pth"), image_size=SIZE,
                              model_kwargs=TINY, device="cpu")
    assert enc.load_report.layout == "MAE pre-training checkpoint"
    assert len(enc.load_report.dropped["training-only MAE decoder and mask token"]) == 4
    ims = _images()
    np.testing.assert_allclose(enc.encode(ims), _reference(model, enc, ims), atol=1e-6)


def test_wrong_keys_are_named_and_nothing_is_loaded(tmp_path):
    sd = dict(_tiny_vit("vit_base_patch16_224").state_dict())
    sd.pop("blocks.1.mlp.fc2.weight")
    sd["blocks.1.extra.weight"] = torch.zeros(2)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as e:
        build_image_encoder("endovit", weights=str(tmp_path / "bad.pth"), image_size=SIZE, model_kwargs=TINY)
    assert "blocks.1.mlp.fc2.weight" in str(e.value) and "blocks.1.extra.weight" in str(e.value)


def test_fine_tuned_mae_classifier_is_refused_with_a_reason(tmp_path):
    sd = {k: v for k, v in _tiny_vit("vit_base_patch16_224").state_dict().items() if not k.startswith("norm.")}
    sd.update({"fc_norm.weight": torch.ones(32), "fc_norm.bias": torch.zeros(32), "head.weight": torch.zeros(7, 32)})
    torch.save({"model": sd}, tmp_path / "ft.pth")
    with pytest.raises(WeightsError, match="fine-tuned MAE classifier"):
        build_image_encoder("endovit", weights=str(tmp_path / "ft.pth"), image_size=SIZE, model_kwargs=TINY)


def test_no_weights_says_how_to_point_at_a_local_file(monkeypatch, no_network):
    monkeypatch.delenv("ENTREP_WEIGHTS_GASTRONET_VITS16", raising=False)
    with pytest.raises(WeightsError, match="ENTREP_WEIGHTS_GASTRONET_VITS16"):
        build_image_encoder("gastronet-vits16")
