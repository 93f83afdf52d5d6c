"""`mmzoo train --resume auto` loads a run folder's DeepSpeed pickles weights_only: a crafted file in a real
run's checkpoint is refused in one line before it can run code (see mmzoo/train/pickles.py)."""
from __future__ import annotations

import pytest
import torch

from mmzoo.cli import main


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_refuses_a_crafted_checkpoint_file(ws, tmp_path, capsys):
    params = str(ws.write("crafted", train={"max_steps": 1, "save_every": 1}, deepspeed={"zero_stage": 2}))
    main(["train", "--params", params])
    step = ws.root / "runs" / "crafted" / "checkpoints" / "step_0000001"
    optim = next(step.glob("*optim_states.pt"))
    state = torch.load(optim, weights_only=False)  # our own file, written a moment ago
    marker = tmp_path / "pwned"
    state["payload"] = _Payload(marker)
    torch.save(state, optim)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--params", params, "--set", "train.max_steps=2"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"refusing to load {optim.name}: it holds the type io.open" in err, err
    assert err.count("\n") == 1 and not marker.exists()
