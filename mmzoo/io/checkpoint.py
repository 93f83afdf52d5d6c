"""Index the tensors of a weights folder (safetensors single/sharded, or .bin) and write sharded output."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..errors import CorruptFile, MissingTensor, MmzooError
from .dtypes import from_torch
from .confine import checkpoint_root, confined
from .structured import load_json, require_regular_file
from .safetensors_file import PendingTensor, build_header, copy_range, read_header, write_all
from .tensors import Planned, Source, materialize
from .torch_zip import check_torch_zip

SAFE_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


def has_weights(folder: Path) -> bool:
    return any((folder / name).exists() for name in (SAFE_INDEX, "model.safetensors", BIN_INDEX, "pytorch_model.bin"))


def read_weights(folder: Path) -> dict[str, Source]:
    """All tensors of a weights folder, lazily: headers only for safetensors, mmap for .bin.

    Every file read lies inside the folder (see :mod:`mmzoo.io.confine`)."""
    folder = Path(folder)
    root = checkpoint_root(folder)
    if (folder / SAFE_INDEX).exists():
        return _read_indexed(folder, confined(folder / SAFE_INDEX, root), _safetensors_sources, root)
    if (folder / "model.safetensors").exists():
        return _safetensors_sources(confined(folder / "model.safetensors", root))
    if (folder / BIN_INDEX).exists():
        return _read_indexed(folder, confined(folder / BIN_INDEX, root), _bin_sources, root)
    if (folder / "pytorch_model.bin").exists():
        return _bin_sources(confined(folder / "pytorch_model.bin", root))
    raise MmzooError("no weights found (expected model.safetensors, a safetensors index or pytorch_model.bin)", path=folder)


def _read_indexed(folder: Path, index_path: Path, read_file, root: Path) -> dict[str, Source]:
    index = load_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CorruptFile("index has no weight_map of tensor name -> shard file", path=index_path)
    sources: dict[str, Source] = {}
    found_in: dict[str, str] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = confined(folder / shard, root, named_by=index_path)
        if not shard_path.exists():
            raise MissingTensor(f"index names shard {shard!r}, which does not exist", path=index_path)
        for name, source in read_file(shard_path).items():
            if name in found_in:  # which copy is meant is anyone's guess: refuse rather than pick one
                raise CorruptFile(f"tensor {name!r} is stored in two shards, {found_in[name]} and {shard}", path=index_path)
            if name in weight_map and weight_map[name] != shard:
                raise CorruptFile(f"the index puts tensor {name!r} in {weight_map[name]}, but it is stored in {shard}",
                                  path=index_path)
            found_in[name] = shard
            sources[name] = source
    missing = sorted(set(weight_map) - set(sources))
    if missing:
        raise MissingTensor(f"tensor {missing[0]!r} is listed in the index but absent from {weight_map[missing[0]]}", path=index_path)
    extra = sorted(set(sources) - set(weight_map))
    if extra:
        raise CorruptFile(f"tensor {extra[0]!r} is in a shard but not in the index", path=index_path)
    return sources


def _safetensors_sources(path: Path) -> dict[str, Source]:
    tensors, _ = read_header(path)
    return {name: Source(name, t.dtype, t.shape, stored=t, origin=str(path)) for name, t in tensors.items()}


def bin_sources(path: Path) -> dict[str, Source]:
    """The tensors of one ``.bin`` file (e.g. LLaVA's separate mm_projector.bin), loaded safely."""
    return _bin_sources(path)


def _bin_sources(path: Path) -> dict[str, Source]:
    import torch

    require_regular_file(path)  # torch.load would block forever on a named pipe
    check_torch_zip(path)  # torch.save never compresses: a deflated entry is a crafted file
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # pickle errors come in many types; all mean the same to the user
        raise CorruptFile(f"cannot load .bin weights safely ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})", path=path) from None
    if not isinstance(state, dict):
        raise CorruptFile("a .bin checkpoint must hold a dict of tensors", path=path)
    sources = {}
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise CorruptFile(f"entry {name!r} is not a tensor", path=path)
        sources[name] = Source(name, from_torch(tensor.dtype), tuple(tensor.shape), load=(lambda t=tensor: t), origin=str(path))
    return sources


def parse_size(text: str | int) -> int:
    """'5GB' -> 5_000_000_000 (decimal units like transformers; GiB/MiB binary)."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    raw = text.strip().upper()
    number = raw.rstrip("KMGTIB")
    unit = raw[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = math.nan
    # nan, inf and 1e400 parse as floats; a shard under one byte or over an exabyte is a typo
    if unit not in units or not math.isfinite(value) or not 1 <= value * units[unit] <= 10**18:
        raise MmzooError(f"invalid size {text!r} (examples: 5GB, 400MB, 2GiB)")
    return int(value * units[unit])


def plan_shards(tensors: dict[str, Planned], max_shard_bytes: int) -> list[list[str]]:
    """Greedy, deterministic grouping in name order; a tensor larger than the limit gets its own shard."""
    shards: list[list[str]] = [[]]
    size = 0
    for name in tensors:
        nbytes = tensors[name].nbytes
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_weights(
    folder: Path,
    tensors: dict[str, Planned],
    *,
    max_shard_bytes: int = 5 * 10**9,
    basename: str = "model",
    progress=None,
    metadata: dict[str, str] | None = None,
    parallel_shards: int = 2,
) -> list[Path]:
    """Write tensors as ``model.safetensors`` or ``model-0000i-of-0000n.safetensors`` + index.

    Byte-copy pieces go straight from source file to output file; nothing else is held in memory but
    the one tensor that needs element-wise work."""
    folder.mkdir(parents=True, exist_ok=True)
    groups = plan_shards(tensors, max_shard_bytes)
    names = (
        [f"{basename}.safetensors"]
        if len(groups) == 1
        else [f"{basename}-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    )

    def write_shard(group: list[str], filename: str) -> Path:
        pending = [PendingTensor(n, tensors[n].dtype, tensors[n].shape) for n in group]
        header, order = build_header(pending, metadata)
        path = folder / filename
        open_fds: dict[Path, int] = {}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, header)
            for entry in order:
                _write_tensor(fd, tensors[entry.name], open_fds)
                if progress is not None:
                    progress(tensors[entry.name].nbytes)
        finally:
            os.close(fd)
            for src_fd in open_fds.values():
                os.close(src_fd)
        return path

    # Shards are independent files: copying two at a time keeps both cores' page-cache copies busy
    # (copy_file_range releases the GIL). Each shard's content does not depend on the order.
    workers = max(1, min(parallel_shards, len(groups)))
    if workers == 1:
        written = [write_shard(g, f) for g, f in zip(groups, names)]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as pool:
            written = list(pool.map(write_shard, groups, names))
    weight_map = {name: filename for group, filename in zip(groups, names) for name in group}
    if len(groups) > 1:
        total = sum(t.nbytes for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / f"{basename}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return written


def _write_tensor(fd: int, planned: Planned, open_fds: dict[Path, int]) -> None:
    if all(p.is_byte_copy for p in planned.pieces):
        for piece in planned.pieces:
            src = piece.source
            stored = src.stored
            assert stored is not None
            src_fd = open_fds.get(stored.file)
            if src_fd is None:
                src_fd = open_fds[stored.file] = os.open(stored.file, os.O_RDONLY)
            if src.shape:
                copy_range(src_fd, stored.offset + piece.row_start * src.row_bytes, fd, piece.rows * src.row_bytes)
            else:
                copy_range(src_fd, stored.offset, fd, stored.nbytes)
        return
    tensor = materialize(planned)
    write_all(fd, tensor.reshape(-1).view(__import__("torch").uint8).numpy().tobytes() if tensor.numel() else b"")
