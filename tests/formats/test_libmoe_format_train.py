"""A LibMoE checkpoint continues training under ``mmzoo train``: a shrunk MoE++ layout (experts in every vision
layer and the projector, as LibMoE's sft.sh trains them) converted to hf trains with its losses logged, the loss
falls, and the run exports back to the libmoe layout with the engine's logits."""
from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from libmoe_layout import build_libmoe, use_hub_cache_with_siglip

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    return use_hub_cache_with_siglip(tmp_path / "hub-cache", monkeypatch)


def test_converted_libmoe_checkpoint_continues_training_and_exports_back(tmp_path, hub_cache):
    from mmzoo import convert, load_model, read_checkpoint
    from mmzoo.models.load import load_processor
    from mmzoo.preprocess import Collator, H5Dataset
    from mmzoo.demo.tiny import make_caption_dataset
    from mmzoo.train.config import load_config
    from mmzoo.train.export import export
    from mmzoo.train.loop import run_training

    src = build_libmoe(tmp_path / "libmoe", moe_name="smoe_plus_plus", dtype="float32")
    hf = tmp_path / "hf"
    convert(src, hf, tgt_fmt="hf")  # adds the <image> token LibMoE's own code does without
    images, data = make_caption_dataset(tmp_path, hf)
    cfg_path = tmp_path / "libmoe.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "stage": "moe", "model": str(hf), "data": {"path": str(data), "images": str(images)},
        "train": {"max_steps": 8, "micro_batch_size": 2, "global_batch_size": 4, "lr": 5e-3, "precision": "fp32",
                  "warmup_ratio": 0.0, "lr_scheduler": "constant", "save_every": 8, "seed": 0},
        "deepspeed": {"zero_stage": 2}, "output_dir": str(tmp_path / "run"),
    }))
    cfg = load_config(cfg_path)
    dataset = H5Dataset(data, images, load_processor(hf).image_processor)
    batch = Collator(dataset.pad_token_id)([dataset[0], dataset[3]])
    probe = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    seen = {}

    def on_finish(engine, summary):
        engine.module.eval()
        with torch.no_grad():
            seen["logits"] = engine(**probe).logits.float()

    run_training(cfg, on_finish=on_finish)
    rows = [json.loads(line) for line in (cfg.output_dir / "metrics.jsonl").read_text().splitlines()]
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
    assert torch.allclose(logits, seen["logits"], atol=1e-5, rtol=0), float((logits - seen["logits"]).abs().max())
