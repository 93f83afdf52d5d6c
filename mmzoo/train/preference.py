"""LLaVA-MoD's preference-distillation losses (llavamod/train/dpo_trainer.py): DPO ``sigmoid`` and ``kto_pair``.

The policy is the sparse student, the reference the dense teacher (run without gradients). A response's
log-probability is the sum over its response tokens of log p(token) with the usual causal shift (logits at t
score the label at t + 1), as LLaVA-MoD's ``get_logp`` does (``average_log_prob`` False). Rewards are
β · (log π − log π_ref), detached; accuracy is the share of pairs whose chosen reward beats the rejected one.

These are the loss building blocks; ``stage: preference`` (pair data, the training loop) is not wired yet —
see docs/train.md.
"""
from __future__ import annotations

from typing import Any

IGNORE_INDEX = -100
LOSSES = ("sigmoid", "kto_pair")


def sequence_logps(logits, labels):
    """Σ over response tokens of log p(label) per sequence, in float32 (labels unshifted, -100 = not scored)."""
    import torch

    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :].float()
    mask = labels != IGNORE_INDEX
    labels[~mask] = 0  # a dummy index; masked out below
    per_token = torch.gather(logits.log_softmax(-1), dim=2, index=labels.unsqueeze(2)).squeeze(2)
    return (per_token * mask).sum(-1)


def preference_loss(kind: str, beta: float, policy_chosen, policy_rejected, reference_chosen, reference_rejected,
                    label_smoothing: float = 0.0):
    """(per-example losses, chosen rewards, rejected rewards), exactly LLaVA-MoD's ``dpo_loss``.

    sigmoid (DPO, Rafailov et al. eq. 7): −log σ(β·((π_c − π_r) − (ref_c − ref_r))), with cDPO label smoothing.
    kto_pair (HALOs eq. 7, as TRL 0.7 – 0.8 implement it): the KL of each half is estimated from the other half,
    ``z_c = clamp(mean(π_c − ref_c), 0)``; losses are 1 − σ(β(Δ_c − z_r)) for chosen and 1 − σ(β(z_c − Δ_r)) for
    rejected, concatenated (2 × batch values).
    """
    import torch
    import torch.nn.functional as F

    if kind == "sigmoid":
        logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
        losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
                  - F.logsigmoid(-beta * logits) * label_smoothing)
    elif kind == "kto_pair":
        chosen_kl = (policy_chosen - reference_chosen).mean().clamp(min=0)
        rejected_kl = (policy_rejected - reference_rejected).mean().clamp(min=0)
        chosen_logratios = policy_chosen - reference_chosen
        rejected_logratios = policy_rejected - reference_rejected
        losses = torch.cat((1 - F.sigmoid(beta * (chosen_logratios - rejected_kl)),
                            1 - F.sigmoid(beta * (chosen_kl - rejected_logratios))), 0)
    else:
        raise ValueError(f"unknown preference loss {kind!r} (allowed: {', '.join(LOSSES)})")
    chosen_rewards = beta * (policy_chosen - reference_chosen).detach()
    rejected_rewards = beta * (policy_rejected - reference_rejected).detach()
    return losses, chosen_rewards, rejected_rewards


def reward_metrics(chosen_rewards, rejected_rewards) -> dict[str, Any]:
    """The metrics LLaVA-MoD logs, as plain floats: rewards/chosen, rewards/rejected, accuracy and margin."""
    return {
        "rewards/chosen": float(chosen_rewards.mean()),
        "rewards/rejected": float(rejected_rewards.mean()),
        "rewards/accuracies": float((chosen_rewards > rejected_rewards).float().mean()),
        "rewards/margins": float((chosen_rewards - rejected_rewards).mean()),
    }
