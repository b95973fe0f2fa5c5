"""The prototypes' image-text fusion is a config choice (``fusion: linear | slerp``, issue 10 item 2)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from entrep.classify import FeatureError
from entrep.classify.fusion import FUSIONS, fuse, fuse_by, slerp
from entrep.classify.prototypes import class_prototypes
from entrep.config import FitConfig, load_config
from entrep.errors import UserError
from entrep.model.train import prototypes
from entrep.taxonomy import ENT


def _rows(seed: int, n: int = 70, d: int = 12):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % ENT.n_classes
    centres = rng.normal(size=(ENT.n_classes, d))
    v = centres[y] + 0.3 * rng.normal(size=(n, d))
    return v.astype(np.float32), y


def _quiet(_: str) -> None:
    pass


def test_slerp_prototypes_differ_from_linear_when_image_and_text_differ():
    v, y = _rows(0)
    u = v + np.random.default_rng(1).normal(size=v.shape).astype(np.float32)
    lin_fine, lin_group = prototypes(v, u, y, ENT, _quiet, fusion="linear")
    sl_fine, sl_group = prototypes(v, u, y, ENT, _quiet, fusion="slerp")
    assert np.abs(lin_fine.prototypes_ - sl_fine.prototypes_).max() > 1e-3
    assert np.abs(lin_group.prototypes_ - sl_group.prototypes_).max() > 1e-3
    # each is the class mean of its own fusion
    classes = np.arange(ENT.n_classes)
    np.testing.assert_allclose(sl_fine.prototypes_, class_prototypes(slerp(v, u, 0.5), y, classes)[0], atol=1e-5)
    np.testing.assert_allclose(lin_fine.prototypes_, class_prototypes(fuse(v, u), y, classes)[0], atol=1e-5)


def test_slerp_prototypes_equal_linear_when_image_and_text_agree():
    v, y = _rows(2)
    lin_fine, lin_group = prototypes(v, v.copy(), y, ENT, _quiet, fusion="linear")
    sl_fine, sl_group = prototypes(v, v.copy(), y, ENT, _quiet, fusion="slerp")
    np.testing.assert_allclose(sl_fine.prototypes_, lin_fine.prototypes_, atol=1e-5)
    np.testing.assert_allclose(sl_group.prototypes_, lin_group.prototypes_, atol=1e-5)


def test_fuse_by_names_every_fusion_and_refuses_others():
    v, _ = _rows(3, n=5)
    u = v[::-1].copy()
    np.testing.assert_allclose(fuse_by("linear", v, u), fuse(v, u))
    np.testing.assert_allclose(fuse_by("slerp", v, u), slerp(v, u, 0.5))
    assert FUSIONS == ("linear", "slerp")
    with pytest.raises(FeatureError, match=r"unknown fusion 'cubic'; valid: linear, slerp"):
        fuse_by("cubic", v, u)


def test_unknown_fusion_is_a_one_line_config_error(tmp_path):
    assert FitConfig().fusion == "linear"
    with pytest.raises(UserError) as e:
        FitConfig(fusion="cubic")
    assert "\n" not in str(e.value) and "config.fusion = 'cubic'" in str(e.value) and "slerp" in str(e.value)
    f = tmp_path / "fit.yaml"
    f.write_text("fusion: Slerp\n")
    with pytest.raises(UserError) as e:
        load_config(f)
    assert "\n" not in str(e.value) and str(f) in str(e.value) and "fusion" in str(e.value)
    f.write_text("fusion: slerp\n")
    assert load_config(f).fusion == "slerp"


def test_fusion_round_trips_in_the_model_folder_and_old_models_load_as_linear(tiny_model_dir, tmp_path):
    from entrep.model import load_model, save_model

    model = load_model(tiny_model_dir)
    assert model.config.fusion == "linear"
    model.config = model.config.replace(fusion="slerp")
    save_model(model, tmp_path / "slerp")
    assert load_model(tmp_path / "slerp").config.fusion == "slerp"

    old = tmp_path / "old"
    shutil.copytree(tiny_model_dir, old)
    meta = json.loads((old / "model.json").read_text())
    del meta["state"]["config"]["fusion"]  # a model saved before the field existed
    (old / "model.json").write_text(json.dumps(meta))
    assert load_model(old).config.fusion == "linear"
