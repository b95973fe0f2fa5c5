"""Cold start: fingerprints come from configs and weights digests (no encoder built), a fully cached
run builds no encoder, image work never builds the text encoder, and `entrep predict` does not import
the text tower's library."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from entrep.encoders import build_image_encoder, build_text_encoder, describe_encoder
from entrep.encoders.profiles import Profile, get_profile

ROOT = Path(__file__).resolve().parents[1]


def _python(code: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env,
                          cwd=str(ROOT))


def test_lazy_fingerprints_of_the_offline_profile_equal_the_built_ones(no_network):
    prof = get_profile("offline")
    for role in ("clip_image", "clip_text", "head_image"):
        info = prof.describe(role, device="cpu")
        enc = prof.build(role, device="cpu")
        assert (info.name, info.dim, info.fingerprint) == (enc.config.name, enc.config.dim, enc.fingerprint), role
        assert prof.fingerprint(role, device="cpu") == enc.fingerprint


def test_describing_imports_no_model_library():
    code = ("import sys, json\n"
            "from entrep.encoders.profiles import get_profile\n"
            "p = get_profile('offline')\n"
            "fps = [p.fingerprint(r, device='cpu') for r in ('clip_image', 'clip_text', 'head_image')]\n"
            "mods = [m for m in ('transformers', 'open_clip', 'timm', 'efficientnet_lite_pytorch') if m in sys.modules]\n"
            "print(json.dumps({'fps': fps, 'mods': mods}))\n")
    r = _python(code, {"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["mods"] == [] and all(len(f) == 64 for f in out["fps"])


def test_config_built_tiny_weights_effnet_file_and_minilm_folder(tmp_path):
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    w = tmp_path / "effnet-random.pth"
    torch.save(EfficientNet.from_name("efficientnet-lite0", image_size=(224, 299)).state_dict(), w)
    for pooling in ("grid2", "lr"):
        enc = build_image_encoder("effnet-lite0", weights=str(w), pooling=pooling, device="cpu")
        info = describe_encoder("image", "efficientnet-lite0", weights=str(w), pooling=pooling, device="cpu")
        assert (info.dim, info.fingerprint) == (enc.config.dim, enc.fingerprint)
    assert describe_encoder("image", "effnet-lite0", device="cpu").fingerprint != info.fingerprint  # weights count

    d = tmp_path / "tiny-minilm"
    d.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "spur", "on", "the", "septum"]
    (d / "vocab.txt").write_text("\n".join(vocab) + "\n")
    (d / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "tokenizer_class": "BertTokenizer"}))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 24}))
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)).save_pretrained(str(d))
    txt = build_text_encoder("minilm-l6", weights=f"local-dir:{d}", device="cpu")
    info = describe_encoder("text", "all-minilm-l6-v2", weights=f"local-dir:{d}", device="cpu")
    assert txt.config.max_tokens == 24 and info.fingerprint == txt.fingerprint


def test_tiny_open_clip_folder_towers(tmp_path):
    from test_openclip import build_tiny_biomedclip

    d = build_tiny_biomedclip(tmp_path / "clip")
    src = f"local-dir:{d}"
    img = build_image_encoder("biomedclip", weights=src, device="cpu")
    txt = build_text_encoder("biomedclip", weights=src, device="cpu")
    assert describe_encoder("image", "biomedclip", weights=src, device="cpu").fingerprint == img.fingerprint
    assert describe_encoder("text", "biomedclip", weights=src, device="cpu").fingerprint == txt.fingerprint
    # token poolings need the built tower's width: no describer answer, the profile builds that role only
    assert describe_encoder("image", "biomedclip", weights=src, pooling="mean", device="cpu") is None
    prof = Profile(name="t", clip_image="biomedclip", clip_text="biomedclip", head_image="biomedclip", joint=True,
                   head_image_pooling="mean", weights={r: src for r in ("clip_image", "clip_text", "head_image")})
    built = []
    info = prof.describe("head_image", device="cpu", build=lambda: built.append(1) or prof.build("head_image", device="cpu"))
    assert built == [1] and info.fingerprint == build_image_encoder("biomedclip", weights=src, pooling="mean",
                                                                   device="cpu").fingerprint


def test_tiny_dinov2_checkpoint(tmp_path):
    from safetensors.torch import save_file
    from test_dinov2 import SIZE, TINY, _tiny

    save_file({k: v.contiguous() for k, v in _tiny().state_dict().items()}, str(tmp_path / "model.safetensors"))
    for pooling in ("grid2", "cls"):
        kw = dict(weights=f"local-dir:{tmp_path}", pooling=pooling, device="cpu", image_size=SIZE, model_kwargs=TINY)
        enc = build_image_encoder("vit_small_patch14_reg4_dinov2.lvd142m", **kw)
        info = describe_encoder("image", "vit_small_patch14_reg4_dinov2.lvd142m", **kw)
        assert (info.name, info.dim, info.fingerprint) == (enc.config.name, enc.config.dim, enc.fingerprint)
    assert describe_encoder("image", "dinov2-vits14-reg4", return_layers=[-1], **{k: v for k, v in kw.items()}) is None


@pytest.mark.parametrize("name,arch", [("gastronet-vits16", "vit_small_patch16_224"),
                                       ("endovit", "vit_base_patch16_224")])
def test_tiny_domain_backbone_checkpoints(tmp_path, name, arch):
    import torch
    from test_domain_backbones import SIZE, TINY, _tiny_vit

    torch.save(_tiny_vit(arch).state_dict(), tmp_path / "plain.pth")
    kw = dict(weights=str(tmp_path / "plain.pth"), device="cpu", image_size=SIZE, model_kwargs=TINY)
    enc = build_image_encoder(name, **kw)
    info = describe_encoder("image", name, **kw)
    assert (info.name, info.dim, info.fingerprint) == (enc.config.name, enc.config.dim, enc.fingerprint)


def test_adapted_encoder_fingerprint_without_building_its_base(tmp_path, monkeypatch):
    from entrep.finetune.encoder import AdaptedEncoder, build_structure, load_adapted
    from entrep.model.bundle import _deferred_adapter

    prof = get_profile("offline")
    base = prof.build("head_image", device="cpu")
    spec = {"method": "partial", "rank": 4, "alpha": 8.0, "dropout": 0.0, "targets": [], "layers": 1,
            "cls_layers": 0, "input_size": 224, "base_name": base.config.name}
    st = build_structure(base, spec)  # fills spec["modules"]
    adapted = AdaptedEncoder(st, spec, base_fingerprint=base.fingerprint, device="cpu")
    folder = adapted.save(tmp_path / "adapters" / "head_image")

    built = []
    real_build = Profile.build
    monkeypatch.setattr(Profile, "build", lambda self, role, device=None: built.append(role) or real_build(self, role, device=device))
    deferred = _deferred_adapter(folder, SimpleNamespace(profile=prof, device="cpu"))
    assert built == [] and not deferred.built
    assert deferred.info.fingerprint == adapted.fingerprint == load_adapted(folder, base).fingerprint
    assert deferred.get().fingerprint == adapted.fingerprint and built == ["head_image"]


def test_feature_cache_builds_only_on_a_miss(tmp_path):
    from PIL import Image
    from test_features import TinyImageEncoder, TinyTextEncoder

    from entrep.encoders.config import EncoderInfo
    from entrep.features import CacheError, FeatureCache

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(paths[-1])
    enc, txt = TinyImageEncoder(), TinyTextEncoder()
    info = EncoderInfo(enc.config.name, enc.config.dim, enc.fingerprint)
    tinfo = EncoderInfo(txt.config.name, txt.config.dim, txt.fingerprint)
    builds = []
    cache = FeatureCache(tmp_path / "c")
    first = cache.image_features(info, paths[:2], build=lambda: builds.append("img") or enc)
    cache.text_features(tinfo, ["a spur"], build=lambda: builds.append("txt") or txt)
    assert builds == ["img", "txt"]
    again = FeatureCache(tmp_path / "c").image_features(info, paths[:2], build=lambda: builds.append("img") or enc)
    FeatureCache(tmp_path / "c").text_features(tinfo, ["a spur"], build=lambda: builds.append("txt") or txt)
    assert builds == ["img", "txt"]  # every row cached: nothing built
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(again, cache.image_features(enc, paths[:2]))  # same rows as a built encoder's
    other = TinyImageEncoder(seed=3)  # a build that does not give the looked-up fingerprint is refused
    with pytest.raises(CacheError, match="fingerprint"):
        cache.image_features(info, paths, build=lambda: other)


def _counting(monkeypatch) -> list[str]:
    built: list[str] = []
    real_build = Profile.build

    def build(self, role, device=None):
        built.append(role)
        return real_build(self, role, device=device)

    monkeypatch.setattr(Profile, "build", build)
    return built


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A model fitted on 48 synthetic images (offline profile), saved, with its feature cache."""
    from entrep.config import AlignConfig, FitConfig, HeadConfig
    from entrep.data.readers import read_dataset
    from entrep.data.synthetic import generate
    from entrep.model.train import fit

    root = tmp_path_factory.mktemp("coldstart")
    generate(root / "data", n=48, seed=1)
    ds = read_dataset(root / "data")
    cfg = FitConfig(n_aug=1, head=HeadConfig(max_epochs=5, patience=2), align=AlignConfig(epochs=5))
    fit(ds, config=cfg, cache=root / "cache").save(root / "model")
    return root, [r.image for r in ds.records]


