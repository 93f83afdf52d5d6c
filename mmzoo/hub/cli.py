"""``mmzoo hub push`` / ``mmzoo hub pull``: a thin Typer layer over ``mmzoo.hub.api``.

huggingface_hub, torch and transformers are imported inside the commands only, so ``mmzoo --help``
stays fast.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

hub_app = typer.Typer(
    name="hub",
    help="Share checkpoints through the Hugging Face Hub (or a mirror set with HF_ENDPOINT).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

Token = Annotated[Optional[str], typer.Option("--token", help="Hub token (default: HF_TOKEN, then the `hf auth login` cache).", show_default=False)]
Endpoint = Annotated[Optional[str], typer.Option("--endpoint", help="Hub URL (default: HF_ENDPOINT, then https://huggingface.co).", show_default=False)]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")]


@hub_app.command("push")
def push(
    path: Annotated[Path, typer.Argument(help="Checkpoint folder to upload (checked first).", show_default=False)],
    repo_id: Annotated[str, typer.Argument(help="Target repository, owner/name (created if missing).", show_default=False)],
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch to push to; created from main if missing.", show_default=False)] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
    message: Annotated[Optional[str], typer.Option("--message", "-m", help="Commit message.", show_default=False)] = None,
    create_pr: Annotated[bool, typer.Option("--create-pr", help="Open a pull request against main instead of committing to it.")] = False,
    token: Token = None,
    endpoint: Endpoint = None,
    as_json: Json = False,
    debug: Debug = False,
) -> None:
    """Check a checkpoint, add a model card if it has none, and upload it.

    Examples:

      mmzoo hub push ./llava-tiny me/llava-tiny

      mmzoo hub push ./moe me/llava-moe --revision experiments --private -m "4 experts, top-2"
    """
    from ..console import console
    from .api import push as run

    result = run(path, repo_id, revision=revision, private=private, message=message, create_pr=create_pr,
                 token=token, endpoint=endpoint)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    if not result["changed"]:  # every file is already there: no commit, and no empty pull request
        console.print(f"[yellow]unchanged[/]: {result['url']} @ {result['revision']} already holds these "
                      f"{len(result['files'])} files; nothing pushed" + ("; no pull request opened" if create_pr else ""))
        return
    where = result["pr_url"] or f"{result['url']} @ {result['revision']}"
    console.print(f"[green]pushed[/] {path} ({result['format']}, {len(result['files'])} files) -> {where}")
    console.print(f"  commit {result['commit']}" + ("  (generated model card added as README.md)" if result["card_written"] else ""))
    if result["branch_created"]:
        console.print(f"  created branch {result['revision']} from main")


@hub_app.command("pull")
def pull(
    repo_id: Annotated[str, typer.Argument(help="Repository to download, owner/name.", show_default=False)],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder (downloaded to a temporary sibling, renamed when complete and verified).", show_default=False)],
    revision: Annotated[Optional[str], typer.Option("--revision", help="Branch, tag, refs/pr/N or commit sha (default: main).", show_default=False)] = None,
    tgt_fmt: Annotated[Optional[str], typer.Option("--tgt-fmt", help="Convert to this format in the same step: hf, llava, internal, moe-llava, libmoe, cerebras.", show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace OUT if it exists (files it already holds are reused).")] = False,
    token: Token = None,
    endpoint: Endpoint = None,
    as_json: Json = False,
    debug: Debug = False,
) -> None:
    """Download a checkpoint pinned to the commit its revision resolves to, verify it, optionally convert it.

    Examples:

      mmzoo hub pull llava-hf/llava-1.5-7b-hf -o llava-7b

      mmzoo hub pull me/llava-moe -o moe-internal --revision experiments --tgt-fmt internal
    """
    from ..console import console
    from .api import pull as run

    result = run(repo_id, output, revision=revision, tgt_fmt=tgt_fmt, token=token, endpoint=endpoint,
                 overwrite=overwrite)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    conv = f", converted {result['source_format']} -> {result['format']}" if result["converted"] else ""
    console.print(f"[green]pulled[/] {repo_id}@{result['commit'][:12]} ({result['revision']}) -> {output} "
                  f"({result['format']}{conv})")
    console.print(f"  {len(result['files'])} files, {result['bytes']:,} bytes verified"
                  + (f"; {len(result['reused'])} reused from the existing folder" if result["reused"] else ""))


def register(app: typer.Typer) -> None:
    app.add_typer(hub_app, name="hub")
