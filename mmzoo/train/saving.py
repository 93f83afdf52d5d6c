"""Writing DeepSpeed checkpoints without losing data, optionally off the training's critical path.

Every checkpoint is written into a hidden sibling (``checkpoints/.step_NNNNNNN.partial``) and renamed to
``step_NNNNNNN`` only once every process has written all of its files; ``COMPLETE`` goes in just before the
rename. A crash at any point leaves the previous checkpoints as they were, and ``--resume auto`` never sees a
half-written one (it only lists ``step_N`` folders holding ``COMPLETE``).

``train.async_checkpoint: true`` (``auto``, the default, writes synchronously: see :func:`async_wanted`):
DeepSpeed's ``save_checkpoint`` still builds the state dicts (collectively, as
always), but its checkpoint engine — the pluggable object DeepSpeed hands every state dict to — is
:class:`SnapshotCheckpointEngine`: it copies the dict's tensors to host memory (pinned when they live on a
GPU: the copies are queued on the compute stream, so they read the values before the next optimizer step
changes them, and no host synchronisation happens) and a background thread writes them with the same
``torch.save`` call DeepSpeed's own engine makes, so the files are byte-identical. Training continues while
the thread writes; the run waits for it before the next save and before it ends. The run's last save is
written directly (nothing would overlap it).

Why not DeepSpeed 0.19's ``checkpoint.writer.decoupled``: it sends the live tensors to a spawned process
(CUDA IPC, no copy) and must therefore wait for the write to finish before the next optimizer step — one
step of overlap for a write of many seconds — and it sets the global multiprocessing start method to
``spawn``. A device→host snapshot lets the write overlap as many steps as it needs.
"""
from __future__ import annotations

import copy
import enum
import os
import queue
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import MmzooError
from . import checkpoint as ck

PARTIAL_PREFIX, PARTIAL_SUFFIX = ".", ".partial"
WRITTEN = ".written-rank-"  # one marker per process in a partial folder: that process wrote all its files


def partial_tag(step: int) -> str:
    return f"{PARTIAL_PREFIX}{ck.tag_for(step)}{PARTIAL_SUFFIX}"


def remove_stale_partials(run_dir: Path) -> None:
    """Partial checkpoints left by a run that died while saving (never read; only rank 0 calls this, at start)."""
    root = ck.checkpoints_dir(run_dir)
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith(PARTIAL_PREFIX) and child.name.endswith(PARTIAL_SUFFIX) and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)


def async_wanted(cfg) -> bool:
    """``train.async_checkpoint``; ``auto`` writes synchronously. Measured on one H200 (2026-11-27, the 1b
    preset, ~14 GB of checkpoint state a process): the pinned host snapshot alone kept the loop ~13 s a save,
    longer than a whole synchronous save (~12 s) — copying to host memory, not the disk, is what costs there —
    so background writing is a choice (``true``) for machines whose host copies are fast, not a default."""
    return cfg.train.async_checkpoint is True


# -- snapshots ------------------------------------------------------------------------------------------
_IMMUTABLE = (int, float, complex, bool, str, bytes, type(None), enum.Enum, type, range)


def snapshot(obj: Any) -> tuple[Any, Any]:
    """A copy of a state dict whose tensors live in host memory, and the CUDA event after which the copy is
    complete (None: complete already). Storage sharing, aliasing, container types and tensor attributes are
    kept, so ``torch.save`` writes the copy byte for byte as it would have written the original (on a GPU the
    files name the storages' device as ``cpu``, which DeepSpeed's loads map to anyway)."""
    import torch

    storages: dict[int, Any] = {}  # keyed like torch.save keys them: by the storage's C++ object
    memo: dict[int, Any] = {}
    on_device = []

    def host_storage(storage):
        key = storage._cdata
        if key not in storages:
            device = storage.device
            pinned = device.type not in ("cpu", "meta")  # pinned memory exists only beside an accelerator
            host = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=pinned).untyped_storage()
            host.copy_(storage, non_blocking=pinned)
            if pinned:
                on_device.append(device)
            storages[key] = host
        return storages[key]

    def tensor(t):
        if t.layout != torch.strided or t.is_quantized or type(t) not in (torch.Tensor, torch.nn.Parameter):
            return copy.deepcopy(t.detach().cpu())  # none in DeepSpeed's checkpoints; a plain copy is right
        out = torch.empty(0, dtype=t.dtype).set_(host_storage(t.untyped_storage()), t.storage_offset(), t.size(),
                                                 t.stride())
        if type(t) is torch.nn.Parameter:
            out = torch.nn.Parameter(out, requires_grad=t.requires_grad)
        elif t.requires_grad:
            out.requires_grad_(True)
        for name, value in vars(t).items():  # attributes torch.save would pickle with the tensor
            setattr(out, name, walk(value))
        return out

    def walk(value):
        if isinstance(value, _IMMUTABLE) or isinstance(value, (torch.dtype, torch.device, torch.Size, torch.layout,
                                                                torch.memory_format)):
            return value
        key = id(value)
        if key in memo:
            return memo[key]
        if isinstance(value, torch.Tensor):
            out = tensor(value)
        elif isinstance(value, dict):
            out = copy.copy(value)  # same type (OrderedDict, defaultdict…) and key order
            memo[key] = out
            for k, v in value.items():
                out[k] = walk(v)
        elif type(value) is list:
            out = []
            memo[key] = out
            out.extend(walk(v) for v in value)
        elif isinstance(value, tuple):
            items = [walk(v) for v in value]
            if all(a is b for a, b in zip(items, value)):
                out = value  # nothing mutable inside: the same object, so pickle memoises it the same way
            else:
                out = type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
        elif isinstance(value, (set, frozenset)):
            out = copy.copy(value)
        else:
            out = copy.deepcopy(value)  # other objects (e.g. a loss scaler): their state as of now
        memo[key] = out
        return out

    copied = walk(obj)
    event = None
    if on_device:
        event = torch.cuda.Event()
        event.record()  # after the copies, on the stream they were queued on
    return copied, event


