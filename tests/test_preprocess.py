"""Encoding-path preprocessing: numpy normalisation, reduced-scale JPEG decode, pre-reduced letterbox, no torch ops."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from entrep.data.images import fit_size, load_rgb
from entrep.encoders.base import letterbox, normalise_into, to_normalised_array
from test_features import TinyImageEncoder

BICUBIC = Image.Resampling.BICUBIC


def _torch_normalised(img, mean, std):
    """The torch formula preprocessing used before (and what the vectors were computed with)."""
    a = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    return ((a - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]).numpy()


def _smooth_frame(w, h, seed=0):
    """An endoscopy-like frame: smooth colour fields, a bright left edge, a black surround, mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    c = rng.uniform(80, 200, 3)
    a = c + 50 * np.sin(xx[..., None] / (w / 7) + yy[..., None] / (h / 5) + rng.uniform(0, 6, 3))
    a[:, : w // 6] = 235
    a[((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2 > 0.22] = 0
    return Image.fromarray(np.clip(a + rng.normal(0, 2, a.shape), 0, 255).astype(np.uint8))


def _jpeg(path, img, orientation=1):
    exif = img.getexif()
    if orientation != 1:
        exif[0x0112] = orientation
    img.save(path, "JPEG", quality=92, exif=exif)
    return path


def _mad(a, b):
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


@pytest.mark.parametrize("mean,std", [((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.5,) * 3, (0.5,) * 3),
                                      ((0.4815, 0.4578, 0.4082), (0.2686, 0.2613, 0.2758))])
def test_numpy_normalisation_equals_the_torch_formula(mean, std):
    every = np.stack([np.tile(np.arange(256, dtype=np.uint8), (3, 1))] * 3, -1)  # every value, every channel
    frame = np.asarray(_smooth_frame(64, 48))
    for a in (every, frame):
        img = Image.fromarray(a)
        got = to_normalised_array(img, mean, std)
        assert got.dtype == np.float32 and got.shape == (3, *a.shape[:2])
        np.testing.assert_allclose(got, _torch_normalised(img, mean, std), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="cannot write"):
        normalise_into(Image.fromarray(frame), np.empty((3, 10, 10), np.float32), mean, std)


def test_encoder_preprocess_matches_letterbox_plus_torch_formula():
    enc = TinyImageEncoder()
    c = enc.config
    for img in (_smooth_frame(640, 480), _smooth_frame(480, 640, seed=1), _smooth_frame(20, 30).convert("L")):
        ref = _torch_normalised(letterbox(img.convert("RGB"), c.image_size, c.interpolation), c.mean, c.std)
        np.testing.assert_allclose(enc.preprocess_array(img), ref, rtol=0, atol=1e-6)
        t = enc.preprocess(img)
        assert isinstance(t, torch.Tensor) and t.shape == (3, *c.image_size)
        np.testing.assert_array_equal(t.numpy(), enc.preprocess_array(img))


@pytest.mark.parametrize("size,box", [((640, 480), (299, 224)), ((480, 640), (299, 224)), ((640, 480), (224, 224))])
def test_pre_reduced_letterbox_is_close_to_a_plain_bicubic_resize(size, box):
    img = _smooth_frame(*size)
    out = letterbox(img, (box[1], box[0]))
    nw, nh = fit_size(size, box)
    plain = img.resize((nw, nh), BICUBIC)
    x0, y0 = (box[0] - nw) // 2, (box[1] - nh) // 2
    a = np.asarray(out)
    assert out.size == box and _mad(a[y0:y0 + nh, x0:x0 + nw], plain) < 1.0
    assert not a[:y0].any() and not a[y0 + nh:].any() and not a[:, :x0].any() and not a[:, x0 + nw:].any()


def test_large_jpeg_decodes_at_reduced_scale_close_to_the_full_decode(tmp_path):
    box = (299, 224)
    p = _jpeg(tmp_path / "big.jpg", _smooth_frame(1280, 960))
    full, drafted = load_rgb(p), load_rgb(p, draft_size=box)
    assert full.size == (1280, 960) and drafted.size == (320, 240)  # libjpeg at 1/4
    assert _mad(letterbox(drafted, (224, 299)), letterbox(full, (224, 299))) < 1.5
    frame = _jpeg(tmp_path / "frame.jpg", _smooth_frame(640, 480))
    assert load_rgb(frame, draft_size=box).size == (320, 240)  # an ENT frame for Lite0: 1/2
    small = _jpeg(tmp_path / "small.jpg", _smooth_frame(500, 400))  # under twice the input: decoded whole
    assert load_rgb(small, draft_size=box).size == (500, 400)
    png = tmp_path / "big.png"
    _smooth_frame(1280, 960).save(png)
    assert load_rgb(png, draft_size=box).size == (1280, 960)  # only JPEG has a reduced-scale decoder
    with pytest.raises(ValueError, match="draft_size"):
        load_rgb(p, draft_size=(0, 224))


@pytest.mark.parametrize("orientation", [6, 8, 5, 3])
def test_exif_rotated_jpeg_comes_out_upright_at_reduced_scale(tmp_path, orientation):
    box = (299, 224)
    stored = _smooth_frame(1600, 600)  # wide as stored; turned upright (5-8) it is tall
    p = _jpeg(tmp_path / f"o{orientation}.jpg", stored, orientation)
    full, drafted = load_rgb(p), load_rgb(p, draft_size=box)
    turned = orientation in (5, 6, 7, 8)
    assert full.size == ((600, 1600) if turned else (1600, 600))
    assert drafted.size[0] < full.size[0] and (drafted.size[0] > drafted.size[1]) == (not turned)
    need = fit_size(full.size, box)
    assert drafted.size[0] >= need[0] and drafted.size[1] >= need[1]  # never decoded below the input size
    assert _mad(letterbox(drafted, (224, 299)), letterbox(full, (224, 299))) < 1.5


def test_encoder_reads_paths_at_reduced_scale(tmp_path):
    enc = TinyImageEncoder()  # 32x24 input: a 640x480 JPEG is decoded at 1/8
    p = _jpeg(tmp_path / "frame.jpg", _smooth_frame(640, 480))
    assert enc.draft_size == (32, 24) and enc.load_image(p).size == (80, 60)
    by_path = enc.encode([p], prefetch=0)
    np.testing.assert_array_equal(by_path, enc.encode([enc.load_image(p)], prefetch=0))
    full = enc.encode([load_rgb(p)], prefetch=0)
    assert float((by_path * full).sum()) > 0.99


def test_cache_fill_decodes_like_the_encoder_so_a_file_gets_one_vector(tmp_path):
    """orig/flip rows from the feature cache equal encoding the path directly (same reduced-scale decode),
    and in-memory bytes through the Extractor decode the same way; a jittered view keeps the full decode."""
    from entrep.features import FeatureCache

    enc = TinyImageEncoder()
    p = _jpeg(tmp_path / "frame.jpg", _smooth_frame(640, 480))
    cache = FeatureCache(tmp_path / "cache")
    np.testing.assert_allclose(cache.image_features(enc, [p]), enc.encode([p], prefetch=0), atol=1e-6)
    flipped = enc.encode([enc.load_image(p).transpose(Image.Transpose.FLIP_LEFT_RIGHT)], prefetch=0)
    np.testing.assert_allclose(cache.image_features(enc, [p], view="flip"), flipped, atol=1e-6)
    from entrep.data.augment import apply_view
    from entrep.features.cache import pixel_key

    full = load_rgb(p)
    jittered = enc.encode([apply_view(full, "aug1", key=pixel_key(full))], prefetch=0)
    np.testing.assert_allclose(cache.image_features(enc, [p], view="aug1"), jittered, atol=1e-6)


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_decode_runs_no_torch_ops_and_onnx_gets_the_numpy_batch(tmp_path):
    enc = TinyImageEncoder()
    files = [_jpeg(tmp_path / f"f{i}.jpg", _smooth_frame(64, 48, seed=i)) for i in range(3)]
    items = [*files, _smooth_frame(40, 60), lambda: _smooth_frame(48, 48)]
    with _Ops() as seen:
        x = enc._decode_batch(items)
    assert seen.ops == [] and isinstance(x, np.ndarray)
    assert x.dtype == np.float32 and x.shape == (5, 3, 24, 32) and x.flags.c_contiguous
    for i, img in enumerate(items[3:], start=3):
        np.testing.assert_array_equal(x[i], enc.preprocess_array(img if not callable(img) else img()))
    ref = enc.encode(items, batch_size=2)
    assert enc.use_runtime("onnx", cache_dir=tmp_path / "onnx") == "onnx"
    fed = []
    run_one = enc._onnx.run_one  # every batch reaches the session through it, data-parallel or not
    enc._onnx.run_one = lambda a: fed.append(a) or run_one(a)
    got = enc.encode(items, batch_size=2)
    assert [type(a) for a in fed] == [np.ndarray] * 3 and all(a.dtype == np.float32 for a in fed)
    np.testing.assert_allclose(got, ref, atol=1e-4)
