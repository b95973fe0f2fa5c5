"""DINOv2 through timm: official / SurgeNet checkpoint layouts are recognised, converted and loaded strictly."""

import numpy as np
import pytest
import torch
from PIL import Image

from entrep.encoders import build_image_encoder
from entrep.encoders.dinov2 import (
    LoadReport,
    is_official_dinov2,
    load_dinov2_weights,
    unchunk_blocks,
)
from entrep.errors import UserError, WeightsError

TINY = dict(embed_dim=32, depth=2, num_heads=2)
SIZE = 56  # 4 x 4 patches of 14 px


def _tiny(arch="vit_small_patch14_reg4_dinov2", img_size=SIZE, seed=0):
    import timm

    torch.manual_seed(seed)
    m = timm.create_model(arch, pretrained=False, num_classes=0, img_size=img_size, **TINY).eval()
    with torch.no_grad():  # non-trivial layer scales and dyadic cls/pos values (exact under the +/- conversion)
        for name, p in m.named_parameters():
            if name.endswith("gamma"):
                p.copy_(torch.rand_like(p) * 0.5 + 0.5)
        m.cls_token.copy_(torch.round(torch.randn_like(m.cls_token) * 64) / 64)
        m.pos_embed.copy_(torch.round(torch.randn_like(m.pos_embed) * 64) / 64)
    return m


def to_official(model, *, chunks: int = 2) -> dict:
    """timm names -> Meta's DINOv2 training layout: teacher/backbone., chunked blocks, registers, mask token."""
    sd = model.state_dict()
    depth = len(model.blocks)
    per = (depth + chunks - 1) // chunks
    pos0 = torch.round(torch.randn(1, 1, sd["cls_token"].shape[-1]) * 64) / 64
    off = {}
    for k, v in sd.items():
        if k == "reg_token":
            off["register_tokens"] = v
        elif k == "cls_token" and model.no_embed_class:
            off["cls_token"] = v - pos0
        elif k == "pos_embed" and model.no_embed_class:
            off["pos_embed"] = torch.cat([pos0, v], dim=1)
        elif k.startswith("blocks."):
            i, rest = k.split(".", 2)[1:]
            off[f"blocks.{int(i) // per}.{i}.{rest}"] = v
        else:
            off[k] = v
    off["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    teacher = {"backbone." + k: v for k, v in off.items()}
    teacher["dino_head.mlp.0.weight"] = torch.zeros(8, 32)
    teacher["ibot_head.last_layer.weight_g"] = torch.zeros(8, 1)
    return {"teacher": teacher, "student": {"backbone.cls_token": torch.zeros(1)}, "iteration": np.int64(1250),
            "lr": np.float64(1e-4)}  # numpy metadata as DINOv2 training writes it


def _frames(n=2):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(n)]


def test_official_reg4_checkpoint_round_trip(tmp_path):
    ref = _tiny()
    path = tmp_path / "surgenet_teacher_checkpoint.pth"
    torch.save(to_official(ref), path)
    enc = build_image_encoder("dinov2-vits14-reg4", weights=str(path), image_size=SIZE, model_kwargs=TINY,
                              device="cpu")
    rep = enc.load_report
    assert rep.layout == "official DINOv2" and rep.wrapper == ["teacher"] and "backbone." in rep.prefixes
    assert "chunked blocks" in rep.converted and "register_tokens->reg_token" in rep.converted
    dropped = {k for keys in rep.dropped.values() for k in keys}
    assert {"mask_token", "dino_head.mlp.0.weight", "ibot_head.last_layer.weight_g"} <= dropped
    loaded, want = enc.model.state_dict(), ref.state_dict()
    assert set(loaded) == set(want)  # every key consumed, none invented
    for k in want:
        assert torch.equal(loaded[k], want[k]), k
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(enc.model.forward_features(x), ref.forward_features(x))


def test_official_checkpoint_without_registers_in_model_wrapper(tmp_path):
    ref = _tiny("vit_small_patch14_dinov2", seed=1)
    sd = {"module." + k: v for k, v in ref.state_dict().items()}
    sd["module.mask_token"] = torch.zeros(1, 32)
    path = tmp_path / "raw.pth"
    torch.save({"model": sd, "epoch": 3}, path)
    enc = build_image_encoder("dinov2-vits14", weights=str(path), image_size=SIZE, model_kwargs=TINY)
    for k, v in ref.state_dict().items():
        assert torch.equal(enc.model.state_dict()[k], v), k
    assert enc.load_report.wrapper == ["model"] and enc.load_report.prefixes == ["module."]


def test_timm_layout_safetensors_and_pos_embed_resampling(tmp_path):
    from safetensors.torch import save_file

    ref = _tiny(img_size=98)  # 7 x 7 grid, like a checkpoint trained at another resolution
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    enc = build_image_encoder("vit_small_patch14_reg4_dinov2.lvd142m", weights=f"local-dir:{tmp_path}",
                              image_size=SIZE, model_kwargs=TINY)
    assert enc.load_report.layout == "timm"
    assert any(c.startswith("pos_embed 7x7->4x4") for c in enc.load_report.converted)
    assert enc.model.pos_embed.shape == (1, 16, 32)
    assert torch.equal(enc.model.blocks[1].attn.qkv.weight, ref.blocks[1].attn.qkv.weight)


