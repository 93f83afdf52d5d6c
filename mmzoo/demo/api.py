"""``mmzoo demo``: the whole pipeline on tiny models built in-process, offline.

Each step prints one row in a summary table; steps from later stages (preprocess, upcycle, train,
hub) run when their modules are installed with mmzoo.
"""
from __future__ import annotations

import importlib
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from ..console import console, escape
from ..errors import MmzooError, OutputExists


def _logits_match(reference_path: Path, paths: dict[str, Path]) -> float:
    import torch
    from transformers import LlavaForConditionalGeneration

    from ..models.load import load_model
    from .tiny import sample_inputs

    reference = LlavaForConditionalGeneration.from_pretrained(reference_path).eval()
    inputs = sample_inputs(reference)
    with torch.no_grad():
        expected = reference(**inputs).logits
        worst = 0.0
        for path in paths.values():
            worst = max(worst, float((load_model(path)(**inputs).logits - expected).abs().max()))
    return worst


def run_demo(workdir: Path, *, hub_endpoint: str | None = None, overwrite: bool = True) -> list[dict[str, Any]]:
    from rich.table import Table
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from .tiny import build_llm, build_vision

    workdir = Path(workdir)
    if workdir.exists():
        if not overwrite:
            raise OutputExists("already exists (drop --no-overwrite to replace it)", path=workdir)
        if any(workdir.iterdir()) and not (workdir / ".mmzoo-demo").exists():
            raise MmzooError("exists and is not an mmzoo demo folder; choose another -o", path=workdir)
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / ".mmzoo-demo").write_text("created by mmzoo demo\n")
    rows: list[dict[str, Any]] = []

    def step(name: str, action: Callable[[], str]) -> None:
        started = time.perf_counter()
        with console.status(f"[bold]{name}…"):
            detail = action()
        rows.append({"step": name, "detail": detail, "seconds": time.perf_counter() - started})
        console.print(f"[green]✓[/] {name}: {escape(detail)}")  # details name paths and extras: [plot]

    parts = workdir / "parts"
    step("build tiny models", lambda: (build_vision(parts / "clip-vision", "clip"), build_llm(parts / "llama", "llama"), "CLIP vision + Llama LLM + BPE tokenizer trained in-process")[-1])
    hf = workdir / "llava-hf"
    chain = {"internal": workdir / "llava-internal", "llava": workdir / "llava-repo", "hf": workdir / "llava-hf-roundtrip"}
    from ..converters import demo_step as converters_step

    step("init + convert", lambda: _summarize(converters_step.run_demo_step(parts / "clip-vision", parts / "llama", hf, chain,
                                                                            console)))
    step("load_model logits", lambda: f"every format gives the transformers logits (max |Δ| = {_logits_match(hf, {**chain, 'hf-original': hf}):.1e})")

    for label, module_name, kwargs in (
        ("preprocess", "mmzoo.preprocess.demo_step", {"workdir": workdir / "preprocess", "checkpoint": hf}),
        ("upcycle", "mmzoo.upcycle.demo_step", {"dense_hf": hf, "workdir": workdir / "upcycle"}),
        ("analyze routing", "mmzoo.analysis.demo_step", {"moe": workdir / "upcycle" / "moe-internal",
                                                         "data": workdir / "preprocess" / "preprocessed",
                                                         "workdir": workdir / "routing"}),
        ("train", "mmzoo.train.demo_step", {"hf_checkpoint": hf, "workdir": workdir / "train"}),
        ("plot", "mmzoo.plot.demo_step", {"train_dir": workdir / "train", "workdir": workdir / "plots"}),
        ("generate", "mmzoo.generate.demo_step", {"checkpoint": hf, "workdir": workdir}),
    ):
        module = _optional(module_name)
        if module is not None:
            step(label, lambda m=module, kw=kwargs: _summarize(m.run_demo_step(console=console, **kw)))
    if hub_endpoint:
        module = _optional("mmzoo.hub.demo_step")
        if module is None:
            raise MmzooError("this mmzoo has no hub support installed")
        step("hub push/pull", lambda: _summarize(module.run_demo_step(checkpoint=chain["internal"], workdir=workdir / "hub", endpoint=hub_endpoint, console=console)))

    table = Table(title="mmzoo demo", show_lines=False)
    table.add_column("step")
    table.add_column("result")
    table.add_column("s", justify="right")
    for row in rows:
        table.add_row(row["step"], escape(row["detail"]), f"{row['seconds']:.1f}")
    console.print(table)
    console.print(f"checkpoints are in [bold]{workdir}[/]; try [bold]mmzoo inspect {chain['internal']}[/]")
    return rows


def _optional(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            return None
        raise


def _summarize(result: Any) -> str:
    if isinstance(result, dict):
        return ", ".join(f"{k} {v}" for k, v in result.items() if not isinstance(v, (dict, list)))[:200]
    return str(result)
