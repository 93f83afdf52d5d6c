"""train.async_checkpoint: checkpoints written in a background thread from a host snapshot are byte-identical to
the synchronous ones, a run resumes exactly from them, and a save that fails part-way leaves the previous
checkpoint intact (and resumable) — for both paths, which share the write-into-a-sibling-and-rename logic."""
from __future__ import annotations

import errno
import shutil

import pytest
import torch

from train_helpers import metrics
from mmzoo.train import checkpoint as ck
from mmzoo.train.config import load_config
from mmzoo.train.loop import run_training


def _files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("zero, precision", [(2, "fp32"), (0, "bf16")])
def test_async_checkpoints_are_byte_identical_to_sync_ones(ws, zero, precision):
    runs = {}
    for mode in (False, True):
        cfg = load_config(data=ws.config(f"async-{mode}-z{zero}-{precision}", deepspeed={"zero_stage": zero},
                                    train={"async_checkpoint": mode, "precision": precision, "max_steps": 3}))
        summary = run_training(cfg)
        assert summary["checkpoint"]["asynchronous"] is mode and summary["checkpoint"]["saves"] == 2
        # step 2 in the background; the run's last save (step 3) directly, since the run waits for it anyway
        assert summary["checkpoint"]["background_saves"] == (1 if mode else 0)
        runs[mode] = cfg.output_dir
    for step in (2, 3):
        sync, background = (_files(ck.checkpoints_dir(runs[m]) / ck.tag_for(step)) for m in (False, True))
        sync.pop("COMPLETE"), background.pop("COMPLETE")  # records the run's params (its output_dir)
        assert sorted(background) == sorted(sync) and "mp_rank_00_model_states.pt" in sync
        assert all(background[name] == sync[name] for name in sync), [n for n in sync if background[n] != sync[n]]
    for run in runs.values():  # nothing half-written left behind; DeepSpeed's pointer names the newest checkpoint
        assert sorted(p.name for p in ck.checkpoints_dir(run).iterdir() if p.is_dir()) == ["step_0000002", "step_0000003"]
        assert (ck.checkpoints_dir(run) / "latest").read_text() == "step_0000003"


def test_resume_from_an_async_checkpoint_is_exact(ws):
    cfg = load_config(data=ws.config("async-full", train={"async_checkpoint": True, "max_steps": 4}))
    run_training(cfg)
    full = metrics(cfg.output_dir)
    resumed = ws.root / "runs" / "async-resumed"
    shutil.copytree(cfg.output_dir, resumed)
    shutil.rmtree(ck.checkpoints_dir(resumed) / "step_0000004")  # as if the run died after saving step 2
    again = load_config(data=ws.config("async-resumed", train={"async_checkpoint": True, "max_steps": 4}))
    summary = run_training(again)
    assert summary["start_step"] == 2
    assert metrics(resumed) == [{**row, **{k: r[k] for k in ("tokens_per_s", "tflops", "seconds")}}
                                for row, r in zip(full, metrics(resumed))]


class _DiskFullAt:
    """torch.save that fails like a full disk part-way through the files of one checkpoint."""

    def __init__(self, tag):
        self.tag, self.real, self.failed = tag, torch.save, False

    def __call__(self, obj, f, *args, **kwargs):
        if self.tag in str(f):
            with open(f, "wb") as handle:
                handle.write(b"PK\x03\x04 truncated")  # what a full disk leaves: the start of a file
            self.failed = True
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return self.real(obj, f, *args, **kwargs)


@pytest.mark.parametrize("asynchronous", [True, False], ids=["async", "sync"])
def test_a_save_that_fails_midway_leaves_the_previous_checkpoint_intact(ws, monkeypatch, capsys, asynchronous):
    from mmzoo.cli import main

    clean = load_config(data=ws.config(f"clean-{asynchronous}", train={"async_checkpoint": asynchronous, "max_steps": 4}))
    run_training(clean)
    params = ws.write(f"diskfull-{asynchronous}", train={"async_checkpoint": asynchronous, "max_steps": 4})
    run = ws.root / "runs" / f"diskfull-{asynchronous}"
    failing = _DiskFullAt(ck.tag_for(4))
    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(SystemExit) as exc:
        main(["train", "--params", str(params)])
    monkeypatch.setattr(torch, "save", failing.real)
    assert failing.failed and exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmzoo: error:") and "No space left on device" in err[0], err
    assert list(ck.list_checkpoints(run)) == [2]  # step 4 never became a checkpoint
    assert not (ck.checkpoints_dir(run) / ck.tag_for(4)).exists()
    step2 = _files(ck.checkpoints_dir(run) / ck.tag_for(2))
    reference = _files(ck.checkpoints_dir(clean.output_dir) / ck.tag_for(2))
    step2.pop("COMPLETE"), reference.pop("COMPLETE")
    assert step2 == reference  # the previous checkpoint, byte for byte

    summary = run_training(load_config(params))  # --resume auto: from step 2, past the half-written step 4
    assert summary["start_step"] == 2
    assert [r["loss"] for r in metrics(run)] == [r["loss"] for r in metrics(clean.output_dir)]
    assert sorted(p.name for p in ck.checkpoints_dir(run).iterdir() if p.is_dir()) == ["step_0000002", "step_0000004"]


@pytest.mark.parametrize("setting, expected", [("auto", False), (True, True), (False, False)])
def test_async_checkpoint_auto_writes_synchronously(ws, setting, expected):
    """`auto` = synchronous everywhere: on an H200 the pinned host snapshot cost the loop more than a synchronous
    save (docs/train.md, measured 2026-11-27); background writing is asked for with `true`."""
    from mmzoo.train.saving import async_wanted

    cfg = load_config(data=ws.config(f"async-setting-{setting}", train={"async_checkpoint": setting}))
    assert async_wanted(cfg) is expected
