"""Checks of a preprocessed folder before training reads it: the manifest, every shard's datasets, every image path.

Preprocessed data is shared like checkpoints are, so ``H5Dataset`` treats it as untrusted input. Without these
checks a missing dataset was a KeyError, a manifest naming ``../x.h5`` or ``/abs.h5`` opened a file outside the
folder, an image path ``../../secret.png`` or ``/home/you/photo.jpg`` was read into training, a shard declaring a
sample of 10^12 tokens (HDF5 fills unwritten chunks, so the file stays tiny) allocated terabytes when read, and a
broken image was a traceback in every DataLoader worker. Each is now one line naming the file, before step 0.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import CorruptFile
from ..io.confine import OutsideCheckpoint, confined
from ..io.structured import require_regular_file

MAX_SAMPLE_TOKENS = 1 << 24  # `mmzoo preprocess --max-seq-len` accepts at most this
MAX_SHARD_SAMPLES = 10_000_000  # and `--samples-per-shard` at most this
MAX_ID = 1 << 31  # token ids are stored as int32
DATASETS = {  # name -> (kind of dtype, length: "n" samples, "n+1" offsets, or the offsets' last value)
    "offsets": ("int", "n+1"), "image_offsets": ("int", "n+1"), "sample_ids": ("str", "n"),
    "input_ids": ("int", "tokens"), "loss_mask": ("int", "tokens"), "image_paths": ("str", "images"),
}


def _count(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def check_manifest(manifest: dict[str, Any], where: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The manifest's ``parameters`` and ``shards``, with the types and ranges a reader relies on."""
    params, shards = manifest.get("parameters"), manifest.get("shards")
    if not isinstance(params, dict):
        raise CorruptFile("manifest has no parameters object", path=where)
    for key, low, high in (("image_token_id", 0, MAX_ID - 1), ("pad_token_id", 0, MAX_ID - 1),
                           ("num_image_tokens", 0, 1 << 20)):
        if not _count(params.get(key), low, high):
            raise CorruptFile(f"manifest parameters.{key} must be a whole number from {low} to {high:,} "
                              f"(got {str(params.get(key))[:40]})", path=where)
    if params.get("max_seq_len") is not None and not _count(params["max_seq_len"], 1, MAX_SAMPLE_TOKENS):
        raise CorruptFile(f"manifest parameters.max_seq_len must be a whole number from 1 to {MAX_SAMPLE_TOKENS:,}", path=where)
    if not isinstance(shards, list) or not all(
            isinstance(s, dict) and isinstance(s.get("file"), str) and _count(s.get("n_samples"), 0, MAX_SHARD_SAMPLES)
            for s in shards):
        raise CorruptFile("manifest shards must be a list of {file: name, n_samples: count} objects", path=where)
    return params, shards


def shard_file(folder: Path, name: str, manifest: Path) -> Path:
    """A shard the manifest names: a regular file inside the preprocessed folder (no ``..``, no absolute path,
    no symlink out)."""
    path = folder / name
    if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
        raise OutsideCheckpoint(f"names the shard {name!r}, outside the preprocessed folder: refusing to read it", path=manifest)
    confined(path, Path(folder).resolve(), named_by=manifest)
    require_regular_file(path)  # HDF5 would block forever opening a named pipe
    return path


def check_shard(f: Any, n: int, max_tokens: int, path: Path) -> None:
    """The six datasets exist, are one-dimensional, of integer / string dtype, of consistent lengths, and their
    offsets rise from 0 in samples of at most ``max_tokens`` tokens; every image path is relative and stays below
    the image folder. Reads the offsets and the image paths, never the tokens."""
    import h5py

    lengths = {"n": n, "n+1": n + 1}
    for name, (kind, length) in DATASETS.items():
        dataset = f.get(name)
        if not isinstance(dataset, h5py.Dataset):
            raise CorruptFile(f"has no {name} dataset: not a shard written by `mmzoo preprocess`", path=path)
        is_string = h5py.check_string_dtype(dataset.dtype) is not None
        if dataset.ndim != 1 or (is_string if kind == "int" else not is_string) or (
                kind == "int" and dataset.dtype.kind not in "iub"):
            raise CorruptFile(f"dataset {name} is {dataset.dtype} of shape {dataset.shape}; a shard's is one-dimensional "
                              f"{'text' if kind == 'str' else 'integers'}", path=path)
        if length in lengths and len(dataset) != lengths[length]:
            raise CorruptFile(f"dataset {name} has {len(dataset):,} entries, the manifest's {n:,} samples need "
                              f"{lengths[length]:,}", path=path)
    if len(f["loss_mask"]) != len(f["input_ids"]):
        raise CorruptFile(f"dataset loss_mask has {len(f['loss_mask']):,} entries, input_ids {len(f['input_ids']):,}", path=path)
    for name, total, what in (("offsets", "input_ids", "tokens"), ("image_offsets", "image_paths", "images")):
        offsets = f[name][:].astype(np.int64)
        steps = np.diff(offsets)
        if offsets[0] != 0 or (steps < 0).any() or offsets[-1] != len(f[total]):
            raise CorruptFile(f"dataset {name} does not describe {what} 0 to {len(f[total]):,} in order "
                              f"(first {offsets[0]}, last {offsets[-1]})", path=path)
        if what == "tokens" and len(steps) and steps.max() > max_tokens:
            raise CorruptFile(f"sample {int(steps.argmax())} has {int(steps.max()):,} tokens, more than the "
                              f"{max_tokens:,} it was preprocessed for", path=path)
    for rel in f["image_paths"].asstr()[:]:
        if _escapes(rel):
            raise CorruptFile(f"holds the image path {rel[:200]!r}, which leaves the image folder", path=path)


def _escapes(rel: str) -> bool:
    pure = PurePosixPath(rel.replace("\\", "/"))
    return not rel or pure.is_absolute() or ".." in pure.parts or ":" in (pure.parts[0] if pure.parts else "") or "\0" in rel


def image_path(root: Path, rel: str) -> Path:
    """``root / rel`` when it stays inside ``root`` with symlinks followed (the rule `mmzoo preprocess` applied
    when it wrote the path); one line otherwise."""
    if _escapes(rel):
        raise OutsideCheckpoint(f"image path {rel[:200]!r} leaves the image folder: refusing to read it", path=root)
    return confined(Path(root) / rel, Path(root).resolve())
