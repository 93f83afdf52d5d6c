"""Experiment tracking: ``train.report_to: [tensorboard, wandb, mlflow]`` (any subset, none by default).

Every record mmzoo writes to ``metrics.jsonl`` goes, on rank 0, to each chosen tracker through that
project's own library (optional extras: ``pip install 'mmzoo[tensorboard]'`` etc.), with the resolved
params as the run's config. Nothing needs a network:

- tensorboard: event files in ``OUTPUT_DIR/tensorboard`` (``tensorboard --logdir OUTPUT_DIR/tensorboard``);
- wandb: ``WANDB_MODE=offline`` writes ``OUTPUT_DIR/wandb/offline-run-*`` (``wandb sync`` uploads it later);
  otherwise the usual ``WANDB_PROJECT`` / ``WANDB_ENTITY`` / API key apply;
- mlflow: ``MLFLOW_TRACKING_URI`` when set (a server, ``sqlite:///…`` with the full ``mlflow`` package), else
  the file store ``OUTPUT_DIR/mlruns`` (``mlflow ui --backend-store-uri OUTPUT_DIR/mlruns``). MLflow ≥ 3.7
  keeps that store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE=true``, which mmzoo
  sets for its own default folder only: it needs no database packages and no server.

A resumed run continues the same wandb / MLflow run (their ids are kept in the output folder), and
TensorBoard drops the events after the resumed step, as ``metrics.jsonl`` does.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..errors import require_package

REPORTERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}  # name -> module to import
TRACKER_FOLDERS = frozenset({"tensorboard", "wandb", "mlruns"})  # OUTPUT_DIR/<name>/: written by the tracker libraries
DEFAULT_PROJECT = "mmzoo"


def check_installed(report_to: list[str]) -> None:
    for name in report_to:  # errors.OPTIONAL_PACKAGES names each tracker's extra
        require_package(REPORTERS[name], f"train.report_to {name}")


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics record as flat ``name -> number`` pairs: ``expert_load`` becomes one scalar per layer and
    expert (``expert_load/text.0/e1``), ``router_entropy`` one per layer, ``expert_load_by_modality`` one per
    layer, modality and expert (``expert_load_by_modality/text.0/image/e1``); None and non-numbers are left
    out; ``step`` is the x axis, not a metric."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key == "step":
            continue
        if isinstance(value, dict):
            for layer, shares in value.items():
                # expert_load_by_modality: one more level, {"text.0": {"image": [...], "text": [...]}}
                nested = shares.items() if isinstance(shares, dict) else [(None, shares)]
                for sub, values in nested:
                    name = f"{key}/{layer}" if sub is None else f"{key}/{layer}/{sub}"
                    if isinstance(values, (list, tuple)):
                        out.update({f"{name}/e{i}": float(v) for i, v in enumerate(values)})
                    elif isinstance(values, (int, float)) and not isinstance(values, bool):
                        out[name] = float(values)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[key] = float(value)
    return out


def flat_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"train.lr": "0.001", …}`` (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, f"{name}."))
        else:
            out[name] = str(value)
    return out


class Trackers:
    """The chosen trackers of one run (rank 0 only; elsewhere every call does nothing)."""

    def __init__(self, report_to: list[str], out_dir: Path, params: dict[str, Any], resume_step: int, enabled: bool = True):
        self._open: list[Any] = []
        if not enabled:
            return
        check_installed(report_to)
        out_dir = Path(out_dir)
        try:
            for name in report_to:
                self._open.append(_OPENERS[name](out_dir, params, resume_step))
        except BaseException:
            self.close()
            raise

    def log(self, record: dict[str, Any]) -> None:
        if not self._open:
            return
        values = scalars(record)
        for tracker in self._open:
            tracker.log(values, int(record["step"]))

    def close(self) -> None:
        while self._open:
            self._open.pop().close()

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _params_yaml(params: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(params, sort_keys=False)


class _TensorBoard:
    def __init__(self, out_dir: Path, params: dict[str, Any], resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events after the resumed step (written before a crash) are hidden, as in metrics.jsonl
        self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)
        if not resume_step:
            self.writer.add_text("params", "```yaml\n" + _params_yaml(params) + "```", 0)

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        self.writer.close()


class _Wandb:
    def __init__(self, out_dir: Path, params: dict[str, Any], resume_step: int):
        import os
        import secrets

        import wandb

        id_file = out_dir / ".wandb-run-id"
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT), name=out_dir.name, id=run_id,
                              resume="allow", dir=str(out_dir), config=params,
                              settings=wandb.Settings(console="off", silent=True))

    def log(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def tracking_uri(out_dir: Path) -> str:
    import os

    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (Path(out_dir) / "mlruns").resolve().as_uri()


class _Mlflow:
    def __init__(self, out_dir: Path, params: dict[str, Any], resume_step: int):
        import os

        import mlflow

        self.client = mlflow.MlflowClient(tracking_uri=tracking_uri(out_dir))
        id_file = out_dir / ".mlflow-run-id"
        if id_file.is_file():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_PROJECT)
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        self.run_id = self.client.create_run(experiment_id, run_name=out_dir.name).info.run_id
        id_file.write_text(self.run_id + "\n")
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, v[:6000]) for k, v in flat_params(params).items()])
        self.client.log_text(self.run_id, _params_yaml(params), "params.yaml")

    def log(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # MLflow metric names allow letters, digits, _ - . / and spaces: expert layer names fit
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


_OPENERS = {"tensorboard": _TensorBoard, "wandb": _Wandb, "mlflow": _Mlflow}
