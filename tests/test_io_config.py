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
    with pytest.raises(UserError, match=r"fit.yaml: invalid config: config.threshold = 2 \(must be in \[0, 1\]\)"):
        load_config(p)
    p.write_text("head: [1, 2\n")
    with pytest.raises(UserError, match="malformed config"):
        load_config(p)


@pytest.mark.parametrize("text, named", [
    ("head: {batch_size: 0}\n", "head.batch_size = 0"),
    ("head: {lr: -1}\n", "head.lr = -1"),
    ("align: {epochs: 2.5}\n", "align.epochs = 2.5"),
    ("finetune: {method: full}\n", "finetune.method = 'full'"),
    ("finetune: {rank: 0, mixup: 1.5}\n", "finetune.rank = 0"),
    ("n_aug: '2'\n", "config.n_aug = '2'"),
    ("head: 3\n", "'head' must be a mapping"),
    ("retrieval: {space: cosine}\n", "retrieval.space"),
])
def test_nested_values_are_checked_when_the_file_is_read(tmp_path, text, named):
    p = tmp_path / "fit.yaml"
    p.write_text(text)
    with pytest.raises(UserError) as e:
        load_config(p)
    assert named in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_yaml_exponent_floats_are_numbers():
    # YAML 1.1 reads 1e-3 as a string; a learning rate written that way must still work
    assert FitConfig.from_dict({"head": {"lr": "1e-3"}}).head.lr == 1e-3


def test_config_loader_never_raises_anything_but_a_one_line_user_error(tmp_path):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 500), st.floats(allow_nan=True),
                        st.text(max_size=8))
    keys = st.sampled_from(["profile", "taxonomy", "seed", "n_aug", "flip_views", "threshold", "val_fraction",
                            "batch_size", "head", "align", "retrieval", "finetune", "lr", "space", "method", "x"])
    values = st.recursive(scalars, lambda inner: st.dictionaries(keys, inner, max_size=4) | st.lists(inner, max_size=3),
                          max_leaves=8)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.dictionaries(keys, values, max_size=5))
    def check(d):
        try:
            cfg = FitConfig.from_dict(d, source="fuzz.yaml")
        except UserError as e:
            assert "\n" not in str(e)
        else:
            assert FitConfig.from_dict(cfg.to_dict()) == cfg

    check()