def test_missing_blocks_are_refused_with_the_keys_named(tmp_path):
    ck = to_official(_tiny())
    for k in [k for k in ck["teacher"] if k.startswith("backbone.blocks.1.")]:
        del ck["teacher"][k]
    path = tmp_path / "truncated.pth"
    torch.save(ck, path)
    with pytest.raises(WeightsError) as e:
        build_image_encoder("dinov2-vits14-reg4", weights=str(path), image_size=SIZE, model_kwargs=TINY)
    msg = str(e.value)
    assert "blocks.1.attn.qkv.weight" in msg and "missing" in msg and "truncated.pth" in msg


def test_unexpected_and_unknown_keys_are_refused(tmp_path):
    ck = to_official(_tiny())
    ck["teacher"]["backbone.blocks.0.attn.extra_bias"] = torch.zeros(3)
    path = tmp_path / "extra.pth"
    torch.save(ck, path)
    with pytest.raises(WeightsError, match="extra_bias"):
        build_image_encoder("dinov2-vits14-reg4", weights=str(path), image_size=SIZE, model_kwargs=TINY)
    ck = to_official(_tiny())
    ck["teacher"]["projector.weight"] = torch.zeros(3)
    torch.save(ck, path)
    with pytest.raises(WeightsError, match="projector.weight"):
        build_image_encoder("dinov2-vits14-reg4", weights=str(path), image_size=SIZE, model_kwargs=TINY)


def test_register_mismatch_is_refused(tmp_path):
    path = tmp_path / "noreg.pth"
    torch.save(_tiny("vit_small_patch14_dinov2").state_dict(), path)
    with pytest.raises(WeightsError, match="reg_token"):
        build_image_encoder("dinov2-vits14-reg4", weights=str(path), image_size=SIZE, model_kwargs=TINY)


def test_poolings_and_layers(tmp_path):
    ref = _tiny()
    path = tmp_path / "w.pth"
    torch.save(ref.state_dict(), path)
    common = dict(weights=str(path), image_size=SIZE, model_kwargs=TINY)
    grid = build_image_encoder("dinov2-vits14-reg4", **common)
    assert grid.config.pooling == "grid2" and grid.config.dim == 5 * 32
    mean = build_image_encoder("dinov2-vits14-reg4", pooling="mean", **common)
    v, m = grid.encode(_frames()), mean.encode(_frames())
    assert v.shape == (2, 160) and m.shape == (2, 32)
    # mean pooling = the mean of the final normed patch tokens (registers and CLS excluded)
    x = torch.stack([mean.preprocess(im) for im in _frames()])
    with torch.no_grad():
        tokens = ref.forward_features(x)[:, 1 + 4:]
    np.testing.assert_allclose(m, torch.nn.functional.normalize(tokens.mean(1), dim=-1).numpy(), atol=1e-5)
    layers = build_image_encoder("dinov2-vits14-reg4", return_layers=[0, 1], **common)
    assert layers.encode(_frames()).shape == (2, 64)
    assert layers.encode_layers(_frames(), [-1]).shape == (2, 1, 32)
    assert len({grid.fingerprint, mean.fingerprint, layers.fingerprint}) == 3
    with pytest.raises(UserError, match="multiple of the 14"):
        build_image_encoder("dinov2-vits14-reg4", weights=str(path), image_size=50, model_kwargs=TINY)
    with pytest.raises(UserError, match="pooling"):
        build_image_encoder("dinov2-vits14-reg4", pooling="gem", **common)


def test_format_detection_helpers():
    assert is_official_dinov2({"mask_token": 0})
    assert is_official_dinov2({"register_tokens": 0})
    assert is_official_dinov2({"blocks.0.mlp.w12.weight": 0})
    assert not is_official_dinov2({"cls_token": 0, "reg_token": 0, "blocks.0.mlp.fc1.weight": 0})
    rep = LoadReport(path="x")
    out = unchunk_blocks({"blocks.0.0.norm1.weight": 1, "blocks.1.3.norm1.weight": 2, "norm.weight": 3}, rep)
    assert out == {"blocks.0.norm1.weight": 1, "blocks.3.norm1.weight": 2, "norm.weight": 3}
    assert unchunk_blocks({"blocks.0.norm1.weight": 1}, rep) == {"blocks.0.norm1.weight": 1}


def test_not_a_checkpoint(tmp_path):
    import timm

    p = tmp_path / "junk.pth"
    p.write_bytes(b"junk")
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=SIZE, **TINY)
    with pytest.raises(WeightsError, match="junk.pth"):
        load_dinov2_weights(model, p)
    with pytest.raises(WeightsError, match="not found"):
        build_image_encoder("dinov2-vits14", weights=str(tmp_path / "absent.pth"))
