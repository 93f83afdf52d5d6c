"""Helpers for the robustness tests: run the real CLI entry point in process and check its one line."""
from __future__ import annotations


def run_main(capsys, *args: str) -> tuple[int, str]:
    """The real CLI entry point, in process (fast): exit code and stderr."""
    from mmzoo.cli import main

    capsys.readouterr()
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, *needles: str) -> str:
    """Exit 2, exactly one stderr line starting with `mmzoo: error:`, no traceback, containing needles."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("mmzoo: error: "), err
    assert len([line for line in lines if line.startswith("mmzoo: error")]) == 1, err
    for needle in needles:
        assert needle in lines[-1], lines[-1]
    return lines[-1]
