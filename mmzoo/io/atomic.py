"""Writing an output folder safely: refuse OUT over its source or an existing OUT without ``overwrite``, write into a
temporary sibling under OUT's lock, and rename it into place only when complete (every command's outputs)."""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..errors import MmzooError, OutputExists
from .claim import exclusive_output
from .parents import parents_removed_on_failure


def check_output(out: Path, source: Path | None, overwrite: bool) -> None:
    """Refuse an unsafe OUT before any work: the source itself, inside it or around it, or an existing OUT
    without ``overwrite``. A missing parent folder is fine: it is created (as every mmzoo command does)."""
    out = Path(out).absolute()
    if source is not None:
        src = Path(source).resolve()
        if out.resolve() == src or src in out.resolve().parents or out.resolve() in src.parents:
            raise MmzooError("output must not be the source folder, inside it, or contain it", path=out)
    if (out.exists() or out.is_symlink()) and not overwrite:  # a dangling link is there too
        raise OutputExists("already exists (pass --overwrite to replace it)", path=out)


def prepare_output(out: Path, source: Path | None, overwrite: bool) -> Path:
    """Refuse unsafe outputs, create missing parent folders; return the temporary sibling to write into."""
    out = out.absolute()
    check_output(out, source, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def commit_output(tmp: Path, out: Path) -> None:
    """Move a finished temporary folder into place; an old OUT is removed only after the move."""
    out = out.absolute()
    old = None
    if out.exists() or out.is_symlink():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        # An OUT that was a symlink is replaced as a link: the folder it pointed to is never touched.
        shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()


def atomic_write(out: Path, source: Path | None, overwrite: bool, write: Callable[[Path], None]) -> None:
    """Write OUT through a temporary sibling, holding OUT's lock (see mmzoo.io.claim): a second writer of the
    same OUT fails in one line, SIGTERM and Ctrl-C leave nothing behind, stale partials of dead runs go."""
    with parents_removed_on_failure(Path(out)):  # a failed write leaves nothing behind, not even the folders made for it
        prepare_output(Path(out), source, overwrite)  # refuse before a lock file is made beside OUT...
        with exclusive_output(Path(out)):
            tmp = prepare_output(Path(out), source, overwrite)  # ...and again under the lock: another writer may have finished
            try:
                write(tmp)
                if not overwrite and (Path(out).exists() or Path(out).is_symlink()):  # appeared meanwhile, not via mmzoo
                    raise OutputExists("already exists (pass --overwrite to replace it)", path=out)
                commit_output(tmp, Path(out))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
