"""``mmzoo plot`` (registered by mmzoo.cli; matplotlib is imported inside the command)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command("plot")
    def plot_command(
        runs: Annotated[list[Path], typer.Argument(help="Training run folders (output_dir) or metrics.jsonl files.")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Image to write: .png, .svg or .pdf.")],
        log_loss: Annotated[bool, typer.Option("--log-loss", help="Loss axes on a log scale.")] = False,
        dpi: Annotated[int, typer.Option("--dpi", help="Resolution of a .png.")] = 100,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
        debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")] = False,
    ) -> None:
        """Draw loss, aux / kd / reward curves, learning rate, grad norm, tokens/s and MoE expert load of runs.

        Examples:

          mmzoo plot runs/tiny-sft -o sft.png

          mmzoo plot runs/sft-lr1e-4 runs/sft-lr2e-5 -o compare.png --log-loss
        """
        from ..console import console
        from . import plot_runs

        result = plot_runs(runs, output, overwrite=overwrite, dpi=dpi, log_loss=log_loss)
        console.print(f"[green]wrote[/] {output}: {', '.join(result['panels'])} for {', '.join(result['runs'])}",
                      highlight=False)
