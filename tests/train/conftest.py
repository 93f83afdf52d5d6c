"""Tiny real models and real `mmzoo preprocess` output for the training tests (built once per session)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from train_helpers import TwoProcessRuns

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



@dataclass
class Workspace:
    root: Path
    hf: Path
    moe: Path
    images: Path
    data: Path

    def config(self, name: str, **sections) -> dict:
        cfg = {
            "stage": "sft", "model": str(self.hf),
            "data": {"path": str(self.data), "images": str(self.images)},
            "train": {"max_steps": 3, "micro_batch_size": 2, "global_batch_size": 4, "lr": 1e-3, "precision": "fp32",
                      "warmup_ratio": 0.0, "save_every": 2, "seed": 0},
            "deepspeed": {"zero_stage": 2},
            "output_dir": str(self.root / "runs" / name),
        }
        for key, value in sections.items():
            if isinstance(value, dict):
                cfg[key] = {**cfg.get(key, {}), **value}
            else:
                cfg[key] = value
        return cfg

    def write(self, name: str, **sections) -> Path:
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(self.config(name, **sections)))
        return path


@pytest.fixture(scope="session")
def ws(tmp_path_factory) -> Workspace:
    from mmzoo.converters.pipeline import convert
    from mmzoo.demo.tiny import build_llava, make_caption_dataset

    root = tmp_path_factory.mktemp("train")
    hf = root / "hf"
    build_llava(hf)
    images, data = make_caption_dataset(root, hf)
    moe = root / "moe"
    convert(hf, moe, tgt_fmt="internal", moe=dict(num_experts=4, top_k=2, style="modality", layers="all",
                                                    router_aux_loss_coef=0.01, vision_aux_loss_coef=0.02))
    return Workspace(root, hf, moe, images, data)



@pytest.fixture(scope="session")
def two_process_runs(ws) -> TwoProcessRuns:
    """The shared 2-process run of each ZeRO stage (train_helpers.TwoProcessRuns), trained on first use."""
    return TwoProcessRuns(ws)