def test_cached_predict_builds_nothing_and_text_search_builds_only_the_text_tower(small_model, monkeypatch):
    from entrep.model import load_model

    root, images = small_model
    load_model(root / "model", cache=root / "cache", device="cpu").predict(images[:3])  # fills any missing row
    built = _counting(monkeypatch)
    model = load_model(root / "model", cache=root / "cache", device="cpu")
    assert built == []  # loading checks fingerprints without building
    preds = model.predict(images[:3])
    assert len(preds) == 3 and built == []  # every row cached: no encoder built
    assert model.extractor.built_roles() == []
    v = model.embed_texts(["a never seen caption about the left tympanic membrane"])
    assert v.shape[0] == 1 and np.isfinite(v).all()
    assert built == ["clip_text"]  # a text miss builds the text tower only


def test_uncached_predict_builds_at_most_one_image_encoder_and_no_text_tower(small_model, tmp_path, monkeypatch):
    from PIL import Image

    from entrep.model import load_model

    root, images = small_model
    new = [tmp_path / f"new{i}.png" for i in range(2)]
    for i, p in enumerate(new):
        Image.open(images[i]).convert("RGB").rotate(7).save(p)
    built = _counting(monkeypatch)
    model = load_model(root / "model", cache=root / "cache", device="cpu", runtime="torch")
    model.predict(new[:1])
    assert built == ["clip_image"]  # the offline profile shares one image encoder; never clip_text
    # on the default runtime the graph the fit cached computes the new image: nothing is built
    model = load_model(root / "model", cache=root / "cache", device="cpu")
    model.predict(new[1:])
    assert built == ["clip_image"] and model.extractor.graph_roles() == ["clip_image"]


