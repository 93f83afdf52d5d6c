"""LLaVA conversation data -> tokenized H5 shards (``mmzoo preprocess``), and the training reader.

Heavy modules (numpy, h5py, tokenizers, torch) are imported on first use of each name, so importing
``mmzoo.preprocess`` (the CLI does) stays cheap.
"""
from __future__ import annotations

from typing import Any

__all__ = ["preprocess", "verify_data", "H5Dataset", "Collator", "collate", "TEMPLATES", "REASONS"]

_LAZY = {
    "preprocess": ("pipeline", "preprocess"),
    "verify_data": ("integrity", "verify_data"),
    "H5Dataset": ("reader", "H5Dataset"),
    "Collator": ("reader", "Collator"),
    "collate": ("reader", "collate"),
    "TEMPLATES": ("templates", "TEMPLATES"),
    "REASONS": ("encode", "REASONS"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'mmzoo.preprocess' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    globals()[name] = value
    return value
