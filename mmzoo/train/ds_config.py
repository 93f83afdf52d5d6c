"""The DeepSpeed config of a run: the ZeRO stage and its communication settings chosen per world size and model.

- ``deepspeed.zero_stage`` unset (``null``): ZeRO-0 on one process — ZeRO-1/2 partition nothing there and only
  add copies (gradients into flat partitions and back; on one H200, 1b preset, micro batch 8: ZeRO-2 30.3 k vs
  ZeRO-0 34.8 k tokens/s) — and ZeRO-2 on more, which shards optimizer states and gradients at the cost of one
  reduce-scatter + all-gather per step instead of an all-reduce (the same bytes on the wire). A resumed run
  keeps the stage its checkpoint was written with (a ZeRO stage cannot change on resume), whatever the number of
  processes now.
- With more than one process, ZeRO-1/2 overlap the gradient reduction with the backward pass
  (``overlap_comm``: buckets are reduced while later layers still compute), keep gradients in one contiguous
  buffer (``contiguous_gradients``: no fragmentation, one copy per bucket) and reduce-scatter rather than
  all-reduce (``reduce_scatter``). Buckets hold ``hidden_size²`` elements, as transformers' ``auto`` value (what
  LLaVA's zero2/zero3 JSON files resolve to) — 16.8 M for a 4096-wide LLM, so a 7B model's backward reduces in
  hundreds of buckets and the communication hides behind the compute — but at least 5 M elements (10 MB in
  bf16: smaller collectives are latency-bound) and at most DeepSpeed's default 500 M. With one process there is
  nothing to overlap and ``overlap_comm`` is off (its extra buffers would only cost memory).
- ZeRO-3 reduces in the same buckets and prefetches the next parameters in buckets of 0.9 × that size
  (transformers' ``auto``); it overlaps communication by DeepSpeed's own default.

``deepspeed.overrides`` is merged last and wins over all of this.
"""
from __future__ import annotations

from typing import Any

from ..errors import ConfigError

MIN_BUCKET, MAX_BUCKET = 5_000_000, 500_000_000


def resolve_zero_stage(cfg, world: int, resumed_stage: int | None = None):
    """``(cfg with a concrete deepspeed.zero_stage, why it was chosen or None when the config set it)``."""
    stage = cfg.deepspeed.zero_stage
    if stage is not None:
        return cfg, None
    if resumed_stage is not None:
        stage, why = resumed_stage, "deepspeed.zero_stage unset: the stage of the checkpoint this run resumes"
    elif world == 1:
        stage, why = 0, "deepspeed.zero_stage unset: one process has nothing to partition"
    else:
        stage, why = 2, f"deepspeed.zero_stage unset: {world} processes share optimizer states and gradients"
    deepspeed = cfg.deepspeed.model_copy(update={"zero_stage": stage})
    return cfg.model_copy(update={"deepspeed": deepspeed}), why


def bucket_elements(hidden_size: int | None) -> int:
    """Elements of a gradient-reduction / all-gather bucket for an LLM of ``hidden_size`` (see the module docstring)."""
    if not hidden_size:
        return MAX_BUCKET  # unknown model: DeepSpeed's default
    return max(MIN_BUCKET, min(MAX_BUCKET, hidden_size * hidden_size))


def deepspeed_config(cfg, accumulation: int, world: int, hidden_size: int | None = None) -> dict[str, Any]:
    """The DeepSpeed JSON of a run (``cfg.deepspeed.zero_stage`` already resolved: :func:`resolve_zero_stage`)."""
    t, d = cfg.train, cfg.deepspeed
    if d.zero_stage is None:
        raise ValueError("deepspeed.zero_stage must be resolved first (resolve_zero_stage)")
    zero: dict[str, Any] = {"stage": d.zero_stage}
    if d.offload_optimizer:
        if d.zero_stage == 0:
            raise ConfigError("deepspeed.offload_optimizer needs deepspeed.zero_stage 1, 2 or 3")
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if d.offload_param:
        if d.zero_stage != 3:
            raise ConfigError("deepspeed.offload_param needs deepspeed.zero_stage 3")
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    bucket = bucket_elements(hidden_size)
    if d.zero_stage in (1, 2):
        zero.update(overlap_comm=world > 1, contiguous_gradients=True, reduce_scatter=True,
                    reduce_bucket_size=bucket, allgather_bucket_size=bucket)
    if d.zero_stage == 3:
        zero.update(reduce_bucket_size=bucket, stage3_prefetch_bucket_size=int(0.9 * bucket),  # overlap: DeepSpeed's (on)
                    stage3_gather_16bit_weights_on_model_save=True, stage3_param_persistence_threshold=0)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": t.micro_batch_size,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": t.micro_batch_size * accumulation * world,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,  # the client torch AdamW (no JIT-built DeepSpeed Adam)
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if t.precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif t.precision == "fp16":
        config["fp16"] = {"enabled": True, "initial_scale_power": 16}
    from .config import merge

    return merge(config, d.overrides)


def llm_hidden_size(model) -> int | None:
    config = getattr(model, "config", None)
    return getattr(getattr(config, "text_config", config), "hidden_size", None)