def test_entrep_predict_imports_no_torch_and_no_text_tower(small_model, tmp_path):
    from PIL import Image

    root, images = small_model
    out = tmp_path / "mods.json"
    fresh = tmp_path / "never-seen.png"
    Image.open(images[1]).convert("RGB").rotate(-9).save(fresh)

    def imported(image) -> list[str]:
        code = ("import json, sys\n"
                "from entrep.cli import main\n"
                f"sys.argv = ['entrep', 'predict', '--model', {str(root / 'model')!r}, {str(image)!r}]\n"
                "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
                f"json.dump(sorted(m for m in ('torch', 'transformers', 'open_clip', 'timm', 'matplotlib', 'fastapi', "
                f"'ray') if m in sys.modules), open({str(out)!r}, 'w'))\n")
        r = _python(code, {"ENTREP_CACHE": str(root / "cache"), "HF_HUB_OFFLINE": "1"})
        assert r.returncode == 0, r.stderr[-2000:]
        return json.loads(out.read_text())

    # heads, alignment and prototypes run in numpy, and the image encoder's graph (cached by the fit) runs
    # on ONNX Runtime: neither a cached image nor a never-seen one pays for `import torch`
    assert imported(images[0]) == []
    assert imported(fresh) == []


#: libraries a fully cached `entrep embed` must not import (torch alone is ~2 s of a ~1 s run)
HEAVY = ("torch", "pandas", "transformers", "open_clip", "timm", "onnxruntime", "sklearn")


