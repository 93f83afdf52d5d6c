"""A LibMoE checkpoint continues training under ``mmzoo train``: a shrunk MoE++ layout (experts in every vision
layer and the projector, as LibMoE's sft.sh trains them) converted to hf trains with its losses logged, the loss
falls, and the run exports back to the libmoe layout with the engine's logits."""
from __future__ import annotations

import json
import os

import torch
from libmoe_layout import build_libmoe
from moe_training import train_moe_briefly

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def test_converted_libmoe_checkpoint_continues_training_and_exports_back(tmp_path, hub_cache):
    from mmzoo import convert, load_model, read_checkpoint
    from mmzoo.demo.tiny import make_caption_dataset
    from mmzoo.train.export import export

    src = build_libmoe(tmp_path / "libmoe", moe_name="smoe_plus_plus", dtype="float32")
    hf = tmp_path / "hf"
    convert(src, hf, tgt_fmt="hf")  # adds the <image> token LibMoE's own code does without
    images, data = make_caption_dataset(tmp_path, hf)
    run = train_moe_briefly(hf, hf, images, data, tmp_path)
    cfg, rows, probe = run["cfg"], run["rows"], run["probe"]
    assert [r["step"] for r in rows] == list(range(1, 9))
    for r in rows:
        assert r["aux_loss"] > 0 and abs(r["loss"] - r["lm_loss"] - r["aux_loss"]) < 1e-5
        assert set(r["expert_load"]) == {"vision.0", "vision.1", "vision.2", "projector"}
    losses = [r["loss"] for r in rows]
    assert min(losses[4:]) < losses[0] - 0.5, losses

    out = tmp_path / "exported"
    export(cfg.output_dir, out, tgt_fmt="libmoe")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llava_phi" and config["moe_name"] == "smoe_plus_plus" and config["num_experts"] == 4
    back = read_checkpoint(out)
    assert back.format == "libmoe" and back.spec.moe["router"] == "moepp"
    with torch.no_grad():
        logits = load_model(out).eval()(**probe).logits
    assert torch.allclose(logits, run["engine_logits"], atol=1e-5, rtol=0), float((logits - run["engine_logits"]).abs().max())
