"""How ``mmzoo train --nproc N`` starts its processes: the command is built by a pure function.

- one process, one node: in process (no launcher);
- several processes on one node: ``torchrun`` (``python -m torch.distributed.run``);
- several nodes (``--hostfile`` or ``--num-nodes`` > 1) or ``--launcher deepspeed``: the DeepSpeed
  launcher (``python -m deepspeed.launcher.runner``, what the ``deepspeed`` command runs), which starts
  ``--nproc`` processes on each host of the hostfile over pdsh/ssh.
Every process runs ``python -m mmzoo.train.worker --params RUN/params.yaml --resume …``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import ConfigError

LAUNCHERS = ("auto", "torchrun", "deepspeed")


def choose_launcher(nproc: int, *, hostfile: Path | None = None, num_nodes: int | None = None, launcher: str = "auto") -> str:
    """``inprocess`` | ``torchrun`` | ``deepspeed``."""
    if launcher not in LAUNCHERS:
        raise ConfigError(f"invalid --launcher {launcher!r} (allowed: {', '.join(LAUNCHERS)})")
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1 (got {nproc})")
    if num_nodes is not None and num_nodes < 1:
        raise ConfigError(f"--num-nodes must be >= 1 (got {num_nodes})")
    multi_node = hostfile is not None or (num_nodes or 1) > 1
    if launcher == "torchrun" and multi_node:
        raise ConfigError("--hostfile / --num-nodes need the DeepSpeed launcher (--launcher deepspeed or auto)")
    if launcher != "auto":
        return launcher
    if multi_node:
        return "deepspeed"
    return "inprocess" if nproc == 1 else "torchrun"


def build_command(params: Path, *, nproc: int, resume: str = "auto", hostfile: Path | None = None,
                  num_nodes: int | None = None, master_addr: str | None = None, master_port: int | None = None,
                  launcher: str = "auto", python: str | None = None) -> list[str]:
    """The launcher command line (a list, no shell) that runs the worker on every process."""
    kind = choose_launcher(nproc, hostfile=hostfile, num_nodes=num_nodes, launcher=launcher)
    python = python or sys.executable
    worker = ["--params", str(params), "--resume", resume]
    if kind == "inprocess":
        return [python, "-m", "mmzoo.train.worker", *worker]
    if kind == "torchrun":
        cmd = [python, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc)]
        cmd += ["--master_addr", master_addr or "127.0.0.1"]
        if master_port is not None:
            cmd += ["--master_port", str(master_port)]
        return cmd + ["-m", "mmzoo.train.worker", *worker]
    cmd = [python, "-m", "deepspeed.launcher.runner"]
    if hostfile is not None:
        cmd += ["--hostfile", str(hostfile)]
    if num_nodes is not None:
        cmd += ["--num_nodes", str(num_nodes)]
    cmd += ["--num_gpus", str(nproc)]
    if master_addr is not None:
        cmd += ["--master_addr", master_addr]
    if master_port is not None:
        cmd += ["--master_port", str(master_port)]
    return cmd + ["--module", "mmzoo.train.worker", *worker]
