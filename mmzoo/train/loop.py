"""One training process: DeepSpeed engine, seeded data order, metrics, checkpoints, resume.

Runs the same way under ``torchrun`` / the ``deepspeed`` launcher (RANK, WORLD_SIZE… set by them) and in
process for a single process (``mmzoo train --nproc 1``), where it sets those variables itself.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, MmzooError
from .config import TrainConfig, total_steps
from .ds_config import deepspeed_config

IGNORE_INDEX = -100


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_env() -> None:
    """A launcher-less process still needs the torch.distributed rendezvous variables."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())})


def pick_accelerator() -> str:
    """DeepSpeed picks its accelerator at import: CUDA when there is one, else the CPU backend (gloo)."""
    if "DS_ACCELERATOR" not in os.environ:
        import torch

        os.environ["DS_ACCELERATOR"] = "cuda" if torch.cuda.is_available() else "cpu"
    return os.environ["DS_ACCELERATOR"]


def skip_shm_comm_build() -> None:
    """DeepSpeed's CPU backend compiles a C++ shared-memory extension on first use (minutes, silently, in a
    torch_extensions cache every venv on the machine shares and rebuilds). Only its inference all-reduce
    uses it; training all-reduces go through gloo either way, so mmzoo never builds it."""
    import importlib

    # not `import deepspeed.comm.torch as m`: that resolves to the attribute deepspeed.comm.torch, which is torch
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def lr_lambda(total: int, warmup_ratio: float, kind: str, min_ratio: float) -> Callable[[int], float]:
    warmup = int(math.ceil(total * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        span = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / span)
        decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if kind == "cosine" else 1.0 - progress
        return min_ratio + (1.0 - min_ratio) * decay

    return factor


def _optimizer(model, cfg: TrainConfig, accelerator: str):
    import torch

    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.train.adam_betas), eps=cfg.train.adam_eps,
                             **optimizer_kernel(cfg, accelerator))


def optimizer_kernel(cfg: TrainConfig, accelerator: str) -> dict[str, bool]:
    """AdamW's implementation: one fused CUDA kernel over all parameters on a GPU (DeepSpeed hands it the fp32
    master weights, on the GPU unless the optimizer is offloaded); the per-parameter loop on the CPU, whose
    results the ZeRO-0/2/3 equality tests pin down."""
    if accelerator == "cuda" and not cfg.deepspeed.offload_optimizer:
        return {"fused": True}
    return {"foreach": False}


class MetricsLog:
    """``metrics.jsonl`` on rank 0; on resume the lines after the resumed step are dropped first."""

    def __init__(self, path: Path, resume_step: int, enabled: bool):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = []
        if path.is_file() and resume_step > 0:
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= resume_step:
                        kept.append(line)
                except (ValueError, KeyError, TypeError):  # a line that is not a record of ours ([1], "x", 5)
                    continue
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")


