"""Backbone adaptation: LoRA and partial fine-tuning on tiny random models (seconds each)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import TinyExtractor, finetune_taxonomy, laterality_images, tiny_effnet_encoder, tiny_vit_encoder
from safetensors.torch import load_file, save_file

from entrep.config import FinetuneConfig
from entrep.data.images import load_rgb
from entrep.data.records import Dataset
from entrep.errors import ModelError, UserError
from entrep.finetune import finetune_encoder, load_adapted

TAX = finetune_taxonomy()
ENCODERS = {"vit": tiny_vit_encoder, "effnet": tiny_effnet_encoder}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft-data")
    recs = laterality_images(root / "img", TAX, per_class=6)
    train = Dataset([r for i, r in enumerate(recs) if i % 6 < 4], root, TAX)
    val = Dataset([r for i, r in enumerate(recs) if i % 6 >= 4], root, TAX)
    return train, val


def _cfg(enc, method, **kw):
    base = dict(method=method, epochs=4, lr=1e-3, batch_size=16, layers=1, patience=10,
                input_size=enc.config.image_size[0])
    base.update(kw)
    return FinetuneConfig(**base)


@pytest.mark.parametrize("method", ["lora", "partial"])
@pytest.mark.parametrize("kind", ["vit", "effnet"])
def test_training_loss_falls_on_a_separable_task(data, tmp_path, kind, method):
    enc = ENCODERS[kind]()
    adapted = finetune_encoder(TinyExtractor(enc, tmp_path / "cache"), *data, TAX, _cfg(enc, method))
    losses = [h["loss"] for h in adapted.history]
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert all("val_acc" in h for h in adapted.history)
    assert adapted.fingerprint != enc.fingerprint
    assert adapted.encode([r.image for r in data[1]][:3]).shape == (3, adapted.config.dim)


def test_vit_uses_multilevel_cls_fusion_and_reports_slerp_beside_linear_fusion(data, tmp_path):
    enc = tiny_vit_encoder()
    adapted = finetune_encoder(TinyExtractor(enc, tmp_path / "cache"), *data, TAX, _cfg(enc, "lora", epochs=2))
    assert adapted.config.dim == 32 and adapted.config.pooling == "cls-fusion:0,1,2,3"
    w = adapted.structure.fusion.weights().detach()
    assert torch.isclose(w.sum(), torch.tensor(1.0)) and not torch.allclose(w, torch.full_like(w, 0.25))
    for k in ("val_prompt_acc_image", "val_prompt_acc_linear_fusion", "val_prompt_acc_slerp"):
        assert 0.0 <= adapted.report[k] <= 1.0


@pytest.mark.parametrize("kind,method", [("vit", "lora"), ("effnet", "lora"), ("effnet", "partial")])
def test_saved_adapter_reproduces_outputs_exactly(data, tmp_path, kind, method):
    enc = ENCODERS[kind]()
    adapted = finetune_encoder(TinyExtractor(enc, tmp_path / "cache"), *data, TAX, _cfg(enc, method, epochs=1))
    adapted.save(tmp_path / "adapter")
    again = load_adapted(tmp_path / "adapter", ENCODERS[kind]())
    images = [r.image for r in data[1]]
    assert np.array_equal(adapted.encode(images), again.encode(images))
    assert again.fingerprint == adapted.fingerprint


def test_strict_loading_names_wrong_keys(data, tmp_path):
    enc = tiny_vit_encoder()
    adapted = finetune_encoder(TinyExtractor(enc, tmp_path / "cache"), *data, TAX, _cfg(enc, "lora", epochs=1))
    folder = adapted.save(tmp_path / "adapter")
    sd = load_file(str(folder / "adapter.safetensors"))
    dropped = sorted(sd)[0]
    sd.pop(dropped)
    sd["backbone.blocks.0.attn.qkv.lora_C.default.weight"] = torch.zeros(2, 2)
    save_file(sd, str(folder / "adapter.safetensors"))
    with pytest.raises(ModelError) as e:
        load_adapted(folder, tiny_vit_encoder())
    assert dropped in str(e.value) and "lora_C" in str(e.value)
    with pytest.raises(ModelError, match="fingerprint"):
        load_adapted(folder, tiny_vit_encoder(seed=1))


def test_resume_after_an_interrupted_epoch_equals_an_uninterrupted_run(data, tmp_path):
    images = [r.image for r in data[1]]
    enc = tiny_effnet_encoder()
    cfg = _cfg(enc, "lora", epochs=3)
    whole = finetune_encoder(TinyExtractor(enc, tmp_path / "c1"), *data, TAX, cfg)

    def stop(epoch, step):
        if epoch == 1 and step == 1:
            raise KeyboardInterrupt

    ckpt = tmp_path / "ckpt"
    with pytest.raises(UserError, match="--resume"):
        finetune_encoder(TinyExtractor(tiny_effnet_encoder(), tmp_path / "c2"), *data, TAX, cfg,
                         checkpoint_dir=ckpt, callback=stop)
    resumed = finetune_encoder(TinyExtractor(tiny_effnet_encoder(), tmp_path / "c2"), *data, TAX, cfg,
                               checkpoint_dir=ckpt, resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    assert np.array_equal(resumed.encode(images), whole.encode(images))
    with pytest.raises(UserError, match="different fine-tuning run"):
        finetune_encoder(TinyExtractor(tiny_effnet_encoder(), tmp_path / "c2"), *data, TAX,
                         dataclasses.replace(cfg, lr=5e-4), checkpoint_dir=ckpt, resume=True)


def test_partial_trains_on_cached_frozen_activations_equal_to_the_full_forward(data, tmp_path):
    enc = tiny_vit_encoder(pooling="grid2")
    cache = tmp_path / "cache"
    cfg = _cfg(enc, "partial", epochs=1, cls_layers=4, layers=2)  # 2 fused CLS from the frozen part
    adapted = finetune_encoder(TinyExtractor(enc, cache), *data, TAX, cfg)
    files = sorted((cache / "finetune-prefix").rglob("*.npz"))
    n_train, n_val = len(data[0]), len(data[1])
    assert len(files) == 2 * n_train + n_val  # orig + flip for training, orig for validation
    from entrep.finetune.prefix import prefix_outputs, suffix_forward

    st = adapted.structure
    x = torch.stack([adapted.preprocess(load_rgb(r.image)) for r in list(data[1])[:4]])
    with torch.no_grad():
        act, cls = prefix_outputs(st, x, 2)
        assert torch.allclose(suffix_forward(st, act, cls, 2), adapted.forward(x), atol=1e-5)
    stamp = [f.stat().st_mtime_ns for f in files]
    finetune_encoder(TinyExtractor(tiny_vit_encoder(pooling="grid2"), cache), *data, TAX, cfg)
    assert [f.stat().st_mtime_ns for f in files] == stamp  # reused, not recomputed


def test_unknown_lora_targets_name_the_modules_that_exist(data, tmp_path):
    enc = tiny_vit_encoder()
    with pytest.raises(UserError, match="qkv"):
        finetune_encoder(TinyExtractor(enc, tmp_path / "cache"), *data, TAX, _cfg(enc, "lora", targets=("nope",)))


def test_input_size_option_letterboxes_to_the_new_size(data, tmp_path):
    enc = tiny_vit_encoder()
    adapted = finetune_encoder(TinyExtractor(enc, tmp_path / "cache"), *data, TAX, _cfg(enc, "lora", epochs=1,
                                                                                     input_size=56))
    assert adapted.config.image_size == (56, 56)
    assert adapted.encode([data[1].records[0].image]).shape == (1, adapted.config.dim)
