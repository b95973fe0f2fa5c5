"""Shared test set-up: no network, small thread pools, tiny seeded data."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own feature cache unless it sets one explicitly."""
    monkeypatch.setenv("ENTREP_CACHE", str(tmp_path_factory.mktemp("feature-cache")))


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails, as on an air-gapped machine."""
    import socket

    def refuse(*a, **k):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ---------------------------------------------------------------------------
# A small fitted model, shared by the tests that need one (fit once per session).
# ---------------------------------------------------------------------------

TINY_N = 84


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """A synthetic dataset in the ENTRep training layout (cls/i2i/t2i json, query CSVs)."""
    from entrep.data.synthetic import generate

    out = tmp_path_factory.mktemp("tiny-data") / "data"
    generate(out, n=TINY_N, seed=1)
    return out


def tiny_config():
    from entrep.config import AlignConfig, FitConfig, HeadConfig

    return FitConfig(n_aug=1, head=HeadConfig(max_epochs=40, patience=8), align=AlignConfig(epochs=60))


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_data_dir, tmp_path_factory):
    """Path of a fitted model folder (offline profile) with a gallery and an evaluation report."""
    from entrep.data.readers import read_dataset
    from entrep.model import attach_report
    from entrep.model.train import fit
    from entrep.report.html import write_report

    root = tmp_path_factory.mktemp("tiny-model")
    ds = read_dataset(tiny_data_dir)
    model = fit(ds, config=tiny_config(), cache=root / "cache")
    model.save(root / "model")
    ev, art = model.evaluate(ds)
    write_report(root / "report", ev, confusions=art["confusions"], embeddings=art["embeddings"])
    attach_report(root / "model", root / "report")
    return root / "model"
