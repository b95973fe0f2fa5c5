"""ONNX Runtime for image encoders: equal to torch, graphs cached by fingerprint, torch fallback, Extractor wiring."""

import logging
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from entrep.encoders import build_image_encoder, onnx_runtime
from entrep.encoders.pooling import pool_map
from entrep.errors import UserError
from entrep.features import Extractor
from helpers import tiny_effnet_encoder, tiny_vit_encoder
from test_features import TinyImageEncoder


def _frames(n, size=(640, 480), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        a[:, : size[0] // 5] = 230  # a bright left edge: left/right differ
        out.append(Image.fromarray(a))
    return out


class NoExportEncoder(TinyImageEncoder):
    """A forward with an op neither ONNX exporter supports (symmetric eigenvalues)."""

    def forward(self, x):
        v = super().forward(x)  # counts the images it sees
        gram = v[:, :4, None] * v[:, None, :4] + torch.eye(4)
        return v * torch.linalg.eigvalsh(gram).sum(-1, keepdim=True)


def _torch_and_onnx(enc, images, cache_dir, batch_size=2):
    ref = enc.encode(images, batch_size=batch_size)
    assert enc.use_runtime("onnx", cache_dir=cache_dir) == "onnx" and enc.runtime == "onnx"
    got = enc.encode(images, batch_size=batch_size)
    return ref, got


def test_real_offline_encoder_onnx_equals_torch(tmp_path):
    enc = build_image_encoder("effnet-lite0", device="cpu")
    ref, got = _torch_and_onnx(enc, _frames(3), tmp_path / "onnx")
    assert got.shape == (3, enc.config.dim)
    assert np.abs(got - ref).max() <= 1e-4
    assert enc.onnx_graph is not None and enc.onnx_graph.parent == tmp_path / "onnx" and enc.onnx_graph.is_file()


@pytest.mark.parametrize("make", [tiny_effnet_encoder, tiny_vit_encoder], ids=["effnet", "vit"])
def test_tiny_config_built_models_onnx_equal_torch(tmp_path, make):
    enc = make()
    ref, got = _torch_and_onnx(enc, _frames(5, size=(64, 48)), tmp_path, batch_size=2)  # batches 2, 2, 1
    assert np.abs(got - ref).max() <= 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_batch_split_over_workers_equals_one_run_and_intra_op_threads(tmp_path):
    enc = tiny_effnet_encoder()
    assert enc.use_runtime("onnx", cache_dir=tmp_path) == "onnx"
    x = onnx_runtime.probe_batch(enc, 7, seed=3).numpy()
    intra = onnx_runtime.OnnxForward(enc.onnx_graph, threads=2, parallel="intra-op")
    assert intra.workers == 1
    whole = intra.run(x)  # the whole batch in one run over 2 intra-op threads
    split = onnx_runtime.OnnxForward(enc.onnx_graph, threads=3)
    assert split.parallel == "batches" and split.workers == 3
    got = split.run(x)  # slices of 2, 3 and 2 images on 3 threads, one image per session run
    assert got.shape == whole.shape
    np.testing.assert_allclose(got, whole, atol=1e-6)
    np.testing.assert_allclose(split.run(x[:2]), whole[:2], atol=1e-6)  # fewer images than workers: intra-op threads
    np.testing.assert_allclose(split.run_one(x), whole, atol=1e-6)  # the calling thread alone
    alone = onnx_runtime.OnnxForward(enc.onnx_graph, threads=1)  # one core (a one-CPU Ray actor): image by image
    assert alone.workers == 1
    np.testing.assert_allclose(alone.run(x), whole, atol=1e-6)
    with pytest.raises(ValueError, match="unknown parallel mode 'gpu'"):
        onnx_runtime.OnnxForward(enc.onnx_graph, parallel="gpu")


def test_each_worker_decodes_and_encodes_its_batch_in_input_order(tmp_path):
    from entrep.data.images import ImageError
    from entrep.encoders.graph_encoder import GraphImageEncoder

    enc = tiny_effnet_encoder()
    assert enc.use_runtime("onnx", cache_dir=tmp_path) == "onnx"
    graph = GraphImageEncoder(enc.config, enc.fingerprint, enc.onnx_graph, threads=3)
    assert graph._batch_workers() == 3
    ims = _frames(11, size=(64, 48), seed=5)
    ran_on = []
    run_one = graph._onnx.run_one
    graph._onnx.run_one = lambda a: ran_on.append(threading.current_thread().name) or run_one(a)
    got = graph.encode(ims, batch_size=2)  # 6 batches over 3 workers
    assert len(ran_on) == 6 and all(name.startswith("entrep-decode") for name in ran_on)
    serial = graph.encode(ims, batch_size=2, prefetch=0)  # decode then model, one batch at a time
    np.testing.assert_allclose(got, serial, atol=1e-6)  # same vectors, same order
    np.testing.assert_allclose(got, enc.encode(ims, batch_size=2), atol=1e-6)

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 40)
    with pytest.raises(ImageError, match="bad.png"):  # a worker's failure reaches the caller, named
        graph.encode([*ims[:5], bad, *ims[5:]], batch_size=2)


def test_graph_is_cached_by_fingerprint(tmp_path, monkeypatch):
    first = tiny_effnet_encoder(seed=0)
    assert first.use_runtime("auto", cache_dir=tmp_path) == "onnx"
    path = first.onnx_graph
    assert path.is_file() and list(tmp_path.iterdir()) == [path]

    exports = []
    real_export = onnx_runtime.export_forward
    monkeypatch.setattr(onnx_runtime, "export_forward", lambda enc: exports.append(enc.name) or real_export(enc))
    again = tiny_effnet_encoder(seed=0)  # same config and weights: same fingerprint
    assert again.use_runtime("auto", cache_dir=tmp_path) == "onnx"
    assert exports == [] and again.onnx_graph == path  # loaded, not exported again
    ims = _frames(2, size=(64, 48))
    np.testing.assert_allclose(again.encode(ims), first.encode(ims), atol=1e-6)

    other = tiny_effnet_encoder(seed=1)  # other weights digest: other fingerprint, other file
    assert other.fingerprint != first.fingerprint
    assert other.use_runtime("auto", cache_dir=tmp_path) == "onnx"
    assert exports == ["tiny-effnet"] and other.onnx_graph != path and other.onnx_graph.is_file()


def test_corrupt_cached_graph_is_rebuilt_with_a_warning(tmp_path, caplog):
    enc = tiny_effnet_encoder()
    path = onnx_runtime.graph_path(tmp_path, enc)
    path.write_bytes(b"not an onnx graph")
    ims = _frames(3, size=(64, 48))
    ref = enc.encode(ims)
    with caplog.at_level(logging.WARNING, logger="entrep.encoders.onnx_runtime"):
        assert enc.use_runtime("auto", cache_dir=tmp_path) == "onnx"
    assert any("cached ONNX graph" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
    assert path.stat().st_size > 1000  # replaced by a real graph
    assert np.abs(enc.encode(ims) - ref).max() <= 1e-4


def test_encoder_that_cannot_export_falls_back_to_torch_with_one_line(tmp_path, caplog):
    enc = NoExportEncoder()
    ims = _frames(3, size=(64, 48))
    ref = enc.encode(ims)
    with caplog.at_level(logging.INFO, logger="entrep.encoders"):
        assert enc.use_runtime("auto", cache_dir=tmp_path) == "torch"
    lines = [r for r in caplog.records if r.levelno >= logging.INFO and "runtime" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    msg = lines[0].getMessage()
    assert "encoder tiny" in msg and "runtime torch" in msg and "eigvalsh" in msg and "\n" not in msg
    assert enc.runtime == "torch" and enc.onnx_graph is None and not list(tmp_path.glob("*.onnx"))
    seen = int(enc.images_seen)
    np.testing.assert_array_equal(enc.encode(ims), ref)  # torch's results, computed by torch
    assert int(enc.images_seen) == seen + 3

    with pytest.raises(UserError) as e:
        NoExportEncoder().use_runtime("onnx", cache_dir=tmp_path)
    assert "runtime onnx is impossible" in str(e.value) and "\n" not in str(e.value)


def test_graph_that_differs_from_torch_is_not_used(tmp_path):
    class Constant(TinyImageEncoder):
        """Goes through numpy: the trace records a constant, whose outputs differ from torch's."""

        def forward(self, x):
            v = pool_map(self.model(x), "grid2")
            return torch.from_numpy(np.tanh(v.numpy()))

    enc = Constant()
    assert enc.use_runtime("auto", cache_dir=tmp_path) == "torch"
    assert not list(tmp_path.glob("*.onnx"))


def test_torch_runtime_and_unknown_runtime(tmp_path):
    enc = tiny_effnet_encoder()
    assert enc.use_runtime("onnx", cache_dir=tmp_path) == "onnx"
    assert enc.use_runtime("torch", cache_dir=tmp_path) == "torch" and enc.runtime == "torch"
    with pytest.raises(UserError, match="unknown runtime"):
        enc.use_runtime("tensorrt")


class OneEncoderProfile:
    name = "one-tiny"
    head_shares_clip = True

    def __init__(self, make):
        self.make = make
        self.built = []

    def build(self, role, device=None):
        self.built.append(role)
        return self.make()


def _files(folder, n=3, seed=3):
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, im in enumerate(_frames(n, size=(64, 48), seed=seed)):
        p = folder / f"im{i}.png"
        im.save(p)
        out.append(p)
    return out


@pytest.mark.parametrize("runtime", ["auto", "torch", "onnx"])
def test_extractor_runs_image_encoders_on_the_requested_runtime(tmp_path, runtime, caplog):
    files = _files(tmp_path)
    prof = OneEncoderProfile(tiny_effnet_encoder)
    with caplog.at_level(logging.INFO, logger="entrep.encoders.base"):
        ex = Extractor(prof, cache_root=tmp_path / "cache", runtime=runtime)
        got = ex.images("clip", files)
    enc = ex.image_encoder("clip")
    want = "torch" if runtime == "torch" else "onnx"
    assert enc.runtime == want and prof.built == ["clip_image"]
    if want == "onnx":
        assert enc.onnx_graph.parent == tmp_path / "cache" / "onnx"
        assert any(f"encoder tiny-effnet: runtime onnx (graph cached at {enc.onnx_graph}" in r.getMessage()
                   for r in caplog.records)
    ref = tiny_effnet_encoder().encode([Image.open(p).convert("RGB") for p in files])
    assert np.abs(got - ref).max() <= 1e-4


def test_a_cached_graph_computes_new_features_with_no_encoder_built(tmp_path, monkeypatch, caplog, no_network):
    from entrep.encoders.profiles import Profile, get_profile

    prof, cache = get_profile("offline"), tmp_path / "cache"
    first = Extractor(prof, cache_root=cache, device="cpu")
    first.images("clip", _files(tmp_path / "a", 1))  # builds the torch encoder and caches its graph
    enc = first.image_encoder("clip")
    assert enc.runtime == "onnx" and enc.onnx_graph.is_file()

    built: list[str] = []
    real_build = Profile.build
    monkeypatch.setattr(Profile, "build", lambda self, role, device=None: built.append(role) or real_build(
        self, role, device=device))
    new = _files(tmp_path / "b", 2, seed=11)
    again = Extractor(prof, cache_root=cache, device="cpu")
    got = again.images("clip", new)
    assert built == [] and again.built_roles() == [] and again.graph_roles() == ["clip_image"]
    # the vectors the torch-built encoder gives on ONNX Runtime, from files and from in-memory images
    np.testing.assert_allclose(got, enc.encode([enc.load_image(p) for p in new]), rtol=0, atol=1e-6)
    pil = [Image.open(p).convert("RGB") for p in new]
    np.testing.assert_allclose(again.images("clip", pil), enc.encode(pil), rtol=0, atol=1e-6)
    # the model itself, when asked for, is the torch encoder
    assert again.image_encoder("clip").runtime == "onnx" and built == ["clip_image"]

    # --runtime torch never takes the graph
    torch_run = Extractor(prof, cache_root=cache, device="cpu", runtime="torch")
    torch_run.images("clip", _files(tmp_path / "c", 1, seed=12))
    assert torch_run.graph_roles() == [] and built == ["clip_image", "clip_image"]

    # a damaged cached graph: one warning, the torch encoder is built (and re-exports the graph)
    enc.onnx_graph.write_bytes(b"not an onnx graph")
    with caplog.at_level(logging.WARNING):
        hurt = Extractor(prof, cache_root=cache, device="cpu")
        v = hurt.images("clip", _files(tmp_path / "d", 1, seed=13))
    assert np.isfinite(v).all() and hurt.graph_roles() == [] and built[-1] == "clip_image"
    assert any("cached ONNX graph" in r.getMessage() and "unusable" in r.getMessage() for r in caplog.records)


def test_extractor_falls_back_for_an_adapted_encoder_that_cannot_export(tmp_path):
    files = _files(tmp_path)
    adapted = NoExportEncoder(seed=5, name="adapted")
    ex = Extractor(OneEncoderProfile(tiny_effnet_encoder), cache_root=tmp_path / "cache",
                   overrides={"clip_image": adapted})
    ex.images("clip", files)
    seen = int(adapted.images_seen)
    got = ex.images("clip", files[:1] + _files(tmp_path / "more", 1, seed=9))  # one cached, one new
    assert adapted.runtime == "torch" and int(adapted.images_seen) == seen + 1
    got = ex.images("clip", files)
    np.testing.assert_allclose(got, NoExportEncoder(seed=5, name="adapted").encode(
        [Image.open(p).convert("RGB") for p in files]), atol=1e-6)


def test_embed_workers_build_their_extractor_on_the_spec_runtime(tmp_path):
    from entrep.distribute import EmbedSpec

    assert EmbedSpec(cache=str(tmp_path)).build_extractor().runtime == "auto"
    assert EmbedSpec(cache=str(tmp_path), runtime="torch").build_extractor().runtime == "torch"
    with pytest.raises(UserError, match="unknown runtime"):
        EmbedSpec(cache=str(tmp_path), runtime="tensorrt").build_extractor()


def test_cli_runtime_option_reaches_load_and_is_checked(tmp_path, monkeypatch):
    import typing

    from typer.testing import CliRunner

    import entrep.model
    from entrep.cli import app
    from entrep.cli.commands.model import Runtime
    from entrep.config import RUNTIMES

    assert typing.get_args(Runtime) == RUNTIMES  # the CLI's choices are the library's
    image = tmp_path / "a.png"
    _frames(1, size=(64, 48))[0].save(image)
    asked = []

    class FakeModel:
        def predict(self, images):
            return []

    def fake_load(path, **kw):
        asked.append(kw.get("runtime"))
        return FakeModel()

    monkeypatch.setattr(entrep.model, "load_model", fake_load)
    runner = CliRunner()
    monkeypatch.delenv("ENTREP_RUNTIME", raising=False)
    for args, env, want in ((["--runtime", "torch"], None, "torch"), ([], None, None), ([], "onnx", "onnx"),
                            (["--runtime", "auto"], "onnx", "auto")):
        res = runner.invoke(app, ["predict", str(image), "--model", str(tmp_path), "--json", *args],
                            env={"ENTREP_RUNTIME": env} if env else None)
        assert res.exit_code == 0, res.output
        assert asked[-1] == want
    res = runner.invoke(app, ["predict", str(image), "--model", str(tmp_path), "--runtime", "tensorrt"])
    assert res.exit_code == 2 and "tensorrt" in res.output


@pytest.mark.parametrize("kind", ["vit", "effnet"])
def test_adapted_lora_encoder_runs_on_onnx_with_torch_results(tmp_path, kind):
    from entrep.config import FinetuneConfig
    from entrep.data.records import Dataset
    from entrep.finetune import finetune_encoder
    from helpers import TinyExtractor, finetune_taxonomy, laterality_images

    tax = finetune_taxonomy()
    enc = {"vit": tiny_vit_encoder, "effnet": tiny_effnet_encoder}[kind]()
    recs = laterality_images(tmp_path / "img", tax, per_class=3)
    train = Dataset(recs, tmp_path, tax)
    cfg = FinetuneConfig(method="lora", epochs=1, lr=1e-3, batch_size=16, layers=1, patience=10,
                         input_size=enc.config.image_size[0])
    adapted = finetune_encoder(TinyExtractor(enc, tmp_path / "cache"), train, train, tax, cfg)
    ims = _frames(3, size=(64, 48))
    ref = adapted.encode(ims)
    assert adapted.use_runtime("auto", cache_dir=tmp_path / "onnx") == "onnx"
    assert np.abs(adapted.encode(ims) - ref).max() <= 1e-4
    assert adapted.onnx_graph == onnx_runtime.graph_path(tmp_path / "onnx", adapted)  # keyed by the adapter's fingerprint
    assert adapted.onnx_graph != onnx_runtime.graph_path(tmp_path / "onnx", enc)
