"""Training's DataLoader workers and preprocess's pool are forked with the parent's objects frozen
(mmzoo.forking): a worker's garbage collector never runs the destructor of an object it inherited. Before, a gloo
ProcessGroup left as garbage by an earlier run in the same process (the test suite, a notebook) could be freed
inside a worker, whose destructor then waited forever for gloo threads that only the parent has, and the
training waited forever for the batch that worker was sending."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from train_helpers import mmzoo_env

# A gloo process group reachable only through a reference cycle (so only the collector frees it), left behind
# while the collector is off, as a finished training run can leave one behind.
GARBAGE_PROCESS_GROUP = """
import datetime, gc, tempfile
import torch.distributed as dist
gc.disable()
def leave_garbage_process_group():
    store = dist.FileStore(tempfile.mktemp(), 1)
    cycle = {"group": dist.ProcessGroupGloo(store, 0, 1, datetime.timedelta(seconds=30))}
    cycle["self"] = cycle
leave_garbage_process_group()
"""


def _run(script: str) -> tuple[int, str, str]:
    """Run ``script`` after leaving the garbage behind; a hang fails the test and kills the script's workers too
    (its own session: a hung worker outlives its parent)."""
    process = subprocess.Popen([sys.executable, "-c", GARBAGE_PROCESS_GROUP + textwrap.dedent(script)], env=mmzoo_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:  # the hang this guards against
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        raise AssertionError(f"a forked worker hung: {out!r} {err[-2000:]!r}") from None
    return process.returncode, out, err


def test_training_workers_do_not_free_inherited_process_groups(ws):
    """mmzoo's own micro batch stream, its workers collecting garbage before each batch (as any worker does at
    some allocation): every batch arrives."""
    result = _run(f"""
        import gc
        from pathlib import Path
        from mmzoo.train import data as train_data
        batch = train_data.TrainData.batch
        def collecting_batch(self, indices):
            gc.collect()
            return batch(self, indices)
        train_data.TrainData.batch = collecting_batch
        data = train_data.TrainData(Path({str(ws.data)!r}), Path({str(ws.images)!r}), Path({str(ws.hf)!r}), 0)
        stream = train_data.micro_batch_stream(data, first_step=0, last_step=3, rank=0, accumulation=1, world=1,
                                               micro_batch_size=2, num_workers=2)
        gc.enable()
        print([tuple(next(stream)["input_ids"].shape)[0] for _ in range(3)])
    """)
    returncode, out, err = result
    assert returncode == 0, err[-2000:]
    assert out.strip() == "[2, 2, 2]"


def test_preprocess_workers_do_not_free_inherited_process_groups(ws, tmp_path):
    """The same for ``mmzoo preprocess --workers 2`` run from such a process: its pool's workers collect garbage
    before each chunk."""
    out = tmp_path / "shards"
    result = _run(f"""
        import gc
        from pathlib import Path
        from mmzoo.preprocess import encode, preprocess
        encode_rows = encode.Encoder.encode_rows
        def collecting_encode_rows(self, rows):
            gc.collect()
            return encode_rows(self, rows)
        encode.Encoder.encode_rows = collecting_encode_rows
        manifest = preprocess([Path({str(ws.root / "data.json")!r})], Path({str(ws.images)!r}), Path({str(ws.hf)!r}),
                              Path({str(out)!r}), template="plain", model=Path({str(ws.hf)!r}), max_seq_len=128,
                              workers=2)
        print(manifest["statistics"]["samples_written"])
    """)
    returncode, out, err = result
    assert returncode == 0, err[-2000:]
    assert int(out.strip()) > 0
