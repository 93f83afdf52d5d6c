"""``mmzoo train`` and ``mmzoo export`` (registered by mmzoo.cli; heavy imports only inside the commands)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_command(
        params: Annotated[Path, typer.Option("--params", help="Training config (yaml); see docs/train.md and configs/.")],
        set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key: --set train.lr=1e-4 (repeatable).")] = None,
        nproc: Annotated[int, typer.Option("--nproc", help="Processes per node (GPUs per node; CPU processes over gloo).")] = 1,
        resume: Annotated[str, typer.Option("--resume", help="auto: continue from the newest checkpoint in output_dir; never: refuse if there is one.")] = "auto",
        hostfile: Annotated[Optional[Path], typer.Option("--hostfile", help="DeepSpeed hostfile (multi-node; passed to the deepspeed launcher).")] = None,
        num_nodes: Annotated[Optional[int], typer.Option("--num-nodes", help="Number of nodes taking part.")] = None,
        node_rank: Annotated[Optional[int], typer.Option("--node-rank", help="This node's rank when every node runs `mmzoo train` itself "
                                                         "(SLURM/Kubernetes, no ssh): torchrun, or the DeepSpeed launcher with --hostfile.")] = None,
        master_addr: Annotated[Optional[str], typer.Option("--master-addr", help="Rendezvous address: node 0 (multi-node).")] = None,
        master_port: Annotated[Optional[int], typer.Option("--master-port", help="Rendezvous port.")] = None,
        launcher: Annotated[str, typer.Option("--launcher", help="auto | torchrun | deepspeed.")] = "auto",
        print_command: Annotated[bool, typer.Option("--print-command", help="Print the launch command and exit.")] = False,
        debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")] = False,
    ) -> None:
        """Train a VLM stage (pretrain | sft | moe | distill | preference) with DeepSpeed ZeRO 0-3.

        Examples:

          mmzoo train --params configs/tiny-sft.yaml --nproc 2 --set train.max_steps=20

          mmzoo train --params x.yaml --hostfile hosts --num-nodes 2 --nproc 8 --master-addr node-1   # ssh to the hosts

          mmzoo train --params x.yaml --num-nodes 2 --node-rank $SLURM_NODEID --nproc 8 --master-addr node-1  # on every node
        """
        import os
        import shlex
        import socket
        import subprocess
        import sys

        import yaml

        from ..console import console, escape
        from ..errors import require_package
        from .config import gradient_accumulation, load_config
        from .launch import build_command, choose_launcher
        from .torchrun import SAID_IN_ONE_LINE
        from .preflight import check_resume, check_settings, preflight

        check_resume(resume)
        if not print_command:  # before the run folder or N launched processes that would each fail on the import
            require_package("deepspeed", "mmzoo train")
        cfg = load_config(params, set_)
        kind = choose_launcher(nproc, hostfile=hostfile, num_nodes=num_nodes, node_rank=node_rank,
                               master_addr=master_addr, launcher=launcher)
        if hostfile is None:  # world size known here; with a hostfile each worker checks it
            gradient_accumulation(cfg, nproc * (num_nodes or 1))
        resolved = Path(cfg.output_dir) / "params.yaml"
        command = build_command(resolved, nproc=nproc, resume=resume, hostfile=hostfile, num_nodes=num_nodes,
                                node_rank=node_rank, master_addr=master_addr, master_port=master_port, launcher=launcher)
        if print_command:
            console.print(shlex.join(command), soft_wrap=True, highlight=False)
            return
        if kind == "inprocess":
            from .loop import run_training

            with _stop_reported(cfg.output_dir):
                summary = run_training(cfg, resume=resume, console=console)
            console.print(f"[green]done[/]: {summary['steps']} steps, checkpoints in {Path(cfg.output_dir) / 'checkpoints'}; "
                          f"export with `mmzoo export {cfg.output_dir} --tgt-fmt hf -o OUT`")
            return
        # Judge what can be judged from files here, once, before the launcher starts N processes that would
        # each fail with the same line inside a launcher failure report.
        from .loop import pick_accelerator

        check_settings(cfg, resume, pick_accelerator())
        for warning in preflight(cfg, resume=resume, world=None if hostfile else nproc * (num_nodes or 1)).warnings:
            console.print(f"[yellow]warning[/]: {escape(warning)}")
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        # Every node of a --node-rank run writes this file into the shared output_dir while the other
        # nodes' workers may be reading it: write a private sibling and rename it into place.
        private = resolved.with_name(f".params.{os.getpid()}.{socket.gethostname()}.yaml")
        private.write_text(yaml.safe_dump(cfg.dump(), sort_keys=False))
        os.replace(private, resolved)
        console.print(f"[bold]launching[/] {shlex.join(command)}", soft_wrap=True, highlight=False)
        env = {**os.environ, "MMZOO_PREFLIGHT_SHOWN": "1"}
        if nproc > 1:  # torchrun's own default, set here so it does not print a 4-line banner about it
            env.setdefault("OMP_NUM_THREADS", "1")
        # its own session: a terminal's Ctrl-C reaches mmzoo alone, which passes it on once (a second SIGINT
        # in the middle of torchrun's shutdown of its workers aborts that shutdown)
        with _stop_reported(cfg.output_dir):
            # DeepSpeed's runner on one node turns Ctrl-C into its own traceback and exits; SIGTERM it leaves to the
            # default action (on many nodes both stop the hosts' processes alike)
            code = _wait_forwarding_signals(subprocess.Popen(command, env=env, start_new_session=True),
                                            as_sigterm=kind == "deepspeed")
        if code == SAID_IN_ONE_LINE:  # a worker's `mmzoo: error:` line above says why
            sys.exit(2)
        if code:
            sys.stderr.write(f"mmzoo: error: training failed (launcher exit code {code})\n")
            sys.exit(2)
        console.print(f"[green]done[/]: checkpoints in {Path(cfg.output_dir) / 'checkpoints'}")

    @app.command("export")
    def export_command(
        run_dir: Annotated[Path, typer.Argument(help="A training run folder (output_dir).")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Output checkpoint folder.")],
        tgt_fmt: Annotated[str, typer.Option("--tgt-fmt", help="hf | llava | internal | moe-llava | libmoe | cerebras (see `mmzoo formats`).")] = "hf",
        step: Annotated[Optional[int], typer.Option("--step", help="Checkpoint step (default: the latest).")] = None,
        dtype: Annotated[str, typer.Option("--dtype", help="keep (the source checkpoint's dtypes) | bf16 | fp16 | fp32.")] = "keep",
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
        debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")] = False,
    ) -> None:
        """Consolidate a ZeRO checkpoint (any stage, any world size) into a normal checkpoint with tokenizer and processor.

        Example: mmzoo export runs/tiny-sft --tgt-fmt hf -o tiny-sft-hf
        """
        from ..console import console, escape
        from ..errors import require_package
        from .export import export

        require_package("deepspeed", "mmzoo export")  # it consolidates DeepSpeed's ZeRO files
        with console.status(f"consolidating {escape(str(run_dir))}…"):  # a spinner on a terminal only: minutes for 7B ZeRO-3
            result = export(run_dir, output, tgt_fmt=tgt_fmt, step=step, dtype=dtype, overwrite=overwrite)
        console.print(f"[green]exported[/] step {result['step']} of {run_dir} → {output} ({tgt_fmt}, {result['tensors']} tensors)")


@contextmanager
def _stop_reported(run_dir) -> Iterator[None]:
    """Ctrl-C or SIGTERM during training: one line that says what the run folder keeps, and exit status 130 / 143
    (with ``--debug`` torchrun's own report of the signal stays above it, mmzoo/train/torchrun.py)."""
    import sys

    from ..io.claim import Terminated, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # in process: SIGTERM stops training as Ctrl-C does (the launcher path forwards it)
            yield
    except (KeyboardInterrupt, Terminated) as stop:
        from .checkpoint import latest

        what, code = ("terminated", 143) if isinstance(stop, Terminated) else ("interrupted", 130)
        kept = latest(Path(run_dir))
        if kept:
            said = f"{run_dir} keeps its checkpoints up to step {kept[0]}; --resume auto continues from there"
        else:
            said = f"no checkpoint of {run_dir} was finished yet (train.save_every), so a new run starts from the beginning"
        # on a line of its own: a worker's last progress line may still lack its newline (the DeepSpeed launcher's
        # workers were seen writing it after the launcher had gone)
        sys.stderr.write(f"\nmmzoo: {what}; {said}\n")
        sys.exit(code)


def _wait_forwarding_signals(launcher, as_sigterm: bool = False) -> int:
    """Wait for the launcher (started in its own session), passing on SIGTERM and SIGINT once each (``as_sigterm``:
    both as SIGTERM): Ctrl-C, a scheduler's SIGTERM or ``kill -INT`` of ``mmzoo train`` must stop the launcher and
    its workers too, not leave them training in the background. The launcher stops its workers (what it leaves
    running is stopped after it); then mmzoo exits as interrupted (130) or terminated (143)."""
    import signal

    from ..io.claim import Terminated

    received: list[int] = []

    def forward(signum, frame=None):
        if signum not in received:  # once: the launcher is already stopping its workers
            received.append(signum)
            launcher.send_signal(signal.SIGTERM if as_sigterm else signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                code = launcher.wait()
                break
            except KeyboardInterrupt:
                forward(signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if received:
        _stop_left_behind(launcher.pid, received[0])
    if signal.SIGTERM in received:
        raise Terminated()
    if received:
        raise KeyboardInterrupt
    return code


def _stop_left_behind(group: int, signum: int, grace: float = 30.0) -> None:
    """Stop what a stopped launcher left running in its process group (its session's, started by mmzoo). torchrun
    stops its workers before it exits; DeepSpeed's runner on one node exits at once and left its
    ``deepspeed.launcher.launch`` and the workers training in the background. Every survivor gets the signal at
    once (``launch`` stops its workers; a worker stopped before its peers would report their broken connection),
    and what still runs after ``grace`` seconds is killed."""
    import os

    import psutil

    left = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == group and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except (OSError, psutil.Error):  # ended meanwhile, or not ours to look at
            continue
    for proc in left:
        try:
            proc.send_signal(signum)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(left, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            continue
