"""Constants and helpers shared by the hub tests (a uniquely named module, unlike conftest)."""
from __future__ import annotations

import hashlib
from pathlib import Path

WRITE_TOKEN = "hf_mmzoo_write_token"
READ_TOKEN = "hf_mmzoo_read_token"
USER = "alice"


def tree_digest(folder: Path, skip=(".cache/", ".mmzoo-hub.json")) -> dict[str, str]:
    """rel path -> sha256 of every file (bit-exact comparison), minus local metadata."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not any(rel == s or rel.startswith(s) for s in skip):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def siblings(path: Path) -> list[str]:
    """Everything next to ``path`` whose name mentions it (temp siblings left behind)."""
    return sorted(p.name for p in path.parent.iterdir() if path.name in p.name)
