"""Two pieces of per-step work DeepSpeed 0.19 does that a single-process run does not need, removed after
``deepspeed.initialize`` without changing a single bit of the trained weights (tests/train/test_engine_tuning.py).

- **The identity all-reduce.** With ZeRO-0 (what one process runs, see ds_config.py) DeepSpeed's engine
  all-reduces every gradient after each optimizer step's backward: it concatenates them into flat buffers
  (temporaries of up to 500 M elements, 1 GB in bf16; the 1 B-parameter LLM of the benchmark has ~1.9 GB of
  gradients), casts them to the communication dtype, all-reduces them over the data-parallel group and copies
  them back tensor by tensor. Over one process the all-reduce is the identity, so the copies are pure cost:
  about 4 bytes of memory traffic per gradient byte each step, and the temporary buffer on top of the peak.
  ``enable_backward_allreduce`` is the engine's own switch for "the gradients need no reduction" (its pipeline
  engine turns it off the same way).
  Only for wrappers that reduce through that path (no ZeRO optimizer: those reduce in their own hooks).
- **A host synchronisation per gradient tensor.** The fp16/bf16 wrapper of ZeRO-0 (``FP16_UnfusedOptimizer``,
  which bf16 uses too) checks every gradient for inf/NaN before the step with ``if has_inf_or_nan(grad)``: the
  truth value of a device tensor, so the host waits for the device once per parameter tensor (~150 times a
  step for a 16-layer Llama) while the device idles between tiny kernels. The same per-tensor checks,
  stacked and read once, give the same answer with one wait.

``tune_engine`` reports what it changed, so the run's start-up line and the benchmark can say so.
"""
from __future__ import annotations

from types import MethodType
from typing import Any


def tune_engine(engine: Any, world: int) -> list[str]:
    """Apply what applies to this engine; returns a short description of each change."""
    changes = []
    if world == 1 and _reduces_in_engine(engine) and getattr(engine, "enable_backward_allreduce", False):
        engine.enable_backward_allreduce = False
        changes.append("no all-reduce of the gradients over one process")
    checker = getattr(engine.optimizer, "overflow_checker", None)
    if checker is not None and hasattr(checker, "has_overflow_serial"):
        checker.has_overflow_serial = MethodType(has_overflow_batched, checker)
        changes.append("one host synchronisation for the inf/NaN check of all gradients")
    return changes


def _reduces_in_engine(engine: Any) -> bool:
    """True when gradients reach the engine's ``allreduce_gradients`` fallback: the plain, fp16 and bf16 wrappers
    of ZeRO-0, and DeepSpeed's BF16_Optimizer (ZeRO-1 with ``data_types.grad_accum_dtype: fp32``), which has no
    reduction of its own — there the fallback would also round the fp32-accumulated gradients to bf16 and back.
    Not the ZeRO optimizers, whose own hooks move gradients into their partitions while reducing them."""
    from deepspeed.runtime.base_optimizer import ZeROOptimizer
    from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

    optimizer = engine.optimizer
    if isinstance(optimizer, BF16_Optimizer):
        return True
    return engine.zero_optimization_stage() == 0 and not isinstance(optimizer, ZeROOptimizer)


def has_overflow_batched(checker: Any, params) -> bool:
    """DeepSpeed's ``CheckOverflow.has_overflow_serial`` (does any gradient hold an inf or NaN?) with its own
    per-tensor test, ``has_inf_or_nan``, and one read of all the answers instead of one per tensor."""
    import torch
    from deepspeed.runtime.utils import has_inf_or_nan

    flags = [has_inf_or_nan(p.grad.data) for p in params if p.grad is not None]
    return bool(torch.stack(flags).any()) if flags else False
