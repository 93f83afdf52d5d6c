"""Claim an output path before writing it: never over an input, one writer at a time, no leftovers.

- :func:`refuse_overlap`: OUT may not be an input, contain one, or (for folders) lie inside one,
  because ``--overwrite`` would delete it.
- :func:`exclusive_output`: an advisory lock (``fcntl.flock`` on ``.OUT.mmzoo-lock`` beside OUT) held
  while a command writes OUT. Two converts to one OUT used to both succeed, the second silently
  replacing the first; now the second fails in one line. The kernel drops the lock when its process
  dies, however it dies, so a killed run never blocks the next one.
- Inside the lock, temporary siblings (``.OUT.partial-PID``) of processes that no longer exist are
  removed: SIGKILL cannot be caught, so the next run cleans up after it.
- SIGTERM inside the lock is turned into the exception :class:`Terminated`, so the same cleanup that
  handles Ctrl-C removes the partial folder.
"""
from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import MmzooError

LOCK_SUFFIX = ".mmzoo-lock"


class OutputBusy(MmzooError):
    """Another process is writing the same output path."""


class Terminated(BaseException):
    """SIGTERM arrived while an output was being written. Like KeyboardInterrupt it is no ``Exception``, so
    only cleanup code (``except BaseException`` / ``finally``) sees it; unlike it, typer does not turn it into a
    silent exit code."""


def refuse_overlap(out: Path, inputs: Iterable[tuple[str, Path]]) -> None:
    """Refuse an ``out`` that is one of ``inputs`` (``(what, path)`` pairs), contains one, or lies inside an
    input folder: writing it, and above all ``--overwrite``, would destroy the input."""
    target = Path(os.path.abspath(out)).resolve()
    for what, path in inputs:
        source = Path(os.path.abspath(path)).resolve()
        if target == source:
            raise MmzooError(f"output is the {what} ({path}): refusing to write over an input", path=out)
        if target in source.parents:
            raise MmzooError(f"output contains the {what} ({path}): refusing to write over an input", path=out)
        if source.is_dir() and source in target.parents:
            raise MmzooError(f"output lies inside the {what} ({path}): choose a folder outside the inputs",
                             path=out)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clear_stale_partials(out: Path) -> list[Path]:
    """Clean up after writers of ``out`` that died (kill -9, power loss); returns what was removed.

    Their temporary siblings (``.OUT.partial-PID``, hub pull's ``.OUT.mmzoo-pull-PID-…``) are removed.
    A previous OUT set aside for replacement (``.OUT.old-PID``) is put back when OUT is missing (the writer
    died between the two renames) and removed otherwise."""
    out = Path(os.path.abspath(out))
    name = re.escape(f".{out.name}.")
    temporary = re.compile(name + r"(?:partial|mmzoo-pull|mmzoo-conv)-(\d+)(?:-[0-9a-f]+)?\Z")
    set_aside = re.compile(name + r"(?:old|mmzoo-old)-(\d+)(?:-[0-9a-f]+)?\Z")
    removed: list[Path] = []
    if not out.parent.is_dir():
        return removed
    for entry in sorted(out.parent.iterdir()):
        previous_out = set_aside.match(entry.name)
        match = previous_out or temporary.match(entry.name)
        if not match or int(match.group(1)) == os.getpid() or _pid_alive(int(match.group(1))):
            continue
        if previous_out and not (out.exists() or out.is_symlink()):
            os.replace(entry, out)
            continue
        shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        removed.append(entry)
    return removed


def lock_path(out: Path) -> Path:
    out = Path(os.path.abspath(out))
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


@contextmanager
def exclusive_output(out: Path) -> Iterator[None]:
    """Hold the write lock of ``out`` (and turn SIGTERM into :class:`Terminated`) inside the block."""
    import fcntl

    out = Path(os.path.abspath(out))
    if not out.parent.is_dir():
        raise MmzooError("parent folder does not exist", path=out.parent)
    path = lock_path(out)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise OutputBusy(f"another mmzoo process{who} is writing this output right now; wait for it to "
                                 "finish or choose another output path", path=out) from None
            raise
        # The previous holder unlinks the lock file when it is done: if we locked a file that is no
        # longer at ``path``, someone else may lock the new one; start again.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    try:
        clear_stale_partials(out)
        with sigterm_as_interrupt():
            yield
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises :class:`Terminated` in the main thread (a forked child dies of it as usual)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    owner = os.getpid()

    def terminate(signum, frame):
        if os.getpid() != owner:  # a forked worker (preprocess pool) inherited the handler: die as usual
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
