"""mmzoo's preference losses and sequence log-probs against TRL's own code (TRL 0.8.6, the last minor version
with ``kto_pair``, whose DPO trainer LLaVA-MoD's copied), run in a cached side environment
(~/.cache/mmzoo-tests/trl-env; ``MMZOO_TRL_PYTHON`` names another interpreter). Skipped, saying why, when the
environment cannot be built (no package index)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from side_env import run_side_script, side_python  # noqa: E402

from mmzoo.train.preference import preference_loss, sequence_logps  # noqa: E402

TRL_PACKAGES = ["trl==0.8.6", "transformers==4.46.3", "tokenizers<0.21", "accelerate==0.34.2", "datasets==2.21.0"]
TRL_PROBE = ("import torch, trl, transformers; assert trl.__version__ == '0.8.6'; "
             "from trl import DPOTrainer; assert hasattr(DPOTrainer, 'dpo_loss')")
CASES = [("sigmoid", 0.1, 0.0), ("sigmoid", 0.5, 0.2), ("kto_pair", 0.1, 0.0), ("kto_pair", 0.5, 0.0)]


def test_losses_and_logps_equal_trls(tmp_path):
    try:
        python = side_python("trl-env", TRL_PACKAGES, TRL_PROBE, override_env="MMZOO_TRL_PYTHON")
    except RuntimeError as exc:  # pip could not reach the package index, or TRL no longer installs
        pytest.skip(f"TRL 0.8.6 side environment unavailable: {str(exc).splitlines()[0]}")
    gen = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-30 * torch.rand(6, generator=gen, dtype=torch.float64) for _ in range(4))
    pr[2], rr[2] = pc[2], rc[2]  # a pair with equal answers: zero logit
    logits = torch.randn(3, 7, 11, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 7), generator=gen)
    labels[:, :3] = -100  # the prompt
    labels[1, 5:] = -100  # padding
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"pc": pc.tolist(), "pr": pr.tolist(), "rc": rc.tolist(), "rr": rr.tolist(),
                               "cases": CASES, "logits": logits.tolist(), "labels": labels.tolist()}))
    run_side_script(python, Path(__file__).parent / "trl_losses.py", str(job))
    theirs = json.loads(job.with_suffix(".out.json").read_text())
    for loss_type, beta, smoothing in CASES:
        ours = preference_loss(loss_type, beta, pc, pr, rc, rr, smoothing)
        for mine, trl in zip(ours, theirs[f"{loss_type}-{beta}-{smoothing}"]):
            assert torch.allclose(mine, torch.tensor(trl, dtype=torch.float64), rtol=1e-12, atol=1e-12), loss_type
    assert torch.allclose(sequence_logps(logits, labels).double(), torch.tensor(theirs["logps"], dtype=torch.float64),
                          rtol=1e-6, atol=1e-5)
