"""Shard writers. A shard is written under a temporary name and renamed once complete, so a file with
its final name is always whole; that is what makes ``--resume`` safe after a kill."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import writing
from ..io.digest import file_sha256
from .encode import Sample

FORMAT_VERSION = 1
TMP_SUFFIX = ".tmp"


@contextmanager
def h5_file(path: Path) -> Iterator[Any]:
    """An HDF5 file built in memory and written to ``path`` (under a temporary name, renamed when
    whole) with plain file I/O. HDF5 never touches the disk itself, so a full disk is one OSError
    naming the file, not an HDF5 error cascade that ends in a segfault. The bytes are exactly those
    h5py would have written to disk (the core driver's file image)."""
    import h5py

    with h5py.File(path.name, "w", driver="core", backing_store=False) as f:
        yield f
        f.flush()
        image = f.id.get_file_image()
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with writing(path), open(tmp, "wb") as handle:
            handle.write(image)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _compressed(f, name: str, data: np.ndarray, chunk: int, dtype=None) -> None:
    """gzip level 1 + shuffle; chunks sized for cheap random access of one sample. track_times=False
    keeps the bytes of a shard independent of when (and by how many workers) it was written."""
    kwargs: dict[str, Any] = dict(dtype=dtype or data.dtype, track_times=False)
    if len(data):
        kwargs.update(compression="gzip", compression_opts=1, shuffle=True, chunks=(min(len(data), chunk),))
    f.create_dataset(name, data=data, **kwargs)


class BufferedShardWriter:
    """Buffers samples and writes a shard file each ``per_shard`` samples (``_write`` does the file)."""

    per_shard: int

    def __init__(self, shards: list[dict] | None = None):
        self.shards: list[dict] = list(shards or [])  # finished shards, as listed in the manifest
        self.pending: list[Sample] = []

    def add(self, sample: Sample) -> bool:
        """Buffer a sample; True when this completed (wrote) a shard."""
        self.pending.append(sample)
        if len(self.pending) >= self.per_shard:
            self._write()
            return True
        return False

    def close(self) -> None:
        if self.pending:
            self._write()

    def _write(self) -> None:
        raise NotImplementedError


class MmzooWriter(BufferedShardWriter):
    """``shard-XXXXX.h5`` files of ``samples_per_shard`` samples each (see docs/preprocess.md)."""

    def __init__(self, out: Path, samples_per_shard: int, attrs: dict[str, Any], shards: list[dict] | None = None):
        super().__init__(shards)
        self.out, self.per_shard, self.attrs = out, samples_per_shard, attrs

    def _write(self) -> None:
        import h5py

        samples, self.pending = self.pending, []
        name = f"shard-{len(self.shards):05d}.h5"
        lengths = np.array([len(s.input_ids) for s in samples], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        image_counts = np.array([len(s.images) for s in samples], dtype=np.int64)
        image_offsets = np.concatenate([[0], np.cumsum(image_counts)]).astype(np.int64)
        input_ids = np.concatenate([s.input_ids for s in samples]).astype(np.int32, copy=False)
        loss_mask = np.concatenate([s.loss_mask for s in samples]).astype(np.uint8, copy=False)
        strings = h5py.string_dtype("utf-8")
        with h5_file(self.out / name) as f:
            _compressed(f, "input_ids", input_ids, 1 << 15)
            _compressed(f, "loss_mask", loss_mask, 1 << 15)
            _compressed(f, "offsets", offsets, 1 << 13)
            _compressed(f, "image_offsets", image_offsets, 1 << 13)
            _compressed(f, "image_paths", np.array([p for s in samples for p in s.images], dtype=object), 1 << 10, strings)
            _compressed(f, "sample_ids", np.array([s.sample_id for s in samples], dtype=object), 1 << 10, strings)
            for key, value in self.attrs.items():
                f.attrs[key] = value
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["n_samples"] = len(samples)
        self.shards.append({
            "file": name, "n_samples": len(samples), "n_tokens": int(offsets[-1]),
            "sha256": file_sha256(self.out / name),
        })

    def state(self) -> dict:
        return {"shards": self.shards}
