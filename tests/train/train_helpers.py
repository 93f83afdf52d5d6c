"""Helpers for the training tests (a uniquely named module: several test folders have a conftest)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from cli_helpers import mmzoo_command


def mmzoo_env(accelerator: str = "cpu") -> dict[str, str]:
    """The environment of a training subprocess: DeepSpeed fixes its accelerator at import."""
    env = {**os.environ, "DS_ACCELERATOR": accelerator}
    if accelerator == "cpu":
        env["OMP_NUM_THREADS"] = "1"  # several processes share 2 cores
    return env


def run_mmzoo(*args: str, timeout: int = 240, accelerator: str = "cpu") -> subprocess.CompletedProcess:
    return subprocess.run(mmzoo_command(*args), capture_output=True, text=True, timeout=timeout, env=mmzoo_env(accelerator))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