def _embed_imports(data: Path, out: Path, env: dict, *extra: str) -> list[str]:
    """Run `entrep embed DATA --out OUT` in a fresh interpreter; the HEAVY modules it had imported at exit."""
    mods = out.with_name(out.name + ".mods.json")
    argv = ["entrep", "embed", str(data), "--out", str(out), "--profile", "offline-fast", "--no-progress", *extra]
    code = ("import json, sys\n"
            "from entrep.cli import main\n"
            f"sys.argv = {argv!r}\n"
            "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            f"json.dump(sorted(m for m in {HEAVY!r} if m in sys.modules), open({str(mods)!r}, 'w'))\n")
    r = _python(code, env)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(mods.read_text())


def test_fully_cached_embed_imports_neither_torch_nor_pandas(tmp_path):
    from entrep.data.synthetic import generate
    from entrep.distribute.store import read_shards

    generate(tmp_path / "data", n=6, seed=3, queries=False)
    env = {"ENTREP_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    first = _embed_imports(tmp_path / "data", tmp_path / "first", env, "--runtime", "torch")
    assert "torch" in first  # the first run computes the features
    assert _embed_imports(tmp_path / "data", tmp_path / "second", env, "--runtime", "torch") == []
    assert _embed_imports(tmp_path / "data", tmp_path / "cached.npz", env) == []

    m1, rows1 = read_shards(tmp_path / "first")
    m2, rows2 = read_shards(tmp_path / "second")
    assert {k: v for k, v in m1.items() if k != "shards"} == {k: v for k, v in m2.items() if k != "shards"}
    assert rows1.keys() == rows2.keys() and len(rows1["clip"]) == 6
    for k in rows1:
        assert np.array_equal(rows1[k], rows2[k], equal_nan=rows1[k].dtype.kind == "f"), k
    with np.load(tmp_path / "cached.npz") as z:
        assert np.array_equal(z["image_embeddings"], rows1["clip"])
        assert np.array_equal(z["text_embeddings"], rows1["text"], equal_nan=True)
        assert list(z["has_text"]) == list(rows1["has_text"])


def test_device_without_torch_agrees_with_torch(monkeypatch):
    from entrep.encoders import devices
    from entrep.encoders.base import resolve_device, resolve_precision

    for device in (None, "auto", "cpu", "cpu:0"):
        kind = devices.resolve_device_type(device)
        assert kind == resolve_device(device).type
        for precision in (None, "auto", "fp32", "fp16", "bf16"):
            assert devices.effective_precision(precision, kind) == resolve_precision(precision, resolve_device(device))
    with pytest.raises(Exception, match="unknown precision"):
        devices.effective_precision("int8", "cpu")
    # where a GPU device file exists, torch is asked (and still agrees)
    monkeypatch.setattr(devices, "may_have_accelerator", lambda: True)
    assert devices.resolve_device_type("auto") == resolve_device("auto").type


def test_importing_the_encoder_registry_imports_no_torch():
    code = ("import sys, json\n"
            "import entrep.encoders as E\n"
            "from entrep.encoders.pooling import check_pooling, pooled_dim, MAP_POOLINGS\n"
            "from entrep.encoders.registry import IMAGE\n"
            "names = E.list_encoders()\n"
            "summaries = [IMAGE.entry(n).summary for n in E.list_encoders(kind='image')]\n"
            "info = E.describe_encoder('image', 'effnet-lite0', pooling='lr', device='auto')\n"
            "dim = pooled_dim(check_pooling('grid2', MAP_POOLINGS), 1280)\n"
            f"print(json.dumps({{'names': names, 'dim': [info.dim, dim], 'summaries': all(summaries),\n"
            f"                  'mods': sorted(m for m in {HEAVY!r} if m in sys.modules)}}))\n")
    r = _python(code, {"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["mods"] == [] and out["summaries"] and out["dim"] == [3 * 1280, 5 * 1280]
    assert {"effnet-lite0", "minilm-l6", "biomedclip", "dinov2-vitb14", "gastronet-vits16"} <= set(out["names"])
