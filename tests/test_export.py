"""`entrep embed` / export_embeddings and encoder profiles."""

import dataclasses
import json
import logging

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from entrep.data.records import Record, write_manifest
from entrep.features.export import export_embeddings
from entrep.encoders.profiles import Profile, get_profile, load_profile, profile_from_dict
from entrep.errors import UserError

LABELS = ["nose-left", "nose-right", "ear-left", "vc-open"]


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed-data")
    rng = np.random.default_rng(0)
    records = []
    for i, label in enumerate(LABELS):
        p = root / "imgs" / f"{i:03d}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(p)
        text = None if i == 2 else ["a spur on the septum", "septal spur", None, "the vocal cords are open"][i]
        records.append(Record(image=p, label=label, text=text, text_vi="vách ngăn lệch" if i == 0 else None))
    path = root / "manifest.jsonl"
    write_manifest(path, records)
    return path


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("embed-cache")


def test_export_npz_is_row_aligned(manifest, tmp_path, caplog, shared_cache):
    out = tmp_path / "emb.npz"
    with caplog.at_level(logging.INFO, logger="entrep.features.export"):
        assert export_embeddings(manifest, out, profile="offline", cache=shared_cache) == out
    z = np.load(out)  # plain arrays: no pickle needed
    n = len(LABELS)
    assert z["image_embeddings"].shape == (n, 6400) and z["image_embeddings"].dtype == np.float32
    assert "head_embeddings" not in z.files  # offline: the head encoder is the clip encoder
    assert z["text_embeddings"].shape == (n, 384)
    assert z["has_text"].tolist() == [True, True, False, True]
    assert np.isnan(z["text_embeddings"][2]).all() and np.isfinite(z["text_embeddings"][[0, 1, 3]]).all()
    assert z["paths"].tolist() == [f"imgs/{i:03d}.png" for i in range(n)]
    assert z["labels"].tolist() == LABELS
    assert z["texts"][0] == "a spur on the septum"
    meta = json.loads(str(z["meta"]))
    assert meta["image_encoder"] == "effnet-lite2" and meta["text_encoder"] == "minilm-l6"
    assert len(meta["image_fingerprint"]) == 64 and meta["joint"] is False and meta["view"] == "orig"
    t = z["text_embeddings"]
    assert float(t[0] @ t[1]) > float(t[0] @ t[3])
    assert caplog.text.count("Vietnamese captions") == 1


def test_second_export_reuses_the_cache(manifest, tmp_path):
    from entrep.features import FeatureCache

    cache = FeatureCache(tmp_path / "cache")
    export_embeddings(manifest, tmp_path / "a.npz", cache=cache)
    shards = set((tmp_path / "cache").rglob("shard-*.npy"))
    export_embeddings(manifest, tmp_path / "b.npz", cache=cache)
    assert set((tmp_path / "cache").rglob("shard-*.npy")) == shards and cache.last_computed == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(a["image_embeddings"], b["image_embeddings"])


def test_cached_export_builds_no_encoder_and_keeps_its_cache_folder(manifest, tmp_path, monkeypatch):
    from entrep.features import FeatureCache

    cache = tmp_path / "cache"
    export_embeddings(manifest, tmp_path / "a.npz", cache=FeatureCache(cache))
    assert any(cache.rglob("shard-*.npy"))  # the features went into the given folder, not elsewhere

    def no_build(self, role, **kw):
        raise AssertionError(f"built {role} on a fully cached run")

    monkeypatch.setattr(Profile, "build", no_build)
    b = np.load(export_embeddings(manifest, tmp_path / "b.npz", cache=cache))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["text_embeddings"], b["text_embeddings"])


def test_flip_view_export(manifest, tmp_path, shared_cache):
    out = export_embeddings(manifest, tmp_path / "flip.npz", view="flip", cache=shared_cache)
    orig = export_embeddings(manifest, tmp_path / "orig.npz", cache=shared_cache)
    f, o = np.load(out), np.load(orig)
    assert str(f["meta_view"]) == "flip"
    assert not np.allclose(f["image_embeddings"], o["image_embeddings"])


