"""Single-process DeepSpeed runs (in process): loss falls, freeze rules hold bitwise, export equals the
engine, an upcycled MoE model trains with its aux loss and expert load logged."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import LlavaForConditionalGeneration

from train_helpers import metrics
from mmzoo.train.config import load_config
from mmzoo.train.export import export
from mmzoo.train.loop import run_training


def _probe(ws):
    from mmzoo.preprocess import Collator, H5Dataset
    from mmzoo.models.load import load_processor

    dataset = H5Dataset(ws.data, ws.images, load_processor(ws.hf).image_processor)
    batch = Collator(dataset.pad_token_id)([dataset[0], dataset[3]])
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}


def _state(path):
    return LlavaForConditionalGeneration.from_pretrained(str(path)).state_dict()


def test_sft_loss_falls_freeze_holds_and_export_matches_engine(ws, tmp_path):
    cfg = load_config(ws.write("overfit", train={"max_steps": 10, "save_every": 5, "lr": 5e-3, "lr_scheduler": "constant"}))
    probe = _probe(ws)
    seen = {}

    def on_finish(engine, summary):
        engine.module.eval()
        with torch.no_grad():
            seen["logits"] = engine(**probe).logits.float()

    summary = run_training(cfg, on_finish=on_finish)
    assert summary["steps"] == 10 and summary["accumulation"] == 2
    rows = metrics(cfg.output_dir)
    assert [r["step"] for r in rows] == list(range(1, 11))
    losses = [r["loss"] for r in rows]
    assert losses[-1] < losses[0] - 1.0, losses  # a tiny overfit set: the loss must fall clearly
    for r in rows:
        assert set(r) >= {"step", "loss", "lm_loss", "aux_loss", "lr", "grad_norm", "tokens_per_s", "tflops"}
        # model FLOPs (exact form checked in test_flops): at least 6 per trained decoder weight per real token (the
        # LM head counts per labelled position only)
        assert r["tflops"] * 1e12 / r["tokens_per_s"] >= 6 * _llm_linear_weights(ws)
    assert (cfg.output_dir / "params.yaml").is_file()
    assert sorted(p.name for p in (cfg.output_dir / "checkpoints").glob("step_*")) == ["step_0000005", "step_0000010"]

    out = tmp_path / "exported"
    result = export(cfg.output_dir, out, tgt_fmt="hf")
    assert result["step"] == 10
    model = LlavaForConditionalGeneration.from_pretrained(str(out)).eval()
    with torch.no_grad():
        logits = model(**probe).logits
    assert torch.allclose(logits, seen["logits"], atol=1e-5, rtol=0), float((logits - seen["logits"]).abs().max())
    before, after = _state(ws.hf), model.state_dict()
    vision = [k for k in before if "vision_tower" in k]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)  # frozen: bitwise unchanged
    assert not torch.equal(before["model.language_model.layers.0.mlp.up_proj.weight"], after["model.language_model.layers.0.mlp.up_proj.weight"])
    from transformers import AutoProcessor

    assert AutoProcessor.from_pretrained(str(out)).tokenizer is not None


def _llm_linear_weights(ws) -> int:
    return sum(t.numel() for k, t in _state(ws.hf).items()
               if t.dim() == 2 and "language_model.layers" in k)


def test_pretrain_trains_only_the_projector_and_exports_every_format(ws, tmp_path):
    cfg = load_config(ws.write("pretrain", stage="pretrain", train={"max_steps": 2, "lr": None}))
    assert cfg.lr == 1e-3  # the stage default
    run_training(cfg)
    assert metrics(cfg.output_dir)[0]["lr"] == 1e-3
    from mmzoo.models.load import load_model

    paths = {}
    for fmt in ("hf", "llava", "internal"):
        paths[fmt] = tmp_path / fmt
        export(cfg.output_dir, paths[fmt], tgt_fmt=fmt)
    before, after = _state(ws.hf), _state(paths["hf"])
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("multi_modal_projector" in k for k in changed)
    probe = _probe(ws)
    with torch.no_grad():
        ref = load_model(paths["hf"])(**probe).logits
        for fmt in ("llava", "internal"):
            assert torch.equal(load_model(paths[fmt])(**probe).logits, ref)


def test_upcycled_moe_trains_with_aux_loss_and_expert_load(ws, tmp_path):
    cfg = load_config(ws.write("moe1", stage="moe", model=str(ws.moe), train={"max_steps": 2}))
    run_training(cfg)
    rows = metrics(cfg.output_dir)
    for r in rows:
        assert r["aux_loss"] > 0 and abs(r["loss"] - r["lm_loss"] - r["aux_loss"]) < 1e-5
        assert r["tflops"] is None  # routed layers: no closed form
        assert set(r["expert_load"]) == {"text.0", "text.1"}
        assert all(abs(sum(v) - 1) < 1e-3 and len(v) == 4 for v in r["expert_load"].values())
    out = tmp_path / "moe-export"
    export(cfg.output_dir, out, tgt_fmt="internal")
    from mmzoo.converters.pipeline import read_checkpoint
    from mmzoo.models.load import load_model

    ckpt = read_checkpoint(out)
    assert ckpt.spec.moe["num_experts"] == 4
    before = read_checkpoint(ws.moe)
    from mmzoo.io.tensors import materialize

    router = "text_model.model.layers.0.mlp.gate.weight"
    assert not torch.equal(materialize(ckpt.tensors[router]), materialize(before.tensors[router]))  # routers train
    model = load_model(out)
    with torch.no_grad():
        assert model(**_probe(ws)).logits.isfinite().all()


@pytest.mark.parametrize("style,layers,arch", [("mixtral", "all", "mixtral"), ("shared", "even", "qwen2_moe")])
def test_transformers_moe_blocks_train_with_aux_loss_from_router_hooks(ws, tmp_path, style, layers, arch):
    """Upcycled to a built-in transformers MoE (Mixtral / Qwen2-MoE text config): Llava drops the
    router logits, so the aux loss comes from hooks on the routers; it must be there and train them."""
    from mmzoo.converters.pipeline import convert, read_checkpoint
    from mmzoo.io.tensors import materialize

    moe_hf = tmp_path / f"moe-{style}"
    convert(ws.hf, moe_hf, tgt_fmt="hf", moe=dict(num_experts=4, top_k=2, style=style, layers=layers, router_aux_loss_coef=0.01))
    assert read_checkpoint(moe_hf).spec.text_type == arch
    cfg = load_config(ws.write(f"moe-{style}", stage="moe", model=str(moe_hf), train={"max_steps": 2}))
    run_training(cfg)
    rows = metrics(cfg.output_dir)
    moe_layers = {"text.0", "text.1"} if layers == "all" else {"text.0"}
    for r in rows:
        assert r["aux_loss"] > 0 and abs(r["loss"] - r["lm_loss"] - r["aux_loss"]) < 1e-5
        assert r["tflops"] is None  # routed layers: no closed form
        assert set(r["expert_load"]) == moe_layers
        assert all(abs(sum(v) - 1) < 1e-3 and len(v) == 4 for v in r["expert_load"].values())
    out = tmp_path / f"export-{style}"
    export(cfg.output_dir, out, tgt_fmt="hf")
    router = "text_model.model.layers.0.mlp.gate.weight"
    trained, start = read_checkpoint(out), read_checkpoint(moe_hf)
    assert trained.spec.text_type == arch
    assert not torch.equal(materialize(trained.tensors[router]), materialize(start.tensors[router]))


def test_bf16_training_runs_and_exports(ws, tmp_path):
    """precision: bf16 (what GPUs train with) also runs on DeepSpeed's CPU accelerator."""
    cfg = load_config(ws.write("bf16", train={"max_steps": 3, "precision": "bf16", "lr": 5e-3, "lr_scheduler": "constant"}))
    run_training(cfg)
    rows = metrics(cfg.output_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    out = tmp_path / "bf16-hf"
    export(cfg.output_dir, out, tgt_fmt="hf", dtype="bf16")
    model = LlavaForConditionalGeneration.from_pretrained(str(out))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    with torch.no_grad():
        assert model.eval()(**_probe(ws)).logits.isfinite().all()


def test_data_workers_read_the_same_batches(ws):
    """Micro batches prepared ahead by DataLoader workers are the ones the training process would read."""
    rows = {}
    for workers in (0, 2):
        cfg = load_config(ws.write(f"workers{workers}", data={"num_workers": workers}, train={"max_steps": 3}))
        run_training(cfg)
        rows[workers] = [(r["step"], r["loss"], r["tokens"], r["grad_norm"]) for r in metrics(cfg.output_dir)]
    assert rows[0] == rows[2] and len(rows[0]) == 3


@pytest.mark.parametrize("stage", ["sft", "pretrain", "moe"])
def test_gradient_checkpointing_gives_the_same_training(ws, stage):
    """Recomputing activations in backward changes memory, not the numbers (fp32: up to reduction order);
    moe: an upcycled model, whose routers run again in the recomputation."""
    model = {"model": str(ws.moe)} if stage == "moe" else {}
    rows, active = {}, {}
    for checkpointing in (False, True):
        cfg = load_config(ws.write(f"gc-{stage}-{checkpointing}", stage=stage, **model,
                                   train={"max_steps": 3, "gradient_checkpointing": checkpointing}))
        run_training(cfg, on_finish=lambda engine, _: active.setdefault(checkpointing, engine.module.is_gradient_checkpointing))
        rows[checkpointing] = metrics(cfg.output_dir)
    assert active == {False: False, True: True}
    for plain, recomputed in zip(rows[False], rows[True]):
        assert recomputed["loss"] == pytest.approx(plain["loss"], rel=1e-6)
        assert recomputed["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-5) and plain["grad_norm"] > 0
        if stage == "moe":
            assert recomputed["aux_loss"] == pytest.approx(plain["aux_loss"], rel=1e-6) and plain["aux_loss"] > 0
            assert recomputed["expert_load"] == plain["expert_load"]


def test_offload_epochs_retention_and_overrides(ws):
    """ZeRO-2 with the optimizer offloaded, and ZeRO-3 with parameters and optimizer offloaded, train like
    ZeRO-2; `epochs` sets the step count from the data size; keep_checkpoints prunes old steps;
    deepspeed.overrides reach the engine."""
    plain = load_config(ws.write("off-plain", train={"max_steps": 2}))
    run_training(plain)
    offloaded = load_config(ws.write("off-cpu", train={"max_steps": 2}, deepspeed={"offload_optimizer": True}))
    flags = {}
    run_training(offloaded, on_finish=lambda engine, _: flags.update(offload=engine.zero_cpu_offload()))
    assert flags == {"offload": True}
    zero3 = load_config(ws.write("off-z3", train={"max_steps": 2},
                                 deepspeed={"zero_stage": 3, "offload_optimizer": True, "offload_param": True}))
    run_training(zero3)
    assert [r["loss"] for r in metrics(zero3.output_dir)] == pytest.approx([r["loss"] for r in metrics(plain.output_dir)], rel=1e-5)
    assert [r["loss"] for r in metrics(offloaded.output_dir)] == pytest.approx([r["loss"] for r in metrics(plain.output_dir)], rel=1e-6)

    seen = {}
    cfg = load_config(ws.write("epochs", train={"max_steps": None, "epochs": 1.5, "save_every": 1, "keep_checkpoints": 2},
                               deepspeed={"overrides": {"gradient_clipping": 0.25}}))
    summary = run_training(cfg, on_finish=lambda engine, _: seen.update(clip=engine.gradient_clipping()))
    from mmzoo.preprocess import H5Dataset

    samples = len(H5Dataset(ws.data, ws.images))
    assert summary["steps"] == -(-3 * samples // (2 * 4))  # ceil(1.5 × samples / global batch 4)
    assert sorted(p.name for p in (cfg.output_dir / "checkpoints").glob("step_*")) == \
        [f"step_{s:07d}" for s in (summary["steps"] - 1, summary["steps"])]
    assert seen["clip"] == 0.25


def test_divergence_stops_with_one_line(ws, capsys):
    """A loss that is no longer finite stops the run at once (logged, nothing saved after it)."""
    from mmzoo.cli import main

    params = ws.write("diverge", train={"max_steps": 6, "save_every": 1, "lr": 1e30, "lr_scheduler": "constant",
                                        "warmup_ratio": 0.0})
    with pytest.raises(SystemExit) as exc:
        main(["train", "--params", str(params)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training diverged" in err[0], err
    rows = metrics(ws.root / "runs" / "diverge")
    assert not math.isfinite(rows[-1]["loss"]) and all(math.isfinite(r["loss"]) for r in rows[:-1])
    saved = sorted(p.name for p in (ws.root / "runs" / "diverge" / "checkpoints").glob("step_*"))
    assert saved == [f"step_{s:07d}" for s in range(1, len(rows))]
    assert f"nothing after step {len(rows) - 1} was saved" in err[0]


def test_resume_names_changed_settings(ws, capsys):
    from mmzoo.cli import main

    params = str(ws.write("changed", train={"max_steps": 1, "save_every": 1}))
    main(["train", "--params", params])
    capsys.readouterr()
    main(["train", "--params", params, "--set", "train.max_steps=2"])  # running longer is not news
    assert "changed settings" not in capsys.readouterr().out
    main(["train", "--params", params, "--set", "train.max_steps=3", "--set", "train.lr=0.0005"])
    out = " ".join(capsys.readouterr().out.split())
    assert "resuming step 2 with changed settings: train.lr 0.001 → 0.0005 —" in out
