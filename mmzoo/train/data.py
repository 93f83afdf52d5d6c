"""Training data: the preprocessed H5 shards, in a seeded order that any step can be recomputed from.

The sample order is an endless stream: epoch ``e`` is ``randperm(N)`` seeded with ``(seed, e)``. The
micro batch of (step, micro step, rank) is a fixed slice of that stream, so a resumed run reads exactly
what the uninterrupted run would have read, for any world size, with no data-loader state to save.

Micro batches are read and collated (images decoded and processed) ahead of the training step by
``data.num_workers`` DataLoader worker processes, so the accelerator does not wait for the CPU; the
batches are the same for any number of workers (0: in the training process).
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import MmzooError
from ..forking import frozen_for_fork


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
        from ..models.load import load_processor
        from ..preprocess import Collator, H5Dataset

        if not (Path(path) / "manifest.json").is_file():
            raise MmzooError("data.path has no manifest.json (run `mmzoo preprocess` first)", path=path)
        processor = load_processor(model_path)
        self.dataset = H5Dataset(path, images, processor.image_processor)
        self.collate = Collator(self.dataset.pad_token_id)
        self.parameters = self.dataset.manifest.get("parameters", {})
        # `mmzoo preprocess --kind preference`: sample 2k is pair k's chosen side, 2k + 1 its rejected side
        self.pairs = self.parameters.get("kind") == "preference"
        self.order = SampleOrder(len(self), seed)
        self._lengths: np.ndarray | None = None

    def __len__(self) -> int:
        """Samples, or pairs of preference data (the unit the order, batches and epochs count)."""
        return len(self.dataset) // 2 if self.pairs else len(self.dataset)

    def batch(self, indices: list[int]) -> dict[str, Any]:
        if self.pairs:  # one batch of 2B rows, the chosen sides then the rejected sides, for one forward
            batch = self.collate([self.dataset[2 * i] for i in indices] + [self.dataset[2 * i + 1] for i in indices])
            batch["pair_indices"] = torch.tensor(indices, dtype=torch.long)
            return batch
        return self.collate([self.dataset[i] for i in indices])

    def packed_batch(self, indices: list[int]) -> dict[str, Any]:
        from .packing import collate_packed

        return collate_packed([self.dataset[i] for i in indices])

    def sample_lengths(self) -> np.ndarray:
        """Tokens of every sample (image tokens included), from the shards' offsets alone."""
        if self._lengths is None:
            parts = [np.diff(self.dataset._file(k)["offsets"][:]) for k in range(len(self.dataset.files))]
            self._lengths = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
        return self._lengths


def check_data_fits_model(parameters: dict[str, Any], model_path: Path, image_token_id: int | None,
                          stage: str) -> list[str]:
    """Refuse preprocessed data the model cannot read (one clear line instead of a shape error deep in
    the first forward); return warnings for data that runs but is probably not what the stage wants."""
    from ..checkpoint.locate import num_image_tokens

    data_image_id = parameters.get("image_token_id")
    if image_token_id is not None and data_image_id is not None and data_image_id != image_token_id:
        raise MmzooError(f"the data marks images with token id {data_image_id} but the model's image token is "
                         f"{image_token_id}: preprocess again with this model's tokenizer", path=model_path)
    data_tokens = parameters.get("num_image_tokens")
    try:
        model_tokens = num_image_tokens(model_path)
    except (MmzooError, KeyError, TypeError):  # a layout locate cannot read: the forward will tell
        model_tokens = None
    if data_tokens is not None and model_tokens is not None and data_tokens != model_tokens:
        raise MmzooError(f"the data has {data_tokens} tokens per image but the model's vision tower makes "
                         f"{model_tokens}: preprocess again with --model {model_path}", path=model_path)
    warnings = []
    template = parameters.get("template")
    if stage == "pretrain" and template not in (None, "plain"):
        warnings.append(f"stage pretrain usually trains on caption data preprocessed with --template plain "
                        f"(this data: {template})")
    if stage in ("sft", "moe", "distill", "preference") and template == "plain":
        warnings.append(f"stage {stage} usually trains on conversations in the LLM's chat template "
                        "(this data was preprocessed with --template plain)")
    return warnings


