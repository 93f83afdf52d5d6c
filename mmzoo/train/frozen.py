"""A frozen model beside the trained one — the distill stage's teacher, the preference stage's reference.

Loaded from any checkpoint mmzoo reads, in the run's precision, eval mode, no gradients; under ZeRO-3 it is a
DeepSpeed inference engine (partitioned like the trained model, no optimizer), so a model larger than one device
still fits; under ZeRO-0/1/2 the trained model is replicated, and so is this one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def load_frozen(path: Path, cfg, float_dtype, ds_config: dict[str, Any], device):
    """The model at ``path``, frozen, on ``device`` (ZeRO-0/1/2) or as a ZeRO-3 inference engine."""
    from ..converters.pipeline import read_checkpoint
    from ..models.load import load_model

    spec = read_checkpoint(path).spec
    model = load_model(path, attn_implementation=cfg.train.attn_implementation)
    model.to(float_dtype).eval().requires_grad_(False)
    if cfg.deepspeed.zero_stage != 3:
        return model.to(device)
    import deepspeed

    if spec.moe:
        from .moe import mark_leaf_modules

        mark_leaf_modules(model)  # every rank gathers every expert: no rank waits for another's routing
    config = {key: ds_config[key] for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                                              "train_batch_size", "bf16", "fp16") if key in ds_config}
    config["zero_optimization"] = {"stage": 3, "stage3_param_persistence_threshold": 0}
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.module.eval()
    return engine
