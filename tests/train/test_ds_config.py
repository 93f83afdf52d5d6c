"""The DeepSpeed config mmzoo generates, per world size and ZeRO stage (mmzoo/train/ds_config.py)."""
from __future__ import annotations

import pytest

from mmzoo.train.config import load_config
from mmzoo.train.ds_config import MAX_BUCKET, MIN_BUCKET, bucket_elements, deepspeed_config, resolve_zero_stage


def _cfg(**deepspeed):
    return load_config(data={"stage": "sft", "model": "m", "data": {"path": "d", "images": "i"}, "output_dir": "o",
                             "train": {"max_steps": 1, "micro_batch_size": 2, "global_batch_size": 8},
                             "deepspeed": deepspeed})


@pytest.mark.parametrize("world, resumed, stage, reason", [
    (1, None, 0, "one process has nothing to partition"),
    (2, None, 2, "2 processes share optimizer states"),
    (8, None, 2, "8 processes"),
    (1, 2, 2, "the stage of the checkpoint this run resumes"),
    (4, 0, 0, "the stage of the checkpoint this run resumes"),
])
def test_unset_zero_stage_is_chosen_by_world_size_or_the_resumed_checkpoint(world, resumed, stage, reason):
    cfg, why = resolve_zero_stage(_cfg(), world, resumed)
    assert cfg.deepspeed.zero_stage == stage and reason in why
    assert cfg.train == _cfg().train  # nothing else changes


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_a_zero_stage_the_config_sets_is_kept(stage):
    cfg, why = resolve_zero_stage(_cfg(zero_stage=stage), 1, resumed_stage=(stage + 1) % 4)
    assert cfg.deepspeed.zero_stage == stage and why is None


def test_bucket_size_follows_the_hidden_size_within_bounds():
    assert bucket_elements(4096) == 4096 * 4096  # transformers' "auto": hidden²
    assert bucket_elements(64) == MIN_BUCKET
    assert bucket_elements(65536) == MAX_BUCKET
    assert bucket_elements(None) == MAX_BUCKET


def _zero(stage, world, hidden=4096, **deepspeed):
    cfg, _ = resolve_zero_stage(_cfg(zero_stage=stage, **deepspeed), world)
    return deepspeed_config(cfg, accumulation=8 // (2 * world) or 1, world=world, hidden_size=hidden)


def test_one_process_zero0_has_no_communication_settings():
    config = _zero(None, 1)
    assert config["zero_optimization"] == {"stage": 0}
    assert config["train_batch_size"] == 8 and config["gradient_accumulation_steps"] == 4


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("stage", [1, 2])
def test_zero12_overlap_communication_only_with_several_processes(stage, world):
    zero = _zero(stage, world)["zero_optimization"]
    assert zero == {"stage": stage, "overlap_comm": world > 1, "contiguous_gradients": True, "reduce_scatter": True,
                    "reduce_bucket_size": 4096**2, "allgather_bucket_size": 4096**2}


@pytest.mark.parametrize("world", [1, 2])
def test_zero3_buckets_and_prefetch(world):
    zero = _zero(3, world, hidden=3072)["zero_optimization"]
    assert zero["reduce_bucket_size"] == 3072**2 and zero["stage3_prefetch_bucket_size"] == int(0.9 * 3072**2)
    assert "overlap_comm" not in zero  # DeepSpeed's default for ZeRO-3: on
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True


def test_overrides_win_and_an_unresolved_stage_is_refused():
    cfg, _ = resolve_zero_stage(_cfg(overrides={"zero_optimization": {"overlap_comm": False, "reduce_bucket_size": 7}}), 2)
    zero = deepspeed_config(cfg, 2, 2, hidden_size=4096)["zero_optimization"]
    assert zero["overlap_comm"] is False and zero["reduce_bucket_size"] == 7 and zero["stage"] == 2
    with pytest.raises(ValueError, match="resolved first"):
        deepspeed_config(_cfg(), 1, 1)


def test_deepspeed_accepts_the_generated_configs():
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    for stage in (0, 1, 2, 3):
        for world in (1, 2):
            zero = DeepSpeedZeroConfig(**_zero(stage, world)["zero_optimization"])
            assert zero.stage == stage
            if stage in (1, 2):
                assert zero.overlap_comm is (world > 1) and zero.reduce_bucket_size == 4096**2
