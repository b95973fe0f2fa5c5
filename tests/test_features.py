"""Feature cache: computed once, resumable, duplicates shared, corruption detected and recomputed."""

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from entrep.encoders.base import ImageEncoder, TextEncoder
from entrep.encoders.config import ImageEncoderConfig, TextEncoderConfig
from entrep.encoders.pooling import pool_map
from entrep.features import CacheError, FeatureCache, default_cache_root


class TinyImageEncoder(ImageEncoder):
    """A real (tiny, seeded) conv encoder with a call counter."""

    def __init__(self, seed=0, name="tiny"):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
        cfg = ImageEncoderConfig(name=name, dim=20, image_size=(24, 32), mean=(0.5,) * 3, std=(0.5,) * 3,
                                 weights=f"seed:{seed}", pooling="grid2", width=4)
        super().__init__(cfg, model, device="cpu", weights_digest=f"seed{seed}")
        self.images_seen = 0
        self.fail_after = None

    def forward(self, x):
        if self.fail_after is not None and self.images_seen >= self.fail_after:
            raise KeyboardInterrupt
        self.images_seen += x.shape[0]
        return pool_map(self.model(x), "grid2")


class TinyTextEncoder(TextEncoder):
    def __init__(self):
        cfg = TextEncoderConfig(name="tiny-text", dim=8, weights="hash")
        super().__init__(cfg, torch.nn.Identity(), device="cpu", weights_digest="hash")
        self.texts_seen = 0

    def forward(self, texts):
        self.texts_seen += len(texts)
        rows = [np.frombuffer(bytes(t.encode().ljust(8, b"_")[:8]), dtype=np.uint8).astype(np.float32) + 1
                for t in texts]
        return torch.from_numpy(np.stack(rows))


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(10):
        p = tmp_path / "imgs" / f"im{i}.png"
        p.parent.mkdir(exist_ok=True)
        a = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        a[:, : 10 + 5 * i] = 250  # every image different, with a left/right asymmetry
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


def test_second_run_computes_nothing(tmp_path, images):
    enc = TinyImageEncoder()
    cache = FeatureCache(tmp_path / "cache")
    a = cache.image_features(enc, images, batch_size=4)
    assert a.shape == (10, 20) and a.dtype == np.float32
    assert enc.images_seen == 10 and cache.last_computed == 10
    np.testing.assert_allclose(a, enc.encode(images), atol=1e-6)
    b = FeatureCache(tmp_path / "cache").image_features(enc, images, batch_size=4)
    assert enc.images_seen == 20  # only the direct encode() above, nothing recomputed
    np.testing.assert_array_equal(a, b)
    sub = cache.image_features(enc, images[3:5][::-1])
    np.testing.assert_array_equal(sub, a[[4, 3]])
    assert cache.last_computed == 0 and cache.last_reused == 2


def test_duplicates_are_computed_once(tmp_path, images):
    dup = tmp_path / "imgs" / "copy-under-another-name.png"
    dup.write_bytes(images[0].read_bytes())
    enc = TinyImageEncoder()
    out = FeatureCache(tmp_path / "c").image_features(enc, [images[0], dup, images[1], images[0]])
    assert enc.images_seen == 2
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[3])


def test_interrupted_run_keeps_finished_batches_and_resumes(tmp_path, images):
    enc = TinyImageEncoder()
    enc.fail_after = 6  # dies in the third batch of 3
    cache = FeatureCache(tmp_path / "c")
    with pytest.raises(KeyboardInterrupt):
        cache.image_features(enc, images, batch_size=3)
    assert len(cache._store(enc, "orig")) == 6
    enc.fail_after = None
    out = cache.image_features(enc, images, batch_size=3)
    assert cache.last_computed == 4 and cache.last_reused == 6
    np.testing.assert_allclose(out, TinyImageEncoder().encode(images), atol=1e-6)


def test_corrupt_row_is_detected_and_recomputed(tmp_path, images, caplog):
    enc = TinyImageEncoder()
    cache = FeatureCache(tmp_path / "c")
    good = cache.image_features(enc, images, batch_size=5)
    folder = cache.store_folder(enc, "orig")
    shard = sorted(folder.glob("shard-*.npy"))[0]
    arr = np.load(shard, mmap_mode="r+")
    arr[1, 3] += 0.5  # silent bit rot in one stored row
    arr.flush()
    del arr
    with caplog.at_level(logging.WARNING, logger="entrep.features"):
        again = cache.image_features(enc, images, batch_size=5)
    assert "corrupt" in caplog.text
    assert cache.last_computed == 1
    np.testing.assert_allclose(again, good, atol=1e-6)


