"""The training config file (atomic output tests are in test_io.py)."""

import pytest

from entrep.config import FitConfig, load_config
from entrep.errors import UserError


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
