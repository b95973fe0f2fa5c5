"""The distributor seam: local and Ray engines give the same shards; resume; one writer per folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from entrep.data.records import Record, write_manifest
from entrep.distribute import EmbedSpec, EmbedWorker, LocalEngine, embed_to_shards, get_engine, read_shards
from entrep.errors import UserError

LABELS = ["nose-left", "nose-right", "ear-left", "vc-open", "ear-right", "nose-left", "vc-closed"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from entrep.data.readers import read_dataset

    root = tmp_path_factory.mktemp("dist-data")
    rng = np.random.default_rng(3)
    records = []
    for i, label in enumerate(LABELS):
        p = root / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(p)
        records.append(Record(image=p, label=None if i == 4 else label, text=None if i % 3 else f"caption {i}"))
    write_manifest(root / "m.jsonl", records)
    return read_dataset(root / "m.jsonl")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("dist-cache"))


@pytest.fixture(scope="module")
def local_shards(dataset, cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "emb"
    embed_to_shards(dataset, out, EmbedSpec(cache=cache, batch_size=2), shard_rows=3)
    return out


class FailingWorker(EmbedWorker):
    """A worker that dies on its second batch, as a killed process would."""

    calls = 0

    def __call__(self, batch):
        type(self).calls += 1
        if type(self).calls == 2:
            raise RuntimeError("worker killed")
        return super().__call__(batch)


def test_shards_and_manifest(local_shards, dataset):
    manifest, cols = read_shards(local_shards)
    assert sorted(manifest["shards"]) == ["shard-000000000-000000003.parquet", "shard-000000003-000000006.parquet",
                                          "shard-000000006-000000007.parquet"]
    assert manifest["n_rows"] == len(LABELS) and manifest["encoders"]["clip_image"]["name"] == "effnet-lite2"
    assert cols["row_id"].tolist() == list(range(len(LABELS)))
    assert [str(p) for p in cols["path"]] == [str(r.image) for r in dataset.records]
    assert [str(x) for x in cols["label"]] == [lab if i != 4 else "" for i, lab in enumerate(LABELS)]
    assert cols["clip"].shape == (len(LABELS), 6400) and "head" not in cols  # offline: head == clip encoder
    assert cols["has_text"].tolist() == [i % 3 == 0 for i in range(len(LABELS))]
    assert np.isnan(cols["text"][1]).all() and np.isfinite(cols["text"][0]).all()
    assert all(len(str(h)) == 64 for h in cols["content_hash"])
    json.loads((local_shards / "manifest.json").read_text())  # plain JSON


def test_vectors_match_the_extractor(local_shards, dataset, cache):
    _, cols = read_shards(local_shards)
    ex = EmbedSpec(cache=cache).build_extractor()
    np.testing.assert_allclose(cols["clip"], ex.images("clip", [r.image for r in dataset.records], "orig"),
                               rtol=1e-6, atol=1e-6)


def test_resume_after_a_killed_worker(dataset, cache, local_shards, tmp_path):
    out = tmp_path / "emb"
    spec = EmbedSpec(cache=cache, batch_size=2)
    with pytest.raises(RuntimeError, match="killed"):
        embed_to_shards(dataset, out, spec, engine=LocalEngine(FailingWorker(spec)), shard_rows=3)
    done = json.loads((out / "manifest.json").read_text())["shards"]
    assert list(done) == ["shard-000000000-000000003.parquet"]  # only the shard in flight was lost
    first = (out / "shard-000000000-000000003.parquet").stat().st_mtime_ns
    embed_to_shards(dataset, out, spec, shard_rows=3)
    assert (out / "shard-000000000-000000003.parquet").stat().st_mtime_ns == first  # skipped, not redone
    (_, a), (_, b) = read_shards(out), read_shards(local_shards)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_other_settings_refused_and_one_writer(dataset, cache, local_shards):
    with pytest.raises(UserError, match="different .*shard_rows.*another --out"):
        embed_to_shards(dataset, local_shards, EmbedSpec(cache=cache), shard_rows=4)
    with pytest.raises(UserError, match="different .*view"):
        embed_to_shards(dataset, local_shards, EmbedSpec(cache=cache, view="flip"), shard_rows=3)
    from entrep.distribute.store import folder_lock

    with folder_lock(local_shards):
        with pytest.raises(UserError, match="another run is writing"):
            embed_to_shards(dataset, local_shards, EmbedSpec(cache=cache), shard_rows=3)


def test_engine_names():
    assert isinstance(get_engine("local"), LocalEngine)
    with pytest.raises(UserError, match="local or ray"):
        get_engine("spark")
    with pytest.raises(UserError, match="--engine ray"):
        get_engine("local", address="ray://head:10001")


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'entrep[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_engine_matches_local(ray_local, dataset, cache, local_shards, tmp_path):
    out = tmp_path / "ray-emb"
    # a cache of its own: the actors compute every vector instead of reading the local run's
    spec = EmbedSpec(cache=str(tmp_path / "ray-cache"), batch_size=2)
    embed_to_shards(dataset, out, spec, engine=get_engine("ray", workers=2),
                    shard_rows=3)
    (ma, a), (mb, b) = read_shards(out), read_shards(local_shards)
    assert ma["shards"] == mb["shards"] and ma["encoders"] == mb["encoders"]
    assert a.keys() == b.keys()
    for k in ("row_id", "path", "name", "label", "caption", "content_hash", "has_text"):
        assert a[k].tolist() == b[k].tolist(), k
    np.testing.assert_allclose(a["clip"], b["clip"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(a["text"], b["text"], rtol=1e-6, atol=1e-6)
