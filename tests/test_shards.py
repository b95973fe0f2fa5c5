"""`entrep index --embeddings DIR`: a gallery from shards equals the gallery from images; other encoders refused."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import entrep
from entrep.data.records import DataError
from entrep.distribute import EmbedSpec, LocalEngine, embed_to_shards
from entrep.errors import UserError
from entrep.retrieval.gallery import read_gallery
from entrep.retrieval.shards import gallery_from_shards, index_with_engine


def _same_gallery(a, b):
    assert len(a) == len(b)
    key = lambda it: (it.content_hash, it.path)  # noqa: E731
    ia, ib = sorted(a.items, key=key), sorted(b.items, key=key)
    strip = lambda it: (it.path, it.name, it.label, it.group, it.caption, it.content_hash)  # noqa: E731
    assert [strip(x) for x in ia] == [strip(x) for x in ib]
    va = a.vectors[[a.ids.tolist().index(it.id) for it in ia]]
    vb = b.vectors[[b.ids.tolist().index(it.id) for it in ib]]
    np.testing.assert_allclose(va, vb, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def model_and_cache(tiny_model_dir, tmp_path_factory):
    return tiny_model_dir, str(tmp_path_factory.mktemp("shard-cache"))


def test_index_from_shards_equals_index_from_images(model_and_cache, tiny_data_dir, tmp_path):
    model_dir, cache = model_and_cache
    m = entrep.load(model_dir, cache=cache)
    ds = read_gallery(tiny_data_dir, m.taxonomy)
    m.index(ds, rebuild=True)
    from_images = m.gallery
    embed_to_shards(ds, tmp_path / "emb", EmbedSpec(model=str(model_dir), cache=cache), shard_rows=25)
    m2 = entrep.load(model_dir, cache=cache)
    stats = gallery_from_shards(m2, tmp_path / "emb", rebuild=True)
    assert stats == {"removed": 0, "added": len(ds.records), "size": len(ds.records)}
    _same_gallery(from_images, m2.gallery)
    # an update from the same shards adds and removes nothing
    assert gallery_from_shards(m2, tmp_path / "emb") == {"removed": 0, "added": 0, "size": len(ds.records)}


def test_unlabelled_folder_gets_the_same_predicted_labels(model_and_cache, tiny_data_dir, tmp_path):
    model_dir, cache = model_and_cache
    folder = tmp_path / "flat"
    folder.mkdir()
    m = entrep.load(model_dir, cache=cache)
    for r in read_gallery(tiny_data_dir, m.taxonomy).records[:9]:
        shutil.copy(r.image, folder / r.image.name)
    ds = read_gallery(folder, m.taxonomy)
    assert all(r.label is None for r in ds.records)
    m.index(ds, rebuild=True)
    m2 = entrep.load(model_dir, cache=cache)
    m2.path = model_dir
    index_with_engine(m2, ds, LocalEngine(), rebuild=True, workdir=tmp_path)
    _same_gallery(m.gallery, m2.gallery)
    assert not list(tmp_path.glob(".entrep-shards-*"))  # the temporary shards are gone


def test_shards_from_another_encoder_refused(model_and_cache, tiny_data_dir, tmp_path):
    from entrep.encoders.profiles import profile_from_dict

    model_dir, cache = model_and_cache
    m = entrep.load(model_dir, cache=cache)
    ds = read_gallery(tiny_data_dir, m.taxonomy).subset(range(4))
    other = profile_from_dict({"base": "offline", "clip_image_pooling": "mean", "head_image_pooling": "mean"})
    embed_to_shards(ds, tmp_path / "other", EmbedSpec(profile=other, cache=cache, texts=False))
    with pytest.raises(DataError, match=r"other: shards were embedded with clip_image .*re-run `entrep embed"):
        gallery_from_shards(m, tmp_path / "other")
    with pytest.raises(DataError, match="no manifest.json"):
        gallery_from_shards(m, tmp_path)


def test_cli_index_from_embeddings(model_and_cache, tiny_data_dir, tmp_path):
    from typer.testing import CliRunner

    from entrep.cli import app

    model_dir, cache = model_and_cache
    model = tmp_path / "model"
    shutil.copytree(model_dir, model)
    emb = tmp_path / "emb"
    res = CliRunner().invoke(app, ["embed", str(tiny_data_dir), "--out", str(emb), "--model", str(model),
                                   "--cache", cache, "--no-progress"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["index", "--model", str(model), "--embeddings", str(emb), "--rebuild"])
    assert res.exit_code == 0, res.output
    assert len(entrep.load(model).gallery) == len(read_gallery(tiny_data_dir, entrep.load(model).taxonomy).records)
    both = CliRunner().invoke(app, ["index", "--model", str(model), "--embeddings", str(emb), "--gallery", str(emb)])
    assert isinstance(both.exception, UserError) and "exactly one" in str(both.exception)
