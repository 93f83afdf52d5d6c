"""sum_over_processes over a real 2-process gloo group (the NCCL branch needs GPUs: not runnable here)."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cli_helpers import free_port


def _worker(rank: int, port: int, results) -> None:
    from mmzoo.train.collectives import sum_over_processes

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        mine = torch.tensor([1.0 + rank, 10.0 * rank], dtype=torch.float64)
        total = sum_over_processes(mine)
        results[rank] = (total.tolist(), mine.tolist(), str(total.device))
    finally:
        dist.destroy_process_group()


def test_sums_over_two_processes_and_leaves_the_input():
    port = free_port()
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(port, results), nprocs=2, join=True)
    for rank in (0, 1):
        total, mine, device = results[rank]
        assert total == [3.0, 10.0] and device == "cpu"
        assert mine == [1.0 + rank, 10.0 * rank]


def test_single_process_is_a_copy():
    from mmzoo.train.collectives import sum_over_processes

    mine = torch.ones(3)
    total = sum_over_processes(mine)
    total += 1
    assert mine.tolist() == [1.0, 1.0, 1.0]
