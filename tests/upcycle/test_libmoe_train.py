"""LibMoE's SMoE router trains under ``mmzoo train``: its loss (balance + z-loss) is the logged aux loss,
the loss falls, the routers move, and the exported hf folder (mmzoo's remote code) gives the engine's logits."""
from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def smoe_run(tmp_path_factory):
    from mmzoo import convert
    from mmzoo.tiny import build_llava, make_caption_dataset
    from mmzoo.train.config import load_config
    from mmzoo.train.loop import run_training

    root = tmp_path_factory.mktemp("smoe-train")
    hf = root / "hf"
    build_llava(hf)
    images, data = make_caption_dataset(root, hf)
    moe = root / "smoe"
    convert(hf, moe, tgt_fmt="internal", moe=dict(num_experts=4, top_k=2, router="smoe", layers="all",
                                                    targets=["text", "projector"]))
    cfg_path = root / "smoe.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "stage": "moe", "model": str(moe), "data": {"path": str(data), "images": str(images)},
        "train": {"max_steps": 8, "micro_batch_size": 2, "global_batch_size": 4, "lr": 5e-3, "precision": "fp32",
                  "warmup_ratio": 0.0, "lr_scheduler": "constant", "save_every": 8, "seed": 0},
        "deepspeed": {"zero_stage": 2}, "output_dir": str(root / "run"),
    }))
    cfg = load_config(cfg_path)
    from mmzoo.modeling import load_processor
    from mmzoo.preprocess import Collator, H5Dataset

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
    return dict(cfg=cfg, moe=moe, rows=rows, probe=probe, engine_logits=seen["logits"], root=root)


def test_smoe_trains_with_libmoe_losses_logged(smoe_run):
    rows = smoe_run["rows"]
    assert [r["step"] for r in rows] == list(range(1, 9))
    for r in rows:
        assert r["aux_loss"] > 0 and abs(r["loss"] - r["lm_loss"] - r["aux_loss"]) < 1e-5
        assert r["aux_loss"] < 1
        assert set(r["expert_load"]) == {"text.0", "text.1", "projector"}
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5, [r["loss"] for r in rows]


def test_smoe_export_reloads_with_the_engines_logits(smoe_run, tmp_path):
    from transformers import AutoModelForImageTextToText

    from mmzoo import read_checkpoint
    from mmzoo.io.tensors import materialize
    from mmzoo.train.export import export

    out = tmp_path / "smoe-hf"
    export(smoe_run["cfg"].output_dir, out, tgt_fmt="hf")
    assert json.loads((out / "config.json").read_text())["text_config"]["mmzoo_moe"]["router"] == "smoe"
    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(**smoe_run["probe"]).logits
    assert torch.allclose(logits, smoe_run["engine_logits"], atol=1e-5, rtol=0), float((logits - smoe_run["engine_logits"]).abs().max())
    router = "text_model.model.layers.0.mlp.gate.weight"
    trained, start = read_checkpoint(out), read_checkpoint(smoe_run["moe"])
    assert trained.spec.moe["router"] == "smoe"
    assert not torch.equal(materialize(trained.tensors[router]), materialize(start.tensors[router]))
