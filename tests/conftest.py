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
