"""Run the real mmzoo CLI in a subprocess."""
from __future__ import annotations


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run the real CLI in a subprocess (exit code, stdout, stderr)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mmzoo.cli", *args], capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr
