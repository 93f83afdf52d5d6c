"""``mmzoo demo``: a thin layer over ``mmzoo.demo.api.run_demo``."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]


def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Working folder for the demo's checkpoints.")] = Path("mmzoo-demo"),
    hub_endpoint: Annotated[Optional[str], typer.Option("--hub-endpoint", help="Also push and pull through this Hub endpoint (e.g. a local mirror).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="Replace an existing demo folder (one mmzoo demo made); --no-overwrite refuses it.")] = True,
    debug: Debug = False,
) -> None:
    """Run the whole pipeline on tiny models built in-process (offline; well under a minute on 2 cores).

    Builds a tiny CLIP + Llama + tokenizer, assembles them (init), converts hf → internal → llava → hf and checks the round trip and the logits, then preprocesses a few images, upcycles to MoE, analyses its routing, trains pretrain → sft → distill → moe → preference with exports, plots the runs (with the plot extra) and generates from hf, llava and moe-llava. Every step checks its own result; the tiny configs in configs/ train on what it leaves in mmzoo-demo/.

    Examples:

      mmzoo demo -o mmzoo-demo

      HF_TOKEN=hf_demo mmzoo demo -o mmzoo-demo --hub-endpoint http://127.0.0.1:8765
    """
    from ..errors import require_package
    from .api import run_demo

    require_package("deepspeed", "mmzoo demo")  # its training steps; checked before the first step, not at the sixth
    run_demo(output, hub_endpoint=hub_endpoint, overwrite=overwrite)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