class _MicroBatches(torch.utils.data.Dataset):
    """Item ``k``: the ``k``-th micro batch this rank trains on, counted from ``first_step``."""

    def __init__(self, data: TrainData, *, first_step: int, last_step: int, rank: int, accumulation: int, world: int,
                 micro_batch_size: int, plan=None):
        self.data, self.first_step, self.rank = data, first_step, rank
        self.accumulation, self.world, self.micro_batch_size = accumulation, world, micro_batch_size
        self.count = (last_step - first_step) * accumulation
        self.packs = None
        if plan is not None:  # resolved here, once: workers only look their packs up
            self.packs = [plan.pack(((first_step + step) * accumulation + micro) * world + rank)
                          for step in range(last_step - first_step) for micro in range(accumulation)]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k: int) -> dict[str, Any]:
        if self.packs is not None:
            return self.data.packed_batch(self.packs[k])
        step, micro = divmod(k, self.accumulation)
        indices = micro_batch_indices(self.data.order, self.first_step + step, micro, self.rank,
                                      accumulation=self.accumulation, world=self.world,
                                      micro_batch_size=self.micro_batch_size)
        return self.data.batch(indices)


def micro_batch_stream(data: TrainData, *, first_step: int, last_step: int, rank: int, accumulation: int, world: int,
                       micro_batch_size: int, num_workers: int, pin_memory: bool = False, plan=None,
                       worker_timeout: float = 0):
    """The micro batches of steps ``[first_step, last_step)`` for this rank, in training order (packs of
    ``plan``, a :class:`mmzoo.train.packing.PackPlan`, when packing).

    A generator: ``close()`` it (the training loop does, however it ends) and the worker processes are stopped
    at once, not whenever the garbage collector gets to a failed run's traceback. ``worker_timeout`` seconds
    without a micro batch from the workers (0: no limit) end the run with a :class:`MmzooError` line, as does a
    worker that died."""
    batches = _MicroBatches(data, first_step=first_step, last_step=last_step, rank=rank, accumulation=accumulation,
                            world=world, micro_batch_size=micro_batch_size, plan=plan)
    workers = {"timeout": worker_timeout, "prefetch_factor": 4} if num_workers else {}
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=num_workers,
                                         pin_memory=pin_memory, **workers)
    # the workers are forked here, from a process that holds DeepSpeed's process groups (mmzoo/forking.py)
    with frozen_for_fork() if num_workers else nullcontext():
        iterator = iter(loader)
    try:
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except RuntimeError as exc:  # torch's own words for a dead or silent worker, or a worker's error
                failure = _worker_failure(exc, worker_timeout)
                if failure is None:
                    raise
                raise failure from exc
            yield batch
    finally:
        shutdown = getattr(iterator, "_shutdown_workers", None)  # the multi-process iterator's own clean-up
        if shutdown is not None:
            shutdown()


def _worker_failure(exc: RuntimeError, worker_timeout: float) -> MmzooError | None:
    """The DataLoader's own failure as one line (None for any other error, a worker's included)."""
    message = str(exc)
    if message.startswith("DataLoader timed out"):
        return MmzooError(f"no micro batch from the data.num_workers worker processes in {worker_timeout:g} s "
                          "(data.worker_timeout): a worker is stuck or starved of CPU or I/O; raise data.worker_timeout "
                          "for slow storage, or set data.num_workers=0 to read in the training process")
    if message.startswith("DataLoader worker"):  # "… exited unexpectedly" / "… is killed by signal: Killed."
        return MmzooError(f"{message.rstrip('. ')} (out of memory?); --resume auto continues from the last checkpoint")
    return None


def to_device(batch: dict[str, Any], device, float_dtype) -> dict[str, Any]:
    """The model inputs of a collated batch on ``device`` (pixel values in the run's float dtype)."""
    # non_blocking: pinned batches (CUDA) copy while the previous micro batch still computes; packed batches
    # carry position_ids instead of an attention mask (mmzoo/train/packing.py)
    inputs = {k: batch[k].to(device, non_blocking=True) for k in ("input_ids", "attention_mask", "labels", "position_ids")
              if batch.get(k) is not None}
    if batch.get("pixel_values") is not None:
        inputs["pixel_values"] = batch["pixel_values"].to(device=device, dtype=float_dtype, non_blocking=True)
    if "position_ids" in inputs:
        inputs["use_cache"] = False  # transformers reads packed samples from position_ids only without a KV cache
    return inputs
