"""Training-side reader for ``--format mmzoo`` output: a map-style torch Dataset and a collator.

Each item reads only its own slices (offsets -> token slice -> image paths), so a sample costs a
few chunk decompressions, never a whole shard. HDF5 handles are opened lazily per process (and
reopened after a fork), which makes the dataset safe with ``DataLoader(num_workers > 0)``.
"""
from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import CorruptFile, MmzooError
from ..io.structured import load_json
from .shard_checks import MAX_SAMPLE_TOKENS, check_manifest, check_shard, image_path, shard_file

IGNORE_INDEX = -100


class H5Dataset(Dataset):
    """Samples of a preprocessed folder: input_ids, labels (-100 outside the loss mask), pixel_values
    (from ``processor``; None for text-only samples), image_positions (start of each image span)."""

    def __init__(self, out: str | Path, image_root: str | Path, processor: Any = None):
        self.out, self.image_root, self.processor = Path(out), Path(image_root), processor
        path = self.out / "manifest.json"
        if not path.is_file():
            raise MmzooError("no manifest.json: not a finished `mmzoo preprocess --format mmzoo` output", path=self.out)
        self.manifest = load_json(path)
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != "mmzoo":
            format_ = self.manifest.get("format") if isinstance(self.manifest, dict) else None
            raise MmzooError(f"format {format_!r} is not readable by H5Dataset", path=self.out)
        # A preprocessed folder may come from someone else: its manifest and shards are checked before any sample
        # is read (mmzoo/preprocess/shard_checks.py), so a broken one is one line here, not a traceback per worker.
        params, shards = check_manifest(self.manifest, path)
        self.image_token_id: int = params["image_token_id"]
        self.num_image_tokens: int = params["num_image_tokens"]
        self.pad_token_id: int = params["pad_token_id"]
        self.max_seq_len: int = params.get("max_seq_len") or MAX_SAMPLE_TOKENS
        self.vocab_size: int | None = None  # set by a trainer that knows the model: token ids are checked against it
        self.files = [shard_file(self.out, s["file"], path) for s in shards]
        counts = [s["n_samples"] for s in shards]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64).tolist()
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()
        try:
            for k, shard in enumerate(shards):
                check_shard(self._file(k), shard["n_samples"], self.max_seq_len, self.files[k])
        finally:
            self.close()  # DataLoader workers open their own handles; a refused shard is not left open

    def __len__(self) -> int:
        return self.starts[-1]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}  # h5py handles do not pickle; each worker opens its own
        return state

    def _file(self, k: int) -> Any:
        import h5py

        if self._pid != os.getpid():  # forked DataLoader worker: never share the parent's handles
            self._handles, self._pid = {}, os.getpid()
        if k not in self._handles:
            try:
                self._handles[k] = h5py.File(self.files[k], "r")
            except OSError as exc:
                raise CorruptFile(f"cannot open shard ({exc})", path=self.files[k]) from None
        return self._handles[k]

    def raw(self, index: int) -> dict[str, Any]:
        """The stored record of sample ``index``: numpy tokens and mask, image paths, id (no images loaded)."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = bisect.bisect_right(self.starts, index) - 1
        j = index - self.starts[k]
        f = self._file(k)
        a, b = (int(x) for x in f["offsets"][j: j + 2])
        ia, ib = (int(x) for x in f["image_offsets"][j: j + 2])
        input_ids = f["input_ids"][a:b]
        if len(input_ids) and (input_ids.min() < 0 or self.vocab_size is not None and input_ids.max() >= self.vocab_size):
            raise CorruptFile(f"sample {j} holds token id {int(input_ids.min() if input_ids.min() < 0 else input_ids.max())}, "
                              f"outside the model's vocabulary of {self.vocab_size}", path=self.files[k])
        return {
            "input_ids": input_ids,
            "loss_mask": f["loss_mask"][a:b],
            "image_paths": list(f["image_paths"].asstr()[ia:ib]) if ib > ia else [],
            "id": f["sample_ids"].asstr()[j],
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.raw(index)
        ids = torch.from_numpy(record["input_ids"].astype(np.int64))
        labels = ids.masked_fill(torch.from_numpy(record["loss_mask"] == 0), IGNORE_INDEX)
        is_image = record["input_ids"] == self.image_token_id
        # Spans start where an image token follows a non-image token; consecutive images are N apart.
        positions = np.flatnonzero(is_image)[:: self.num_image_tokens]
        return {
            "input_ids": ids, "labels": labels, "pixel_values": self._pixels(record["image_paths"]),
            "image_positions": torch.from_numpy(positions.astype(np.int64)), "id": record["id"],
        }

    def _pixels(self, paths: list[str]) -> torch.Tensor | None:
        if not paths or self.processor is None:
            return None
        from PIL import Image

        images = []
        for rel in paths:
            path = image_path(self.image_root, rel)
            try:
                with Image.open(path) as img:
                    images.append(img.convert("RGB"))
            except (OSError, ValueError, Image.DecompressionBombError) as exc:  # truncated, not an image, a bomb
                raise CorruptFile(f"not a readable image ({type(exc).__name__})", path=path) from None
        return self.processor(images=images, return_tensors="pt")["pixel_values"]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}


def collate(batch: list[dict[str, Any]], pad_token_id: int = 0) -> dict[str, Any]:
    """Right-pad to the longest sample: input_ids (pad), labels (-100), attention_mask (0);
    pixel_values of all images in batch order (None if there are none); image_positions [K, 2]
    = (row, first token of the image span), matching pixel_values row by row."""
    length = max(len(item["input_ids"]) for item in batch)
    input_ids = torch.full((len(batch), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(batch), length), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), length), dtype=torch.long)
    positions, pixels = [], []
    for row, item in enumerate(batch):
        n = len(item["input_ids"])
        input_ids[row, :n] = item["input_ids"]
        labels[row, :n] = item["labels"]
        attention[row, :n] = 1
        for start in item["image_positions"].tolist():
            positions.append((row, start))
        if item.get("pixel_values") is not None:
            pixels.append(item["pixel_values"])
    return {
        "input_ids": input_ids, "labels": labels, "attention_mask": attention,
        "pixel_values": torch.cat(pixels) if pixels else None,
        "image_positions": torch.tensor(positions, dtype=torch.long).reshape(-1, 2),
        "ids": [item["id"] for item in batch],
    }


class Collator:
    """Picklable collate_fn for DataLoader; use ``Collator(dataset.pad_token_id)``."""

    def __init__(self, pad_token_id: int = 0):
        self.pad_token_id = pad_token_id

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(batch, self.pad_token_id)