# -- the background writer ------------------------------------------------------------------------------
class BackgroundWriter:
    """One thread that runs the queued jobs in order; the first failure is kept and reported by :meth:`wait`."""

    def __init__(self):
        self.jobs: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.busy_seconds = 0.0
        self.thread = threading.Thread(target=self._run, name="mmzoo-checkpoint-writer", daemon=True)
        self.thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        self.jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                if job is None:
                    return
                if self.error is None:  # after a failure the rest of that checkpoint is not written
                    started = time.perf_counter()
                    job()
                    self.busy_seconds += time.perf_counter() - started
            except BaseException as exc:  # noqa: BLE001 — reported to the training thread by wait()
                self.error = exc
            finally:
                self.jobs.task_done()

    def wait(self) -> BaseException | None:
        """Block until every queued job ran; the first error since the start (None if none)."""
        self.jobs.join()
        return self.error

    def close(self) -> None:
        self.jobs.put(None)
        self.thread.join()


def snapshot_checkpoint_engine(config_params, writer: BackgroundWriter):
    """A :class:`SnapshotCheckpointEngine` (defined here: DeepSpeed is imported only when a run starts)."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class SnapshotCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch checkpoint engine with ``save`` taken off the critical path: snapshot now, write
        later (same ``torch.save`` arguments as the parent's ``save``). Loading is the parent's."""

        def __init__(self, config_params, writer: BackgroundWriter):
            super().__init__(config_params)
            self.name = "MmzooSnapshotCheckpointEngine"
            self.writer = writer
            self.direct = False  # write now, as DeepSpeed's own engine does (the run's last save)

        def save(self, state_dict, path: str):
            import torch

            if self.direct:
                return super().save(state_dict, path)
            copied, event = snapshot(state_dict)
            zipfile = self.zipfile_serialization

            def write():
                if event is not None:
                    event.synchronize()
                torch.save(copied, path, _use_new_zipfile_serialization=zipfile)

            self.writer.submit(write)

    return SnapshotCheckpointEngine(config_params, writer)


