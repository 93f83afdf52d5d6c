"""A short MoE training run shared by the LibMoE tests (tests/upcycle, tests/formats): 8 steps of `stage: moe` on
the tiny caption data, with the engine's logits on a fixed probe batch taken when the run ends."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def train_moe_briefly(model: Path, processor_from: Path, images: Path, data: Path, root: Path) -> dict[str, Any]:
    """Train ``model`` (run folder ``root/run``); returns cfg, its yaml, the metrics rows, the probe batch and its logits."""
    import torch

    from mmzoo.models.load import load_processor
    from mmzoo.preprocess import Collator, H5Dataset
    from mmzoo.train.config import load_config
    from mmzoo.train.loop import run_training

    cfg_path = root / "train.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "stage": "moe", "model": str(model), "data": {"path": str(data), "images": str(images)},
        "train": {"max_steps": 8, "micro_batch_size": 2, "global_batch_size": 4, "lr": 5e-3, "precision": "fp32",
                  "warmup_ratio": 0.0, "lr_scheduler": "constant", "save_every": 8, "seed": 0},
        "deepspeed": {"zero_stage": 2}, "output_dir": str(root / "run"),
    }))
    cfg = load_config(cfg_path)
    dataset = H5Dataset(data, images, load_processor(processor_from).image_processor)
    batch = Collator(dataset.pad_token_id)([dataset[0], dataset[3]])
    probe = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    seen = {}

    def on_finish(engine, summary):
        engine.module.eval()
        with torch.no_grad():
            seen["logits"] = engine(**probe).logits.float()

    run_training(cfg, on_finish=on_finish)
    rows = [json.loads(line) for line in (cfg.output_dir / "metrics.jsonl").read_text().splitlines()]
    return dict(cfg=cfg, cfg_path=cfg_path, rows=rows, probe=probe, engine_logits=seen["logits"])
