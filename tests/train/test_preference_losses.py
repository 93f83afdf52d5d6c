"""LLaVA-MoD's preference losses (mmzoo/train/preference.py) against the published formulas, computed with
``math`` on fixed log-probs, and the sequence log-probs against a per-token hand sum."""
from __future__ import annotations

import math

import pytest
import torch

from mmzoo.train.preference import preference_loss, reward_metrics, sequence_logps

PC = torch.tensor([-12.0, -30.5, -7.25, -18.0])  # policy log π(chosen)
PR = torch.tensor([-14.0, -29.0, -9.5, -18.0])  # policy log π(rejected)
RC = torch.tensor([-13.0, -31.0, -7.0, -20.0])  # reference log π_ref(chosen)
RR = torch.tensor([-13.5, -30.0, -8.0, -17.0])  # reference log π_ref(rejected)


def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_dpo_sigmoid_equals_the_published_formula(beta, smoothing):
    """DPO (Rafailov et al. 2023, eq. 7), with cDPO's label smoothing ε: −(1−ε) log σ(βh) − ε log σ(−βh)."""
    losses, chosen, rejected = preference_loss("sigmoid", beta, PC, PR, RC, RR, label_smoothing=smoothing)
    for i in range(4):
        h = (float(PC[i]) - float(RC[i])) - (float(PR[i]) - float(RR[i]))
        expected = -(1 - smoothing) * math.log(_sig(beta * h)) - smoothing * math.log(_sig(-beta * h))
        assert float(losses[i]) == pytest.approx(expected, rel=1e-6)
        assert float(chosen[i]) == pytest.approx(beta * (float(PC[i]) - float(RC[i])), rel=1e-6)
        assert float(rejected[i]) == pytest.approx(beta * (float(PR[i]) - float(RR[i])), rel=1e-6)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_kto_pair_equals_the_published_formula(beta):
    """KTO pair (HALOs, Ethayarajh et al. 2024, eq. 7; the reference point of each half from the other half)."""
    losses, _, _ = preference_loss("kto_pair", beta, PC, PR, RC, RR)
    assert losses.shape == (8,)
    z_chosen = max(0.0, sum(float(PC[i]) - float(RC[i]) for i in range(4)) / 4)
    z_rejected = max(0.0, sum(float(PR[i]) - float(RR[i]) for i in range(4)) / 4)
    for i in range(4):
        assert float(losses[i]) == pytest.approx(1 - _sig(beta * ((float(PC[i]) - float(RC[i])) - z_rejected)), rel=1e-6)
        assert float(losses[4 + i]) == pytest.approx(1 - _sig(beta * (z_chosen - (float(PR[i]) - float(RR[i])))), rel=1e-6)


def test_reward_metrics_and_unknown_loss():
    _, chosen, rejected = preference_loss("sigmoid", 0.1, PC, PR, RC, RR)
    m = reward_metrics(chosen, rejected)
    c = [0.1 * (float(PC[i]) - float(RC[i])) for i in range(4)]
    r = [0.1 * (float(PR[i]) - float(RR[i])) for i in range(4)]
    assert m["rewards/chosen"] == pytest.approx(sum(c) / 4) and m["rewards/rejected"] == pytest.approx(sum(r) / 4)
    assert m["rewards/margins"] == pytest.approx((sum(c) - sum(r)) / 4)
    assert m["rewards/accuracies"] == sum(a > b for a, b in zip(c, r)) / 4
    with pytest.raises(ValueError, match="allowed: sigmoid, kto_pair"):
        preference_loss("hinge", 0.1, PC, PR, RC, RR)


def test_sequence_logps_sum_the_response_tokens_with_the_causal_shift():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=gen)
    labels = torch.tensor([[-100, -100, 3, 6, 1], [-100, 2, 2, -100, -100]])
    got = sequence_logps(logits, labels)
    for b in range(2):
        expected = 0.0
        for t in range(1, 5):
            if labels[b, t] != -100:
                row = [float(x) for x in logits[b, t - 1]]
                expected += row[int(labels[b, t])] - math.log(sum(math.exp(x) for x in row))
        assert float(got[b]) == pytest.approx(expected, rel=1e-6)
