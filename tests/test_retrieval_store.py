"""Gallery index files: vectors saved once, round trip, older and unknown format versions."""

import json

import numpy as np
import pytest

from entrep.errors import ModelError
from entrep.retrieval import GalleryIndex


def _gallery(kind="flat", n=120, d=8):
    x = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    g = GalleryIndex(d, kind=kind)
    g.add(x, [{"path": f"/g/{i}.png", "name": f"{i}.png", "label": "nose-right" if i % 2 else "ear-left"}
              for i in range(n)])
    return g, x


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_round_trip_keeps_rows_and_results_and_writes_vectors_once(kind, tmp_path):
    g, x = _gallery(kind)
    g.remove([3, 7])
    g.save(tmp_path / "gal")
    assert not (tmp_path / "gal" / "vectors.npy").exists()
    h = GalleryIndex.load(tmp_path / "gal")
    assert h.kind == g.kind and list(h.ids) == list(g.ids) and h.items == g.items
    np.testing.assert_allclose(h.vectors, g.vectors, atol=1e-6)
    a = g.search(x[:5], 5, allowed={"ear-left"})
    b = h.search(x[:5], 5, allowed={"ear-left"})
    assert [[t.id for t in r] for r in a] == [[t.id for t in r] for r in b]
    assert all(t.metadata.label == "ear-left" for r in b for t in r)


def test_version_1_folder_loads_and_unknown_version_says_rebuild(tmp_path):
    g, _ = _gallery()
    folder = g.save(tmp_path / "gal")
    meta_file = tmp_path / "gal" / "gallery.json"
    meta = json.loads(meta_file.read_text())
    items = [it.to_json() for it in g.items]
    meta_file.write_text(json.dumps({**meta, "version": 1, "items": items}))
    assert len(GalleryIndex.load(folder)) == len(g)
    meta_file.write_text(json.dumps({**meta, "version": 3}))
    meta_file.write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(ModelError, match="rebuild it with `entrep index`") as e:
        GalleryIndex.load(folder)
    assert "\n" not in str(e.value)
