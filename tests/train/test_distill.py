"""``stage: distill`` (LLaVA-MoD's mimic distillation): the KD loss against a hand computation and LLaVA-MoD's
own formula, a student equal to its teacher, a student that learns, the vocabulary check, MoE under ZeRO-3."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from train_helpers import metrics, run_mmzoo
from mmzoo.errors import ConfigError
from mmzoo.train.config import DistillSection, load_config
from mmzoo.train.distill import combine, distill_mask, kd_loss, real_vocabulary

# fixed batch: 2 sequences × 3 positions; the tokenizer has 4 tokens, the student 6 logit rows, the teacher 5
# (padded embedding rows, like Qwen2-0.5B's 151 936 vs Qwen2-7B's 152 064): only the first 4 may count
STUDENT = torch.tensor([[[1.0, 0.0, -1.0, 2.0, 9.0, 9.0], [0.5, 0.5, 0.0, -0.5, -9.0, 3.0], [2.0, 1.0, 0.0, 1.0, 5.0, 5.0]],
                        [[0.0, 0.0, 0.0, 0.0, 1.0, 1.0], [-1.0, 3.0, 0.5, 0.0, 2.0, 2.0], [1.5, -0.5, 0.0, 2.5, 0.0, 7.0]]])
TEACHER = torch.tensor([[[0.0, 1.0, -2.0, 1.0, -4.0], [1.0, 0.0, 0.0, 0.0, 8.0], [0.0, 0.0, 3.0, 1.0, 1.0]],
                        [[2.0, -1.0, 0.0, 0.5, 6.0], [0.0, 2.0, 1.0, -1.0, 0.0], [1.0, 1.0, 1.0, 1.0, -3.0]]])
LABELS = torch.tensor([[-100, 3, 2], [-100, -100, 1]])  # unshifted, as LLaVA-MoD masks them
ATTENTION = torch.tensor([[1, 1, 1], [0, 1, 1]])  # the second sequence is left-padded
VOCAB = 4


def _hand_kd(positions, temperature):
    """Σ_v p_t (log p_t − log p_s) per position with math only, averaged, times T²."""
    total = 0.0
    for b, i in positions:
        s = [float(x) / temperature for x in STUDENT[b, i, :VOCAB]]
        t = [float(x) / temperature for x in TEACHER[b, i, :VOCAB]]
        zs, zt = math.log(sum(math.exp(x) for x in s)), math.log(sum(math.exp(x) for x in t))
        total += sum(math.exp(tv - zt) * ((tv - zt) - (sv - zs)) for sv, tv in zip(s, t))
    return total / len(positions) * temperature ** 2


@pytest.mark.parametrize("all_tokens", [False, True])
@pytest.mark.parametrize("loss", ["only_kd", "kd_lm"])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_loss_equals_a_hand_computation(loss, all_tokens, temperature):
    cfg = DistillSection(loss=loss, kd_coef=0.7, temperature=temperature, all_tokens=all_tokens)
    mask = distill_mask(LABELS, ATTENTION, all_tokens)
    kd = kd_loss(STUDENT, TEACHER, mask, vocab=VOCAB, temperature=temperature)
    # response-only: the positions whose own label is a response token; all tokens: every non-pad position
    positions = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2)] if all_tokens else [(0, 1), (0, 2), (1, 2)]
    expected = _hand_kd(positions, temperature)
    assert float(kd) == pytest.approx(expected, rel=1e-6, abs=1e-7)
    lm = torch.tensor(1.25)
    total = combine(kd, lm, cfg)
    assert float(total) == pytest.approx(0.7 * expected + (1.25 if loss == "kd_lm" else 0.0), rel=1e-6)


def test_gradient_equals_llava_mods_cross_entropy():
    """LLaVA-MoD's align loss −Σ p_t log p_s differs from mmzoo's KL by the teacher's entropy only: same gradient."""
    student = STUDENT.clone().requires_grad_(True)
    mask = distill_mask(LABELS, ATTENTION, False)
    ours = kd_loss(student, TEACHER, mask, vocab=VOCAB)
    (grad_ours,) = torch.autograd.grad(ours, student)

    student2 = STUDENT.clone().requires_grad_(True)
    # align_trainer.py compute_align_loss, with the vocabulary cut of get_p / get_logp
    policy_logprobs = torch.nn.functional.log_softmax(student2[:, :, :VOCAB], dim=-1, dtype=torch.float32)
    reference_probs = torch.nn.functional.softmax(TEACHER[:, :, :VOCAB], dim=-1, dtype=torch.float32)
    prod = torch.masked_fill(reference_probs * policy_logprobs, torch.isinf(policy_logprobs), 0)
    x = torch.sum(prod, dim=-1).view(-1)
    loss_mask = (LABELS != -100).int()
    theirs = -torch.sum(x * loss_mask.view(-1), dim=0) / torch.sum(loss_mask.view(-1), dim=0)
    (grad_theirs,) = torch.autograd.grad(theirs, student2)

    assert torch.allclose(grad_ours, grad_theirs, atol=1e-7, rtol=0)
    assert grad_ours[..., VOCAB:].abs().max() == 0  # padded rows never learn from the teacher
    entropy = -(reference_probs * reference_probs.log()).sum(-1).view(-1)
    assert float((theirs - ours).detach()) == pytest.approx(float((entropy * loss_mask.view(-1)).sum() / loss_mask.sum()), rel=1e-6)


