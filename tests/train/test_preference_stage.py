"""``stage: preference`` (LLaVA-MoD's preference distillation): the stage's loss against hand-computed log-probs,
precomputed reference log-probs, the margin rising on a tiny overfit set (dense and MoE policies), ZeRO-3 with a
reference on two processes, exact resume and export, and one-line refusals."""
from __future__ import annotations

import math
import shutil

import pytest
import torch

from train_helpers import metrics, run_mmzoo
from mmzoo.errors import ConfigError
from mmzoo.train.config import load_config
from mmzoo.train.preference import CACHE, METRICS, Reference, preference_loss


@pytest.fixture(scope="module")
def pairs(ws):
    """Eight RLAIF-V-style pairs over the workspace's images (chosen: the image's caption), preprocessed."""
    from mmzoo.demo.tiny import make_preference_dataset

    folder = ws.root / "preference"
    folder.mkdir(exist_ok=True)
    if not (folder / "pairs" / "manifest.json").is_file():
        make_preference_dataset(folder, ws.hf, pairs=8, images=ws.images)
    return folder / "pairs"


@pytest.fixture(scope="module")
def reference_seed1(ws):
    from mmzoo.models.load import load_processor
    from mmzoo.demo.tiny import build_llava

    path = ws.root / "reference-seed1"
    if not path.is_dir():
        build_llava(path, seed=1, tokenizer=load_processor(ws.hf).tokenizer)
    return path


def _config(ws, pairs, name, **sections):
    base = ws.config(name, stage="preference", data={"path": str(pairs), "images": str(ws.images), "num_workers": 0})
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


def _hand_logps(logits, labels):
    """Σ over scored positions of log p(label), position by position with logsumexp (labels unshifted)."""
    out = []
    for b in range(labels.shape[0]):
        total = 0.0
        for t in range(labels.shape[1] - 1):
            label = int(labels[b, t + 1])
            if label != -100:
                row = logits[b, t].double()
                total += float(row[label] - torch.logsumexp(row, 0))
        out.append(total)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("loss, smoothing", [("sigmoid", 0.0), ("sigmoid", 0.2), ("kto_pair", 0.0)])
