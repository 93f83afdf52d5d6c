"""Sums over the training processes for metrics (loss, token counts, expert load), on any backend."""
from __future__ import annotations

from typing import Any


def sum_over_processes(tensor: Any) -> Any:
    """``tensor`` summed over all processes (returned on the CPU; the input is left as it is).

    Metrics are accumulated on the CPU so logging never waits on the accelerator. gloo reduces CPU
    tensors, but NCCL reduces only tensors on the process's GPU, so under NCCL the sum takes a round
    trip through the device.
    """
    import torch
    import torch.distributed as dist

    out = tensor.detach().clone().cpu()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return out
    if dist.get_backend() == "nccl":
        on_device = out.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_device)
        return on_device.cpu()
    dist.all_reduce(out)
    return out
