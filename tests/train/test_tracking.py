"""train.report_to: every metric mmzoo logs reaches TensorBoard, wandb (offline) and MLflow (file store), read back
through each project's own reader."""
from __future__ import annotations

import json
import re

import pytest

from mmzoo.train.tracking import flat_params, scalars



def test_scalars_flatten_expert_load_and_drop_non_numbers():
    record = {"step": 3, "loss": 1.5, "grad_norm": None, "tokens": 12, "expert_load": {"text.0": [0.25, 0.75]},
              "tflops": float("nan")}
    assert scalars(record) == {"loss": 1.5, "tokens": 12.0, "expert_load/text.0/e0": 0.25, "expert_load/text.0/e1": 0.75}
    routing = {"step": 3, "router_entropy": {"text.0": 0.5, "vision.1": None},
               "expert_load_by_modality": {"text.0": {"text": [0.5, 0.5], "image": None}}}
    assert scalars(routing) == {"router_entropy/text.0": 0.5, "expert_load_by_modality/text.0/text/e0": 0.5,
                                "expert_load_by_modality/text.0/text/e1": 0.5}
    assert flat_params({"train": {"lr": 0.001, "report_to": ["wandb"]}}) == {"train.lr": "0.001", "train.report_to": "['wandb']"}


def wandb_records(path):
    """The protobuf records of an offline run's ``run-*.wandb`` file. wandb ≥ 0.2x no longer ships a Python
    reader (its Go core writes the file): the container is LevelDB's log format (32 KiB blocks, each record
    chunk behind a crc32 / length / type header) after a 7-byte ``:W&B`` header, and each record is wandb's own
    ``wandb_internal_pb2.Record``."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL, FIRST | MIDDLE, LAST
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_history(run_dir):
    """History rows and the config of an offline run, from its record file."""
    (path,) = run_dir.glob("run-*.wandb")
    rows, config = [], {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
        elif kind in ("run", "config"):  # the config comes with the run record, later changes as config records
            for item in (record.run.config if kind == "run" else record.config).update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return rows, config


def test_report_to_all_three_offline(ws, tmp_path, monkeypatch):
    from mmzoo.train.config import load_config
    from mmzoo.train.loop import run_training

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(data=ws.config("tracked", stage="moe", model=str(ws.moe),
                                     train={"report_to": ["tensorboard", "wandb", "mlflow"], "max_steps": 3, "save_every": 3,
                                            "plot": True}))
    run_training(cfg)
    out = cfg.output_dir
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3]
    expected = {r["step"]: scalars(r) for r in logged}
    names = set(expected[3])
    assert {"loss", "lm_loss", "aux_loss", "lr", "grad_norm", "tokens_per_s"} <= names
    assert any(n.startswith("expert_load/") for n in names)

    # TensorBoard: the event files, through tensorboard's own EventAccumulator
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    assert set(events.Tags()["scalars"]) == names
    for name in names:
        got = {e.step: e.value for e in events.Scalars(name)}
        assert got == pytest.approx({s: v[name] for s, v in expected.items()}, rel=1e-6), name
    assert "params" in " ".join(events.Tags()["tensors"])  # add_text lands as a tensor summary

    # wandb offline: the run folder's record file, through wandb's own reader
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    rows, config = wandb_history(run_dir)
    by_step = {row["_step"]: row for row in rows}
    for step, values in expected.items():
        assert {k: by_step[step][k] for k in values} == pytest.approx(values, rel=1e-9)
    assert config["train"]["report_to"] == ["tensorboard", "wandb", "mlflow"] and config["stage"] == "moe"

    # MLflow: the run folder's file store, through MlflowClient
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    run = client.get_run((out / ".mlflow-run-id").read_text().strip())
    assert run.info.status == "FINISHED" and run.data.params["stage"] == "moe"
    assert run.data.params["train.lr"] == str(cfg.train.lr)
    for name in names:
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)}
        assert history == pytest.approx({s: v[name] for s, v in expected.items()}, rel=1e-9), name
    assert "stage: moe" in (out / "mlruns").rglob("params.yaml").__next__().read_text()


def test_missing_tracker_package_is_one_line(ws, monkeypatch):
    import importlib.util

    from mmzoo.errors import MissingDependency
    from mmzoo.train.config import load_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(MissingDependency, match=r"pip install 'mmzoo\[wandb\]'"):
        load_config(data=ws.config("untracked", train={"report_to": ["wandb"]}))


def test_train_plot_writes_the_curves(ws):
    """train.plot: metrics.png beside metrics.jsonl at the end of the run (the image itself: tests/plot)."""
    from PIL import Image

    from mmzoo.train.config import load_config
    from mmzoo.train.loop import run_training

    cfg = load_config(data=ws.config("plotted", train={"max_steps": 2, "save_every": 2, "plot": True}))
    run_training(cfg)
    with Image.open(cfg.output_dir / "metrics.png") as image:
        assert image.format == "PNG" and image.size[0] > 600


def test_resume_continues_the_same_tracker_runs(ws, monkeypatch):
    """A run resumed after step 2 keeps logging into the same MLflow run and wandb run id, and TensorBoard
    shows each step once."""
    from mmzoo.train.config import load_config
    from mmzoo.train.loop import run_training

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    trackers = ["tensorboard", "wandb", "mlflow"]
    first = load_config(data=ws.config("resumed", train={"report_to": trackers, "max_steps": 2, "save_every": 2}))
    run_training(first)
    out = first.output_dir
    run_ids = {name: (out / f".{name}-run-id").read_text() for name in ("wandb", "mlflow")}
    run_training(load_config(data=ws.config("resumed", train={"report_to": trackers, "max_steps": 4, "save_every": 2})), resume="auto")
    assert {name: (out / f".{name}-run-id").read_text() for name in ("wandb", "mlflow")} == run_ids
    logged = {json.loads(line)["step"]: json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert sorted(logged) == [1, 2, 3, 4]

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    history = client.get_metric_history(run_ids["mlflow"].strip(), "loss")
    assert {m.step: m.value for m in history} == pytest.approx(logged, rel=1e-9)
    assert client.get_run(run_ids["mlflow"].strip()).info.status == "FINISHED"

    runs = sorted((out / "wandb").glob("offline-run-*"))
    # `wandb sync` joins them; a run resumed within the same second gets wandb's "-1" folder suffix
    run_id = re.escape(run_ids["wandb"].strip())
    assert len(runs) == 2 and all(re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", r.name) for r in runs), runs
    steps = [row["_step"] for run in runs for row in wandb_history(run)[0]]
    assert steps == [1, 2, 3, 4]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]


def test_two_processes_log_once_from_rank_0(two_process_runs, monkeypatch):
    """`mmzoo train --nproc 2`: one TensorBoard writer, one wandb run, one MLflow run, with the summed metrics
    (the session's shared ZeRO-1 run reports to all three: train_helpers.TWO_PROCESS_SECTIONS)."""
    from train_helpers import metrics

    out = two_process_runs[1]
    expected = {r["step"]: r["loss"] for r in metrics(out)}
    assert sorted(expected) == [1, 2, 3, 4]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    assert {row["_step"]: row["loss"] for row in wandb_history(run_dir)[0]} == pytest.approx(expected, rel=1e-9)
    import mlflow

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow ≥ 3.7 reads its file store only with it
    client = mlflow.MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "mmzoo"]
    assert len(client.search_runs([experiment.experiment_id])) == 1
