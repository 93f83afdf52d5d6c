"""Checks that need no process group and no model weights: run by ``mmzoo train`` before it launches
anything (one clear line instead of a launcher's failure report per process) and again by every worker."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MmzooError
from .config import TrainConfig, gradient_accumulation


@dataclass
class Preflight:
    source: Any  # the model checkpoint, read lazily (headers only)
    data: Any  # TrainData
    resume_from: tuple[int, Path] | None  # the checkpoint --resume auto continues from
    warnings: list[str] = field(default_factory=list)
    universal: bool = False  # the resume changes the world size: through a universal checkpoint
    accumulation: int | None = None  # gradient accumulation steps (None: world size not known here)


def check_resume(resume: str) -> None:
    if resume not in ("auto", "never"):
        raise ConfigError(f"invalid --resume {resume!r} (allowed: auto, never)")


def check_settings(cfg: TrainConfig, resume: str, accelerator: str) -> None:
    from ..models.load import check_attn_implementation

    from .kernels import check_kernels

    check_resume(resume)
    check_attn_implementation(cfg.train.attn_implementation)
    check_kernels(cfg, accelerator)
    if accelerator == "cpu":
        if cfg.train.precision == "fp16":
            raise ConfigError("train.precision fp16 needs a GPU (allowed on CPU: bf16, fp32)")
        if cfg.train.attn_implementation == "flash_attention_2":
            raise ConfigError("train.attn_implementation flash_attention_2 needs a CUDA GPU (allowed on CPU: sdpa, eager)")


IMAGE_SAMPLE = 64  # samples whose image paths are checked: cheap (no image is opened), and a wrong folder misses all


def check_image_paths(dataset, images: Path, sample: int = IMAGE_SAMPLE) -> None:
    """Refuse a ``data.images`` that does not hold the data's images, judged from an evenly spread sample of
    samples: found here it is one line, found by the DataLoader at step 0 it is a traceback per process."""
    n = len(dataset)
    indices = sorted({i * n // sample for i in range(sample)}) if n > sample else range(n)
    paths = [rel for i in indices for rel in dataset.raw(i)["image_paths"]]
    if not paths:
        return  # text-only data: no image folder is read
    if not images.is_dir():
        raise ConfigError(f"data.images {str(images)!r} is not a folder (the data reads images from it, "
                          f"e.g. {paths[0]!r})")
    from ..preprocess.shard_checks import image_path

    missing = [rel for rel in paths if not image_path(images, rel).is_file()]  # a path leaving images/ is refused
    if missing:
        raise ConfigError(f"data.images {str(images)!r} lacks {len(missing)} of {len(paths)} sampled images "
                          f"(e.g. {missing[0]!r}); it must be the --images folder given to `mmzoo preprocess`")


def check_run_folder(out_dir: Path, cfg: TrainConfig) -> None:
    """Training writes metrics.jsonl, params.yaml, meta/ and checkpoints/ into ``output_dir``: it may not be an input
    (the model, the data, the images, a teacher or reference) or lie inside one, and a run folder someone sent you
    (to resume, to continue training) may not hold a symlink that leaves it, which training would write through
    (``metrics.jsonl -> ~/.bashrc`` is rewritten on resume)."""
    from ..io.confine import OutsideCheckpoint, confine_checkpoint
    from .tracking import TRACKER_FOLDERS

    target = out_dir.absolute().resolve()
    inputs = [("model", cfg.model), ("data.path", cfg.data.path), ("data.images", cfg.data.images),
              ("teacher", cfg.teacher), ("reference", cfg.reference)]
    for what, path in inputs:
        if path is None:
            continue
        source = Path(path).absolute().resolve()
        if target == source or source in target.parents:
            raise ConfigError(f"output_dir {out_dir} is {'the' if target == source else 'inside the'} {what} folder "
                              f"({path}): training would write its checkpoints into an input; choose another output_dir")
    if not out_dir.is_dir():
        return
    try:
        # checkpoints/step_N/<files>: three levels; the trackers' own folders are theirs (wandb links its debug
        # logs there into ~/.cache/wandb by design), mmzoo writes nothing into them
        confine_checkpoint(out_dir, depth=3, not_entered=TRACKER_FOLDERS)
    except OutsideCheckpoint as exc:
        raise ConfigError(f"output_dir {out_dir}: {str(exc).replace('refusing to read it', 'refusing to write through it')}") from None


def preflight(cfg: TrainConfig, *, resume: str, world: int | None) -> Preflight:
    """Everything about the run that can be judged from files; ``world`` None: not known here (hostfile)."""
    from . import checkpoint as ck
    from .data import TrainData, check_data_fits_model

    accumulation = gradient_accumulation(cfg, world) if world is not None else None
    out_dir = Path(cfg.output_dir)
    check_run_folder(out_dir, cfg)
    existing = ck.latest(out_dir)
    if existing and resume == "never":
        raise MmzooError(f"already has checkpoints (latest: step {existing[0]}); pass --resume auto to continue "
                         "or choose another output_dir", path=out_dir)
    if existing and resume == "auto" and cfg.train.max_steps is not None and existing[0] > cfg.train.max_steps:
        # nothing to train, and DeepSpeed's sampler would fail on a negative length after loading the checkpoint
        raise ConfigError(f"already trained to step {existing[0]}, past train.max_steps {cfg.train.max_steps}; raise "
                          "train.max_steps to continue it, or start another run (--set output_dir=runs/NEW)", path=out_dir)
    if existing and resume == "auto" and cfg.deepspeed.zero_stage is None:
        from .ds_config import resolve_zero_stage  # unset: a resumed run keeps its checkpoint's stage

        cfg, _ = resolve_zero_stage(cfg, world or 1, ck.read_marker(existing[1]).get("zero_stage"))
    universal = False
    if existing and world is not None:
        universal = ck.needs_universal(existing[1], existing[0], world_size=world, zero_stage=cfg.deepspeed.zero_stage)
    from ..converters.pipeline import read_checkpoint

    for key, where in (("model", cfg.model), ("data.path", cfg.data.path)):
        if not Path(where).exists():  # the configs in configs/tiny-*.yaml read what the demo leaves behind
            demo = "; run `mmzoo demo -o mmzoo-demo` first" if Path(where).parts[:1] == ("mmzoo-demo",) else ""
            raise ConfigError(f"{key} {str(where)!r} does not exist{demo}")
    source = read_checkpoint(cfg.model)
    if cfg.stage == "moe" and not source.spec.moe:
        raise ConfigError(f"stage moe needs an MoE checkpoint; {cfg.model} is dense (upcycle it with "
                          "`mmzoo convert --moe-experts N`, or use stage sft)")
    if cfg.stage == "distill":
        from .distill import real_vocabulary

        if not Path(cfg.teacher).exists():
            raise ConfigError("teacher checkpoint not found", path=cfg.teacher)
        real_vocabulary(cfg.model, cfg.teacher)  # a teacher with another tokenizer: one line before any model loads
    if cfg.stage == "preference" and cfg.reference is not None:
        from .distill import real_vocabulary

        if not Path(cfg.reference).exists():
            raise ConfigError("reference checkpoint not found", path=cfg.reference)
        real_vocabulary(cfg.model, cfg.reference, ("policy", "reference"))  # log-probs of the same tokens
    verified = None
    if cfg.data.verify_shards:  # before any shard is opened: a damaged one is named here, not an error inside h5py
        from ..preprocess.integrity import verify_for_training

        verified = verify_for_training(cfg.data.path, out_dir)
    data = TrainData(cfg.data.path, cfg.data.images, cfg.model, cfg.train.seed)
    data.dataset.vocab_size = source.spec.text_config.get("vocab_size")  # a token id past the embeddings: one line
    if data.pairs != (cfg.stage == "preference"):
        kind = "preference pairs" if data.pairs else "conversations"
        raise ConfigError(f"stage {cfg.stage} cannot train on {kind}: stage preference reads `mmzoo preprocess --kind "
                          "preference` output, the other stages conversation data", path=cfg.data.path)
    check_image_paths(data.dataset, Path(cfg.data.images))
    warnings = verified.notes() if verified else []
    warnings += check_data_fits_model(data.parameters, cfg.model, source.spec.image_token_id, cfg.stage)
    warnings += zero_stage_warnings(cfg, world)
    if cfg.train.packing:
        from .packing import check_max_tokens

        check_max_tokens(cfg.train.max_tokens, data.sample_lengths())
    if existing and resume == "auto":
        changed = ck.changed_settings(existing[1], cfg.dump())
        if changed:
            warnings.append(f"resuming step {existing[0]} with changed settings: {'; '.join(changed)} — the optimizer "
                            "and LR schedule continue from the checkpoint's state, and the loss curve will not match "
                            "an uninterrupted run")
    if verified is not None:
        verified.save()  # a run folder made only for a run that passed (the record of a new run waits until here)
    return Preflight(source, data, existing, warnings, universal, accumulation)


def zero_stage_warnings(cfg: TrainConfig, world: int | None, cuda: bool | None = None) -> list[str]:
    """ZeRO-1/2 on one GPU partition nothing and only add copies (gradients into flat partitions, back again)."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    d = cfg.deepspeed
    if cuda and world == 1 and d.zero_stage in (1, 2) and not d.offload_optimizer:
        return [f"deepspeed.zero_stage {d.zero_stage} on one process partitions nothing and only adds copies: "
                "deepspeed.zero_stage 0 is faster on one GPU"]
    return []
