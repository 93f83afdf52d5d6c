"""One place for console output: rich consoles, a byte-progress bar, byte sizes as people read them, and the click
exceptions typer raises for usage errors (printed by mmzoo.cli as one line)."""
from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape  # noqa: F401 - text that is not markup: paths, notes, `mmzoo[plot]`

console = Console()
error_console = Console(stderr=True)


@contextmanager
def progress_bytes(label: str):
    """Yields (start(total_bytes), advance(n)); shows a transfer-speed bar when stdout is a terminal."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    progress = Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
        console=console, transient=True, disable=not sys.stdout.isatty(),
    )
    task = progress.add_task(label, total=None)
    with progress:
        yield (lambda total: progress.update(task, total=total)), (lambda n: progress.advance(task, n))


def human_size(n: float) -> str:
    """``1.2 GB``: decimal units, as disks and the Hub count."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def click_exceptions():
    """Typer ≥ 0.23 vendors click as ``typer._click`` (its exceptions are not ``click``'s); older ones use click."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - depends on the installed typer
        from click import exceptions
    return exceptions