def test_the_stage_loss_equals_the_formulas_on_hand_computed_logps(ws, pairs, reference_seed1, loss, smoothing):
    from mmzoo.models.load import load_model
    from mmzoo.train.data import TrainData

    cfg = load_config(data=_config(ws, pairs, "pref-fixed", reference=str(reference_seed1),
                                   preference={"loss": loss, "beta": 0.3, "label_smoothing": smoothing}))
    data = TrainData(pairs, ws.images, ws.hf, 0)
    assert len(data) == 8 and data.pairs
    batch = data.batch([0, 5, 2])
    assert batch["input_ids"].shape[0] == 6  # 3 chosen rows, then 3 rejected rows
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels")}
    policy = load_model(ws.hf)
    output = policy(**inputs)
    reference = Reference(cfg, policy, torch.float32, {}, torch.device("cpu"))
    assert not reference.model.training and not any(p.requires_grad for p in reference.model.parameters())
    objective, stats = reference.loss(output, {**inputs, "pair_indices": batch["pair_indices"]}, output.loss)

    with torch.no_grad():
        ref_logits = load_model(reference_seed1)(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    policy_logps = _hand_logps(output.logits.detach(), batch["labels"])
    ref_logps = _hand_logps(ref_logits, batch["labels"])
    pc, pr, rc, rr = policy_logps[:3], policy_logps[3:], ref_logps[:3], ref_logps[3:]
    losses, chosen, rejected = preference_loss(loss, 0.3, pc, pr, rc, rr, smoothing)
    assert float(objective.detach()) == pytest.approx(float(losses.mean()), rel=1e-5, abs=1e-6)
    expected = [float(chosen.mean()), float(rejected.mean()), float((chosen > rejected).double().mean()),
                float((chosen - rejected).mean())]
    assert [float(v) for v in stats] == pytest.approx(expected, rel=1e-4, abs=1e-6)
    # the published formula, written out for the first pair
    logit = (pc[0] - pr[0]) - (rc[0] - rr[0])
    if loss == "sigmoid":
        by_hand = -(1 - smoothing) * math.log(1 / (1 + math.exp(-0.3 * logit))) \
            - smoothing * math.log(1 / (1 + math.exp(0.3 * logit)))
        assert float(losses[0]) == pytest.approx(by_hand, rel=1e-6)
    objective.backward()  # the policy learns; the reference has no gradient
    assert any(p.grad is not None for p in policy.parameters())


def test_precomputed_reference_logps_equal_the_on_the_fly_ones(ws, pairs, reference_seed1, tmp_path):
    from mmzoo.models.load import load_model
    from mmzoo.train.data import TrainData

    cfg = load_config(data=_config(ws, pairs, "pref-pre", reference=str(reference_seed1), train={"micro_batch_size": 3}))
    data = TrainData(pairs, ws.images, ws.hf, 0)
    live = Reference(cfg, load_model(ws.hf), torch.float32, {}, torch.device("cpu"))
    pre = Reference(cfg, load_model(ws.hf), torch.float32, {}, torch.device("cpu"))
    pre.precompute(data, tmp_path, rank=0, world=1)
    assert (tmp_path / CACHE).is_file() and pre.cached[0].shape == (8,)
    for indices in ([0, 1], [7, 3, 4], [6]):  # other batch compositions than the precomputation's
        batch = data.batch(indices)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels")}
        on_the_fly = live.logps(inputs)
        cached = pre.logps({**inputs, "pair_indices": batch["pair_indices"]})
        for a, b in zip(on_the_fly, cached):
            assert torch.allclose(a.float(), b, atol=1e-4, rtol=1e-6), (a, b)
    # the cache is reused when nothing it depends on changed, and recomputed when the precision did
    again = Reference(cfg, load_model(ws.hf), torch.float32, {}, torch.device("cpu"))
    stamp = (tmp_path / CACHE).stat().st_mtime_ns
    again.precompute(data, tmp_path, rank=0, world=1)
    assert (tmp_path / CACHE).stat().st_mtime_ns == stamp and torch.equal(again.cached[0], pre.cached[0])
    bf16 = load_config(data={**cfg.dump(), "train": {**cfg.dump()["train"], "precision": "bf16"}})
    other = Reference(bf16, load_model(ws.hf), torch.bfloat16, {}, torch.device("cpu"))
    other.precompute(data, tmp_path, rank=0, world=1)
    assert (tmp_path / CACHE).stat().st_mtime_ns != stamp


def test_dpo_raises_the_margin_resumes_exactly_and_exports(ws, pairs, tmp_path):
    """Dense policy, reference = its starting weights (the default), precomputed: the margin rises, resume is exact."""
    from transformers import LlavaForConditionalGeneration

    from mmzoo.train.export import export
    from mmzoo.train.loop import run_training

    cfg = load_config(data=_config(ws, pairs, "pref-dense", preference={"loss": "sigmoid", "beta": 0.5,
                                                                          "precompute_reference": True},
                                   train={"max_steps": 6, "save_every": 3, "lr": 3e-3, "lr_scheduler": "constant",
                                          "micro_batch_size": 2, "global_batch_size": 4}))
    run_training(cfg)
    rows = metrics(cfg.output_dir)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert rows[0]["rewards/margins"] == 0 and rows[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)  # policy = reference
    assert all(set(METRICS) <= set(r) for r in rows)
    assert rows[-1]["rewards/margins"] > 0.05 and rows[-1]["rewards/accuracies"] >= 0.75, rows
    assert rows[-1]["loss"] < math.log(2)
    cache = cfg.output_dir / CACHE
    stamp = cache.stat().st_mtime_ns

    out = tmp_path / "policy"
    assert export(cfg.output_dir, out, tgt_fmt="hf")["step"] == 6
    before = LlavaForConditionalGeneration.from_pretrained(str(ws.hf)).state_dict()
    after = LlavaForConditionalGeneration.from_pretrained(str(out)).state_dict()
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])

    resumed = ws.root / "runs" / "pref-dense-resumed"
    shutil.copytree(cfg.output_dir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000006")
    summary = run_training(load_config(data={**cfg.dump(), "output_dir": str(resumed)}), resume="auto")
    assert summary["start_step"] == 3
    keys = ("step", "loss", "lm_loss", "lr", "tokens", *METRICS)
    assert [[r[k] for k in keys] for r in metrics(resumed)] == [[r[k] for k in keys] for r in rows]
    assert (resumed / CACHE).stat().st_mtime_ns == stamp  # the copied cache was read, not recomputed


def test_kto_pair_raises_the_margin_of_an_moe_policy(ws, pairs):
    from mmzoo.train.loop import run_training

    cfg = load_config(data=_config(ws, pairs, "pref-moe", model=str(ws.moe), preference={"loss": "kto_pair", "beta": 0.5},
                                   train={"max_steps": 4, "save_every": 4, "lr": 3e-3, "lr_scheduler": "constant",
                                          "global_batch_size": 2}))
    run_training(cfg)
    rows = metrics(cfg.output_dir)
    assert rows[0]["rewards/margins"] == 0
    assert rows[-1]["rewards/margins"] > 0.05, rows
    for r in rows:  # the router aux loss joins the preference loss; expert load is logged
        assert r["aux_loss"] > 0 and set(r["expert_load"]) == {"text.0", "text.1"}
        assert r["loss"] > r["aux_loss"]


def test_moe_policy_with_a_dense_reference_under_zero3_two_processes(ws, pairs):
    """LLaVA-MoD's setting: sparse policy, dense reference (a ZeRO-3 inference engine), two processes: no hang."""
    params = ws.root / "pref-moe-z3.yaml"
    import yaml

    params.write_text(yaml.safe_dump(_config(ws, pairs, "pref-moe-z3", model=str(ws.moe), reference=str(ws.hf),
                                             preference={"loss": "kto_pair", "precompute_reference": True},
                                             deepspeed={"zero_stage": 3},
                                             train={"max_steps": 2, "save_every": 2, "micro_batch_size": 1})))
    proc = run_mmzoo("train", "--params", str(params), "--nproc", "2", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics(ws.root / "runs" / "pref-moe-z3")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["aux_loss"] > 0 and math.isfinite(r["rewards/margins"]) and set(r["expert_load"]) == {"text.0", "text.1"}
    assert (ws.root / "runs" / "pref-moe-z3" / CACHE).is_file()


def test_refusals(ws, pairs, tmp_path, capsys):
    from mmzoo.demo.tiny import build_llava, make_tokenizer
    from mmzoo.train.preflight import preflight

    base = {"model": "m", "data": {"path": "d", "images": "i"}, "output_dir": "o"}
    with pytest.raises(ConfigError, match="reference: is used by stage preference only"):
        load_config(data={**base, "stage": "sft", "reference": "r"})
    with pytest.raises(ConfigError, match=r"preference\.loss.*sigmoid"):
        load_config(data={**base, "stage": "preference", "preference": {"loss": "ipo"}})
    with pytest.raises(ConfigError, match="label_smoothing applies to loss sigmoid only"):
        load_config(data={**base, "stage": "preference", "preference": {"loss": "kto_pair", "label_smoothing": 0.1}})
    with pytest.raises(ConfigError, match=r"preference\.beta"):
        load_config(data={**base, "stage": "preference", "preference": {"beta": 0}})
    with pytest.raises(ConfigError, match="cannot train on conversations"):
        preflight(load_config(data=ws.config("pref-conv", stage="preference")), resume="auto", world=1)
    with pytest.raises(ConfigError, match="stage sft cannot train on preference pairs"):
        preflight(load_config(data=_config(ws, pairs, "sft-pairs", stage="sft")), resume="auto", world=1)
    with pytest.raises(ConfigError, match="reference checkpoint not found"):
        preflight(load_config(data=_config(ws, pairs, "pref-nowhere", reference=str(tmp_path / "nowhere"))),
                  resume="auto", world=1)
    other = tmp_path / "other-vocab"
    build_llava(other, seed=1, tokenizer=make_tokenizer(vocab_size=300))
    params = ws.root / "pref-vocab.yaml"
    import yaml

    params.write_text(yaml.safe_dump(_config(ws, pairs, "pref-vocab", reference=str(other))))
    from cli_helpers import cli_error

    capsys.readouterr()  # build_llava's progress bars
    line = cli_error(capsys, "train", "--params", str(params))  # exit code 2, one line on stderr
    assert line.startswith("mmzoo: error:") and "reference's tokenizer differs" in line, line
