"""Training data: the preprocessed H5 shards, in a seeded order that any step can be recomputed from.

The sample order is an endless stream: epoch ``e`` is ``randperm(N)`` seeded with ``(seed, e)``. The
micro batch of (step, micro step, rank) is a fixed slice of that stream, so a resumed run reads exactly
what the uninterrupted run would have read, for any world size, with no data-loader state to save.

Micro batches are read and collated (images decoded and processed) ahead of the training step by
``data.num_workers`` DataLoader worker processes, so the accelerator does not wait for the CPU; the
batches are the same for any number of workers (0: in the training process).
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


class _MicroBatches(torch.utils.data.Dataset):
    """Item ``k``: the ``k``-th micro batch this rank trains on, counted from ``first_step``."""

    def __init__(self, data: TrainData, *, first_step: int, last_step: int, rank: int, accumulation: int, world: int,
                 micro_batch_size: int):
        self.data, self.first_step, self.rank = data, first_step, rank
        self.accumulation, self.world, self.micro_batch_size = accumulation, world, micro_batch_size
        self.count = (last_step - first_step) * accumulation

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k: int) -> dict[str, Any]:
        step, micro = divmod(k, self.accumulation)
        indices = micro_batch_indices(self.data.order, self.first_step + step, micro, self.rank,
                                      accumulation=self.accumulation, world=self.world,
                                      micro_batch_size=self.micro_batch_size)
        return self.data.batch(indices)


def micro_batch_stream(data: TrainData, *, first_step: int, last_step: int, rank: int, accumulation: int, world: int,
                       micro_batch_size: int, num_workers: int, pin_memory: bool = False):
    """The micro batches of steps ``[first_step, last_step)`` for this rank, in training order."""
    batches = _MicroBatches(data, first_step=first_step, last_step=last_step, rank=rank, accumulation=accumulation,
                            world=world, micro_batch_size=micro_batch_size)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=num_workers,
                                         pin_memory=pin_memory, prefetch_factor=4 if num_workers else None)
    return iter(loader)
