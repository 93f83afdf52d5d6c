"""mmzoo: convert, upcycle, preprocess, train and share LLaVA-style vision-language models.

The public API is importable from here; attributes are resolved lazily so that importing mmzoo (and
``mmzoo --help``) does not import torch or transformers.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "convert": "mmzoo.api",
    "load_model": "mmzoo.api",
    "load_processor": "mmzoo.api",
    "inspect": "mmzoo.api",
    "diff": "mmzoo.api",
    "init_model": "mmzoo.api",
    "detect_format": "mmzoo.api",
    "check_checkpoint": "mmzoo.api",
    "read_checkpoint": "mmzoo.api",
    "MmzooError": "mmzoo.errors",
}

if TYPE_CHECKING:  # pragma: no cover
    from .api import check_checkpoint, convert, detect_format, diff, init_model, inspect, load_model, load_processor, read_checkpoint
    from .errors import MmzooError


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmzoo' has no attribute {name!r}")


__all__ = sorted(_LAZY) + ["__version__"]