# -- the saver ------------------------------------------------------------------------------------------
class CheckpointSaver:
    """Checkpoints of one training process: ``save`` at save points (collective), ``poll`` at log points
    (never collective, never raises), ``finish`` at the end of the run (collective) or ``abandon`` on an error
    (which leaving its ``with`` block with an exception does)."""

    def __init__(self, engine, out_dir: Path, cfg, *, rank: int, world: int, asynchronous: bool):
        self.engine, self.out_dir, self.cfg = engine, Path(out_dir), cfg
        self.rank, self.world, self.asynchronous = rank, world, asynchronous
        self.pending: int | None = None  # step of the checkpoint being written in the background
        self.finalized: int | None = None  # … already renamed into place by poll() (rank 0)
        self.saves, self.background_saves, self.blocking_seconds = 0, 0, 0.0
        self.writer = None
        if asynchronous:
            self.writer = BackgroundWriter()
            engine.checkpoint_engine = snapshot_checkpoint_engine(engine._config, self.writer)
        if rank == 0:
            remove_stale_partials(self.out_dir)

    def __enter__(self) -> "CheckpointSaver":
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is not None:  # an error in the training loop: let this process's background writes end
            self.abandon()
        return False

    @property
    def root(self) -> Path:
        return ck.checkpoints_dir(self.out_dir)

    def save(self, step: int, *, last: bool = False) -> None:
        """Checkpoint ``step``; ``last``: the run's final save, written directly even when asynchronous (the run
        waits for it anyway, so a snapshot would only add its copy)."""
        import torch.distributed as dist

        started = time.perf_counter()
        self._settle()  # the previous checkpoint is finished (or the run stops here) before the next starts
        tag = partial_tag(step)
        if self.rank == 0:
            shutil.rmtree(self.root / tag, ignore_errors=True)  # a leftover of a run that died saving this step
        dist.barrier()
        background = self.asynchronous and not last
        if self.asynchronous:
            self.engine.checkpoint_engine.direct = not background
        self.engine.save_checkpoint(str(self.root), tag=tag, client_state={"step": step}, save_latest=False)
        if background:
            marker = self.root / tag / f"{WRITTEN}{self.rank:05d}"
            self.writer.submit(lambda: marker.write_text(""))  # after this process's last file of the checkpoint
            self.pending = step
            self.background_saves += 1
        else:
            dist.barrier()
            if self.rank == 0:
                self._finalize(step)
            dist.barrier()
        self.saves += 1
        self.blocking_seconds += time.perf_counter() - started

    def poll(self) -> None:
        """Rank 0: finish the pending checkpoint if every process has written its part (a look at marker
        files; nobody waits, and a failure is left for the next collective point to report)."""
        if self.pending is None or self.rank != 0 or self.finalized == self.pending:
            return
        folder = self.root / partial_tag(self.pending)
        if all((folder / f"{WRITTEN}{r:05d}").is_file() for r in range(self.world)):
            self._finalize(self.pending)
            self.finalized = self.pending  # the other processes still settle it at the next collective point

    def finish(self) -> dict[str, Any]:
        """End of the run: wait for the pending checkpoint, finish it; statistics for the run summary."""
        started = time.perf_counter()
        self._settle()
        if self.writer is not None:
            self.writer.close()
        self.blocking_seconds += time.perf_counter() - started
        return {"saves": self.saves, "asynchronous": self.asynchronous, "background_saves": self.background_saves,
                "blocking_seconds": round(self.blocking_seconds, 3),
                "writing_seconds": round(self.writer.busy_seconds, 3) if self.writer is not None else None}

    def abandon(self) -> None:
        """The run failed: let this process's writes end, and on rank 0 finish the pending checkpoint only if
        every process wrote its part (no collective: the other processes may be gone)."""
        if self.writer is None:
            return
        if self.writer.wait() is None:
            self.poll()
        self.writer.close()

    def _settle(self) -> None:
        """Collective: every process's writes are done; rank 0 finishes the pending checkpoint. A failed
        write on any process stops every process here with the same error line."""
        if self.pending is None:
            return
        error = self.writer.wait()
        failed = _any_process(error is not None)
        step, self.pending = self.pending, None
        if failed:
            cause = f"{type(error).__name__}: {error}" if error is not None else "it failed on another process"
            raise MmzooError(f"could not write the checkpoint of step {step} ({cause}); the checkpoints before it are "
                             "intact", path=self.root / partial_tag(step))
        if self.rank == 0 and (self.root / partial_tag(step)).is_dir():
            self._finalize(step)
        import torch.distributed as dist

        dist.barrier()

    def _finalize(self, step: int) -> None:
        """Rank 0: ``COMPLETE`` into the partial folder, then rename it into place; ``latest``; pruning."""
        import torch.distributed as dist

        tag, partial = ck.tag_for(step), self.root / partial_tag(step)
        for marker in partial.glob(f"{WRITTEN}*"):
            marker.unlink()
        ck.mark_complete(partial, {"step": step, "zero_stage": self.cfg.deepspeed.zero_stage,
                                   "world_size": dist.get_world_size(), "params": self.cfg.dump()})
        final = self.root / tag
        if final.exists():  # the same step written before (a rerun from an earlier checkpoint): replace it
            old = self.root / f"{PARTIAL_PREFIX}{tag}.replaced{PARTIAL_SUFFIX}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(partial, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(partial, final)
        latest = self.root / ".latest.partial"
        latest.write_text(tag)  # DeepSpeed's pointer (zero_to_fp32.py reads it), replaced atomically
        os.replace(latest, self.root / "latest")
        ck.prune(self.out_dir, self.cfg.train.keep_checkpoints)


def _any_process(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (one small collective)."""
    import torch

    from .collectives import sum_over_processes

    return bool(sum_over_processes(torch.tensor([int(flag)]))[0] > 0)
