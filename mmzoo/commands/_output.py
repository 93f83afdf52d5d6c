"""One place for console output: rich consoles and a byte-progress bar."""
from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console

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
