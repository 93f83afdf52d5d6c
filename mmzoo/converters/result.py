"""What a conversion did: ``ConversionResult`` (returned by ``mmzoo.convert``, printed by ``mmzoo convert --json``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ConversionResult:
    source: Path
    output: Path
    src_fmt: str
    tgt_fmt: str
    tensors: int
    bytes: int
    verified: bool = False
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}
