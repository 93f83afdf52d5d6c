"""Run the real mmzoo CLI in a subprocess; small helpers shared by the test folders."""
from __future__ import annotations

import socket
import sys


def mmzoo_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mmzoo.cli", *args]


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run the real CLI in a subprocess (exit code, stdout, stderr)."""
    from process_tree import run_bounded

    proc = run_bounded(mmzoo_command(*args), capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the probing socket is closed on return)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_error(capsys, *args: str) -> str:
    """Run the CLI in this process (pytest's capsys) where it must fail: exit code 2 and exactly one line on
    stderr, which is returned."""
    import pytest

    from mmzoo.cli import main

    with pytest.raises(SystemExit) as exc:
        main(list(args))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]
