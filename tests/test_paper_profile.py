"""The paper's profile end to end with tiny local weights: BiomedCLIP (open_clip local-dir) for
prototypes and search, a DINOv2 checkpoint in Meta's layout for the heads, no network."""

from __future__ import annotations

import numpy as np
import torch

from test_dinov2 import TINY, _tiny, to_official
from test_openclip import build_tiny_biomedclip


def test_paper_profile_fits_saves_loads_and_predicts(tiny_data_dir, tmp_path):
    from entrep.model import load_model
    from entrep.config import FitConfig, HeadConfig
    from entrep.data.readers import read_dataset
    from entrep.encoders.profiles import Profile
    from entrep.model.train import fit

    clip_dir = build_tiny_biomedclip(tmp_path / "biomedclip")
    surgenet = tmp_path / "surgenet.pth"
    torch.save(to_official(_tiny()), surgenet)
    profile = Profile(
        name="paper-tiny", clip_image="biomedclip", clip_text="biomedclip", head_image="dinov2-vits14-reg4",
        joint=True, head_image_pooling="grid2",
        weights={"clip_image": f"local-dir:{clip_dir}", "clip_text": f"local-dir:{clip_dir}", "head_image": str(surgenet)},
        options={"head_image": {"image_size": 56, "model_kwargs": dict(TINY)}},
    )
    ds = read_dataset(tiny_data_dir)
    model = fit(ds, config=FitConfig(n_aug=0, head=HeadConfig(max_epochs=5, patience=3)), profile=profile)
    assert model.parts.align is None  # BiomedCLIP's towers already share a space
    assert not model.extractor.shares_encoder()
    assert model.encoders["clip_image"]["name"] == "biomedclip"
    assert model.encoders["head_image"]["dim"] == 5 * 32  # grid2 pooling of 32-d DINOv2 tokens
    model.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    imgs = [r.image for r in ds.records[:4]]
    assert loaded.predict(imgs) == model.predict(imgs)
    ev, _ = loaded.evaluate(ds.subset(range(20)))
    assert {"prototype", "baseline", "hybrid"} <= set(ev["classification"]["systems"])
    assert np.isfinite(ev["retrieval"]["i2i"]["class"]["mrr"])
