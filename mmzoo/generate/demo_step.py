"""The generate step of ``mmzoo demo``: ask the demo's checkpoints about an image, as `mmzoo generate` would."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import MmzooError


def run_demo_step(checkpoint: Path, workdir: Path, console) -> dict[str, Any]:
    from ..demo.tiny import make_images
    from . import generate

    workdir = Path(workdir)
    image = make_images(workdir / "generate", 1)[0]
    prompt = "What is shown in the image?"
    # The same weights in two layouts must answer with the same tokens; the trained MoE (when the train
    # step ran) shows that an upcycled, trained checkpoint generates too.
    same = {"hf": checkpoint, "llava": workdir / "llava-repo"}
    answers = {name: generate(path, prompt, [image], max_new_tokens=8) for name, path in same.items() if path.exists()}
    if len({tuple(a["tokens"]) for a in answers.values()}) != 1:
        raise MmzooError("the hf and llava forms of the demo model generated different tokens")
    moe = workdir / "train" / "moe-llava"
    if moe.exists():
        answers["moe-llava"] = generate(moe, prompt, [image], max_new_tokens=8, template="plain")
    for name, answer in answers.items():
        console.print(f"  mmzoo generate {name}: {answer['new_tokens']} tokens, {answer['tokens_per_s']} tokens/s")
    return {"formats": ", ".join(answers), "greedy_tokens_agree": True, "tokens": answers["hf"]["new_tokens"]}
