"""`fit --finetune`: the adapted encoder is part of the model; predict/search/evaluate use it with no extra flag."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from entrep.cli import app


@pytest.mark.slow
def test_partial_finetune_fits_saves_and_reloads_with_its_adapter(tiny_data_dir, tmp_path):
    import entrep
    from entrep.config import AlignConfig, FinetuneConfig, FitConfig, HeadConfig

    cfg = FitConfig(n_aug=0, head=HeadConfig(max_epochs=15, patience=4), align=AlignConfig(epochs=30),
                    finetune=FinetuneConfig(method="partial", epochs=1, layers=1, batch_size=16))
    model = entrep.fit(tiny_data_dir, config=cfg, out=tmp_path / "m", cache=tmp_path / "cache")
    assert list(model.adapters) == ["head_image"]
    assert model.config.retrieval.space == "metric"  # the metric head's space is the default with fine-tuning
    assert (tmp_path / "m" / "adapters" / "head_image").is_dir()
    # the adapted encoder has a fingerprint of its own: frozen features are never reused for it
    assert model.encoders["head_image"]["fingerprint"] != model.encoders["clip_image"]["fingerprint"]
    loaded = entrep.load(tmp_path / "m", cache=tmp_path / "cache")
    imgs = sorted((tiny_data_dir / "imgs").glob("*.png"))[:3]
    assert loaded.predict(imgs) == model.predict(imgs)
    hits = loaded.search_image(imgs[0], k=3)["results"]
    assert hits and all(h["label"] for h in hits)
    res = CliRunner().invoke(app, ["predict", "--model", str(tmp_path / "m"), str(imgs[0]), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)[0]["label"] == model.predict(imgs[:1])[0]["label"]
