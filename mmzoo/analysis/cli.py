"""``mmzoo analyze-routing`` (registered by mmzoo.cli; torch and matplotlib are imported inside the command)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("analyze-routing")
    def analyze_routing_command(
        checkpoint: Annotated[Path, typer.Argument(help="MoE checkpoint, any format mmzoo reads (hf, internal, "
                                                        "moe-llava, …).")],
        data: Annotated[Path, typer.Option("--data", help="Folder written by `mmzoo preprocess` (manifest.json + "
                                                          "H5 shards), tokenized for this model.")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write: routing.json and the PNGs.")],
        samples: Annotated[int, typer.Option("--samples", help="Samples to route (the first N of the seeded "
                                                                "training order; all when there are fewer).")] = 64,
        images: Annotated[Optional[Path], typer.Option("--images", help="Image folder (default: the one the "
                                                                         "data's manifest records).")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the sample order.")] = 0,
        dtype: Annotated[Optional[str], typer.Option("--dtype", help="Run in this dtype (fp32, bf16, fp16; "
                                                                     "default: the checkpoint's).")] = None,
        no_plots: Annotated[bool, typer.Option("--no-plots", help="routing.json only (no matplotlib needed).")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON instead of the table.")] = False,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists.")] = False,
        debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")] = False,
    ) -> None:
        """Which experts an MoE model routes its tokens to: expert load, router entropy, top-k overlap and the image/text split of every MoE layer.

        Runs CHECKPOINT (no gradients, eval mode) over --samples samples of preprocessed data, one sample per forward, and writes to OUT: routing.json (per layer: load = each expert's share of the top-k assignments, load by modality, mean router entropy in nats, image·text overlap; top-k overlap of consecutive layers) and three PNGs (expert_load.png heatmap, modality_load.png bars, entropy.png). Definitions and the JSON schema: docs/upcycle.md, "Analysing routing".

        Examples:

          mmzoo analyze-routing moe-llava-hf --data data/sft -o routing/

          mmzoo analyze-routing moiie --data data/sft --samples 256 -o routing/ --overwrite

          mmzoo analyze-routing runs/moe/export --data data/sft -o routing/ --json --no-plots
        """
        import json

        from ..console import console
        from . import analyze_routing

        with _progress(console) as progress:
            report = analyze_routing(checkpoint, data, output, samples=samples, images=images, seed=seed,
                                     dtype=dtype, overwrite=overwrite, plots=not no_plots, progress=progress)
        if as_json:
            print(json.dumps(report, indent=1))
            return
        console.print(routing_table(report))
        console.print(f"[green]wrote[/] {output}: routing.json" + "".join(f", {p}" for p in report["plots"]),
                      highlight=False)


def routing_table(report: dict[str, Any]):
    """A short rich table: one row per MoE layer."""
    from rich.table import Table

    next_overlap = {item["from"]: item for item in report.get("layer_overlap") or []}
    table = Table(title=f"routing of {report['samples']} samples ({report['tokens']['text']:,} text + "
                        f"{report['tokens']['image']:,} image tokens)", title_justify="left")
    for header in ("layer", "experts", "busiest ÷ fair", "idlest ÷ fair", "entropy / max", "image·text overlap",
                   "overlap with next"):
        table.add_column(header, justify="left" if header == "layer" else "right")
    for layer, stats in report["layers"].items():
        load, experts = stats["load"], stats["experts"]
        busy = f"{max(load) * experts:.2f}" if sum(load) else "–"
        idle = f"{min(load) * experts:.2f}" if sum(load) else "–"
        entropy = f"{stats['entropy']:.3f} / {stats['max_entropy']:.3f}" if stats["entropy"] is not None else "–"
        modality = f"{stats['modality_overlap']:.3f}" if stats["modality_overlap"] is not None else "–"
        nxt = next_overlap.get(layer)
        overlap = f"{nxt['overlap']:.3f} (chance {nxt['chance']:.2f})" if nxt else "–"
        table.add_row(layer, str(experts), busy, idle, entropy, modality, overlap)
    return table


class _progress:
    """A transient progress bar on a terminal; nothing otherwise."""

    def __init__(self, console):
        self.console, self.bar = console, None

    def __enter__(self):
        import sys

        if not sys.stdout.isatty():
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]routing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                            console=self.console, transient=True)
        self.bar.start()
        task = self.bar.add_task("", total=None)
        return lambda done, total: self.bar.update(task, completed=done, total=total)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False