def run_training(cfg: TrainConfig, *, resume: str = "auto", console=None,
                 on_finish: Callable[[Any, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train one process of a (possibly multi-process) run; returns a summary (the same on every rank)."""
    summary = _run_training(cfg, resume=resume, console=console, on_finish=on_finish)
    # The run's engine, model and process group live on in reference cycles (DeepSpeed's engine and groups) once
    # _run_training's frame is gone: destroy them now, in this process, whose gloo threads and sockets they hold,
    # not whenever the collector next runs — a later run's forked data worker, say, where the group's destructor
    # waits forever for threads that were not copied (mmzoo/forking.py).
    import gc

    gc.collect()
    return summary


def _run_training(cfg: TrainConfig, *, resume: str, console, on_finish) -> dict[str, Any]:
    from .preflight import check_settings, preflight

    accelerator = pick_accelerator()
    check_settings(cfg, resume, accelerator)  # before any process group or model exists
    launched_here = "RANK" not in os.environ
    single_process_env()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch
    import torch.distributed as dist

    import deepspeed

    from . import checkpoint as ck
    from .moe import RouterTap, layout_coefficients, leaf_inputs_require_grad, mark_leaf_modules
    from .names import memory_layout
    from .stages import select_trainable

    owns_group = not dist.is_initialized()
    if owns_group:
        if accelerator == "cpu":
            skip_shm_comm_build()
        deepspeed.init_distributed(dist_backend="gloo" if accelerator == "cpu" else "nccl", verbose=False)
    rank, world = dist.get_rank(), dist.get_world_size()
    is_main = rank == 0
    out_dir = Path(cfg.output_dir)
    batches = None
    try:
        from .ds_config import resolve_zero_stage

        resumable = ck.latest(out_dir) if resume == "auto" else None
        cfg, stage_reason = resolve_zero_stage(cfg, world, ck.read_marker(resumable[1]).get("zero_stage")
                                               if resumable else None)
        checked = preflight(cfg, resume=resume, world=world)  # before any model is loaded
        source, data, existing, accumulation = checked.source, checked.data, checked.resume_from, checked.accumulation
        if is_main and console is not None and not os.environ.get("MMZOO_PREFLIGHT_SHOWN"):  # mmzoo train showed them
            for warning in checked.warnings:
                from rich.markup import escape  # a warning names paths and settings: `[tensorboard]` is not markup

                console.print(f"[yellow]warning[/]: {escape(warning)}")
        from ..models.load import load_model

        plan = None
        if cfg.train.packing:
            from .packing import PackPlan

            plan = PackPlan(data.order, data.sample_lengths(), cfg.train.max_tokens)
        steps = total_steps(cfg, len(data), plan=plan, accumulation=accumulation, world=world)
        if is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            import yaml

            (out_dir / "params.yaml").write_text(yaml.safe_dump(cfg.dump(), sort_keys=False))
            ck.save_meta(source, out_dir)
        dist.barrier()

        torch.manual_seed(cfg.train.seed)
        model = load_model(cfg.model, attn_implementation=cfg.train.attn_implementation)
        model.train()
        float_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg.train.precision]
        model.to(float_dtype)
        if cfg.train.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        layout = memory_layout(source)
        names = [n for n, _ in model.named_parameters()]
        verdict = select_trainable(names, layout, cfg.stage, cfg.train.freeze, cfg.train.train_only)
        for name, param in model.named_parameters():
            param.requires_grad_(verdict[name])
        from .kernels import apply_kernels

        apply_kernels(model, cfg)
        text_attention = cfg.train.attn_implementation
        if cfg.train.packing:
            from .packing import select_packed_attention

            text_attention = select_packed_attention(model, accelerator=accelerator, precision=cfg.train.precision)
        n_train = sum(p.numel() for n, p in model.named_parameters() if verdict[n])
        n_total = sum(p.numel() for p in model.parameters())

        tap = None
        if source.spec.moe:
            text_coef, image_coef = layout_coefficients(source.spec, cfg.moe)
            tap = RouterTap(model, image_token_id=source.spec.image_token_id, text_coef=text_coef, image_coef=image_coef,
                            z_coef=cfg.moe.router_z_loss_coef)
            if cfg.moe.capacity_factor is not None:
                if not tap.own_aux:
                    raise ConfigError("moe.capacity_factor needs an mmzoo MoE layout (upcycle with --tgt-fmt internal)")
                for _, block in tap.blocks:
                    block.capacity_factor = cfg.moe.capacity_factor
            if cfg.deepspeed.zero_stage == 3:
                mark_leaf_modules(model)
                leaf_inputs_require_grad(model)  # frozen layers before a trained MoE block (moe.py says why)
        if cfg.train.routing_plots and not tap:
            raise ConfigError("train.routing_plots needs an MoE model (this one has no MoE layer)")

        optimizer = _optimizer(model, cfg, accelerator)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(steps, cfg.train.warmup_ratio, cfg.train.lr_scheduler, cfg.train.min_lr_ratio))
        from .ds_config import llm_hidden_size

        ds_config = deepspeed_config(cfg, accumulation, world, hidden_size=llm_hidden_size(model))
        resume_dir = existing[1] if resume == "auto" and existing else None
        if resume_dir is not None and checked.universal:
            # another world size: DeepSpeed re-partitions ZeRO states only from its universal format
            failure = None
            if is_main:
                if console is not None:
                    console.print(f"converting step {existing[0]} to DeepSpeed's universal checkpoint format "
                                  f"(written by another number of processes)")
                try:
                    ck.universal_checkpoint(resume_dir)
                except MmzooError as exc:
                    failure = exc  # raised after the barrier, so the other ranks do not wait for rank 0 forever
            dist.barrier()
            if failure is not None:
                raise failure
            converted = ck.universal_path(resume_dir)  # made by rank 0; the other ranks only look it up
            if not (converted / ck.COMPLETE).is_file():
                raise MmzooError("rank 0 could not convert the checkpoint to the universal format", path=resume_dir)
            resume_dir = converted
            ds_config["checkpoint"] = {**ds_config.get("checkpoint", {}), "load_universal": True}
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config)
        from .engine_tuning import tune_engine

        engine_changes = tune_engine(engine, world)  # per-step work one process does not need (same weights)
        teacher = None  # the frozen second model of stage distill (teacher) or preference (reference)
        if cfg.stage == "distill":
            from .distill import Teacher

            teacher = Teacher(cfg, model, float_dtype, ds_config, engine.device)
        elif cfg.stage == "preference":
            from .preference import Reference

            teacher = Reference(cfg, model, float_dtype, ds_config, engine.device)
            if cfg.preference.precompute_reference:
                teacher.precompute(data, out_dir, rank=rank, world=world)

        from .flops import StepFlopsCounter

        flops = StepFlopsCounter(model)
        start = 0
        if resume_dir is not None:
            from . import pickles

            pickles.check_folder(resume_dir)  # a shared run folder is untrusted: its pickles may not run code
            with pickles.weights_only_loads():
                load_dir, _ = engine.load_checkpoint(str(ck.checkpoints_dir(out_dir)), tag=resume_dir.name,
                                                     load_optimizer_states=True, load_lr_scheduler_states=True)
            if load_dir is None:
                raise MmzooError("could not load the checkpoint", path=existing[1])
            start = existing[0]
        metrics = MetricsLog(out_dir / "metrics.jsonl", start, is_main)
        summary = {"steps": steps, "start_step": start, "world_size": world, "accumulation": accumulation,
                   "trainable_parameters": n_train, "parameters": n_total, "zero_stage": cfg.deepspeed.zero_stage,
                   "text_attention": text_attention, "engine_tuning": engine_changes}
        if is_main and console is not None:
            batch = (f"{world} process(es) × packs of ≤ {cfg.train.max_tokens} tokens × accumulation {accumulation}"
                     if cfg.train.packing else f"{world} process(es) × micro batch {cfg.train.micro_batch_size} × "
                     f"accumulation {accumulation} = {cfg.train.global_batch_size}")
            console.print(f"[bold]mmzoo train[/] stage {cfg.stage}: {n_train:,}/{n_total:,} parameters trainable, "
                          f"{batch}, ZeRO-{cfg.deepspeed.zero_stage}"
                          + (f" ({stage_reason})" if stage_reason else "") + f", {cfg.train.precision}, {steps} steps"
                          + (f", resuming after step {start}" if start else ""))
        from .data import micro_batch_stream

        batches = micro_batch_stream(data, first_step=start, last_step=steps, rank=rank, accumulation=accumulation,
                                     world=world, micro_batch_size=cfg.train.micro_batch_size,
                                     num_workers=cfg.data.num_workers, pin_memory=accelerator == "cuda", plan=plan,
                                     worker_timeout=cfg.data.worker_timeout)
        last: dict[str, Any] = {}
        window = _MetricsWindow(tap, world, accumulation, flops.supported,
                                extra=teacher.metric_names if teacher is not None else ())
        from .saving import CheckpointSaver, async_wanted
        from .tracking import Trackers

        with CheckpointSaver(engine, out_dir, cfg, rank=rank, world=world,
                             asynchronous=async_wanted(cfg)) as saver, Trackers(cfg.train.report_to, out_dir, cfg.dump(), start, is_main) as trackers, \
                _progress(console if is_main else None, steps, start) as advance:
            for step in range(start, steps):
                window.add(step, scheduler.get_last_lr()[0],
                           *_train_step(engine, batches, tap, cfg, step, accumulation, float_dtype, flops, teacher))
                saving = (step + 1) % cfg.train.save_every == 0 or step + 1 == steps
                if not ((step + 1) % cfg.train.log_every == 0 or saving):
                    continue  # no host synchronisation between log points: the GPU runs ahead
                record = window.flush(engine)  # the logged step, or the first diverged one
                last = record
                diverged = not math.isfinite(record["loss"])  # the same on every rank: summed over them
                if record["step"] % cfg.train.log_every == 0 or record["step"] == steps or diverged:
                    metrics.write(record)
                    trackers.log(record)
                advance(record)
                saver.poll()  # a checkpoint written in the background is renamed into place once complete
                if diverged:
                    saver.finish()  # every process diverged at the same step: the pending checkpoint is good
                    kept = ck.latest(out_dir)
                    raise MmzooError(
                        f"the loss is {record['loss']} at step {record['step']} (lr {record['lr']:.2e}): training "
                        "diverged; lower train.lr or raise train.warmup_ratio (bf16 is steadier than fp16); nothing "
                        f"after step {kept[0] if kept else 0} was saved")
                if saving:
                    saver.save(step + 1, last=step + 1 == steps)
            summary["checkpoint"] = saver.finish()  # waits for a checkpoint still being written
        summary["last"] = last
        if is_main and cfg.train.plot:  # train.plot: the curves beside metrics.jsonl (mmzoo plot)
            from ..plot import plot_runs

            plot_runs([out_dir], out_dir / "metrics.png", overwrite=True)
        if is_main and cfg.train.routing_plots and window.routing is not None:  # OUTPUT_DIR/routing/ (analyze-routing's)
            from ..analysis import write_report

            write_report({"schema": "mmzoo-routing/1", "run": str(out_dir), "steps": {"from": start + 1, "to": steps},
                          "layers": window.routing.summary(), "layer_overlap": None}, out_dir / "routing")
        dist.barrier()
        if on_finish is not None:
            on_finish(engine, summary)
        dist.barrier()
        return summary
    finally:
        if batches is not None:
            batches.close()  # stops the data workers now, also when the run failed
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()
            try:
                import deepspeed.comm.comm as ds_comm

                import deepspeed.utils.groups as ds_groups

                ds_comm.cdb = None  # let a later in-process run initialise again (DeepSpeed caches its groups)
                for name in dir(ds_groups):
                    if name.startswith("_") and "GROUP" in name:
                        value = getattr(ds_groups, name)
                        setattr(ds_groups, name, {} if isinstance(value, dict) else None)
            except Exception:  # noqa: BLE001
                pass
        if launched_here:
            for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
                os.environ.pop(key, None)


def _train_step(engine, batches, tap, cfg: TrainConfig, step: int, accumulation: int, float_dtype, flops, teacher=None):
    """One optimizer step. Returns the losses summed over the micro batches as a device tensor (loss, lm_loss,
    aux_loss, then the teacher's / reference's metrics; read only at log points) and this process's tokens and
    model FLOPs, counted on the CPU."""
    import torch

    from .data import to_device

    torch.manual_seed(cfg.train.seed * 1_000_003 + step)  # dropout / jitter: same on resume
    losses = None
    tokens = step_flops = 0
    for _ in range(accumulation):
        cpu_batch = next(batches)
        tokens += batch_tokens(cpu_batch)
        step_flops += flops.micro_batch(cpu_batch, every_position=teacher is not None)  # a teacher's loss may read all
        batch = to_device(cpu_batch, engine.device, float_dtype)
        if tap is not None:
            tap.start(batch["input_ids"])
        output = engine(**batch)
        if tap is not None:
            aux = tap.aux_loss(output, output.loss)
            if tap.own_aux:
                lm_loss, loss = output.loss - aux.detach(), output.loss
            else:
                lm_loss, loss = output.loss, output.loss + aux
        else:
            aux = output.loss.new_zeros(())
            lm_loss = loss = output.loss
        extra = aux.new_zeros(0)
        if teacher is not None:  # stage distill (KD term) or preference (DPO / KTO): the objective, then the aux loss
            pure_lm = output.loss - aux if tap is not None and tap.own_aux else output.loss
            pairs = {"pair_indices": cpu_batch["pair_indices"]} if "pair_indices" in cpu_batch else {}
            objective, extra = teacher.loss(output, {**batch, **pairs}, pure_lm)
            loss = objective + aux
        engine.backward(loss)
        engine.step()
        micro = torch.cat([torch.stack([loss.detach(), lm_loss.detach(), aux.detach()]).double(),
                           extra.detach().double().to(loss.device)])
        losses = micro if losses is None else losses + micro
    return losses, tokens, step_flops


def batch_tokens(batch: dict[str, Any]) -> int:
    """Real (non-pad) tokens of a CPU micro batch."""
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else int(batch["input_ids"].numel())


class _MetricsWindow:
    """The steps since the last log point: their losses stay on the device until ``flush`` reads them all at
    once (one host synchronisation and one collective per log point, not one per micro batch)."""

    def __init__(self, tap, world: int, accumulation: int, flops_supported: bool, extra: tuple[str, ...] = ()):
        self.tap, self.world, self.accumulation, self.flops_supported = tap, world, accumulation, flops_supported
        self.extra = extra  # the names of the columns after loss, lm_loss, aux_loss (kd_loss; rewards/…)
        self.started = time.perf_counter()
        self.steps: list[tuple[int, float, Any, int, int]] = []
        self.routing = None  # the routing statistics of every window so far (train.routing_plots)

    def add(self, step: int, lr: float, losses, tokens: int, step_flops: int) -> None:
        self.steps.append((step, lr, losses, tokens, step_flops))

    def flush(self, engine) -> dict[str, Any]:
        """The record of the window's last step (or of its first step whose loss is not finite)."""
        import torch

        from .collectives import sum_over_processes

        table = torch.stack([s[2] for s in self.steps])  # [steps, 3 + extra] on the device
        counts = torch.tensor([[s[3], s[4]] for s in self.steps], dtype=torch.float64)
        summed = sum_over_processes(torch.cat([table.cpu(), counts], dim=1))  # the one synchronisation
        seconds = time.perf_counter() - self.started
        finite = torch.isfinite(summed[:, 0])
        row = int((~finite).nonzero()[0]) if not bool(finite.all()) else len(self.steps) - 1
        step, lr = self.steps[row][0], self.steps[row][1]
        n = self.accumulation * self.world
        grad_norm = engine.get_global_grad_norm()
        tokens_col = 3 + len(self.extra)
        window_tokens, window_flops = float(summed[:, tokens_col].sum()), float(summed[:, tokens_col + 1].sum())
        record = {
            "step": step + 1,
            "loss": float(summed[row, 0] / n),
            "lm_loss": float(summed[row, 1] / n),
            "aux_loss": float(summed[row, 2] / n),
            "lr": float(lr),
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens": int(summed[row, tokens_col]),
            # real (non-pad) tokens and model FLOP/s of all processes together over the window (mmzoo.train.flops;
            # MFU = tflops / (peak × processes))
            "tokens_per_s": window_tokens / seconds if seconds > 0 else None,
            "tflops": window_flops / seconds / 1e12 if self.flops_supported and seconds > 0 else None,
            "seconds": round(seconds / len(self.steps), 4),  # per step
        }
        for column, name in enumerate(self.extra, start=3):  # means over the micro batches and processes
            record[name] = float(summed[row, column] / n)
        if self.tap is not None:  # routing statistics of the window (mmzoo.analysis.stats), one collective
            routing = self.tap.take_stats()
            record.update(expert_load=routing.load(), router_entropy=routing.entropy(),
                          expert_load_by_modality=routing.load_by_modality(4))
            self.routing = routing if self.routing is None else self.routing + routing
        self.steps, self.started = [], time.perf_counter()
        return record


def progress_text(record: dict[str, Any], width: int) -> str:
    """The metrics of one step in at most ``width`` characters: the fields a user watches first (loss,
    throughput) are kept, the others are added while they fit, so a narrow terminal never shows nothing."""
    grad = record.get("grad_norm")
    fields = [
        f"loss {record['loss']:.4f}",
        f"{record.get('tokens_per_s') or 0:,.0f} tok/s",
        f"lr {record['lr']:.2e}",
        f"|g| {grad:.3f}" if grad is not None else "",
        f"(lm {record['lm_loss']:.4f}, aux {record['aux_loss']:.4f})" if record.get("aux_loss") else "",
        f"{record['tflops']:.3g} TFLOP/s" if record.get("tflops") else "",
    ]
    text = ""
    for field_text in filter(None, fields):
        candidate = f"{text} {field_text}" if text else field_text
        if len(candidate) > width and text:
            break
        text = candidate
    return text


class _progress:
    """A rich progress line (rank 0 only): step, loss, tokens/s, lr, grad norm, model TFLOP/s — as many as fit."""

    def __init__(self, console, total: int, start: int):
        self.console, self.total, self.start = console, total, start
        self.progress = None

    def __enter__(self):
        if self.console is None:
            return lambda record: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        bar_width = 12
        self.progress = Progress(TextColumn("[bold]train"), BarColumn(bar_width=bar_width), MofNCompleteColumn(),
                                 TextColumn("{task.description}"), TimeRemainingColumn(), console=self.console,
                                 transient=False)
        self.progress.start()
        task = self.progress.add_task("", total=self.total, completed=self.start)
        # what the other columns take: "train", the bar, "N/M" of the widest step count, the time left, spaces
        fixed = len("train") + bar_width + 2 * len(str(self.total)) + 1 + len("0:00:00") + 5

        def advance(record: dict[str, Any]) -> None:
            text = progress_text(record, max(20, self.console.width - fixed))
            self.progress.update(task, completed=record["step"], description=text)

        return advance

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()
        return False
