"""Every file mmzoo reads from a checkpoint must lie inside that checkpoint's folder.

A checkpoint is data someone else may have made: an index can name ``../secret.safetensors`` or an
absolute path, and any file can be a symlink to ``/etc/passwd``. Following them would copy files from
outside the folder into OUT (or upload them to the Hub), so each path is resolved (symlinks included)
and refused in one line when it lands outside.

The one legitimate outside link is the Hugging Face cache: ``models--org--name/snapshots/<rev>/x`` is a
symlink to ``models--org--name/blobs/<sha>``, so inside a snapshot the boundary is the repository's cache
folder, not the snapshot folder.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

from ..errors import MmzooError

_HF_CACHE_REPO_PREFIXES = ("models--", "datasets--", "spaces--")


class OutsideCheckpoint(MmzooError):
    """A file named by (or linked from) a checkpoint resolves outside its folder."""


def checkpoint_root(folder: str | Path) -> Path:
    """The folder every file of the checkpoint at ``folder`` must resolve into (resolved)."""
    folder = Path(os.path.abspath(folder))
    for candidate in (folder, *folder.parents):
        parent = candidate.parent
        if parent.name == "snapshots" and parent.parent.name.startswith(_HF_CACHE_REPO_PREFIXES):
            return parent.parent.resolve()
    return folder.resolve()


def confined(path: str | Path, root: Path, *, named_by: str | Path | None = None) -> Path:
    """``path`` (symlinks followed) when it lies inside ``root``; otherwise a one-line refusal."""
    path = Path(path)
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop (RuntimeError before Python 3.13, OSError
        # after); a name with a NUL byte, which an index can hold ("embedded null byte")
        raise OutsideCheckpoint(f"cannot resolve {str(path)!r} ({exc})", path=path) from None
    if resolved == root or root in resolved.parents:
        return path
    how = "is a symlink to" if path.is_symlink() else "resolves to"
    where = f" (named by {Path(named_by).name})" if named_by is not None else ""
    raise OutsideCheckpoint(f"{path}{where} {how} {resolved}, outside the checkpoint folder {root}: refusing to read it",
                            path=path)


def confine_checkpoint(folder: str | Path, depth: int = 2, not_entered: frozenset[str] = frozenset()) -> Path:
    """Refuse a checkpoint holding a symlink (file or folder) that leaves it; returns the boundary.

    Checked before anything is read, so not even a config.json is read from outside. Every layout keeps
    the files mmzoo reads within two levels (``tokenizer/``, ``image_tower/``, ``meta/tokenizer/``...);
    symlinked folders are checked, never entered; nor are the top-level folders named in ``not_entered``
    (themselves checked), which other programs own."""
    folder = Path(folder)
    root = checkpoint_root(folder)
    for current, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            entry = Path(current, name)
            if entry.is_symlink():
                confined(entry, root)
        level = len(Path(current).relative_to(folder).parts)
        if level >= depth:
            dirs[:] = []
        elif level == 0:
            dirs[:] = [name for name in dirs if name not in not_entered]
    return root


_self_contained: ContextVar[bool] = ContextVar("mmzoo_self_contained", default=False)


@contextmanager
def self_contained() -> Iterator[None]:
    """Within this block a checkpoint may not even name a folder outside itself (LLaVA's
    ``mm_vision_tower`` as a local path): used for checkpoints downloaded from the Hub."""
    token = _self_contained.set(True)
    try:
        yield
    finally:
        _self_contained.reset(token)


def confine_checkpoint_files(ckpt) -> None:
    """The files a read ``Checkpoint`` will copy (tokenizer, side files) lie inside its folder; inside a
    ``self_contained()`` block its tensors' files too."""
    root = checkpoint_root(ckpt.path)
    for files in (ckpt.tokenizer_files, ckpt.extra_files):
        for path in files.values():
            confined(path, root)
    if _self_contained.get():
        for planned in ckpt.tensors.values():
            for piece in planned.pieces:
                file = piece.source.file
                if file and Path(file).exists():
                    confined(file, root)
