"""Fixtures of the format tests."""
from __future__ import annotations

import pytest
from libmoe_layout import use_hub_cache_with_siglip


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding the (shrunk) SigLIP tower LibMoE's checkpoints name."""
    return use_hub_cache_with_siglip(tmp_path / "hub-cache", monkeypatch)
