"""``mmzoo preprocess``: registered by mmzoo.cli; every heavy import happens inside the command."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

TEMPLATE_HELP = "auto (the tokenizer's chat_template), plain (pretraining: image + caption), vicuna_v1, llama3, phi3, chatml, qwen."


def register(app: typer.Typer) -> None:
    @app.command("preprocess")
    def preprocess_command(
        ctx: typer.Context,
        data: Annotated[Optional[list[Path]], typer.Option("--data", help="LLaVA data: a .json list or .jsonl file; repeat for several (read in the order given).")] = None,
        images: Annotated[Optional[Path], typer.Option("--images", help="Image root; `image` paths in the data are relative to it (absolute or '..' paths are rejected).")] = None,
        tokenizer: Annotated[Optional[Path], typer.Option("--tokenizer", help="A tokenizer folder or any checkpoint mmzoo reads (hf, llava, internal).")] = None,
        out: Annotated[Optional[Path], typer.Option("-o", "--out", help="Output folder for the shards, manifest.json and rejected.jsonl.")] = None,
        template: Annotated[str, typer.Option("--template", help=TEMPLATE_HELP)] = "auto",
        max_seq_len: Annotated[int, typer.Option("--max-seq-len", help="Longest sample in tokens, image tokens included.")] = 2048,
        num_image_tokens: Annotated[Optional[int], typer.Option("--num-image-tokens", help="Tokens per image (e.g. 576 for CLIP-L/14 at 336px).")] = None,
        model: Annotated[Optional[Path], typer.Option("--model", help="Checkpoint whose vision config gives the tokens per image (instead of --num-image-tokens).")] = None,
        image_placement: Annotated[str, typer.Option("--image-placement", help="llava: move each <image> to the front of its turn followed by a newline, as LLaVA's training does (default); keep: leave markers where the data puts them.")] = "llava",
        kind: Annotated[str, typer.Option("--kind", help="conversation (LLaVA conversations, default) or preference (chosen/rejected pairs for `stage: preference`: LLaVA-MoD's chosen/rejected conversations or RLAIF-V's question/chosen/rejected strings).")] = "conversation",
        truncate: Annotated[bool, typer.Option("--truncate/--skip-long", help="Cut over-long samples after the last assistant turn that fits (never inside an image), or skip them (default).")] = False,
        workers: Annotated[int, typer.Option("--workers", help="Tokenizer processes; the output is identical for any value.")] = 1,
        samples_per_shard: Annotated[int, typer.Option("--samples-per-shard", help="Samples per shard-XXXXX.h5 file.")] = 10000,
        resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in OUT: finished shards are kept, the rest is redone.")] = False,
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists (only once the new output is complete).")] = False,
        strict: Annotated[bool, typer.Option("--strict", help="Fail on the first rejected sample instead of listing it in rejected.jsonl.")] = False,
        format: Annotated[str, typer.Option("--format", help="mmzoo (documented H5 shards, read by mmzoo.preprocess.H5Dataset), cerebras (Cerebras modelzoo's LlavaModel: one image at the fixed image_start_idx, a dummy image for text-only samples) or cerebras-multimodal (its MultimodalSimple layout: any number of images where the markers sit).")] = "mmzoo",
        no_image_check: Annotated[bool, typer.Option("--no-image-check", help="Only check that image files exist; skip decoding them (faster on huge sets).")] = False,
        verify: Annotated[Optional[Path], typer.Option("--verify", help="Check a preprocessed folder instead: every shard against the sha256 in its manifest, and (mmzoo layout) the structure training relies on. Other options are not needed.", show_default=False)] = None,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or statistics table.")] = False,
        debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")] = False,
    ) -> None:
        """Tokenize LLaVA conversation data into H5 shards for training.

        Each <image> marker becomes N image tokens; the loss mask covers assistant answers and their end-of-turn token. Bad rows, missing or unsafe images and over-long samples are rejected, counted by reason and listed in OUT/rejected.jsonl.

        Example: mmzoo preprocess --data llava_instruct_150k.json --images coco/train2017 --tokenizer ./llava-hf --model ./llava-hf --template vicuna_v1 --workers 8 -o data/instruct

        Example: mmzoo preprocess --data rlaif-v.jsonl --kind preference --images rlaif-v/images --tokenizer ./student --model ./student -o data/rlaif-v

        Example: mmzoo preprocess --verify data/instruct   # every shard against the manifest's sha256
        """
        if verify is not None:
            if data or images or tokenizer or out:
                raise _usage_error(ctx, "--verify checks an existing folder; it takes no --data, --images, --tokenizer or --out")
            return verify_command(verify)
        for flag, value in (("--data", data), ("--images", images), ("--tokenizer", tokenizer), ("-o' / '--out", out)):
            if not value:  # required unless --verify: said as click says it for a required option
                raise _usage_error(ctx, f"Missing option '{flag}'.")
        from rich.console import Console

        from ..console import escape
        from . import preprocess

        console = Console(stderr=True)
        manifest = preprocess(
            data, images, tokenizer, out, template=template, max_seq_len=max_seq_len, num_image_tokens=num_image_tokens,
            model=model, truncate=truncate, workers=workers, samples_per_shard=samples_per_shard, resume=resume,
            overwrite=overwrite, strict=strict, format=format, check_images=not no_image_check, image_placement=image_placement, kind=kind, console=console,
            progress=not quiet,
        )
        for note in manifest.get("notes", []):  # also with --quiet: they may mean the tokens are not the model's
            console.print(f"note: {note}", markup=False, highlight=False)
        if not quiet:
            print_statistics(console, manifest, out)
        stats = manifest["statistics"]
        if stats["samples_read"] and not stats["samples_written"]:  # also with --quiet: training would find no data
            reasons = ", ".join(f"{reason} {count:,}" for reason, count in stats["rejected"].items())
            console.print(f"[yellow]warning[/]: no sample was kept ({escape(reasons)}); see {escape(str(out / 'rejected.jsonl'))}")


def _usage_error(ctx: typer.Context, message: str) -> Exception:
    """A usage error of the command, which the CLI prints as one line naming its --help."""
    from ..console import click_exceptions

    return click_exceptions().UsageError(message, ctx=ctx)


def verify_command(folder: Path) -> None:
    from ..console import console, escape, human_size
    from .integrity import verify_data

    result = verify_data(folder)
    for note in result.notes():
        console.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    checked = len(result.hashed)
    structure = "; structure checked" if result.manifest.name == "manifest.json" else ""
    console.print(f"[green]✓[/] {escape(str(folder))}: {checked} shard{'s' if checked != 1 else ''} "
                  f"({human_size(result.bytes_hashed)}) match the sha256 in {result.manifest.name}{structure}",
                  highlight=False, soft_wrap=True)


def print_statistics(console: Any, manifest: dict[str, Any], out: Path) -> None:
    from rich.table import Table

    stats = manifest["statistics"]
    table = Table(title=f"mmzoo preprocess -> {out}", show_header=False)
    table.add_column("statistic")
    table.add_column("value", justify="right")
    unit = "pairs" if manifest["parameters"].get("kind") == "preference" else "samples"  # a pair is one record
    rows = [(f"{unit} read", stats["samples_read"]), (f"{unit} written", stats["samples_written"]),
            ("truncated", stats["truncated"]), ("tokens", stats["tokens"]), ("loss tokens", stats["loss_tokens"]),
            ("images", stats["images"]), ("files", len(manifest["shards"]))]
    for name, value in rows:
        table.add_row(name, f"{value:,}")
    for reason, count in stats["rejected"].items():
        table.add_row(f"rejected: {reason}", f"[red]{count:,}")
    console.print(table)
    if stats["rejected"]:
        console.print(f"rejected samples are listed in {out / 'rejected.jsonl'}", markup=False)