def _probe_batch(ws):
    from mmzoo.models.load import load_processor
    from mmzoo.preprocess import Collator, H5Dataset

    dataset = H5Dataset(ws.data, ws.images, load_processor(ws.hf).image_processor)
    batch = Collator(dataset.pad_token_id)([dataset[0], dataset[3]])
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "labels")}


@pytest.mark.parametrize("all_tokens", [False, True])
def test_a_student_identical_to_its_teacher_has_zero_loss_and_gradient(ws, all_tokens):
    from mmzoo.models.load import load_model

    student, teacher = load_model(ws.hf), load_model(ws.hf)
    batch = _probe_batch(ws)
    out = student(**batch)
    with torch.no_grad():
        t_logits = teacher(**{k: v for k, v in batch.items() if k != "labels"}).logits
    mask = distill_mask(batch["labels"], batch["attention_mask"], all_tokens)
    assert mask.sum() > 0
    kd = kd_loss(out.logits, t_logits, mask, vocab=real_vocabulary(ws.hf, ws.hf))
    assert abs(float(kd)) < 1e-6
    kd.backward()
    grads = [p.grad.abs().max() for p in student.parameters() if p.grad is not None]
    assert grads and max(float(g) for g in grads) < 1e-6


@pytest.fixture(scope="module")
def teachers(ws):
    """A teacher from another seed (same tokenizer), one with padded embedding rows, one with another tokenizer."""
    from transformers import LlavaForConditionalGeneration

    from mmzoo.models.load import load_processor
    from mmzoo.demo.tiny import build_llava, make_tokenizer

    other_seed = ws.root / "teacher-seed1"
    build_llava(other_seed, seed=1, tokenizer=load_processor(ws.hf).tokenizer)
    padded = ws.root / "teacher-padded"
    model = LlavaForConditionalGeneration.from_pretrained(str(ws.hf))
    real = model.config.text_config.vocab_size
    model.resize_token_embeddings(real + 12, mean_resizing=False)  # like Qwen2-7B's rows past the tokenizer
    with torch.no_grad():
        model.lm_head.weight[real:].normal_(0, 5.0)  # rows that would change the KD loss were they counted
    model.save_pretrained(padded)
    for f in ws.hf.iterdir():
        if f.suffix in (".json", ".jinja", ".txt", ".model") and not (padded / f.name).exists():
            shutil.copy(f, padded / f.name)
    other_vocab = ws.root / "teacher-vocab"
    build_llava(other_vocab, seed=1, tokenizer=make_tokenizer(vocab_size=300))
    return {"seed1": other_seed, "padded": padded, "vocab": other_vocab}


def test_padded_teacher_rows_are_ignored_and_identical_student_stays(ws, teachers):
    """Student == teacher on the real vocabulary (the teacher has 12 extra random rows): KD loss and gradient 0."""
    cfg = load_config(data=ws.config("distill-same", stage="distill", teacher=str(teachers["padded"]),
                                     distill={"loss": "only_kd"}, train={"max_steps": 1, "save_every": 1}))
    from mmzoo.train.loop import run_training

    run_training(cfg)
    # one step: Adam would turn the float noise of a zero gradient (~1e-8) into a full-size update at step 2
    for r in metrics(cfg.output_dir):
        assert abs(r["kd_loss"]) < 1e-6 and abs(r["loss"]) < 1e-6 and r["grad_norm"] < 1e-6, r
        assert r["lm_loss"] > 1.0  # logged even when only the KD term trains


