"""Atomic output and the training config file."""

import json

import pytest

from entrep.config import FitConfig, load_config
from entrep.errors import UserError
from entrep.io import atomic_path, write_json_atomic


def test_atomic_file_is_untouched_when_writing_fails(tmp_path):
    target = tmp_path / "model.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["model.json"]  # no temporary left behind


def test_atomic_folder_replaces_old_folder_whole(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a").write_text("1")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_config_from_yaml_and_errors(tmp_path):
    p = tmp_path / "fit.yaml"
    p.write_text("n_aug: 1\nthreshold: 0.95\nhead: {max_epochs: 5}\nretrieval: {space: joint}\n")
    c = load_config(p)
    assert c.n_aug == 1 and c.threshold == 0.95 and c.head.max_epochs == 5 and c.retrieval.space == "joint"
    assert FitConfig.from_dict(c.to_dict()) == c
    p.write_text("treshold: 0.9\n")
    with pytest.raises(UserError, match="unknown keys \\['treshold'\\]"):
        load_config(p)
    p.write_text("threshold: 2\n")
    with pytest.raises(UserError, match="threshold must be in"):
        load_config(p)
    p.write_text("head: [1, 2\n")
    with pytest.raises(UserError, match="malformed config"):
        load_config(p)
