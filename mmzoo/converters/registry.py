"""Checkpoint layouts. Each module has ``NAME``, ``DESCRIPTION``, ``detect(path)``, ``read(path)`` and
``write(ckpt, out, ...)``; this registry imports them lazily so listing them stays cheap."""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from ..errors import MmzooError, UnknownFormat

# name -> module; detection order matters (internal and moe-llava markers are the most specific)
FORMAT_MODULES: dict[str, str] = {
    "internal": "mmzoo.converters.internal",
    "moe-llava": "mmzoo.converters.moe_llava",
    "libmoe": "mmzoo.converters.libmoe",  # LibMoE's llava_phi configs; before llava, which would claim them
    "cerebras": "mmzoo.converters.cerebras",  # image_model/ + text_model/; before llava, which reads that folder too
    "llava": "mmzoo.converters.llava",
    "hf": "mmzoo.converters.hf",
}


def register(name: str, module: str, *, first: bool = False) -> None:
    global FORMAT_MODULES
    FORMAT_MODULES = {name: module, **FORMAT_MODULES} if first else {**FORMAT_MODULES, name: module}


def get(name: str) -> ModuleType:
    if name not in FORMAT_MODULES:
        raise UnknownFormat(f"unknown format {name!r} (supported: {', '.join(FORMAT_MODULES)})")
    return importlib.import_module(FORMAT_MODULES[name])


def detect(path: str | Path) -> str:
    root = Path(path)
    if not root.exists():
        raise MmzooError("does not exist", path=root)
    if not root.is_dir():
        raise UnknownFormat("is not a checkpoint folder", path=root)
    for name in FORMAT_MODULES:
        if get(name).detect(root):
            return name
    from ..checkpoint.locate import not_a_vlm_hint

    # No --src-fmt suggestion: a folder no detector recognises is not readable as any format either.
    raise UnknownFormat(not_a_vlm_hint(root) or f"is not a checkpoint mmzoo reads (looked for the {', '.join(FORMAT_MODULES)} "
                        "layouts; see `mmzoo formats`)", path=root)
