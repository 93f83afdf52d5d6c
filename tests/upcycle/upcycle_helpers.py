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


def routed_mix(x, top_i, weights, expert):
    """The reference MoE output, one token and one chosen slot at a time: for every token position of ``x``
    [..., hidden], the sum over its slots of ``weights[pos, slot] * expert(top_i[pos, slot], x[pos])`` — the
    definition the routers' vectorised code must equal."""
    import itertools

    import torch

    want = torch.zeros_like(x)
    for pos in itertools.product(*map(range, x.shape[:-1])):
        for slot in range(top_i.shape[-1]):
            want[pos] += weights[pos + (slot,)] * expert(int(top_i[pos + (slot,)]), x[pos])
    return want
