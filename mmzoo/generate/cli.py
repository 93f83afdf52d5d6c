"""``mmzoo generate`` (registered by mmzoo.cli; torch and transformers are imported inside the command)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate_command(
        checkpoint: Annotated[Path, typer.Argument(help="A checkpoint in any format mmzoo reads (hf, llava, internal, moe-llava), dense or MoE.")],
        prompt: Annotated[str, typer.Option("--prompt", "-p", help="The question; `<image>` places the image, else it goes first.")],
        image: Annotated[Optional[list[Path]], typer.Option("--image", "-i", help="An image file (repeatable; none for a text-only prompt).")] = None,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Most tokens to generate.")] = 128,
        template: Annotated[str, typer.Option("--template", help="auto (the checkpoint's chat template) | plain | vicuna_v1 | llama3 | phi3 | chatml | qwen: the format it was trained in.")] = "auto",
        system: Annotated[Optional[str], typer.Option("--system", help="A system message (default: the template's own, if it has one).")] = None,
        temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy (the same tokens as transformers' generate); > 0 samples.")] = 0.0,
        top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling threshold (with --temperature > 0).")] = 1.0,
        seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
        dtype: Annotated[Optional[str], typer.Option("--dtype", help="bf16 | fp16 | fp32 (default: the checkpoint's).")] = None,
        device: Annotated[str, typer.Option("--device", help="auto (cuda when available) | cpu | cuda | cuda:N.")] = "auto",
        json_: Annotated[bool, typer.Option("--json", help="Print one JSON object (answer, token ids, prompt, timing) instead of streaming.")] = False,
        debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")] = False,
    ) -> None:
        """Answer a prompt about an image with a checkpoint, streaming the tokens as they are generated.

        Examples:

          mmzoo generate llava-7b-hf --image cat.jpg --prompt "What is on the sofa?"

          mmzoo generate runs-export/moe-llava --image cat.jpg -p "Describe the picture." --template vicuna_v1 --json
        """
        import json
        import sys

        from . import generate

        def stream(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        result = generate(checkpoint, prompt, image or [], max_new_tokens=max_new_tokens, template=template, system=system,
                          temperature=temperature, top_p=top_p, seed=seed, dtype=dtype, device=device,
                          on_text=None if json_ else stream)
        if json_:
            print(json.dumps(result, ensure_ascii=False))
        else:
            sys.stdout.write("\n")
            from ..console import error_console

            error_console.print(f"[dim]{result['new_tokens']} tokens in {result['seconds']:.2f} s ({result['tokens_per_s']} tokens/s)[/]",
                                highlight=False)