def test_kd_loss_falls_and_the_student_exports(ws, teachers, tmp_path):
    from transformers import LlavaForConditionalGeneration

    from mmzoo.train.export import export
    from mmzoo.train.loop import run_training

    cfg = load_config(data=ws.config("distill-falls", stage="distill", teacher=str(teachers["seed1"]),
                                     distill={"loss": "only_kd", "temperature": 1.0},
                                     train={"max_steps": 8, "save_every": 4, "lr": 5e-3, "lr_scheduler": "constant"}))
    run_training(cfg)
    rows = metrics(cfg.output_dir)
    assert [r["step"] for r in rows] == list(range(1, 9))
    kd = [r["kd_loss"] for r in rows]
    assert kd[0] > 0.01 and kd[-1] < 0.5 * kd[0], kd  # random tiny models: near-uniform outputs, small KL
    for r in rows:
        assert r["loss"] == pytest.approx(r["kd_loss"], rel=1e-6)  # only_kd, kd_coef 1, dense: no aux
    out = tmp_path / "student"
    assert export(cfg.output_dir, out, tgt_fmt="hf")["step"] == 8
    before = LlavaForConditionalGeneration.from_pretrained(str(ws.hf)).state_dict()
    after = LlavaForConditionalGeneration.from_pretrained(str(out)).state_dict()
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])
    vision = [k for k in before if "vision_tower" in k]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)  # the stage default keeps it frozen

    # exact resume: as if the run died after saving step 4 (the teacher is reloaded, not checkpointed)
    resumed = ws.root / "runs" / "distill-falls-resumed"
    shutil.copytree(cfg.output_dir, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_0000008")
    summary = run_training(load_config(data={**cfg.dump(), "output_dir": str(resumed)}), resume="auto")
    assert summary["start_step"] == 4
    keys = ("step", "loss", "kd_loss", "lm_loss", "lr", "tokens")
    assert [[r[k] for k in keys] for r in metrics(resumed)] == [[r[k] for k in keys] for r in rows]


def test_a_teacher_with_another_vocabulary_is_refused_in_one_line(ws, teachers, capsys):
    from cli_helpers import cli_error

    params = ws.write("distill-vocab", stage="distill", teacher=str(teachers["vocab"]))
    line = cli_error(capsys, "train", "--params", str(params))  # exit code 2, one line on stderr
    assert line.startswith("mmzoo: error:") and "tokenizer differs" in line, line
    assert not (ws.root / "runs" / "distill-vocab").exists()
    with pytest.raises(ConfigError, match="tokenizer differs"):
        real_vocabulary(ws.hf, teachers["vocab"])


def test_config_rules():
    base = {"model": "m", "data": {"path": "d", "images": "i"}, "output_dir": "o"}
    with pytest.raises(ConfigError, match="stage distill needs teacher"):
        load_config(data={**base, "stage": "distill"})
    with pytest.raises(ConfigError, match="teacher: is used by stage distill only"):
        load_config(data={**base, "stage": "sft", "teacher": "t"})
    with pytest.raises(ConfigError, match=r"distill\.loss.*only_kd"):
        load_config(data={**base, "stage": "distill", "teacher": "t", "distill": {"loss": "kl"}})
    with pytest.raises(ConfigError, match=r"distill\.temperature"):
        load_config(data={**base, "stage": "distill", "teacher": "t", "distill": {"temperature": 0}})
    with pytest.raises(ConfigError, match="cross_entropy plain"):
        load_config(data={**base, "stage": "distill", "teacher": "t", "train": {"max_steps": 1, "cross_entropy": "chunked"}})


def test_moe_student_with_a_dense_teacher_under_zero3_two_processes(ws, teachers):
    """LLaVA-MoD's dense→sparse step: the upcycled student, kd_lm, aux loss, ZeRO-3 over 2 processes (no hang)."""
    params = ws.write("distill-moe-z3", stage="distill", model=str(ws.moe), teacher=str(teachers["seed1"]),
                      distill={"loss": "kd_lm", "kd_coef": 0.5}, deepspeed={"zero_stage": 3},
                      train={"max_steps": 2, "save_every": 2})
    proc = run_mmzoo("train", "--params", str(params), "--nproc", "2", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = metrics(ws.root / "runs" / "distill-moe-z3")
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["aux_loss"] > 0 and r["kd_loss"] > 0 and set(r["expert_load"]) == {"text.0", "text.1"}
        assert r["loss"] == pytest.approx(0.5 * r["kd_loss"] + r["lm_loss"] + r["aux_loss"], rel=1e-5)


def test_the_teacher_is_frozen_in_eval_mode_in_the_runs_precision(ws, teachers):
    from mmzoo.models.load import load_model
    from mmzoo.train.distill import Teacher

    cfg = load_config(data=ws.config("distill-teacher", stage="distill", teacher=str(teachers["padded"]),
                                     train={"max_steps": 1, "precision": "bf16"}))
    teacher = Teacher(cfg, load_model(ws.hf), torch.bfloat16, {}, torch.device("cpu"))
    params = list(teacher.model.parameters())
    assert params and all(p.dtype == torch.bfloat16 and not p.requires_grad for p in params)
    assert not teacher.model.training and teacher.vocab == real_vocabulary(ws.hf, ws.hf)
    batch = _probe_batch(ws)
    batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
    logits = teacher.logits(batch)
    assert logits.dtype == torch.bfloat16 and logits.shape[-1] == teacher.vocab + 12 and logits.grad_fn is None


@pytest.mark.parametrize("zero", [0, 2])
def test_bf16_distillation_runs(ws, teachers, zero):
    from mmzoo.train.loop import run_training

    cfg = load_config(data=ws.config(f"distill-bf16-z{zero}", stage="distill", teacher=str(teachers["seed1"]),
                                     deepspeed={"zero_stage": zero},
                                     train={"max_steps": 2, "precision": "bf16", "save_every": 2}))
    run_training(cfg)
    for r in metrics(cfg.output_dir):
        assert math.isfinite(r["loss"]) and r["kd_loss"] > 0
        assert r["loss"] == pytest.approx(r["kd_loss"] + r["lm_loss"], rel=1e-3)  # kd_lm, kd_coef 1


def test_a_missing_teacher_is_one_error_before_training(ws, tmp_path):
    from mmzoo.train.preflight import preflight

    cfg = load_config(data=ws.config("distill-missing", stage="distill", teacher=str(tmp_path / "nowhere")))
    with pytest.raises(ConfigError, match="teacher checkpoint not found"):
        preflight(cfg, resume="auto", world=1)


def test_the_shipped_configs_train_only_rule_on_an_moe_student(ws, teachers):
    """LLaVA-MoD's --train_modules (the LLM's MLPs: experts and routers in an MoE student), ZeRO-2 as shipped."""
    from mmzoo.train.loop import run_training

    shipped = Path(__file__).resolve().parents[2] / "configs" / "llava-mod-distill-d2s.yaml"
    rule = load_config(shipped).train.train_only
    cfg = load_config(data=ws.config("distill-moe-z2", stage="distill", model=str(ws.moe), teacher=str(teachers["seed1"]),
                                     train={"max_steps": 1, "save_every": 1, "train_only": rule}))
    summary = run_training(cfg)
    assert 0 < summary["trainable_parameters"] < summary["parameters"]
    (r,) = metrics(cfg.output_dir)
    assert r["aux_loss"] > 0 and r["kd_loss"] > 0


def test_an_moe_teacher_under_zero3_is_partitioned_and_matches_an_identical_student(ws):
    """A sparse teacher (REF_MODEL_TYPE sparse) as a DeepSpeed ZeRO-3 inference engine on 2 processes, its MoE blocks
    leaf modules: a student equal to it has zero KD loss at the first step."""
    params = ws.write("distill-moe-teacher-z3", stage="distill", model=str(ws.moe), teacher=str(ws.moe),
                      distill={"loss": "only_kd"}, deepspeed={"zero_stage": 3}, train={"max_steps": 1, "save_every": 1})
    proc = run_mmzoo("train", "--params", str(params), "--nproc", "2", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (r,) = metrics(ws.root / "runs" / "distill-moe-teacher-z3")
    assert abs(r["kd_loss"]) < 1e-6 and r["aux_loss"] > 0


def test_real_qwen2_and_llama3_tokenizers():
    """LLaVA-MoD's case: Qwen2-0.5B (151 936 embedding rows) and Qwen2-7B (152 064) share Qwen2's tokenizer of
    151 646 tokens — compared on that, not on the padded rows; a Llama-3 teacher is refused."""
    from transformers import AutoTokenizer

    from mmzoo.train.distill import shared_vocabulary

    import real_tokenizers

    qwen_a = AutoTokenizer.from_pretrained(str(real_tokenizers.qwen2()))
    qwen_b = AutoTokenizer.from_pretrained(str(real_tokenizers.qwen2()))
    vocab = shared_vocabulary(qwen_a, qwen_b)
    assert vocab == 151_646 and vocab < 151_936 < 152_064
    llama3 = AutoTokenizer.from_pretrained(str(real_tokenizers.llama3()))
    with pytest.raises(ConfigError, match=r"tokenizer differs from the student's \(128,256 vs 151,646 tokens"):
        shared_vocabulary(qwen_a, llama3)
    qwen_b.add_special_tokens({"additional_special_tokens": ["<image>"]})  # one added token is another vocabulary
    with pytest.raises(ConfigError, match="'<image>' → 151646"):
        shared_vocabulary(qwen_a, qwen_b)
