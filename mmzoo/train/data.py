"""Training data: the preprocessed H5 shards, in a seeded order that any step can be recomputed from.

The sample order is an endless stream: epoch ``e`` is ``randperm(N)`` seeded with ``(seed, e)``. The
micro batch of (step, micro step, rank) is a fixed slice of that stream, so a resumed run reads exactly
what the uninterrupted run would have read, for any world size, with no data-loader state to save.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import MmzooError


class SampleOrder:
    def __init__(self, size: int, seed: int):
        if size < 1:
            raise MmzooError("the preprocessed dataset has no samples")
        self.size, self.seed = size, seed
        self._cache: dict[int, list[int]] = {}

    def epoch(self, e: int) -> list[int]:
        if e not in self._cache:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
            self._cache = {e: torch.randperm(self.size, generator=gen).tolist()}
        return self._cache[e]

    def indices(self, start: int, count: int) -> list[int]:
        out = []
        for position in range(start, start + count):
            out.append(self.epoch(position // self.size)[position % self.size])
        return out


def micro_batch_indices(order: SampleOrder, step: int, micro: int, rank: int, *, accumulation: int, world: int,
                        micro_batch_size: int) -> list[int]:
    """Dataset indices of one micro batch (steps count from 0)."""
    start = ((step * accumulation + micro) * world + rank) * micro_batch_size
    return order.indices(start, micro_batch_size)


class TrainData:
    """``mmzoo.preprocess.H5Dataset`` + collator, images through the model's own image processor."""

    def __init__(self, path: Path, images: Path, model_path: Path, seed: int):
        from ..modeling import load_processor
        from ..preprocess import Collator, H5Dataset

        if not (Path(path) / "manifest.json").is_file():
            raise MmzooError("data.path has no manifest.json (run `mmzoo preprocess` first)", path=path)
        processor = load_processor(model_path)
        self.dataset = H5Dataset(path, images, processor.image_processor)
        self.collate = Collator(self.dataset.pad_token_id)
        self.order = SampleOrder(len(self.dataset), seed)
        self.template = self.dataset.manifest.get("parameters", {}).get("template")

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, indices: list[int]) -> dict[str, Any]:
        return self.collate([self.dataset[i] for i in indices])
