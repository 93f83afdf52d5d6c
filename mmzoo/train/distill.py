"""``stage: distill`` — LLaVA-MoD's mimic distillation: a frozen teacher's next-token distributions teach the student.

The loss follows LLaVA-MoD's ``AlignTrainer`` (llavamod/train/align_trainer.py):

- both logits are cut to the tokenizer's real vocabulary (LLaVA-MoD hard-codes ``[:, :, :151936]``; the
  padded embedding rows past it differ between Qwen2-0.5B and Qwen2-7B and mean nothing);
- the student's log-probabilities and the teacher's probabilities are taken in float32, and the per-position
  term is ``Σ_v p_teacher(v) · log p_student(v)``;
- the mask is taken on the *unshifted* labels, as LLaVA-MoD does: a position counts when its own label is a
  response token (``labels != -100``), or, with ``all_tokens``, every real (non-pad) position;
- the loss is the masked mean over positions.

mmzoo reports the forward KL ``Σ p_t (log p_t − log p_s)`` instead of LLaVA-MoD's cross-entropy
``−Σ p_t log p_s``: the two differ by the teacher's entropy, which does not depend on the student, so the
gradients are identical, and the KL is 0 when the student matches its teacher (a loss a user can read).
``temperature`` T softens both distributions (Hinton et al.) and scales the loss by T² so the gradient size
does not depend on T; T = 1 (the default) is LLaVA-MoD's loss. ``only_kd``: loss = kd_coef · KD;
``kd_lm``: loss = kd_coef · KD + the language-model loss (plus the MoE aux loss either way).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError

IGNORE_INDEX = -100


def distill_mask(labels, attention_mask, all_tokens: bool):
    """Which positions the KD loss averages over (see the module docstring: unshifted, like LLaVA-MoD)."""
    import torch

    if all_tokens:
        # LLaVA-MoD uses ones_like(labels), which also counts padding; mmzoo keeps to the real tokens
        return attention_mask.bool() if attention_mask is not None else torch.ones_like(labels, dtype=torch.bool)
    return labels != IGNORE_INDEX


def kd_loss(student_logits, teacher_logits, mask, *, vocab: int, temperature: float = 1.0):
    """Masked mean over positions of T² · KL(teacher_T ‖ student_T), in float32, over the first ``vocab`` logits."""
    import torch
    import torch.nn.functional as F

    s = student_logits[..., :vocab].float() / temperature
    t = teacher_logits[..., :vocab].float() / temperature
    log_s = F.log_softmax(s, dim=-1)
    log_t = F.log_softmax(t, dim=-1)
    p_t = log_t.exp()
    # LLaVA-MoD masks -inf student log-probs (a 0 · -inf) to 0; the teacher's side needs the same guard
    term = torch.where(p_t > 0, p_t * (log_t - log_s), torch.zeros_like(p_t))
    per_position = term.sum(dim=-1)
    weight = mask.to(per_position.dtype)
    count = weight.sum()
    return (per_position * weight).sum() / count.clamp(min=1) * temperature ** 2


def combine(kd, lm_loss, cfg_distill) -> Any:
    """The training loss of one micro batch (before the MoE aux loss)."""
    scaled = cfg_distill.kd_coef * kd
    return scaled if cfg_distill.loss == "only_kd" else scaled + lm_loss


def real_vocabulary(student: Path, teacher: Path, roles: tuple[str, str] = ("student", "teacher")) -> int:
    """The shared tokenizer's size; one line when teacher and student tokenize differently."""
    from ..models.load import load_processor

    return shared_vocabulary(load_processor(student).tokenizer, load_processor(teacher).tokenizer, teacher, roles)


def shared_vocabulary(student_tok, teacher_tok, teacher: Path | None = None,
                      roles: tuple[str, str] = ("student", "teacher")) -> int:
    """``len(tokenizer)`` when both tokenizers map every token to the same id (added tokens included)."""
    s_vocab, t_vocab = student_tok.get_vocab(), teacher_tok.get_vocab()
    if s_vocab != t_vocab:
        differing = sorted(set(s_vocab.items()) ^ set(t_vocab.items()), key=lambda kv: kv[1])
        example = f" (e.g. {differing[0][0]!r} → {differing[0][1]})" if differing else ""
        raise ConfigError(f"the {roles[1]}'s tokenizer differs from the {roles[0]}'s ({len(t_vocab):,} vs "
                          f"{len(s_vocab):,} tokens{example}); {'distillation' if roles[1] == 'teacher' else 'preference training'}"
                          " compares the two models token by token, so both must use the same tokenizer", path=teacher)
    return len(student_tok)


class Teacher:
    """The frozen teacher: eval mode, no gradients, in the run's precision; under ZeRO-3 partitioned by DeepSpeed
    as an inference model (no optimizer), so a teacher larger than one device still fits."""

    def __init__(self, cfg, student_model, float_dtype, ds_config: dict[str, Any], device):
        from .frozen import load_frozen

        self.cfg = cfg.distill
        self.metric_names = ("kd_loss",)
        self.vocab = real_vocabulary(cfg.model, cfg.teacher)
        self.model = load_frozen(cfg.teacher, cfg, float_dtype, ds_config, device)
        module = getattr(self.model, "module", self.model)
        # from the configs: under ZeRO-3 the student's weights are already partitioned (empty on this rank)
        for name, rows in (("student", student_model.config.get_text_config().vocab_size),
                           ("teacher", module.config.get_text_config().vocab_size)):
            if rows < self.vocab:
                raise ConfigError(f"the {name} has {rows:,} output rows, fewer than the tokenizer's {self.vocab:,} tokens",
                                  path=cfg.teacher if name == "teacher" else cfg.model)

    def logits(self, batch: dict[str, Any]):
        import torch

        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            return self.model(**inputs).logits

    def loss(self, output, batch: dict[str, Any], lm_loss):
        """(training loss before aux, [kd loss]) for a student ``output`` on ``batch``."""
        teacher_logits = self.logits(batch)
        mask = distill_mask(batch["labels"], batch.get("attention_mask"), self.cfg.all_tokens)
        kd = kd_loss(output.logits, teacher_logits, mask, vocab=self.vocab, temperature=self.cfg.temperature)
        return combine(kd, lm_loss, self.cfg), kd.detach().reshape(1)

