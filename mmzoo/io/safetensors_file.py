"""Read safetensors headers with the standard library and write shards by copying byte ranges.

The format (safetensors README): 8-byte little-endian header length, a JSON header mapping each name
to {dtype, shape, data_offsets} relative to the data buffer, then the buffer. Because most conversions
only rename tensors or take row slices of them, a writer that copies byte ranges from the source
files (``os.copy_file_range``) never needs to materialise a tensor at all.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import CorruptFile
from .dtypes import ITEMSIZE
from .structured import require_regular_file

MAX_HEADER = 100_000_000  # the safetensors library's own cap


@dataclass(frozen=True)
class StoredTensor:
    """A tensor stored contiguously in a safetensors file: where its bytes are and what they mean."""

    file: Path
    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset in the file
    nbytes: int


def read_header(path: Path) -> tuple[dict[str, StoredTensor], dict[str, str]]:
    """Parse and validate a safetensors header; returns the tensors and the ``__metadata__``."""
    path = Path(path)
    size = require_regular_file(path).st_size  # open() would block forever on a named pipe
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise CorruptFile("not a safetensors file (shorter than 8 bytes)", path=path)
            (header_len,) = struct.unpack("<Q", head)
            if header_len > MAX_HEADER or 8 + header_len > size:
                raise CorruptFile("not a safetensors file or truncated (header length out of range)", path=path)
            raw = handle.read(header_len)
    except OSError as exc:
        raise CorruptFile(f"cannot read: {exc.strerror}", path=path) from exc
    try:
        header = json.loads(raw, object_pairs_hook=_refuse_duplicate_keys)
    except _DuplicateKey as exc:
        raise CorruptFile(f"corrupt safetensors header: {exc.key!r} appears twice", path=path) from None
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or an integer of more than 4,300 digits
        raise CorruptFile("corrupt safetensors header (not JSON)", path=path) from None
    if not isinstance(header, dict):
        raise CorruptFile("corrupt safetensors header", path=path)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):  # the format says string -> string; the safetensors library refuses others
        raise CorruptFile(f"corrupt safetensors header: __metadata__ must be a JSON object, not {type(metadata).__name__}",
                          path=path)
    data_start = 8 + header_len
    data_len = size - data_start
    tensors: dict[str, StoredTensor] = {}
    for name, info in header.items():
        try:
            dtype = info["dtype"]
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CorruptFile(f"corrupt header entry for tensor {name!r}", path=path) from None
        if not all(_is_count(d) for d in shape):
            raise CorruptFile(f"tensor {name!r} has an invalid shape {info['shape']} (dimensions must be whole numbers ≥ 0)", path=path)
        if not (_is_count(begin) and _is_count(end)):
            raise CorruptFile(f"tensor {name!r} has invalid data_offsets {info['data_offsets']}", path=path)
        if not isinstance(dtype, str) or dtype not in ITEMSIZE:
            raise CorruptFile(f"tensor {name!r} has unsupported dtype {dtype}", path=path)
        expected = math.prod(shape) * ITEMSIZE[dtype]
        if end - begin != expected or begin < 0:
            raise CorruptFile(f"tensor {name!r}: byte range does not match its shape {list(shape)}", path=path)
        if end > data_len:
            raise CorruptFile(
                f"truncated: tensor {name!r} needs bytes up to {data_start + end}, file has {size}", path=path
            )
        tensors[name] = StoredTensor(path, name, dtype, shape, data_start + begin, expected)
    _refuse_overlaps(tensors, data_start, path)
    return tensors, {str(k): str(v) for k, v in metadata.items()}


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    # json.loads keeps the last of two equal keys; a header naming a tensor twice is ambiguous, and
    # the safetensors library itself refuses it, so mmzoo must not silently pick one.
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _is_count(value: object) -> bool:
    # JSON gives floats (2.5, 1e3) and booleans (true == 1 in Python) where integers belong: refuse them.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _refuse_overlaps(tensors: dict[str, StoredTensor], data_start: int, path: Path) -> None:
    """Two tensors sharing bytes would be written out as two independent copies of the same data."""
    previous: StoredTensor | None = None
    for tensor in sorted((t for t in tensors.values() if t.nbytes), key=lambda t: t.offset):
        if previous is not None and tensor.offset < previous.offset + previous.nbytes:
            raise CorruptFile(f"tensors {previous.name!r} and {tensor.name!r} overlap in the data buffer "
                              f"(data_offsets [{previous.offset - data_start}, {previous.offset - data_start + previous.nbytes}] "
                              f"and [{tensor.offset - data_start}, {tensor.offset - data_start + tensor.nbytes}])", path=path)
        previous = tensor


@dataclass
class PendingTensor:
    """What a writer needs to know before any byte is written: the header entry."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]


def build_header(tensors: list[PendingTensor], metadata: dict[str, str] | None = None) -> tuple[bytes, list[PendingTensor]]:
    """Serialise a header. Tensors are laid out largest dtype first (as safetensors does) so every
    tensor stays aligned to its item size; returns the header bytes and the layout order."""
    ordered = sorted(tensors, key=lambda t: (-ITEMSIZE[t.dtype], t.name))
    header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for tensor in ordered:
        header[tensor.name] = {"dtype": tensor.dtype, "shape": list(tensor.shape), "data_offsets": [offset, offset + tensor.nbytes]}
        offset += tensor.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, ordered


def copy_range(src_fd: int, src_offset: int, dst_fd: int, length: int) -> None:
    """Append ``length`` bytes from ``src_fd`` at ``src_offset`` to ``dst_fd`` (at its current position)."""
    copy = getattr(os, "copy_file_range", None)
    while length > 0:
        done = 0
        if copy is not None:
            try:
                done = copy(src_fd, dst_fd, min(length, 1 << 30), src_offset)
            except OSError:
                copy = None
                done = 0
        if done <= 0:
            chunk = os.pread(src_fd, min(length, 16 << 20), src_offset)
            if not chunk:
                raise CorruptFile(f"unexpected end of file while copying tensor data (fd {src_fd})")
            write_all(dst_fd, chunk)
            done = len(chunk)
        src_offset += done
        length -= done


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
