"""Config validation (one clear line, exit 2), --set overrides, stage freeze rules, launch commands."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from cli_helpers import cli_error as _cli_error

from mmzoo.errors import ConfigError
from mmzoo.train.config import load_config, parse_overrides
from mmzoo.train.launch import build_command, choose_launcher

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_unknown_key_is_one_line_naming_key_and_allowed_values(ws, tmp_path, capsys):
    cfg = ws.config("bad")
    cfg["train"]["learning_rate"] = 1e-3
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    line = _cli_error(capsys, "train", "--params", str(path))
    assert "train.learning_rate" in line and "max_steps" in line and "micro_batch_size" in line


def test_bad_value_names_key_and_allowed_values(ws, tmp_path, capsys):
    path = ws.write("bad2")
    line = _cli_error(capsys, "train", "--params", str(path), "--set", "train.precision=bf32")
    assert "train.precision" in line and "bf16" in line and "fp32" in line
    line = _cli_error(capsys, "train", "--params", str(path), "--set", "deepspeed.zero_stage=4")
    assert "deepspeed.zero_stage" in line and "0, 1, 2, 3" in line
    line = _cli_error(capsys, "train", "--params", str(path), "--set", "stage=finetune")
    assert "stage" in line and "pretrain" in line and "moe" in line
    line = _cli_error(capsys, "train", "--params", str(path), "--set", "train.global_batch_size=5")
    assert "global_batch_size" in line
    line = _cli_error(capsys, "train", "--params", str(path), "--set", "train.attn_implementation=flash_attention_2")
    assert "flash_attention_2 needs precision bf16 or fp16" in line


def test_gpu_only_settings_are_one_line_on_cpu(ws, capsys, monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    path = ws.write("gpu-only")
    line = _cli_error(capsys, "train", "--params", str(path), "--set", "train.precision=fp16")
    assert line == "mmzoo: error: train.precision fp16 needs a GPU (allowed on CPU: bf16, fp32)"
    assert not (ws.root / "runs" / "gpu-only").exists()  # refused before anything was written


def test_set_overrides_nested_keys_with_yaml_values(ws):
    cfg = load_config(ws.write("ovr"), ["train.lr=1e-4", "deepspeed.zero_stage=3", "train.freeze=['^projector\\.']",
                                        "moe.vision_aux_loss_coef=0.05"])
    assert cfg.train.lr == 1e-4 and cfg.deepspeed.zero_stage == 3 and cfg.train.freeze == ["^projector\\."]
    assert cfg.moe.vision_aux_loss_coef == 0.05
    assert parse_overrides(["a.b.c=x", "a.d=2"]) == {"a": {"b": {"c": "x"}, "d": 2}}
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["novalue"])
    with pytest.raises(ConfigError, match="exactly one of max_steps or epochs"):
        load_config(ws.write("both"), ["train.epochs=1"])


def test_stage_defaults_and_rules_on_canonical_names(ws):
    from mmzoo.converters.pipeline import read_checkpoint
    from mmzoo.train.names import canonical_names, memory_layout
    from mmzoo.train.stages import select_trainable

    ckpt = read_checkpoint(ws.hf)
    layout = memory_layout(ckpt)
    names = list(layout)

    def trainable(stage, freeze=None, train_only=()):
        verdict = select_trainable(names, layout, stage, freeze, list(train_only))
        return {canonical_names(layout, n)[0].split(".")[0] for n, v in verdict.items() if v}

    assert trainable("pretrain") == {"projector"}
    assert trainable("sft") == {"projector", "text_model"}
    assert trainable("sft", freeze=[]) == {"projector", "text_model", "image_model"}
    assert trainable("sft", train_only=[r"^text_model\.model\.layers\.1\."]) == {"text_model"}
    with pytest.raises(ConfigError, match=r"train.freeze\[0\].*matches no parameter"):
        select_trainable(names, layout, "sft", ["^vision_tower\\."], [])
    with pytest.raises(ConfigError, match="no trainable parameter"):
        select_trainable(names, layout, "sft", ["."], [])


def test_moe_stage_trains_experts_and_routers(ws):
    from mmzoo.converters.pipeline import read_checkpoint
    from mmzoo.train.names import canonical_names, memory_layout
    from mmzoo.train.stages import select_trainable

    layout = memory_layout(read_checkpoint(ws.moe))
    verdict = select_trainable(list(layout), layout, "moe", None, [])
    routers = [n for n in verdict if n.endswith("mlp.gate.weight")]
    experts = [n for n in verdict if ".mlp.experts." in n]
    assert routers and experts and all(verdict[n] for n in routers + experts)
    assert not any(v for n, v in verdict.items() if canonical_names(layout, n)[0].startswith("image_model."))


def test_launch_commands():
    params = Path("runs/x/params.yaml")
    assert choose_launcher(1) == "inprocess"
    assert choose_launcher(2) == "torchrun"
    assert choose_launcher(8, num_nodes=2) == "deepspeed"
    cmd = build_command(params, nproc=2, master_port=29555)
    assert cmd == [sys.executable, "-m", "mmzoo.train.torchrun", "--nnodes", "1", "--nproc_per_node", "2",
                   "--master_addr", "127.0.0.1", "--master_port", "29555", "-m", "mmzoo.train.worker",
                   "--params", str(params), "--resume", "auto"]
    cmd = build_command(params, nproc=8, hostfile=Path("/job/hostfile"), num_nodes=4, master_addr="10.0.0.1",
                        master_port=29500, resume="never")
    assert cmd == [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", "/job/hostfile", "--num_nodes", "4",
                   "--num_gpus", "8", "--master_addr", "10.0.0.1", "--master_port", "29500",
                   "--module", "mmzoo.train.worker", "--params", str(params), "--resume", "never"]
    with pytest.raises(ConfigError, match="--node-rank"):
        choose_launcher(2, hostfile=Path("h"), launcher="torchrun")


def test_per_node_launch_commands():
    params = Path("runs/x/params.yaml")
    assert choose_launcher(8, num_nodes=4, node_rank=3, master_addr="n0") == "torchrun"
    assert choose_launcher(8, hostfile=Path("h"), node_rank=1, master_addr="n0") == "deepspeed"
    cmd = build_command(params, nproc=8, num_nodes=4, node_rank=3, master_addr="10.0.0.1", master_port=29500)
    assert cmd == [sys.executable, "-m", "mmzoo.train.torchrun", "--nnodes", "4", "--node_rank", "3",
                   "--nproc_per_node", "8", "--master_addr", "10.0.0.1", "--master_port", "29500",
                   "-m", "mmzoo.train.worker", "--params", str(params), "--resume", "auto"]
    cmd = build_command(params, nproc=8, hostfile=Path("/job/hosts"), node_rank=1, master_addr="10.0.0.1")
    assert cmd == [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", "/job/hosts", "--no_ssh",
                   "--node_rank", "1", "--num_gpus", "8", "--master_addr", "10.0.0.1",
                   "--module", "mmzoo.train.worker", "--params", str(params), "--resume", "auto"]
    bad = [
        (dict(num_nodes=2, node_rank=0), "--master-addr"),
        (dict(node_rank=0, master_addr="n0"), "--num-nodes"),
        (dict(num_nodes=2, node_rank=2, master_addr="n0"), "out of range"),
        (dict(num_nodes=2, node_rank=-1, master_addr="n0"), ">= 0"),
        (dict(node_rank=0, master_addr="n0", launcher="deepspeed"), "--hostfile"),
        (dict(hostfile=Path("h"), node_rank=0, master_addr="n0", launcher="torchrun"), "--num-nodes instead"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ConfigError, match=message):
            choose_launcher(8, **kwargs)


def test_print_command_from_cli(ws, capsys):
    from mmzoo.cli import main

    main(["train", "--params", str(ws.write("pc")), "--nproc", "4", "--hostfile", "hosts", "--num-nodes", "2",
          "--master-addr", "node0", "--print-command"])
    out = capsys.readouterr().out
    assert "deepspeed.launcher.runner --hostfile hosts --num_nodes 2 --num_gpus 4 --master_addr node0" in out
    main(["train", "--params", str(ws.write("pc")), "--nproc", "1", "--num-nodes", "2", "--node-rank", "1",
          "--master-addr", "node0", "--print-command"])
    assert "mmzoo.train.torchrun --nnodes 2 --node_rank 1 --nproc_per_node 1 --master_addr node0" in capsys.readouterr().out
    line = _cli_error(capsys, "train", "--params", str(ws.write("pc")), "--num-nodes", "2", "--node-rank", "1")
    assert "--node-rank needs --master-addr" in line


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.stage in ("pretrain", "sft", "moe", "distill", "preference")


def test_data_that_does_not_fit_the_model_is_one_line(ws, tmp_path, capsys):
    """Data preprocessed for another vision tower or tokenizer fails before training, not in the first forward."""
    import json
    import shutil

    from mmzoo.preprocess import preprocess

    other = tmp_path / "data-9"
    preprocess([ws.root / "data.json"], ws.images, ws.hf, other, template="plain", num_image_tokens=9, max_seq_len=128)
    line = _cli_error(capsys, "train", "--params", str(ws.write("fit1", data={"path": str(other)})))
    assert "9 tokens per image" in line and "makes 16" in line and "--model" in line

    renamed = tmp_path / "hf-other-image-token"
    shutil.copytree(ws.hf, renamed)
    config = json.loads((renamed / "config.json").read_text())
    config["image_token_index"] = 7
    (renamed / "config.json").write_text(json.dumps(config))
    line = _cli_error(capsys, "train", "--params", str(ws.write("fit2", model=str(renamed))))
    assert "token id 320" in line and "image token is 7" in line


def test_stage_and_data_template_mismatch_is_a_warning(ws, capsys):
    from mmzoo.cli import main

    main(["train", "--params", str(ws.write("tmpl", train={"max_steps": 1}))])  # sft on plain caption data
    assert "warning: stage sft usually trains on conversations" in capsys.readouterr().out