def test_missing_shard_is_recomputed(tmp_path, images):
    enc = TinyImageEncoder()
    cache = FeatureCache(tmp_path / "c")
    good = cache.image_features(enc, images, batch_size=5)
    next(cache.store_folder(enc, "orig").glob("shard-*.npy")).unlink()
    again = cache.image_features(enc, images, batch_size=5)
    assert cache.last_computed == 5
    np.testing.assert_allclose(again, good, atol=1e-6)


def test_views_and_encoders_are_kept_apart(tmp_path, images):
    cache = FeatureCache(tmp_path / "c")
    enc = TinyImageEncoder()
    orig = cache.image_features(enc, images[:3])
    flip = cache.image_features(enc, images[:3], view="flip")
    assert not np.allclose(orig, flip)
    mirrored = [Image.open(p).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT) for p in images[:3]]
    np.testing.assert_allclose(flip, enc.encode(mirrored), atol=1e-6)
    aug = cache.image_features(enc, images[:3], view="aug1")
    assert not np.allclose(aug, orig)
    np.testing.assert_array_equal(aug, cache.image_features(enc, images[:3], view="aug1"))
    other = TinyImageEncoder(seed=1)
    assert other.fingerprint != enc.fingerprint
    assert not np.allclose(cache.image_features(other, images[:3]), orig)
    with pytest.raises(Exception, match="unknown view"):
        cache.image_features(enc, images[:3], view="rotate")


def test_changed_file_is_rehashed(tmp_path, images):
    enc = TinyImageEncoder()
    cache = FeatureCache(tmp_path / "c")
    before = cache.image_features(enc, images[:2])
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(images[0])  # edited in place
    after = cache.image_features(enc, images[:2])
    assert cache.last_computed == 1
    assert not np.allclose(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])


def test_missing_image_is_one_line_error(tmp_path, images):
    from entrep.errors import EntrepError

    with pytest.raises(EntrepError, match="nope.png.*cannot read"):
        FeatureCache(tmp_path / "c").image_features(TinyImageEncoder(), [tmp_path / "nope.png"])


def test_text_features_cached_and_deduplicated(tmp_path):
    enc = TinyTextEncoder()
    cache = FeatureCache(tmp_path / "c")
    texts = ["a spur on the septum", "septal spur", "a spur on the septum"]
    a = cache.text_features(enc, texts)
    assert a.shape == (3, 8) and enc.texts_seen == 2
    np.testing.assert_array_equal(a[0], a[2])
    b = cache.text_features(enc, texts)
    assert enc.texts_seen == 2
    np.testing.assert_array_equal(a, b)
    assert cache.text_features(enc, []).shape == (0, 8)


def test_concurrent_writers_agree(tmp_path, images):
    cache_root = tmp_path / "c"
    results, errors = [], []
    encoders = [TinyImageEncoder() for _ in range(3)]  # same seed: same weights, same fingerprint

    def work(enc):
        try:
            results.append(FeatureCache(cache_root).image_features(enc, images, batch_size=2))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(e,)) for e in encoders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for r in results[1:]:
        np.testing.assert_allclose(r, results[0], atol=1e-6)
    again = FeatureCache(cache_root)
    again.image_features(TinyImageEncoder(), images)
    assert again.last_computed == 0


def test_folder_of_another_configuration_is_refused(tmp_path, images):
    cache = FeatureCache(tmp_path / "c")
    enc = TinyImageEncoder()
    cache.image_features(enc, images[:1])
    meta = cache.store_folder(enc, "orig") / "meta.json"
    meta.write_text(meta.read_text().replace(enc.fingerprint, "0" * 64))
    with pytest.raises(CacheError, match="another encoder"):
        cache.image_features(enc, images[:1])


def test_default_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ENTREP_CACHE", str(tmp_path / "here"))
    assert default_cache_root() == tmp_path / "here"
    assert FeatureCache().root == tmp_path / "here"
    monkeypatch.delenv("ENTREP_CACHE")
    assert default_cache_root() == Path.home() / ".cache" / "entrep" / "features"
