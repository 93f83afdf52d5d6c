"""LLaVA-MoD's preference-distillation losses (llavamod/train/dpo_trainer.py): DPO ``sigmoid`` and ``kto_pair``.

The policy is the sparse student, the reference the dense teacher (run without gradients). A response's
log-probability is the sum over its response tokens of log p(token) with the usual causal shift (logits at t
score the label at t + 1), as LLaVA-MoD's ``get_logp`` does (``average_log_prob`` False). Rewards are
β · (log π − log π_ref), detached; accuracy is the share of pairs whose chosen reward beats the rejected one.

``stage: preference`` runs them: each micro batch holds B pairs as 2B rows (chosen sides, then rejected sides,
mmzoo/train/data.py), which go through the policy in ONE forward, as TRL's ``concatenated_forward`` does
(LLaVA-MoD runs two; the log-probs are the same, and the MoE aux loss is that of the one forward). The reference
(:class:`Reference`) is a frozen model (mmzoo/train/frozen.py) whose log-probs are computed on the fly without
gradients, or once before training (``preference.precompute_reference``) and kept in the run folder.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
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


METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")
CACHE = "reference-logps.safetensors"


def split_pairs(values):
    """(chosen, rejected) halves of a 2B-row batch's per-row values."""
    half = values.shape[0] // 2
    return values[:half], values[half:]


class Reference:
    """The frozen reference model and the stage's loss (``loss`` is what the training loop calls)."""

    def __init__(self, cfg, policy_model, float_dtype, ds_config: dict[str, Any], device):
        from .frozen import load_frozen

        # the shared tokenizer (log-probs of the same tokens) is checked by the preflight, before any model loads
        self.cfg, self.section = cfg, cfg.preference
        self.metric_names = METRICS
        self.float_dtype, self.device = float_dtype, device
        self.model = load_frozen(cfg.reference_model, cfg, float_dtype, ds_config, device)
        self.cached = None  # (chosen, rejected) float32 log-probs by pair index, when precomputed

    def logps(self, batch: dict[str, Any]):
        """(chosen, rejected) reference log-probs of a pair batch: looked up when precomputed, else one forward."""
        import torch

        if self.cached is not None:
            index = batch["pair_indices"].cpu()
            chosen, rejected = (t[index].to(self.device) for t in self.cached)
            return chosen, rejected
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "pair_indices")}
        with torch.no_grad():
            logits = self.model(**inputs).logits
        return split_pairs(sequence_logps(logits, batch["labels"]))

    def loss(self, output, batch: dict[str, Any], lm_loss):
        """(training loss before aux, [rewards/chosen, rewards/rejected, accuracy, margin]) of a policy ``output``."""
        import torch

        policy_chosen, policy_rejected = split_pairs(sequence_logps(output.logits, batch["labels"]))
        reference_chosen, reference_rejected = self.logps(batch)
        losses, chosen, rejected = preference_loss(self.section.loss, self.section.beta, policy_chosen, policy_rejected,
                                                   reference_chosen, reference_rejected, self.section.label_smoothing)
        stats = torch.stack([chosen.mean(), rejected.mean(), (chosen > rejected).float().mean(),
                             (chosen - rejected).mean()])
        return losses.mean(), stats

    # -- preference.precompute_reference ---------------------------------------------------------------
    def precompute(self, data, out_dir: Path, *, rank: int, world: int, console=None) -> None:
        """Every pair's reference log-probs, computed once (spread over the processes) and cached in the run folder;
        a resumed run reads the cache back when it was made for the same data, reference and precision."""
        import torch
        import torch.distributed as dist

        from safetensors.torch import load_file, save_file

        path = Path(out_dir) / CACHE
        key = self._cache_key(data)
        if path.is_file():
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                same = (f.metadata() or {}).get("key") == key
            if same:
                tensors = load_file(str(path))
                self.cached = (tensors["chosen"], tensors["rejected"])
                return
        n, size = len(data), self.cfg.train.micro_batch_size
        chunks = [list(range(i, min(i + size, n))) for i in range(0, n, size)]
        # every process runs the same number of forwards (ZeRO-3 gathers need all of them): the last ones repeat
        rounds = -(-len(chunks) // world)
        table = torch.zeros(2, n, dtype=torch.float64)
        for r in range(rounds):
            k = min(r * world + rank, len(chunks) - 1)
            from .data import to_device

            cpu = data.batch(chunks[k])
            batch = to_device(cpu, self.device, self.float_dtype)
            batch["pair_indices"] = cpu["pair_indices"]
            chosen, rejected = self.logps(batch)
            if r * world + rank < len(chunks):
                table[0, chunks[k]] = chosen.double().cpu()
                table[1, chunks[k]] = rejected.double().cpu()
        from .collectives import sum_over_processes

        table = sum_over_processes(table)  # each pair was computed by exactly one process
        self.cached = (table[0].float(), table[1].float())
        if rank == 0:
            tmp = path.with_name(path.name + ".tmp")
            save_file({"chosen": self.cached[0].contiguous(), "rejected": self.cached[1].contiguous()}, str(tmp),
                      metadata={"key": key, "pairs": str(n)})
            os.replace(tmp, path)
        if dist.is_initialized():
            dist.barrier()

    def _cache_key(self, data) -> str:
        """What the cached log-probs depend on: the data's shards, the reference's weights, the precision."""
        shards = [s.get("sha256") for s in data.dataset.manifest.get("shards", [])]
        reference = Path(self.cfg.reference_model).resolve()
        weights = sorted((str(p.relative_to(reference)), p.stat().st_size, p.stat().st_mtime_ns)
                         for p in reference.rglob("*") if p.is_file())
        text = json.dumps({"shards": shards, "reference": weights, "precision": self.cfg.train.precision,
                           "attn": self.cfg.train.attn_implementation})
        return hashlib.sha256(text.encode()).hexdigest()
