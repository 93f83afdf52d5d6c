"""`mmzoo train` logs the routing statistics at log points and writes the routing plots when asked."""
from __future__ import annotations

import json

import pytest
from PIL import Image


def training_config(ws, name: str, **train):
    from mmzoo.train.config import load_config

    return load_config(data={
        "stage": "moe", "model": str(ws.moe("moiie")),
        "data": {"path": str(ws.data), "images": str(ws.images)},
        "train": {"max_steps": 2, "micro_batch_size": 2, "global_batch_size": 4, "lr": 1e-3, "precision": "fp32",
                  "warmup_ratio": 0.0, "save_every": 2, "seed": 0, **train},
        "deepspeed": {"zero_stage": 0},
        "output_dir": str(ws.root / "runs" / name),
    })


def test_training_logs_routing_and_writes_the_plots(ws):
    from mmzoo import read_checkpoint
    from mmzoo.train.loop import run_training

    cfg = training_config(ws, "routing", routing_plots=True, log_every=1)
    run_training(cfg)
    records = [json.loads(line) for line in (cfg.output_dir / "metrics.jsonl").read_text().splitlines()]
    assignment = read_checkpoint(ws.moe("moiie")).spec.moe["modality_experts"]
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        assert set(record["expert_load"]) == set(record["router_entropy"]) == {"text.0", "text.1"}
        for layer, entropy in record["router_entropy"].items():
            assert 0 < entropy < 1.7918  # ln 6
            split = record["expert_load_by_modality"][layer]
            assert sum(split["image"]) == pytest.approx(1, abs=1e-3) and sum(split["text"]) == pytest.approx(1, abs=1e-3)
            assert all(split["text"][e] == 0 for e in assignment["image"])  # MoIIE's split, as routed in training
            assert all(split["image"][e] == 0 for e in assignment["text"])

    routing = cfg.output_dir / "routing"
    report = json.loads((routing / "routing.json").read_text())
    assert report["steps"] == {"from": 1, "to": 2} and report["layer_overlap"] is None
    assert sorted(report["plots"]) == ["entropy.png", "expert_load.png", "modality_load.png"]
    num_image_tokens = json.loads((ws.data / "manifest.json").read_text())["parameters"]["num_image_tokens"]
    for layer, stats in report["layers"].items():
        # every sample holds one image: 2 steps × 4 samples, each image's tokens routed once per step
        assert stats["tokens"]["image"] == 2 * 4 * num_image_tokens
        assert stats["assignments"] == 2 * (stats["tokens"]["image"] + stats["tokens"]["text"])
        # the whole run's image load is the step-weighted mean of the logged windows' (same token count each)
        logged = [r["expert_load_by_modality"][layer]["image"] for r in records]
        assert stats["load_by_modality"]["image"] == pytest.approx([sum(x) / 2 for x in zip(*logged)], abs=1e-4)
    for name in report["plots"]:
        with Image.open(routing / name) as image:
            assert image.format == "PNG" and image.size[0] >= 480


def test_routing_plots_need_an_moe_model(ws):
    from mmzoo.errors import ConfigError
    from mmzoo.train.config import load_config
    from mmzoo.train.loop import run_training

    cfg = training_config(ws, "dense-routing", routing_plots=True)
    cfg = load_config(data={**cfg.dump(), "model": str(ws.dense), "stage": "sft"})
    with pytest.raises(ConfigError, match="routing_plots needs an MoE model"):
        run_training(cfg)
