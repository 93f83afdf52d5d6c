"""LibMoE's SMoE, XMoE, sigmoid-gating, SharedE-V2, SharedE-V3, TC-MoE and MoE++ routers train under ``mmzoo train``: their loss (balance + z-loss) is the logged aux loss,
the loss falls, the routers move, and the exported hf folder (mmzoo's remote code) gives the engine's logits."""
from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from moe_training import train_moe_briefly

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module", params=["smoe", "xmoe", "sigmoid", "sharede_v2", "sharede_v3", "tcmoe", "moepp"])
def libmoe_run(request, tmp_path_factory):
    from mmzoo import convert
    from mmzoo.demo.tiny import build_llava, make_caption_dataset

    router = request.param
    root = tmp_path_factory.mktemp(f"{router}-train")
    hf = root / "hf"
    build_llava(hf)
    images, data = make_caption_dataset(root, hf)
    moe = root / router
    convert(hf, moe, tgt_fmt="internal", moe=dict(num_experts=4, top_k=2, router=router, layers="all", style="shared" if router.startswith("sharede") else "mixtral",
                                                    targets=["text", "projector"]))
    return dict(train_moe_briefly(moe, hf, images, data, root), moe=moe, router=router)


def test_libmoe_router_trains_with_its_losses_logged(libmoe_run):
    rows = libmoe_run["rows"]
    assert [r["step"] for r in rows] == list(range(1, 9))
    for r in rows:
        assert r["aux_loss"] > 0 and abs(r["loss"] - r["lm_loss"] - r["aux_loss"]) < 1e-5
        assert r["aux_loss"] < 1
        assert set(r["expert_load"]) == {"text.0", "text.1", "projector"}
    losses = [r["loss"] for r in rows]
    assert min(losses[4:]) < losses[0] - 0.5, losses  # a tiny overfit set at lr 5e-3: the loss falls clearly


def test_libmoe_export_reloads_with_the_engines_logits(libmoe_run, tmp_path):
    from transformers import AutoModelForImageTextToText

    from mmzoo import read_checkpoint
    from mmzoo.io.tensors import materialize
    from mmzoo.train.export import export

    out = tmp_path / f"{libmoe_run['router']}-hf"
    export(libmoe_run["cfg"].output_dir, out, tgt_fmt="hf")
    assert json.loads((out / "config.json").read_text())["text_config"]["mmzoo_moe"]["router"] == libmoe_run["router"]
    model = AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(**libmoe_run["probe"]).logits
    assert torch.allclose(logits, libmoe_run["engine_logits"], atol=1e-5, rtol=0), float((logits - libmoe_run["engine_logits"]).abs().max())
    router = "text_model.model.layers.0.mlp." + ("gate.inp_reduction.weight" if libmoe_run["router"] == "xmoe" else "gate.weight")
    trained, start = read_checkpoint(out), read_checkpoint(libmoe_run["moe"])
    assert trained.spec.moe["router"] == libmoe_run["router"]
    assert not torch.equal(materialize(trained.tensors[router]), materialize(start.tensors[router]))



def test_moe_section_overrides_the_libmoe_coefficients(libmoe_run, tmp_path):
    """`moe: {router_aux_loss_coef, router_z_loss_coef}` in the training config replace the layout's weights."""
    from mmzoo.train.config import load_config
    from mmzoo.train.loop import run_training

    cfg_path = tmp_path / "coefs.yaml"
    base = yaml.safe_load(libmoe_run["cfg_path"].read_text())
    aux = {}
    for name, coefs in (("off", (0.0, 0.0)), ("z", (0.0, 0.5))):
        cfg = {**base, "output_dir": str(tmp_path / name), "train": {**base["train"], "max_steps": 1},
               "moe": {"router_aux_loss_coef": coefs[0], "router_z_loss_coef": coefs[1]}}
        cfg_path.write_text(yaml.safe_dump(cfg))
        run_training(load_config(cfg_path))
        aux[name] = json.loads((tmp_path / name / "metrics.jsonl").read_text().splitlines()[0])["aux_loss"]
    if libmoe_run["router"] == "tcmoe":  # its null-routing reward stays (LibMoE's fixed 1e-5)
        assert abs(aux["off"]) < 1e-4
    else:
        assert aux["off"] == 0
    assert aux["z"] > 0.1  # 0.5 * mean(logsumexp(scores)^2) per block
