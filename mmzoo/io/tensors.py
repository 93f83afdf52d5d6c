"""Planned tensors: an output tensor described as row ranges of source tensors, plus element-wise ops.

Conversions rename tensors, split fused ones along dim 0 and concatenate them back. Describing every
output as a list of ``Piece``s (a source tensor, a row range, element-wise ops) keeps all of that as
bookkeeping: a piece without ops is a byte range of a source file. Only a dtype cast or a scale needs
torch, and those commute with row slicing, so they stay per piece.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from ..errors import ShapeMismatch
from .dtypes import ITEMSIZE
from .safetensors_file import StoredTensor


@dataclass(frozen=True)
class Source:
    """A tensor as it exists in a source file. ``stored`` is set for safetensors (byte-addressable);
    ``load`` for anything that must be materialised (``.bin`` files, tensors computed in memory)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    stored: StoredTensor | None = None
    load: Callable[[], object] | None = field(default=None, compare=False)
    origin: str = ""  # file the tensor came from, for messages

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * ITEMSIZE[self.dtype]

    @property
    def file(self) -> str | Path:
        """The file the tensor's bytes are read from ("" for a tensor computed in memory)."""
        return self.stored.file if self.stored is not None else self.origin


@dataclass(frozen=True)
class Piece:
    source: Source
    row_start: int
    row_stop: int
    ops: tuple[tuple[str, object], ...] = ()  # ("cast", "BF16") | ("scale", 0.5)

    @property
    def rows(self) -> int:
        return self.row_stop - self.row_start

    @property
    def is_byte_copy(self) -> bool:
        return not self.ops and self.source.stored is not None


@dataclass(frozen=True)
class Planned:
    """One tensor to write: its dtype and shape, and where its rows come from."""

    dtype: str
    shape: tuple[int, ...]
    pieces: tuple[Piece, ...]

    @classmethod
    def of(cls, source: Source) -> "Planned":
        rows = source.shape[0] if source.shape else 1
        return cls(source.dtype, source.shape, (Piece(source, 0, rows),))

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    def with_op(self, op: str, value: object, dtype: str | None = None) -> "Planned":
        pieces = tuple(replace(p, ops=p.ops + ((op, value),)) for p in self.pieces)
        return Planned(dtype or self.dtype, self.shape, pieces)

    def cast(self, dtype: str) -> "Planned":
        return self if dtype == self.dtype else self.with_op("cast", dtype, dtype)

    def scale(self, factor: float) -> "Planned":
        return self.with_op("scale", factor)

    def split_rows(self, sizes: list[int]) -> list["Planned"]:
        if not self.shape or sum(sizes) != self.shape[0]:
            raise ShapeMismatch(f"cannot split {list(self.shape)} into rows {sizes}")
        out, start = [], 0
        for size in sizes:
            out.append(self.slice_rows(start, start + size))
            start += size
        return out

    def slice_rows(self, start: int, stop: int) -> "Planned":
        pieces, cursor = [], 0
        for piece in self.pieces:
            lo, hi = max(start, cursor), min(stop, cursor + piece.rows)
            if lo < hi:
                offset = piece.row_start - cursor
                pieces.append(replace(piece, row_start=lo + offset, row_stop=hi + offset))
            cursor += piece.rows
        return Planned(self.dtype, (stop - start, *self.shape[1:]), tuple(pieces))

    @staticmethod
    def concat_rows(parts: list["Planned"]) -> "Planned":
        first = parts[0]
        for part in parts[1:]:
            if part.dtype != first.dtype or part.shape[1:] != first.shape[1:]:
                raise ShapeMismatch(
                    f"cannot concatenate tensors of shapes {[list(p.shape) for p in parts]} / dtypes {[p.dtype for p in parts]}"
                )
        rows = sum(p.shape[0] for p in parts)
        return Planned(first.dtype, (rows, *first.shape[1:]), tuple(pc for p in parts for pc in p.pieces))

    def describe_sources(self) -> str:
        return ", ".join(sorted({p.source.name for p in self.pieces}))


def materialize(planned: Planned):
    """Build the tensor in memory (torch). Used for element-wise ops, .bin sources and load_model."""
    import torch

    from .dtypes import to_torch

    parts = []
    for piece in planned.pieces:
        parts.append(_piece_tensor(piece))
    tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    tensor = tensor.reshape(planned.shape)
    if tensor.dtype != to_torch(planned.dtype):
        tensor = tensor.to(to_torch(planned.dtype))
    return tensor.contiguous()


def _piece_tensor(piece: Piece):
    import torch

    from .dtypes import to_torch

    src = piece.source
    if src.stored is not None:
        nbytes = (piece.rows * src.row_bytes) if src.shape else src.stored.nbytes
        offset = src.stored.offset + piece.row_start * src.row_bytes
        with open(src.stored.file, "rb") as handle:
            handle.seek(offset)
            raw = bytearray(handle.read(nbytes))
        shape = (piece.rows, *src.shape[1:]) if src.shape else ()
        tensor = torch.frombuffer(raw, dtype=to_torch(src.dtype)) if raw else torch.empty(0, dtype=to_torch(src.dtype))
        tensor = tensor.reshape(shape)
    else:
        assert src.load is not None, f"source {src.name} has no data"
        tensor = src.load()
        if src.shape:
            tensor = tensor[piece.row_start : piece.row_stop]
    for op, value in piece.ops:
        if op == "cast":
            tensor = tensor.to(to_torch(str(value)))
        elif op == "scale":
            tensor = tensor * torch.tensor(value, dtype=tensor.dtype)
        else:
            raise ValueError(f"unknown op {op}")
    return tensor



def iter_bytes(planned: Planned, chunk: int = 16 << 20):
    """The tensor's raw bytes in order, straight from the files for byte-copy pieces."""
    if not all(p.is_byte_copy for p in planned.pieces):
        import torch

        tensor = materialize(planned)
        if tensor.numel():
            yield tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        return
    for piece in planned.pieces:
        src = piece.source
        assert src.stored is not None
        start = src.stored.offset + (piece.row_start * src.row_bytes if src.shape else 0)
        length = piece.rows * src.row_bytes if src.shape else src.stored.nbytes
        with open(src.stored.file, "rb") as handle:
            handle.seek(start)
            while length > 0:
                data = handle.read(min(chunk, length))
                if not data:
                    raise EOFError(f"{src.stored.file}: truncated while reading {src.name}")
                length -= len(data)
                yield data


def digest(planned: Planned) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for data in iter_bytes(planned):
        h.update(data)
    return h.hexdigest()
