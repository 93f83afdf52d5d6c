"""How ``mmzoo train --nproc N`` starts its processes: the command is built by a pure function.

- one process, one node: in process (no launcher);
- several processes on one node: ``torchrun`` (``python -m mmzoo.train.torchrun``: ``torch.distributed.run`` with
  the same arguments, which ends without a traceback when ``mmzoo train`` passes Ctrl-C or SIGTERM on);
- several nodes, started from one of them (``--hostfile``, ``--num-nodes`` > 1): the DeepSpeed launcher
  (``python -m deepspeed.launcher.runner``, what the ``deepspeed`` command runs), which reaches every host
  of the hostfile over pdsh/ssh and starts ``--nproc`` processes on each;
- several nodes, each started by the cluster's scheduler (``--node-rank R`` on every node, e.g. from
  SLURM_NODEID): every node runs ``mmzoo train`` itself and no ssh is used — torchrun with a static
  rendezvous at ``--master-addr``, or, with a ``--hostfile``, the DeepSpeed launcher with ``--no_ssh``.
Every process runs ``python -m mmzoo.train.worker --params RUN/params.yaml --resume …``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import ConfigError

LAUNCHERS = ("auto", "torchrun", "deepspeed")


def choose_launcher(nproc: int, *, hostfile: Path | None = None, num_nodes: int | None = None,
                    node_rank: int | None = None, master_addr: str | None = None, launcher: str = "auto") -> str:
    """``inprocess`` | ``torchrun`` | ``deepspeed``; every inconsistent combination is a ConfigError."""
    if launcher not in LAUNCHERS:
        raise ConfigError(f"invalid --launcher {launcher!r} (allowed: {', '.join(LAUNCHERS)})")
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1 (got {nproc})")
    if num_nodes is not None and num_nodes < 1:
        raise ConfigError(f"--num-nodes must be >= 1 (got {num_nodes})")
    if node_rank is not None:
        return _per_node_launcher(hostfile, num_nodes, node_rank, master_addr, launcher)
    multi_node = hostfile is not None or (num_nodes or 1) > 1
    if launcher == "torchrun" and multi_node:
        raise ConfigError("torchrun starts one node per command: run `mmzoo train --node-rank R ...` on every node, "
                          "or use the DeepSpeed launcher (--launcher deepspeed or auto) to reach the hosts over ssh")
    if launcher != "auto":
        return launcher
    if multi_node:
        return "deepspeed"
    return "inprocess" if nproc == 1 else "torchrun"


def _per_node_launcher(hostfile: Path | None, num_nodes: int | None, node_rank: int, master_addr: str | None,
                       launcher: str) -> str:
    """``--node-rank``: this command starts only this node's processes; the others are started alike."""
    kind = launcher if launcher != "auto" else ("deepspeed" if hostfile is not None else "torchrun")
    if master_addr is None:
        raise ConfigError("--node-rank needs --master-addr (the address of node 0, reachable from every node)")
    if node_rank < 0:
        raise ConfigError(f"--node-rank must be >= 0 (got {node_rank})")
    if kind == "torchrun":
        if hostfile is not None:
            raise ConfigError("--hostfile is read by the DeepSpeed launcher; with torchrun give --num-nodes instead")
        if num_nodes is None:
            raise ConfigError("--node-rank with torchrun needs --num-nodes (how many nodes take part)")
    elif hostfile is None:
        raise ConfigError("--node-rank with the DeepSpeed launcher needs --hostfile (it lists the nodes in rank order)")
    if num_nodes is not None and node_rank >= num_nodes:
        raise ConfigError(f"--node-rank {node_rank} is out of range for --num-nodes {num_nodes} (allowed: 0..{num_nodes - 1})")
    return kind


def build_command(params: Path, *, nproc: int, resume: str = "auto", hostfile: Path | None = None,
                  num_nodes: int | None = None, node_rank: int | None = None, master_addr: str | None = None,
                  master_port: int | None = None, launcher: str = "auto", python: str | None = None) -> list[str]:
    """The launcher command line (a list, no shell) that runs the worker on every process."""
    kind = choose_launcher(nproc, hostfile=hostfile, num_nodes=num_nodes, node_rank=node_rank,
                           master_addr=master_addr, launcher=launcher)
    python = python or sys.executable
    worker = ["--params", str(params), "--resume", resume]
    if kind == "inprocess":
        return [python, "-m", "mmzoo.train.worker", *worker]
    if kind == "torchrun":
        # torchrun, quiet when mmzoo train passes Ctrl-C / SIGTERM on (mmzoo/train/torchrun.py)
        cmd = [python, "-m", "mmzoo.train.torchrun", "--nnodes", str(num_nodes or 1)]
        if node_rank is not None:
            cmd += ["--node_rank", str(node_rank)]
        cmd += ["--nproc_per_node", str(nproc), "--master_addr", master_addr or "127.0.0.1"]
        if master_port is not None:
            cmd += ["--master_port", str(master_port)]
        return cmd + ["-m", "mmzoo.train.worker", *worker]
    cmd = [python, "-m", "deepspeed.launcher.runner"]
    if hostfile is not None:
        cmd += ["--hostfile", str(hostfile)]
    if num_nodes is not None:
        cmd += ["--num_nodes", str(num_nodes)]
    if node_rank is not None:
        cmd += ["--no_ssh", "--node_rank", str(node_rank)]
    cmd += ["--num_gpus", str(nproc)]
    if master_addr is not None:
        cmd += ["--master_addr", master_addr]
    if master_port is not None:
        cmd += ["--master_port", str(master_port)]
    return cmd + ["--module", "mmzoo.train.worker", *worker]
