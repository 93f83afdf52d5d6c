"""The upcycling step of ``mmzoo demo``: dense -> MoE while converting, then an equivalence check."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import MmzooError

TOLERANCE = 1e-5


def run_demo_step(dense_hf: Path, workdir: Path, console) -> dict[str, Any]:
    """Upcycle the demo's dense hf checkpoint two ways and check both give the dense logits (with images).

    - ``mixtral`` style, even layers, 4 experts top-2 -> ``hf`` (a Qwen2-MoE Llava transformers loads itself);
    - ``modality`` style (MoIIE), all layers -> ``internal`` (loaded with ``mmzoo.load_model``).
    """
    import torch
    from transformers import LlavaForConditionalGeneration

    from ..converters.pipeline import convert
    from ..models.load import load_model
    from ..demo.tiny import sample_inputs

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dense = LlavaForConditionalGeneration.from_pretrained(str(dense_hf)).eval()
    inputs = sample_inputs(dense, n_images=1)
    with torch.no_grad():
        reference = dense(**inputs).logits
    runs = [
        ("moe-hf", "hf", dict(num_experts=4, top_k=2, style="mixtral", layers="even", targets=["text"], seed=0)),
        ("moe-internal", "internal", dict(num_experts=4, top_k=2, style="modality", layers="all", targets=["text"], seed=0)),
    ]
    report: dict[str, Any] = {"dense": str(dense_hf), "checks": []}
    for name, fmt, moe in runs:
        out = workdir / name
        if out.exists():
            shutil.rmtree(out)
        result = convert(dense_hf, out, tgt_fmt=fmt, moe=moe)
        model = LlavaForConditionalGeneration.from_pretrained(str(out)).eval() if fmt == "hf" else load_model(out)
        with torch.no_grad():
            diff = float((model(**inputs).logits - reference).abs().max())
        check = {"output": str(out), "format": fmt, "style": moe["style"], "layers": moe["layers"],
                 "class": type(model.model.language_model).__name__, "tensors": result.tensors, "max_abs_diff": diff}
        report["checks"].append(check)
        ok = diff <= TOLERANCE
        mark = "[green]✓[/]" if ok else "[red]✗[/]"
        console.print(f"{mark} upcycled ({moe['style']}, layers {moe['layers']}, 4 experts top-2) → {fmt} "
                      f"[{check['class']}]: max |Δlogits| vs dense = {diff:.2e}")
        if not ok:
            raise MmzooError(f"upcycled {fmt} model differs from the dense one (max abs diff {diff:.2e} > {TOLERANCE})", path=out)
    report["equivalent"] = True
    return report
