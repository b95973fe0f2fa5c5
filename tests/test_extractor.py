"""Extractor: files and in-memory images give the same features for every view, adapted encoders
replace the profile's (with their own cache entries), encoders are built only when asked for."""

import numpy as np
import pytest
from PIL import Image

from entrep.data.augment import list_views
from entrep.errors import EntrepError
from entrep.features import Extractor
from test_features import TinyImageEncoder


class TwoEncoderProfile:
    """A profile whose clip and head encoders differ; records what was built."""

    name = "two-tiny"
    head_shares_clip = False

    def __init__(self):
        self.built = []

    def build(self, role, device=None):
        self.built.append(role)
        return TinyImageEncoder(seed={"clip_image": 0, "head_image": 1}[role], name=role)


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    out = []
    for i in range(4):
        a = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
        a[:, : 8 + 6 * i] = 240  # a left/right asymmetry, different per image
        p = tmp_path / "imgs" / f"im{i}.png"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(a).save(p)
        out.append(p)
    return out


@pytest.mark.parametrize("view", list_views(2, flip=True))
def test_file_and_same_image_in_memory_give_identical_features(tmp_path, files, view):
    ex = Extractor(TwoEncoderProfile(), cache_root=tmp_path / "c", batch_size=3)
    from_files = ex.images("head", files, view=view)
    in_memory = ex.images("head", [Image.open(p).convert("RGB") for p in files], view=view)
    assert from_files.shape == (4, 20) and from_files.dtype == np.float32
    np.testing.assert_allclose(from_files, in_memory, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(from_files, axis=1), 1.0, atol=1e-5)


def test_views_differ_and_are_stable_across_extractors(tmp_path, files):
    a = Extractor(TwoEncoderProfile(), cache_root=tmp_path / "c").images("clip", files, view="aug1")
    b = Extractor(TwoEncoderProfile(), cache_root=tmp_path / "other").images("clip", files, view="aug1")
    o = Extractor(TwoEncoderProfile(), cache_root=tmp_path / "c").images("clip", files, view="orig")
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert np.abs(a - o).max() > 1e-3


def test_image_work_builds_only_the_encoder_it_needs(tmp_path, files):
    prof = TwoEncoderProfile()
    ex = Extractor(prof, cache_root=tmp_path / "c")
    ex.images("clip", files[:1])
    assert prof.built == ["clip_image"]  # no head encoder, no text encoder
    ex.images("clip", files[1:2])
    assert prof.built == ["clip_image"]  # built once


def test_override_replaces_profile_encoder_with_its_own_cache_entries(tmp_path, files):
    prof = TwoEncoderProfile()
    adapted = TinyImageEncoder(seed=7, name="head_image")
    base = Extractor(prof, cache_root=tmp_path / "c").images("head", files)
    ex = Extractor(prof, cache_root=tmp_path / "c", overrides={"head_image": adapted}, runtime="torch")
    got = ex.images("head", files)
    assert adapted.images_seen == 4 and prof.built == ["head_image"]  # the override was not rebuilt from the profile
    np.testing.assert_allclose(got, adapted.encode([Image.open(p).convert("RGB") for p in files]), atol=1e-6)
    assert np.abs(got - base).max() > 1e-3  # not served the profile encoder's cached rows
    assert not ex.shares_encoder()


def test_bad_arguments_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="clip_image or head_image"):
        Extractor(TwoEncoderProfile(), cache_root=tmp_path / "c", overrides={"text": object()})
    with pytest.raises(EntrepError, match="unknown runtime"):
        Extractor(TwoEncoderProfile(), cache_root=tmp_path / "c", runtime="tensorrt")
    with pytest.raises(ValueError, match="'clip' or 'head'"):
        Extractor(TwoEncoderProfile(), cache_root=tmp_path / "c").images("text", [])


def test_file_hashes_through_the_one_memo(tmp_path, files):
    import hashlib

    ex = Extractor(TwoEncoderProfile(), cache_root=tmp_path / "c")
    assert ex.file_hashes(files[:2]) == [hashlib.sha256(p.read_bytes()).hexdigest() for p in files[:2]]
