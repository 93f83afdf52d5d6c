"""Fixtures for the upcycling tests: dense tiny LLaVA folders, their inputs (with images) and logits."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

_counter = itertools.count()


class Dense:
    """A dense hf checkpoint with fixed inputs (two images) and the dense model's float32 logits."""

    def __init__(self, path: Path):
        import torch
        from transformers import LlavaForConditionalGeneration

        from mmzoo.tiny import sample_inputs

        self.path = path
        model = LlavaForConditionalGeneration.from_pretrained(path).eval()
        self.config = model.config
        self.inputs = sample_inputs(model, n_images=2, seq_text=5)
        with torch.no_grad():
            self.logits = model(**self.inputs).logits


@pytest.fixture(scope="session")
def dense(tiny):
    cache: dict[str, Dense] = {}

    def get(arch: str = "llama") -> Dense:
        if arch not in cache:
            cache[arch] = Dense(tiny.hf(arch))
        return cache[arch]

    return get


@pytest.fixture()
def out(tmp_path):
    def make(name: str = "out") -> Path:
        return tmp_path / f"{name}-{next(_counter)}"

    return make
