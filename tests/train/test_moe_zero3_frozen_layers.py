"""Regression: under ZeRO-3, an MoE model whose layers before a trained MoE block are all frozen (LLaVA-MoD's
``--train_modules`` = the MLPs only) crashed at the first backward ("The size of tensor a (0) must match the size
of tensor b …"): DeepSpeed reduced the block's experts in its full backward hook, which PyTorch fires before the
block's own backward when no input of the block requires a gradient (mmzoo.train.moe.leaf_inputs_require_grad)."""
from __future__ import annotations

import pytest

from train_helpers import metrics
from mmzoo.train.config import load_config

ONLY_MLPS = [r"^text_model\.model\.layers\.\d+\.mlp\."]


@pytest.fixture(scope="module")
def mixtral(ws):
    from mmzoo.converters.pipeline import convert

    path = ws.root / "moe-mixtral"
    if not path.is_dir():
        convert(ws.hf, path, tgt_fmt="internal", moe=dict(num_experts=4, top_k=2, style="mixtral", layers="all"))
    return path


@pytest.mark.parametrize("style", ["mixtral", "modality"])
def test_trained_moe_blocks_after_frozen_layers_under_zero3_match_zero2(ws, mixtral, style):
    from mmzoo.train.loop import run_training

    model = mixtral if style == "mixtral" else ws.moe
    rows = {}
    for zero in (2, 3):
        cfg = load_config(data=ws.config(f"frozen-attn-{style}-z{zero}", stage="moe", model=str(model),
                                         deepspeed={"zero_stage": zero},
                                         data={"num_workers": 0},
                                         train={"max_steps": 2, "save_every": 2, "train_only": ONLY_MLPS}))
        summary = run_training(cfg)
        assert 0 < summary["trainable_parameters"] < summary["parameters"]
        rows[zero] = metrics(cfg.output_dir)
    # the same training: step 2's loss depends on step 1's gradients of every expert
    for a, b in zip(rows[2], rows[3]):
        assert a["step"] == b["step"] and a["aux_loss"] > 0
        for key in ("loss", "lm_loss", "aux_loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a, b)
