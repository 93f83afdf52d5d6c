"""The converters' step of ``mmzoo demo``: `mmzoo init` a VLM from its parts, then convert it through every
layout and back, and check with `mmzoo diff` that the round trip is bit-exact."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import MmzooError


def run_demo_step(vision: Path, llm: Path, hf: Path, chain: dict[str, Path], console) -> dict[str, Any]:
    from ..api import convert, diff, init_model

    info = init_model(vision, llm, hf, tgt_fmt="hf", seed=0)
    console.print(f"  mmzoo init {Path(vision).name} {Path(llm).name} -o {hf.name}: image token id {info['image_token_id']}, "
                  "fresh mlp2x_gelu projector")
    previous = hf
    for fmt, out in chain.items():
        convert(previous, out, tgt_fmt=fmt, verify=True)
        previous = out
    result = diff(hf, previous)
    if not result["equal"]:
        raise MmzooError(f"round trip changed {len(result['differences'])} tensors")
    route = " → ".join(["hf", *chain])
    return {"image_token_id": info["image_token_id"], "round_trip": f"{route}: {result['tensors']} tensors bit-exact"}
