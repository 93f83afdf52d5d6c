"""Shared fixtures: tiny real checkpoints built with transformers, cached per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


class TinyCheckpoints:
    """Builds ``hf`` LLaVA folders on demand (one per text × vision arch × dtype) and keeps them."""

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[tuple, Path] = {}

    def hf(self, text: str = "llama", vision: str = "clip", dtype: str = "float32") -> Path:
        key = (text, vision, dtype)
        if key not in self._built:
            from mmzoo.demo.tiny import build_llava

            path = self.root / f"hf-{text}-{vision}-{dtype}"
            build_llava(path, text, vision, dtype=dtype)
            self._built[key] = path
        return self._built[key]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyCheckpoints:
    return TinyCheckpoints(tmp_path_factory.mktemp("tiny"))
