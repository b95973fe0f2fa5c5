"""The one content-hash memo and the one union-find."""

import hashlib
import logging
import os

import pytest

from entrep.data.hashing import HashCache, UnionFind, components_sharing
from entrep.errors import EntrepError


def _write(p, data: bytes):
    p.write_bytes(data)
    return p


def test_hashes_are_the_sha256_of_the_bytes_and_remembered(tmp_path):
    a = _write(tmp_path / "a.png", b"alpha")
    b = _write(tmp_path / "b.png", b"beta")
    cache = HashCache(root=tmp_path / "cache")
    want = [hashlib.sha256(b"alpha").hexdigest(), hashlib.sha256(b"beta").hexdigest()]
    assert cache.sha256([a, b, a]) == [want[0], want[1], want[0]]
    assert (cache.last_computed, cache.last_reused) == (2, 0)
    # a second cache on the same folder (another process) reuses the memo
    again = HashCache(root=tmp_path / "cache")
    assert again.sha256([b, a]) == want[::-1]
    assert (again.last_computed, again.last_reused) == (0, 2)
    assert (tmp_path / "cache" / "file-hashes.sqlite").is_file()


def test_a_changed_file_is_hashed_again(tmp_path):
    a = _write(tmp_path / "a.png", b"one")
    cache = HashCache(root=tmp_path / "cache")
    cache.sha256([a])
    st = os.stat(a)
    a.write_bytes(b"two")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cache.sha256_one(a) == hashlib.sha256(b"two").hexdigest()
    assert cache.last_computed == 1


def test_relative_and_absolute_spellings_share_one_entry(tmp_path, monkeypatch):
    _write(tmp_path / "a.png", b"x")
    monkeypatch.chdir(tmp_path)
    cache = HashCache(root=tmp_path / "cache")
    cache.sha256(["a.png"])
    cache.sha256([tmp_path / "a.png"])
    assert cache.last_reused == 1


def test_missing_file_is_one_line_naming_it(tmp_path):
    cache = HashCache(root=tmp_path / "cache")
    with pytest.raises(EntrepError, match="nope.png: cannot read file"):
        cache.sha256([tmp_path / "nope.png"])


def test_corrupt_memo_is_bypassed_with_a_warning(tmp_path, caplog):
    root = tmp_path / "cache"
    root.mkdir()
    (root / "file-hashes.sqlite").write_bytes(b"this is not a database" * 100)
    a = _write(tmp_path / "a.png", b"alpha")
    with caplog.at_level(logging.WARNING):
        cache = HashCache(root=root)
        assert cache.sha256([a]) == [hashlib.sha256(b"alpha").hexdigest()]
    assert "not usable" in caplog.text and "file-hashes.sqlite" in caplog.text


def test_union_find_components_are_canonical():
    uf = UnionFind(6)
    uf.union(4, 1)
    uf.union(5, 4)
    uf.union(2, 3)
    assert uf.components() == [[0], [1, 4, 5], [2, 3]]
    assert uf.find(5) == 1
    assert components_sharing([["x"], ["y"], ["x", "z"], ["z"], []]) == [[0, 2, 3], [1], [4]]
