"""Run in the trl-env side environment (TRL 0.8.6, which still has kto_pair): TRL's DPOTrainer.dpo_loss and
get_batch_logps on the inputs of a JSON file; writes the results next to it. Argument: the job file."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from trl import DPOTrainer

job = json.loads(Path(sys.argv[1]).read_text())
pc, pr, rc, rr = (torch.tensor(job[k], dtype=torch.float64) for k in ("pc", "pr", "rc", "rr"))
results = {}
for loss_type, beta, smoothing in job["cases"]:
    # dpo_loss reads only these attributes of the trainer
    trainer = SimpleNamespace(beta=beta, label_smoothing=smoothing, loss_type=loss_type, reference_free=False,
                              accelerator=SimpleNamespace(device=torch.device("cpu")))
    losses, chosen, rejected = DPOTrainer.dpo_loss(trainer, pc, pr, rc, rr)
    results[f"{loss_type}-{beta}-{smoothing}"] = [losses.tolist(), chosen.tolist(), rejected.tolist()]
logits = torch.tensor(job["logits"], dtype=torch.float64)
labels = torch.tensor(job["labels"])
results["logps"] = DPOTrainer.get_batch_logps(logits, labels).tolist()
Path(sys.argv[1]).with_suffix(".out.json").write_text(json.dumps(results))
