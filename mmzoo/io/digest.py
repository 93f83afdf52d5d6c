"""sha256 of a file, streamed: what the preprocess writers record in a manifest, what shard verification compares
with it, and what `mmzoo hub pull` compares with the Hub's LFS listing."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

BLOCK = 8 << 20  # hashlib releases the GIL on large updates, so a few threads hash a few files at disk speed


def file_sha256(path: str | Path, advance: Callable[[int], None] | None = None) -> str:
    """The hex sha256 of the file at ``path``, read in blocks (``advance`` gets each block's size, for a progress
    bar)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
            if advance is not None:
                advance(len(block))
    return digest.hexdigest()
