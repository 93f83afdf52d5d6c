"""What a new user meets in the first training runs: a wrong image folder, a narrow terminal."""
from __future__ import annotations

import signal

import pytest
from cli_helpers import cli_error as _cli_error


def test_a_wrong_image_folder_is_one_line_before_anything_is_written(ws, tmp_path, capsys):
    elsewhere = tmp_path / "other-images"
    elsewhere.mkdir()
    (elsewhere / "unrelated.jpg").write_bytes(b"not the data's images")
    for images, needle in ((elsewhere, "lacks"), (tmp_path / "missing", "is not a folder")):
        name = f"wrong-images-{needle.split()[0]}"
        line = _cli_error(capsys, "train", "--params", str(ws.write(name, data={"images": str(images)})))
        assert line.startswith("mmzoo: error: data.images") and needle in line and str(images) in line, line
        assert not (ws.root / "runs" / name).exists()  # no half-made run folder
    # the launcher path judges it once, before starting any process
    line = _cli_error(capsys, "train", "--params", str(ws.write("wrong-images-launcher", data={"images": str(elsewhere)})),
                      "--nproc", "2")
    assert "lacks" in line and "--images" in line
    assert not (ws.root / "runs" / "wrong-images-launcher").exists()


def test_the_progress_line_keeps_the_loss_at_80_columns():
    import io
    import re

    from rich.console import Console

    from mmzoo.train.loop import _progress, progress_text

    record = {"step": 7, "loss": 5.74521, "lm_loss": 5.7, "aux_loss": 0.0452, "lr": 2e-3, "grad_norm": 1.234,
              "tokens_per_s": 18500.0, "tflops": 0.123}
    for width in (80, 60, 200):
        out = io.StringIO()
        console = Console(file=out, width=width, force_terminal=True, color_system=None)
        with _progress(console, 1000, 0) as advance:
            advance(record)
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # terminal control sequences
        last = [line for line in text.replace("\r", "\n").splitlines() if line.strip()][-1]
        assert "7/1000" in last and "loss 5.7452" in last, (width, last)
        assert len(last) <= width
    assert "TFLOP/s" in progress_text(record, 200) and "aux 0.0452" in progress_text(record, 200)
    assert progress_text(record, 20) == "loss 5.7452"


def test_a_finished_run_asked_for_fewer_steps_is_one_line_and_left_alone(ws, capsys):
    """The README's tracking example after its training example: the same output_dir, already at a later step.
    It used to convert the checkpoint and fail in DataLoader with a negative length; now one line says what to do."""
    from mmzoo.train.config import load_config
    from mmzoo.train.loop import run_training

    params = ws.write("finished", train={"max_steps": 2, "save_every": 2})
    run_training(load_config(params))
    run_dir = ws.root / "runs" / "finished"
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    for extra in ((), ("--nproc", "2")):
        line = _cli_error(capsys, "train", "--params", str(params), "--set", "train.max_steps=1", *extra)
        assert "already trained to step 2, past train.max_steps 1" in line and "--set output_dir=" in line, line
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before  # no universal conversion, no params


@pytest.mark.parametrize("sig, code, what, nproc, launcher", [
    (signal.SIGINT, 130, "interrupted", 2, "auto"), (signal.SIGTERM, 143, "terminated", 2, "auto"),
    (signal.SIGINT, 130, "interrupted", 1, "auto"), (signal.SIGINT, 130, "interrupted", 2, "deepspeed")],
    ids=["SIGINT", "SIGTERM", "SIGINT-in-process", "SIGINT-deepspeed-launcher"])
def test_stopping_mmzoo_train_stops_the_launcher_and_its_workers(ws, sig, code, what, nproc, launcher):
    """Ctrl-C (SIGINT) or SIGTERM to `mmzoo train` alone (a terminal, a scheduler, `kill PID`) used to leave torchrun
    and its workers training in the background, and then torchrun's own traceback of the signal; now mmzoo passes it
    on once, waits for them, and ends with one line that says what the run folder keeps. A one-process run (in
    process, its data workers below it) ends the same way, and so does DeepSpeed's launcher, whose runner exited at
    Ctrl-C with a traceback and left its `launch` process and the workers training."""
    import os
    import subprocess
    import time

    import psutil

    from cli_helpers import free_port, mmzoo_command
    from mmzoo.train.checkpoint import latest
    from process_tree import kill_tree

    name = f"stopped-{what}-{nproc}-{launcher}"
    params = ws.write(name, train={"max_steps": 100000, "save_every": 2})
    run_dir = ws.root / "runs" / name
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = ("--master-port", str(free_port())) if launcher == "deepspeed" else ()  # not its fixed default, 29500
    proc = subprocess.Popen(mmzoo_command("train", "--params", str(params), "--nproc", str(nproc), "--launcher", launcher,
                                          *port), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not latest(run_dir):
            time.sleep(0.5)  # a first checkpoint: training has begun
        launched = psutil.Process(proc.pid).children(recursive=True)
        assert len(launched) >= (3 if nproc == 2 else 2), launched  # the launcher and two workers; the data workers
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        kill_tree(proc.pid)
    assert proc.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr and "signal" not in stderr, stderr[-3000:]  # torchrun's report of the stop
    step = latest(run_dir)[0]
    assert stderr.strip().splitlines()[-1] == (f"mmzoo: {what}; {run_dir} keeps its checkpoints up to step {step}; "
                                               "--resume auto continues from there")
    psutil.wait_procs(launched, timeout=30)
    assert not [p for p in launched if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
