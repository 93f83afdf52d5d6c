"""The data workers (data.num_workers > 0) never hang a run: they are forked from a process without garbage, a
finished in-process run leaves no process group behind, and a stuck or killed worker ends the run in one line."""
from __future__ import annotations

import gc
import os
import signal
import time

import pytest

from mmzoo.errors import MmzooError
from mmzoo.train.data import TrainData, micro_batch_stream


def _stream(ws, *, workers=2, steps=2, **kwargs):
    data = TrainData(ws.data, ws.images, ws.hf, seed=0)
    return micro_batch_stream(data, first_step=0, last_step=steps, rank=0, accumulation=1, world=1, micro_batch_size=2,
                              num_workers=workers, **kwargs)


def _collected_in(run, collecting_cls, method: str, monkeypatch) -> list[str]:
    """Leave one piece of cyclic garbage behind, with the collector off, and ``run()`` work whose forked workers
    collect before each call of ``collecting_cls.method`` (as their collector would sooner or later on its own);
    returns the pids of the processes where the garbage's destructor ran."""
    read, write = os.pipe()

    class Garbage:
        def __init__(self):
            self.cycle = self  # only the cyclic collector frees it

        def __del__(self):
            os.write(write, f"{os.getpid()}\n".encode())

    original = getattr(collecting_cls, method)

    def after_collecting(self, *args):
        gc.collect()
        return original(self, *args)

    monkeypatch.setattr(collecting_cls, method, after_collecting)
    gc.disable()  # nothing collects the garbage by chance before the workers are forked
    try:
        Garbage()
        run()
    finally:
        gc.enable()
        gc.collect()  # here, if nothing collected it before
        os.close(write)
    with os.fdopen(read) as pipe:
        return pipe.read().split()


def test_workers_never_collect_the_training_process_garbage(ws, monkeypatch):
    """Cyclic garbage a worker inherits used to be collected in the worker: the gloo process group of an earlier
    in-process run, whose destructor waits there for threads that fork did not copy — every worker hung, and the
    run with them (test_packing.py's three in-process runs, under load). Here the garbage records where its
    destructor ran (mmzoo/forking.py: collected in the parent, frozen for the fork)."""
    ran_in = _collected_in(lambda: len(list(_stream(ws))) == 2 or pytest.fail("not two micro batches"), TrainData,
                           "batch", monkeypatch)
    assert ran_in == [str(os.getpid())], f"destructor ran in {ran_in}, the training process is {os.getpid()}"


def test_preprocess_workers_never_collect_the_calling_process_garbage(ws, tmp_path, monkeypatch):
    """The same for ``mmzoo preprocess --workers 2`` called from a process that trained before (a notebook, the
    test suite): its pool's workers are forked the same way."""
    from mmzoo.preprocess import encode, preprocess

    def run():
        manifest = preprocess([ws.root / "data.json"], ws.images, ws.hf, tmp_path / "shards", template="plain",
                              model=ws.hf, max_seq_len=128, workers=2)
        assert manifest["statistics"]["samples_written"] > 0

    ran_in = _collected_in(run, encode.Encoder, "encode_rows", monkeypatch)
    assert ran_in == [str(os.getpid())], f"destructor ran in {ran_in}, the calling process is {os.getpid()}"


def _gloo_threads() -> int:
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{task}/comm").read().strip())
        except OSError:  # ended meanwhile
            pass
    return sum(name.startswith(("pt_gloo", "gloo_", "pt_tcpstore")) for name in names)


def test_an_in_process_run_leaves_no_process_group_behind(ws):
    """`run_training` in a process that goes on (tests, notebooks, benchmarks): its gloo group, threads and sockets
    are gone when it returns, not left to a collection in some later fork."""
    from mmzoo.train.config import load_config
    from mmzoo.train.loop import run_training

    before = _gloo_threads()
    cfg = load_config(data=ws.config("no-group-left", train={"max_steps": 1, "save_every": 1}, deepspeed={"zero_stage": 0}))
    run_training(cfg)
    assert _gloo_threads() == before


def test_a_stuck_worker_ends_the_run_in_one_line(ws, monkeypatch):
    def stuck(self, indices):
        time.sleep(60)

    monkeypatch.setattr(TrainData, "batch", stuck)
    started = time.monotonic()
    with pytest.raises(MmzooError, match=r"no micro batch from the data.num_workers worker processes in 2 s "
                                         r"\(data.worker_timeout\)"):
        next(_stream(ws, workers=1, worker_timeout=2))  # one worker: shutting a stuck one down waits 5 s
    assert time.monotonic() - started < 30  # the workers were stopped, not waited for


def test_a_killed_worker_ends_the_run_in_one_line(ws, monkeypatch):
    def killed(self, indices):
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's out-of-memory killer does

    monkeypatch.setattr(TrainData, "batch", killed)
    with pytest.raises(MmzooError, match=r"DataLoader worker \(pid\(s\)? ?\d+\) .*(killed by signal|exited).*out of memory"):
        next(_stream(ws, worker_timeout=60))


def test_worker_timeout_is_a_setting(ws):
    from mmzoo.errors import ConfigError
    from mmzoo.train.config import load_config

    assert load_config(data=ws.config("t")).data.worker_timeout == 600
    assert load_config(data=ws.config("t", data={"worker_timeout": 0})).data.worker_timeout == 0
    with pytest.raises(ConfigError, match="worker_timeout"):
        load_config(data=ws.config("t", data={"worker_timeout": -1}))


def test_a_worker_error_under_torchrun_is_its_own_line(ws):
    """Every process of a 2-process run stops on the same refusal (a micro batch not ready within 1 ms): what
    remains is their `mmzoo: error:` line, exit code 2 — not torchrun's traceback and failure table after it."""
    from train_helpers import run_mmzoo

    params = ws.write("worker-error", data={"worker_timeout": 0.001}, train={"max_steps": 2})
    proc = run_mmzoo("train", "--params", str(params), "--nproc", "2")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("mmzoo: error: no micro batch from the data.num_workers worker processes in 0.001 s"), lines
