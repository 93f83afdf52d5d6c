"""The converters' commands: convert, init, formats. Each is a thin layer over mmzoo.api."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..console import console, escape, human_size, progress_bytes

Src = Annotated[Path, typer.Argument(help="Checkpoint folder to read (format auto-detected).", show_default=False)]
Out = Annotated[Path, typer.Option("-o", "--output", help="Output folder (written to a temporary sibling, renamed when complete).", show_default=False)]
TgtFmt = Annotated[str, typer.Option("--tgt-fmt", help="Target format: hf, llava, internal, moe-llava, libmoe, cerebras (see `mmzoo formats`).", show_default=False)]
SrcFmt = Annotated[Optional[str], typer.Option("--src-fmt", help="Source format; detected when omitted.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists (only once the new output is complete).")]
Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]
ShardSize = Annotated[str, typer.Option("--shard-size", help="Maximum output shard size, e.g. 5GB, 400MB, 2GiB.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed for freshly initialised weights (projector, routers).")]


def convert(
    ctx: typer.Context,
    src: Src,
    output: Out,
    tgt_fmt: TgtFmt,
    src_fmt: SrcFmt = None,
    dtype: Annotated[str, typer.Option("--dtype", help="keep | bf16 | fp16 | fp32. 'keep' is bit-exact.")] = "keep",
    shard_size: ShardSize = "5GB",
    overwrite: Overwrite = False,
    verify: Annotated[bool, typer.Option("--verify", help="Re-read the output and check every tensor against the source.")] = False,
    drop_unmatched_keys: Annotated[bool, typer.Option("--drop-unmatched-keys", help="Drop tensors no mapping rule knows instead of failing.")] = False,
    add_image_token: Annotated[bool, typer.Option("--add-image-token", help="Give a source without an <image> token (LLaVA-repo, LibMoE) one, with a mean embedding row, as --tgt-fmt hf always does: mmzoo's engine needs it to train or generate.")] = False,
    llava_vision_tower: Annotated[Optional[str], typer.Option("--llava-vision-tower", help="mm_vision_tower for --tgt-fmt llava (default: absolute path of OUT/image_model), mm_image_tower for moe-llava (default: the published CLIP name, else openai/mmzoo-image-tower), e.g. a Hub id.")] = None,
    moe_experts: Annotated[Optional[int], typer.Option("--moe-experts", help="Upcycle dense MLPs into N experts while converting.", rich_help_panel="Upcycling")] = None,
    moe_top_k: Annotated[int, typer.Option("--moe-top-k", help="Experts per token.", rich_help_panel="Upcycling")] = 2,
    moe_style: Annotated[str, typer.Option("--moe-style", help="mixtral | shared | modality.", rich_help_panel="Upcycling")] = "mixtral",
    moe_router: Annotated[str, typer.Option("--moe-router", help="softmax_topk (Mixtral) | smoe | xmoe | sigmoid | sharede_v2 | sharede_v3 | tcmoe | moepp (LibMoE's, with their balance + z-loss; sharede_*: --moe-style shared; moepp: MoE++'s zero and constant experts, not dense-equivalent at init).", rich_help_panel="Upcycling")] = "softmax_topk",
    router_z_loss_coef: Annotated[Optional[float], typer.Option("--router-z-loss-coef", help="LibMoE router z-loss weight (LibMoE routers; default 0.001).", rich_help_panel="Upcycling")] = None,
    moe_layers: Annotated[str, typer.Option("--moe-layers", help="all | even | odd | comma list such as 0,3,5.", rich_help_panel="Upcycling")] = "all",
    moe_target: Annotated[Optional[list[str]], typer.Option("--moe-target", help="text | vision | projector (repeatable).", rich_help_panel="Upcycling")] = None,
    router_init: Annotated[str, typer.Option("--router-init", help="zeros | normal:STD | hidden | hidden_avg (plain LLM + --router-prompts: mergekit's hidden gates).", rich_help_panel="Upcycling")] = "normal:0.02",
    router_prompts: Annotated[Optional[Path], typer.Option("--router-prompts", help="YAML/JSON: each expert's prompts, in expert order (a mergekit-moe config works).", rich_help_panel="Upcycling")] = None,
    router_aux_loss_coef: Annotated[Optional[float], typer.Option("--router-aux-loss-coef", help="Load-balancing loss weight (default 0.01; modality style: 0.001).", rich_help_panel="Upcycling")] = None,
    vision_aux_loss_coef: Annotated[Optional[float], typer.Option("--vision-aux-loss-coef", help="Separate weight for image tokens (MoIIE).", rich_help_panel="Upcycling")] = None,
    capacity_factor: Annotated[Optional[float], typer.Option("--capacity-factor", help="Expert capacity factor (LLaVA-MoD: 1.5).", rich_help_panel="Upcycling")] = None,
    moe_experts_from: Annotated[Optional[list[Path]], typer.Option("--moe-experts-from", help="Plain LLM source: expert E from the E-th of these fine-tuned LLMs (repeat once per expert; attention, embeddings, norms from SRC).", rich_help_panel="Upcycling")] = None,
    seed: Seed = 0,
    debug: Debug = False,
) -> None:
    """Convert a checkpoint between formats, bit-exact per tensor unless --dtype says otherwise.

    Examples:

      mmzoo convert llava-1.5-7b-hf -o ckpt --tgt-fmt internal

      mmzoo convert ckpt -o llava-out --tgt-fmt llava --llava-vision-tower openai/clip-vit-large-patch14-336

      mmzoo convert llava-hf -o moe --tgt-fmt hf --moe-experts 4 --moe-top-k 2 --moe-layers even

      mmzoo convert llama -o mixtral --tgt-fmt hf --moe-experts 4   (a plain LLM: a Mixtral / Qwen2-MoE LLM)
    """
    from ..api import convert as run

    moe = None
    if moe_experts is None:  # an upcycling option alone would otherwise give a plain conversion, silently
        # the options of the "Upcycling" panel, each compared with its own default
        named = [param.opts[0] for param in ctx.command.params
                 if getattr(param, "rich_help_panel", None) == "Upcycling" and param.name != "moe_experts"
                 and ctx.params.get(param.name) not in (param.default, None, [], ())]
        if named:
            from ..errors import UpcycleError

            raise UpcycleError(f"{', '.join(named)} only {'applies' if len(named) == 1 else 'apply'} when upcycling: add --moe-experts N (the number of experts)")
    if moe_experts is not None:
        moe = dict(
            num_experts=moe_experts, top_k=moe_top_k, style=moe_style, router=moe_router, router_z_loss_coef=router_z_loss_coef, layers=moe_layers, targets=moe_target or ["text"],
            router_init=router_init, router_prompts=str(router_prompts) if router_prompts else None, router_aux_loss_coef=router_aux_loss_coef, vision_aux_loss_coef=vision_aux_loss_coef,
            capacity_factor=capacity_factor, seed=seed,
        )
    with progress_bytes("converting") as (start, advance):
        result = run(
            src, output, tgt_fmt=tgt_fmt, src_fmt=src_fmt, dtype=dtype, shard_size=shard_size, overwrite=overwrite,
            verify=verify, drop_unmatched_keys=drop_unmatched_keys, llava_vision_tower=llava_vision_tower,
            progress=advance, on_start=lambda ckpt: start(sum(t.nbytes for t in ckpt.tensors.values())), moe=moe,
            moe_experts_from=moe_experts_from, add_image_token=add_image_token,
        )
    checked = ", verified" if result.verified else ""
    console.print(
        f"[green]✓[/] {result.src_fmt} → {result.tgt_fmt}: {result.tensors} tensors, {human_size(result.bytes)} written to [bold]{escape(str(result.output))}[/]{checked}"
    )
    for note in result.notes:
        console.print(f"  note: {note}", markup=False)


def init(
    vision: Annotated[Path, typer.Option("--vision", help="HF vision encoder folder (CLIP or SigLIP; a full CLIP/SigLIP model works too).", show_default=False)],
    text: Annotated[Path, typer.Option("--text", help="HF causal LM folder with its tokenizer (Llama, Mistral, Qwen2, Phi-3).", show_default=False)],
    output: Out,
    tgt_fmt: Annotated[str, typer.Option("--tgt-fmt", help="hf, llava, internal, cerebras (or libmoe for Phi-3 + SigLIP); see `mmzoo formats`.")] = "internal",
    projector: Annotated[str, typer.Option("--projector", help="mlp2x_gelu (LLaVA-1.5) or linear (LLaVA-1).")] = "mlp2x_gelu",
    seed: Seed = 0,
    shard_size: ShardSize = "5GB",
    overwrite: Overwrite = False,
    debug: Debug = False,
) -> None:
    """Assemble a new VLM from a vision encoder and an LLM, with a fresh projector.

    Adds the <image> token to the tokenizer (growing the embeddings by its mean-initialised row when needed) and copies both pretrained models byte for byte.

    Example:

      mmzoo init --vision clip-vit-large-patch14-336 --text vicuna-7b-v1.5 -o my-llava --tgt-fmt internal
    """
    from ..api import init_model

    with progress_bytes("writing") as (start, advance):
        info = init_model(vision, text, output, tgt_fmt=tgt_fmt, projector=projector, seed=seed, overwrite=overwrite, shard_size=shard_size, progress=advance)
    console.print(f"[green]✓[/] assembled {tgt_fmt} checkpoint at [bold]{escape(str(info['output']))}[/] (image token id {info['image_token_id']}, vocab {info['vocab_size']}, projector {projector}, seed {seed})")
    for note in info["notes"]:
        console.print(f"  note: {note}", markup=False)


def formats(
    json_: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    debug: Debug = False,
) -> None:
    """List the supported formats, architectures and conversion pairs.

    Example:

      mmzoo formats

      mmzoo formats --json
    """
    from rich.table import Table

    from .. import archs
    from ..converters import registry

    if json_:
        import json

        print(json.dumps({
            "formats": [{"name": name, "read": True, "write": hasattr(registry.get(name), "write"),
                         "description": registry.get(name).DESCRIPTION} for name in registry.FORMAT_MODULES],
            "vision_encoders": list(archs.VISION_TABLES), "llms": list(archs.TEXT_TABLES),
        }, indent=2))
        return
    table = Table(title="formats")
    table.add_column("name")
    table.add_column("read")
    table.add_column("write")
    table.add_column("what")
    for name in registry.FORMAT_MODULES:
        module = registry.get(name)
        table.add_row(name, "yes", "yes" if hasattr(module, "write") else "no", module.DESCRIPTION)
    console.print(table)
    console.print("vision encoders: " + ", ".join(archs.VISION_TABLES))
    console.print("LLMs: " + ", ".join(archs.TEXT_TABLES))
    console.print("conversions: every format to every other, both ways, within what each layout holds (llava and "
                  "cerebras: Llama/Mistral + CLIP; libmoe: Phi-3 + SigLIP).")


def register(app: typer.Typer) -> None:
    for command in (convert, init, formats):
        app.command(command.__name__)(command)
