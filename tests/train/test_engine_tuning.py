"""mmzoo.train.engine_tuning: a single-process run skips DeepSpeed's identity all-reduce and checks the gradients
for inf/NaN with one host synchronisation, and trains the very same weights (bitwise) as without."""
from __future__ import annotations

import math

import torch

from mmzoo.train import engine_tuning
from mmzoo.train.config import load_config
from mmzoo.train.loop import run_training


def _train(ws, name: str, monkeypatch, tuned: bool, zero_stage: int = 0, **train) -> tuple[dict[str, torch.Tensor], dict, int]:
    """Train in process; the trainable weights at the end, the summary and how many gradient buckets DeepSpeed's
    engine all-reduced."""
    import deepspeed.runtime.engine as ds_engine

    reduced = []
    original = ds_engine.DeepSpeedEngine.allreduce_bucket

    def counting(self, bucket, *args, **kwargs):
        reduced.append(sum(t.numel() for t in bucket))
        return original(self, bucket, *args, **kwargs)

    monkeypatch.setattr(ds_engine.DeepSpeedEngine, "allreduce_bucket", counting)
    if not tuned:
        monkeypatch.setattr(engine_tuning, "tune_engine", lambda engine, world: [])
    weights = {}

    def keep(engine, summary):
        weights.update({k: p.detach().clone() for k, p in engine.module.named_parameters() if p.requires_grad})

    cfg = load_config(ws.write(name, train={"max_steps": 3, "precision": "bf16", "lr": 5e-3, "lr_scheduler": "constant",
                                            "save_every": 100, **train}, deepspeed={"zero_stage": zero_stage}))
    summary = run_training(cfg, on_finish=keep)
    monkeypatch.undo()
    return weights, summary, len(reduced)


def test_one_process_bf16_run_skips_the_identity_allreduce_and_trains_the_same_weights(ws, monkeypatch):
    # micro batch 2, global batch 4: two micro batches a step, so gradients accumulate as in real runs
    plain, plain_summary, plain_buckets = _train(ws, "untuned", monkeypatch, tuned=False)
    tuned, summary, buckets = _train(ws, "tuned", monkeypatch, tuned=True)
    assert plain_summary["engine_tuning"] == [] and plain_buckets >= 3  # DeepSpeed reduces every step by itself
    assert buckets == 0
    assert summary["engine_tuning"] == ["no all-reduce of the gradients over one process",
                                        "one host synchronisation for the inf/NaN check of all gradients"]
    assert plain.keys() == tuned.keys() and len(tuned) > 10
    assert all(torch.equal(plain[k], tuned[k]) for k in plain)
    assert summary["last"]["loss"] == plain_summary["last"]["loss"]


def test_batched_overflow_check_answers_as_deepspeeds_per_tensor_check():
    from deepspeed.runtime.utils import CheckOverflow

    def params(*grads):
        out = []
        for grad in grads:
            p = torch.nn.Parameter(torch.zeros_like(grad) if grad is not None else torch.zeros(3))
            p.grad = grad
            out.append(p)
        return out

    cases = [
        params(torch.ones(4, dtype=torch.bfloat16), torch.full((2, 3), -2.0)),
        params(torch.ones(4), torch.tensor([1.0, math.inf])),
        params(torch.tensor([-math.inf, 0.0]), torch.ones(2)),
        params(torch.ones(3, dtype=torch.bfloat16), torch.tensor([0.0, math.nan], dtype=torch.bfloat16)),
        params(None, torch.zeros(0), torch.ones(2)),  # no gradient, an empty one
        params(None),
        params(torch.tensor([3.0e38, -3.0e38])),  # large but finite
    ]
    checker = CheckOverflow()
    for case in cases:
        assert engine_tuning.has_overflow_batched(checker, case) == checker.has_overflow_serial(case)
    assert [engine_tuning.has_overflow_batched(checker, c) for c in cases] == [False, True, True, True, False, False,
                                                                                False]


def test_zero_optimizers_keep_their_own_reduction(ws, monkeypatch):
    """ZeRO-1/2/3 optimizers move gradients into their partitions while reducing them (their own hooks): even over
    one process their engines keep DeepSpeed's reduction path (and they check for overflow their own way)."""
    _, summary, _ = _train(ws, "tuned-zero2", monkeypatch, tuned=True, zero_stage=2, max_steps=1)
    assert summary["zero_stage"] == 2 and summary["engine_tuning"] == []
