"""Parent folders of an output: created when missing, removed again when the command that made them fails.

An ``-o`` path whose parents do not exist gets them (``mkdir -p``). When the command then fails, an empty
folder chain that mmzoo itself made would be litter: :func:`parents_removed_on_failure` removes it again,
innermost first, and only while the folders are empty. A folder that existed before, or that holds anything
(finished preprocess shards kept for ``--resume``, a file someone else wrote meanwhile), is never touched.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def missing_parents(out: Path) -> list[Path]:
    """The ancestors of ``out`` that do not exist yet, innermost first."""
    missing = []
    for parent in Path(out).absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def remove_empty(folders: list[Path]) -> None:
    """``rmdir`` the folders in order (innermost first), stopping at the first that is not empty or gone."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


@contextmanager
def parents_removed_on_failure(out: Path) -> Iterator[None]:
    """Around a command writing ``out``: if it raises (an error, Ctrl-C, SIGTERM), the parent folders of
    ``out`` that did not exist when the block began are removed again, as long as they are empty."""
    created = missing_parents(out)
    try:
        yield
    except BaseException:
        remove_empty(created)
        raise
