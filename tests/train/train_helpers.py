"""Helpers for the training tests (a uniquely named module: several test folders have a conftest)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def run_mmzoo(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mmzoo.cli", *args], capture_output=True, text=True, timeout=timeout, env=env)


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
