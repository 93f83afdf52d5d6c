"""Forking worker processes from a process that has run torch.distributed, DeepSpeed or threads of its own.

A forked child starts with a copy of every Python object of its parent but only the thread that forked. When the
child's garbage collector later frees one of those objects whose destructor waits for the parent's threads, the
child hangs for good. Seen in this project's test suite, which trains several times in one process: a training
DataLoader worker's queue feeder thread ran a collection, which freed a gloo ``ProcessGroup`` left over (as
cyclic garbage) from an earlier run; its destructor waited on a condition variable of gloo threads that exist
only in the parent; the batch it was sending never arrived, and the training waited for it forever (py-spy:
``gc_collect_main`` → ``~ProcessGroupGloo`` → ``pthread_cond_broadcast`` in the worker, the main process in
``DataLoader.__next__`` for batch 0, the worker alive, so the DataLoader saw nothing wrong).

:func:`frozen_for_fork` collects the parent's garbage first (its destructors then run where they are safe), then
freezes every object the parent holds while the children are forked: a child's collections never examine what it
inherited, only what it allocates itself. The parent unfreezes
when the forks are done, so its own collections go on as before. This is what the ``gc.freeze`` documentation
recommends before ``fork()``; it also keeps more of the parent's memory shared with the children.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def frozen_for_fork() -> Iterator[None]:
    """Fork the worker processes inside this block (a DataLoader's ``iter``, a ``multiprocessing`` pool)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
