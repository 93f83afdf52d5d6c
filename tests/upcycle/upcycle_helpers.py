"""Helpers shared by the upcycling tests."""
from __future__ import annotations

from pathlib import Path

TOL = 1e-5


def max_diff(model, ref) -> float:
    import torch

    with torch.no_grad():
        logits = model(**ref.inputs).logits
    return float((logits - ref.logits).abs().max())


def load_hf(path: Path):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(path).eval()