def test_bad_outputs(manifest, tmp_path):
    with pytest.raises(UserError, match=r"a folder .*, or end in \.npz or \.parquet"):
        export_embeddings(manifest, tmp_path / "emb.csv")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="pyarrow"):
            export_embeddings(manifest, tmp_path / "emb.parquet")
    assert not (tmp_path / "emb.csv").exists()


def test_cli_embed(manifest, tmp_path, shared_cache):
    from entrep.cli import app

    out = tmp_path / "cli.npz"
    res = CliRunner().invoke(app, ["embed", str(manifest), "--out", str(out), "--cache", str(shared_cache),
                                   "--batch-size", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert np.load(out)["image_embeddings"].shape == (len(LABELS), 6400)
    bad = CliRunner().invoke(app, ["embed", str(manifest), "--out", str(out), "--profile", "nope"])
    assert isinstance(bad.exception, UserError) and "offline" in str(bad.exception)
    listing = CliRunner().invoke(app, ["encoders", "dinov2*"])
    assert listing.exit_code == 0 and "dinov2-vitb14" in listing.output and "effnet" not in listing.output


def test_builtin_profiles():
    off, paper = get_profile("offline"), get_profile("paper")
    assert (off.clip_image, off.clip_text, off.head_image, off.joint) == ("effnet-lite2", "minilm-l6", "effnet-lite2", False)
    assert off.clip_image_pooling == off.head_image_pooling == "grid2" and off.head_shares_clip
    assert (paper.clip_image, paper.clip_text, paper.joint) == ("biomedclip", "biomedclip", True)
    assert paper.head_image == "dinov2-vitb14" and paper.head_pooling == "grid2" and not paper.head_shares_clip
    assert get_profile(paper) is paper
    with pytest.raises(UserError, match="offline, offline-fast, paper"):
        get_profile("fast")


def test_custom_profile_file_and_round_trip(tmp_path):
    yml = tmp_path / "surgenet.yaml"
    yml.write_text(
        "name: surgenet\nbase: paper\nhead_image: vit_base_patch14_reg4_dinov2.lvd142m\nhead_image_pooling: mean\n"
        "weights:\n  head_image: /models/surgenet.pth\n  clip_image: local-dir:/models/BiomedCLIP\n"
        "options:\n  clip_text: {tokenizer_dir: /models/BiomedBERT}\n")
    p = get_profile(str(yml))
    assert p.name == "surgenet" and p.joint and p.clip_image == "biomedclip"
    assert p.head_weights == "/models/surgenet.pth" and p.clip_weights == "local-dir:/models/BiomedCLIP"
    assert p.options["clip_text"] == {"tokenizer_dir": "/models/BiomedBERT"} and p.head_pooling == "mean"
    assert profile_from_dict(dataclasses.asdict(p)) == p
    assert Profile.from_dict(p.to_dict()) == p
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"clip_image": "effnet-lite0", "clip_text": "minilm-l6", "head_image": "resnet",
                               "joint": False}))
    with pytest.raises(UserError, match="head_image.*resnet"):
        load_profile(bad)
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        load_profile(bad)
    bad.write_text(json.dumps({"base": "offline", "colour": "blue"}))
    with pytest.raises(UserError, match="colour"):
        load_profile(bad)


def test_cli_embed_to_a_folder_of_shards(manifest, tmp_path, shared_cache):
    from entrep.cli import app
    from entrep.distribute import read_shards

    out = tmp_path / "emb"
    args = ["embed", str(manifest), "--out", str(out), "--cache", str(shared_cache), "--shard-rows", "3", "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    manifest_, cols = read_shards(out)
    assert len(manifest_["shards"]) == 2 and cols["clip"].shape == (len(LABELS), 6400)
    single = np.load(export_embeddings(manifest, tmp_path / "one.npz", cache=shared_cache))
    np.testing.assert_allclose(cols["clip"], single["image_embeddings"], rtol=1e-6, atol=1e-6)
    assert [str(x) for x in cols["label"]] == LABELS
    bad = CliRunner().invoke(app, ["embed", str(manifest), "--out", str(tmp_path / "x.npz"), "--engine", "ray"])
    assert isinstance(bad.exception, UserError) and "give a folder" in str(bad.exception)
