"""Two processes over gloo (torchrun, launched by `mmzoo train --nproc 2`): ZeRO-0/1/2/3 agree (ZeRO-2 as the
unset stage resolves on two processes, with background checkpoints), resume is exact, ZeRO-3 exports consolidate,
MoE under ZeRO-3 neither hangs nor saves empty tensors. The four runs are the session's shared ones
(conftest.py: two_process_runs)."""
from __future__ import annotations

import shutil

import pytest
import torch
import yaml

from cli_helpers import cli_error
from train_helpers import metrics, run_mmzoo, two_process_sections

LOSS_RTOL = 1e-5  # fp32 on CPU: ZeRO stages differ only in reduction order
KEYS = ("step", "loss", "lm_loss", "lr", "grad_norm", "tokens")


def _train(ws, name: str, *sets: str, **sections):
    params = ws.write(name, **sections)
    proc = run_mmzoo("train", "--params", str(params), "--nproc", "2", *(a for s in sets for a in ("--set", s)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ws.root / "runs" / name


@pytest.fixture(scope="module")
def zero_runs(two_process_runs):
    return {stage: two_process_runs[stage] for stage in (0, 1, 2, 3)}


def test_zero_stages_give_the_same_losses(zero_runs):
    curves = {stage: [r["loss"] for r in metrics(run)] for stage, run in zero_runs.items()}
    assert all(len(c) == 4 for c in curves.values())
    for stage in (1, 2, 3):
        assert curves[stage] == pytest.approx(curves[0], rel=LOSS_RTOL), curves
    assert all(r["tokens_per_s"] > 0 for r in metrics(zero_runs[3]))


def test_exports_of_every_stage_agree(zero_runs, tmp_path):
    from mmzoo.train.export import export
    from transformers import LlavaForConditionalGeneration

    states = {}
    for stage, run in zero_runs.items():
        export(run, tmp_path / f"z{stage}", tgt_fmt="hf")
        states[stage] = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / f"z{stage}")).state_dict()
    for name, ref in states[0].items():
        for stage in (1, 2, 3):
            assert states[stage][name].numel() > 0 and states[stage][name].shape == ref.shape
            assert torch.allclose(states[stage][name], ref, atol=1e-5), name


def test_unset_zero_stage_is_zero2_and_resumes_exactly_from_async_checkpoints(ws, zero_runs):
    """deepspeed.zero_stage unset on two processes → ZeRO-2 with the tuned communication settings (overlap_comm
    over gloo), which trains as ZeRO-0 does (test above); its checkpoints were written in the background
    (train.async_checkpoint) and a 2-process resume from them (`--resume auto`, the unset stage again, so no
    changed setting) continues the curve exactly."""
    original = zero_runs[2]
    assert yaml.safe_load((original / "params.yaml").read_text())["deepspeed"]["zero_stage"] == 2
    resumed = ws.root / "runs" / "z2-resumed"
    shutil.copytree(original, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000004")  # as if the run died after saving step 2
    params = ws.write("z2-resumed", **two_process_sections(2))
    proc = run_mmzoo("train", "--params", str(params), "--nproc", "2", "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "resuming after step 2" in output and "changed settings" not in output
    assert [[r[k] for k in KEYS] for r in metrics(resumed)] == [[r[k] for k in KEYS] for r in metrics(original)]
    assert sorted(p.name for p in (resumed / "checkpoints").iterdir() if p.is_dir()) == ["step_0000002", "step_0000004"]


def test_moe_zero3_two_processes(ws, tmp_path):
    run = _train(ws, "moe-z3", stage="moe", model=str(ws.moe), train={"max_steps": 2}, deepspeed={"zero_stage": 3})
    rows = metrics(run)
    assert len(rows) == 2 and all(r["aux_loss"] > 0 and r["expert_load"] for r in rows)
    from mmzoo.train.export import export
    from mmzoo.converters.pipeline import read_checkpoint

    export(run, tmp_path / "moe", tgt_fmt="moe-llava")
    ckpt = read_checkpoint(tmp_path / "moe")
    assert all(p.nbytes > 0 for p in ckpt.tensors.values())


@pytest.mark.parametrize("stage", [2, 3])
def test_resume_with_another_world_size_goes_through_a_universal_checkpoint(ws, zero_runs, stage, capsys):
    """Written by 2 processes (stage 2: in the background, stage 3: synchronously), resumed by 1 (in this process,
    from the run's own params.yaml): DeepSpeed re-partitions the ZeRO states from its universal format, and the data
    order does not depend on the world size, so the curve continues as the 2-process run did."""
    from mmzoo.cli import main

    original = zero_runs[stage]
    resumed = ws.root / "runs" / f"z{stage}-one-process"
    shutil.copytree(original, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000004")
    capsys.readouterr()
    main(["train", "--params", str(original / "params.yaml"), "--set", f"output_dir={resumed}"])
    assert "universal checkpoint format" in capsys.readouterr().out
    assert (resumed / "checkpoints" / "step_0000002_universal" / "COMPLETE").is_file()
    mine, theirs = metrics(resumed), metrics(original)
    assert [r["step"] for r in mine] == [1, 2, 3, 4]
    assert [r["loss"] for r in mine] == pytest.approx([r["loss"] for r in theirs], rel=LOSS_RTOL)
    assert [r["tokens"] for r in mine] == [r["tokens"] for r in theirs]  # the same samples


def test_multi_process_refusals_are_one_line_before_launching(ws, capsys):
    from mmzoo.cli import main

    params = ws.write("preflight", train={"max_steps": 1})
    main(["train", "--params", str(params)])  # one process, ZeRO-2, writes step 1
    capsys.readouterr()
    line = cli_error(capsys, "train", "--params", str(params), "--nproc", "2", "--set", "train.max_steps=2",
                     "--set", "deepspeed.zero_stage=3")
    assert "written with ZeRO-2 and this run uses ZeRO-3" in line
    assert "launching" not in capsys.readouterr().out  # refused by mmzoo train itself, no launcher report
