"""Helpers for the training tests (a uniquely named module: several test folders have a conftest)."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from cli_helpers import mmzoo_command
from process_tree import run_bounded


def mmzoo_env(accelerator: str = "cpu", env: dict[str, str] | None = None, unset: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment of a training subprocess: DeepSpeed fixes its accelerator at import; ``env`` is added and
    the variables named in ``unset`` removed."""
    merged = {**os.environ, "DS_ACCELERATOR": accelerator, **(env or {})}
    if accelerator == "cpu":
        merged["OMP_NUM_THREADS"] = "1"  # several processes share 2 cores
    for name in unset:
        merged.pop(name, None)
    return merged


def run_mmzoo(*args: str, timeout: int = 240, accelerator: str = "cpu", env: dict[str, str] | None = None,
              unset: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return run_bounded(mmzoo_command(*args), capture_output=True, text=True, timeout=timeout,
                       env=mmzoo_env(accelerator, env, unset))


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# The 2-process runs (`mmzoo train --nproc 2`: torchrun, gloo) are the slowest thing the training tests do (each
# starts the CLI, torchrun and two workers that import torch, transformers and DeepSpeed), so one 4-step run per
# ZeRO stage is made once per session and every test that needs such a run reads it: test_train_multi (stages
# agree, exports, resumes), test_train_launchers (the other launchers reproduce stage 2 exactly) and test_tracking
# (rank 0 alone logs, on the stage-1 run). tests/conftest.py keeps these files on one xdist worker.
TWO_PROCESS_SECTIONS = {
    0: {"deepspeed": {"zero_stage": 0}},
    # report_to: test_tracking.py::test_two_processes_log_once_from_rank_0 reads what the trackers wrote
    1: {"deepspeed": {"zero_stage": 1}, "train": {"report_to": ["tensorboard", "wandb", "mlflow"]}},
    # unset: ZeRO-2 with the tuned communication settings; checkpoints written in the background
    2: {"deepspeed": {"zero_stage": None}, "train": {"async_checkpoint": True}},
    3: {"deepspeed": {"zero_stage": 3}},
}
TRACKER_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def two_process_sections(stage: int) -> dict:
    """The config sections of the shared 2-process run of ``stage`` (4 steps, checkpoints at steps 2 and 4)."""
    sections = TWO_PROCESS_SECTIONS[stage]
    return {**sections, "train": {"max_steps": 4, "save_every": 2, **sections.get("train", {})}}


class TwoProcessRuns:
    """``runs[stage]``: the run folder of the shared 2-process run of a ZeRO stage, trained on first use."""

    def __init__(self, ws):
        self.ws = ws
        self._done: dict[int, Path] = {}

    def __getitem__(self, stage: int) -> Path:
        if stage not in self._done:
            name = f"z{stage}"
            params = self.ws.write(name, **two_process_sections(stage))
            proc = run_mmzoo("train", "--params", str(params), "--nproc", "2", env=TRACKER_ENV,
                             unset=("MLFLOW_TRACKING_URI",))
            assert proc.returncode == 0, proc.stderr[-3000:]
            self._done[stage] = self.ws.root / "runs" / name
        return self._done[stage]

