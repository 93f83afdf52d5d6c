"""The Python API behind the CLI. Everything here is importable as ``mmzoo.<name>``."""
from __future__ import annotations

from .converters.assemble import init_model
from .converters.pipeline import ConversionResult, convert, read_checkpoint, write_checkpoint
from .converters.registry import detect as detect_format
from .inspection.api import check_checkpoint, diff, inspect
from .models.load import load_model, load_processor

__all__ = [
    "ConversionResult", "check_checkpoint", "convert", "detect_format", "diff", "init_model", "inspect",
    "load_model", "load_processor", "read_checkpoint", "write_checkpoint",
]
