"""The inspection commands: inspect, diff. Each is a thin layer over mmzoo.api."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..console import console, escape, human_size

Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]


def inspect(
    path: Annotated[Path, typer.Argument(help="Checkpoint folder of any format.", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    debug: Debug = False,
) -> None:
    """Describe a checkpoint: format, architectures, parameters, dtypes, shards, MoE layout, tokenizer.

    Example:

      mmzoo inspect my-llava --json
    """
    from ..api import inspect as run

    info = run(path)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"{path}", show_header=False)
    table.add_row("format", info["format"])
    table.add_row("vision", f"{info['vision']} ({info['layers']['vision']} layers, hidden {info['hidden_size']['vision']})")
    table.add_row("projector", info["projector"])
    if info["vision_scales"] != [1]:
        table.add_row("image features", f"S² multi-scale, scales {info['vision_scales']} (projector reads {len(info['vision_scales'])}x the tower's width)")
    loads_as = f", loads as {info['text_model_type']}" if info["text_model_type"] != info["text"] else ""
    table.add_row("text", f"{info['text']} ({info['layers']['text']} layers, hidden {info['hidden_size']['text']}{loads_as})")
    table.add_row("parameters", f"{info['parameters']:,} (" + ", ".join(f"{k} {v:,}" for k, v in info["parameters_by_component"].items()) + ")")
    table.add_row("dtypes", ", ".join(f"{k}×{v}" for k, v in info["dtypes"].items()))
    n_shards = len(info["shards"])
    table.add_row("shards", f"{n_shards} file{'s' if n_shards != 1 else ''}, {human_size(sum(s['bytes'] for s in info['shards']))}")
    table.add_row("size on disk", human_size(info["size_bytes"]))
    table.add_row("MoE", _moe_line(info["moe"]))
    table.add_row("image token id", str(info["image_token_id"]))
    table.add_row("tokenizer", "yes" if info["tokenizer"] else "[red]missing[/]")
    table.add_row("image processor", "yes" if info["image_processor"] else "[red]missing[/]")
    console.print(table)


def _moe_line(moe) -> str:
    if not moe:
        return "dense"
    where = []
    if moe.get("layers"):
        where.append(f"text layers {moe['layers']}")
    if moe.get("vision_layers"):
        where.append(f"vision layers {moe['vision_layers']}")
    if "projector" in (moe.get("targets") or []):
        where.append("projector")
    router = moe.get("router")
    from ..upcycle.options import LIBMOE_ROUTERS

    libmoe = f" · LibMoE {router} router" if router in LIBMOE_ROUTERS else ""
    return f"{moe.get('style')} · {moe.get('num_experts')} experts · top-{moe.get('top_k')}{libmoe} · " + ", ".join(where)


def diff(
    a: Annotated[Path, typer.Argument(help="First checkpoint (any format).", show_default=False)],
    b: Annotated[Path, typer.Argument(help="Second checkpoint (any format).", show_default=False)],
    atol: Annotated[Optional[float], typer.Option("--atol", help="Treat values within this absolute tolerance as equal.")] = None,
    weights_only: Annotated[bool, typer.Option("--weights-only", help="Compare tensors only, not model/generation/processor/tokenizer settings.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    debug: Debug = False,
) -> None:
    """Compare two checkpoints of any formats: tensors in canonical names, then model, generation, processor and tokenizer settings. Exit 0 when equal, 1 otherwise.

    Settings are compared by meaning (the same field spelled by another format is equal); files without fields are compared by content hash.

    Examples:

      mmzoo diff llava-hf roundtrip-hf

      mmzoo diff run-a-export run-b-export --weights-only --atol 1e-6
    """
    from ..api import diff as run

    with console.status(f"comparing {escape(str(a))} and {escape(str(b))}…"):  # a spinner on a terminal only: 7B pairs take minutes
        result = run(a, b, atol=atol, weights_only=weights_only)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        raise typer.Exit(0 if result["equal"] else 1)
    settings = result["config_differences"] or []
    compared = "tensors" if weights_only else "tensors and settings"
    if result["equal"]:
        console.print(f"[green]equal[/]: {result['tensors']} {compared} ({result['a_format']} vs {result['b_format']})")
        raise typer.Exit(0)
    from rich.table import Table

    if result["differences"]:
        table = Table(title=f"{len(result['differences'])} of {result['tensors']} tensors differ")
        table.add_column("tensor")
        table.add_column("difference")
        table.add_column("max |a-b|", justify="right")
        for row in result["differences"]:
            delta = row.get("max_abs_diff")
            table.add_row(row["tensor"], row["problem"], "" if delta is None else f"{delta:.3g}")
        console.print(table)
    else:
        console.print(f"tensors: all {result['tensors']} equal")
    if settings:
        table = Table(title=f"{len(settings)} setting{'s' if len(settings) != 1 else ''} differ")
        for column in ("file", "field", "A", "B"):
            table.add_column(column, overflow="fold")
        for row in settings:
            table.add_row(row["file"], row["field"], _shown(row["a"]), _shown(row["b"]))
        console.print(table)
    elif not weights_only:
        console.print("settings: equal")
    raise typer.Exit(1)


def _shown(value) -> str:
    from rich.markup import escape

    return escape(value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))


def register(app: typer.Typer) -> None:
    for command in (inspect, diff):
        app.command(command.__name__)(command)
