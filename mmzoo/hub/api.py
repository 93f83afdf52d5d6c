"""Share checkpoints through the Hugging Face Hub (or any Hub-compatible mirror).

``push`` checks a checkpoint and uploads it in one ``huggingface_hub`` commit, adding a generated
model card when the folder has no README.md (the folder itself is never modified). ``pull`` resolves a
revision to its commit, downloads that exact commit into a temporary sibling of OUT, no file past the size the Hub
lists for it (mmzoo/hub/download.py), verifies every file against the listing (git blob sha1 / LFS sha256), checks the
checkpoint, optionally converts it, records where it came from in ``OUT/.mmzoo-hub.json`` and only then
renames it to OUT. Every failure becomes one ``HubError`` line; nothing partial is left at OUT.

Auth: ``token`` argument, else ``HF_TOKEN``, else the ``hf auth login`` cache (huggingface_hub's own
lookup). Endpoint: ``endpoint`` argument, else ``HF_ENDPOINT`` (read at call time), else huggingface.co.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from ..errors import HubError, MmzooError, OutputExists
from ..io.claim import exclusive_output
from ..io.confine import checkpoint_root, confined, self_contained
from ..io.digest import file_sha256
from ..io.parents import parents_removed_on_failure
from ..io.structured import load_json

HUB_RECORD = ".mmzoo-hub.json"
DEFAULT_ENDPOINT = "https://huggingface.co"
LOGIN_HINT = "set HF_TOKEN, pass --token, or run `hf auth login`"
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Never uploaded: huggingface_hub's local-dir metadata (also ignored by the library) and our pull record.
_PUSH_IGNORE = [HUB_RECORD, ".cache/huggingface", ".cache/huggingface/**", "**/.DS_Store"]


def _push_files(src: Path) -> list[str]:
    """Files of a checkpoint folder to upload, relative POSIX paths (hub bookkeeping left out)."""
    from huggingface_hub.utils import filter_repo_objects

    root = checkpoint_root(src)
    # A symlink to a file outside the folder would upload that file: refuse it (HubError, one line).
    try:
        every = sorted(confined(p, root).relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    except MmzooError as exc:
        raise HubError(f"refusing to push {src}: {exc.one_line()}") from exc
    return list(filter_repo_objects(every, ignore_patterns=_PUSH_IGNORE))


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def resolve_endpoint(endpoint: str | None = None) -> str:
    """The Hub URL to talk to: explicit argument, else ``HF_ENDPOINT`` at call time, else huggingface.co."""
    value = endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    return value.rstrip("/")


def _check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise HubError(f"invalid repository id {repo_id!r}: expected 'owner/name'")
    return repo_id


def _api(endpoint: str, token: str | None):
    _ensure_online()
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=token or None, library_name="mmzoo")


def _ensure_online() -> None:
    from huggingface_hub import constants

    if constants.is_offline_mode():
        raise HubError("huggingface_hub offline mode is on (HF_HUB_OFFLINE=1): unset it to push or pull")


def _git_blob_oid(path: Path) -> str:
    h = hashlib.sha1()
    h.update(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


@contextmanager
def _hub_errors(repo_id: str, endpoint: str, revision: str | None, action: str) -> Iterator[None]:
    """Turn huggingface_hub / network exceptions into one ``HubError`` line."""
    import httpx2
    from huggingface_hub import errors as hf_errors
    from huggingface_hub.utils import OfflineModeIsEnabled

    try:
        yield
    except MmzooError:
        raise
    except hf_errors.RevisionNotFoundError as exc:
        raise HubError(f"revision {revision or 'main'!r} not found in {repo_id} at {endpoint}") from exc
    except hf_errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        if status == 401:
            invalid = "Invalid credentials" in (exc.response.headers.get("X-Error-Message") or "")
            why = "the token was rejected" if invalid else (
                "no valid token was sent (the repository may be private or not exist)"
                if action == "pull" else "a token with write access is needed")
            raise HubError(f"401 unauthorized for {repo_id} at {endpoint}: {why}; {LOGIN_HINT}") from exc
        if status == 403:
            raise HubError(
                f"403 forbidden: your token may not {action} {repo_id} at {endpoint}; "
                f"use a token with {'write' if action == 'push' else 'read'} access ({LOGIN_HINT})"
            ) from exc
        if isinstance(exc, hf_errors.RepositoryNotFoundError) or status == 404 and (
            exc.response is not None and exc.response.headers.get("X-Error-Code") == "RepoNotFound"
        ):
            raise HubError(f"repository {repo_id!r} not found at {endpoint}") from exc
        if isinstance(exc, hf_errors.RemoteEntryNotFoundError):
            raise HubError(f"file missing in {repo_id} at {endpoint}: {_short(exc)}") from exc
        raise HubError(f"the Hub at {endpoint} answered {status} while trying to {action} {repo_id}: "
                       f"{exc.server_message or _short(exc).split(' for url')[0]}") from exc
    except OfflineModeIsEnabled as exc:
        raise HubError("huggingface_hub offline mode is on (HF_HUB_OFFLINE=1): unset it to push or pull") from exc
    except (httpx2.TransportError, hf_errors.LocalEntryNotFoundError) as exc:
        raise HubError(f"network failure talking to {endpoint} during {action} of {repo_id}: "
                       f"{type(exc).__name__}: {_short(exc)}") from exc
    except hf_errors.HFValidationError as exc:  # the client's own checks of repo ids, revisions, file names
        raise HubError(f"huggingface_hub refused to {action} {repo_id}: {_short(exc)}") from exc
    except OSError as exc:
        if "Consistency check failed" in str(exc):
            raise HubError(f"network failure talking to {endpoint} during {action} of {repo_id}: "
                           "a download ended early") from exc
        if type(exc).__module__.startswith("huggingface_hub"):
            raise HubError(f"{action} of {repo_id} at {endpoint} failed: {type(exc).__name__}: {_short(exc)}") from exc
        raise
    except Exception as exc:
        # Any other exception huggingface_hub defines, or raises from its own code (a plain ValueError for a file
        # name it will not write, which a server can send in its file list): one line, not a traceback.
        if type(exc).__module__.startswith("huggingface_hub") or _raised_in_huggingface_hub(exc):
            raise HubError(f"{action} of {repo_id} at {endpoint} failed: {type(exc).__name__}: {_short(exc)}") from exc
        raise


def _raised_in_huggingface_hub(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and f"{os.sep}huggingface_hub{os.sep}" in tb.tb_frame.f_code.co_filename


# OUT/.cache/huggingface holds huggingface_hub's download metadata (in folders it downloaded, and in pulls of earlier
# mmzoo versions), OUT/.mmzoo-hub.json mmzoo's pull record: a repository file of those names would pass for them.
_RESERVED = (".cache", HUB_RECORD)


def _check_repo_paths(paths: list[str], repo_id: str) -> None:
    """Every file a pull will write lies inside OUT under its own name: refused before the first download.

    huggingface_hub refuses ``..`` and absolute names itself (with a ValueError); this check does not depend on the
    client version, also covers backslashes, drive letters, control characters and mmzoo's reserved names, and
    says which file of which repository is wrong."""
    for path in paths:
        parts = path.split("/")
        problem = (
            "is empty" if not path else
            "holds a control character" if any(ord(c) < 32 for c in path) else
            "holds a backslash (a Windows path separator)" if "\\" in path else
            "is an absolute path" if path.startswith("/") else
            "names a drive" if ":" in parts[0] else
            "has an empty, '.' or '..' path segment" if any(p in ("", ".", "..") for p in parts) else
            "would overwrite the pull's own bookkeeping (.cache/, .mmzoo-hub.json)" if parts[0] in _RESERVED else None
        )
        if problem:
            raise HubError(f"refusing to pull {repo_id}: the repository's file name {path[:200]!r} {problem}; "
                           "only plain relative names are written inside OUT")


# ----------------------------------------------------------------------------------------------
# model card
# ----------------------------------------------------------------------------------------------
def _human(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def model_card(info: dict, *, repo_id: str | None = None, made_with: str | None = None) -> str:
    """A README.md for a checkpoint, from ``mmzoo.api.inspect``/``check_checkpoint`` output."""
    fmt = info.get("format", "unknown")
    vision, text, projector = info.get("vision"), info.get("text"), info.get("projector")
    params = int(info.get("parameters") or 0)
    moe = info.get("moe")
    name = repo_id or Path(str(info.get("path", "model"))).name
    tags = ["mmzoo", "llava", "vision-language", f"mmzoo-format-{fmt}"]
    if moe:
        tags.append("mixture-of-experts")
    front = ["---"]
    if fmt == "hf":
        front.append("library_name: transformers")
    front += ["pipeline_tag: image-text-to-text", "tags:"] + [f"- {t}" for t in tags] + ["---", ""]

    lines = [f"# {name}", "", "A LLaVA-style vision-language checkpoint, shared with mmzoo (`mmzoo hub push`).", "", "## Checkpoint", "",
             "| | |", "|---|---|", f"| format | `{fmt}` |"]
    archs = info.get("architectures")
    if archs:
        lines.append(f"| architectures | {', '.join(f'`{a}`' for a in archs)} |")
    lines += [f"| vision tower | `{vision}` |", f"| language model | `{text}` |", f"| projector | `{projector}` |",
              f"| parameters | {params:,} ({_human(params)}) |"]
    dtypes = info.get("dtypes") or {}
    if dtypes:
        lines.append("| dtypes | " + ", ".join(f"{k}: {v}" for k, v in sorted(dtypes.items())) + " |")
    if info.get("size_bytes") is not None:
        lines.append(f"| size on disk | {int(info['size_bytes']):,} bytes |")
    lines.append(f"| tokenizer / image processor | {'yes' if info.get('tokenizer') else 'no'} / "
                 f"{'yes' if info.get('image_processor') else 'no'} |")
    by_comp = info.get("parameters_by_component") or {}
    if by_comp:
        lines += ["", "### Parameters by component", "", "| component | parameters |", "|---|---|"]
        lines += [f"| {k} | {int(v):,} |" for k, v in by_comp.items()]
    lines += ["", "### Mixture of experts", ""]
    if moe:
        lines += ["| | |", "|---|---|"] + [f"| {k} | {json.dumps(v) if not isinstance(v, str) else v} |"
                                           for k, v in moe.items()]
    else:
        lines.append("Dense model (no MoE layers).")
    made = made_with or info.get("provenance") or info.get("made_with")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    lines += ["", "## How it was made", ""]
    if isinstance(made, dict) and made:
        for key, value in made.items():
            if isinstance(value, str) and (value.startswith("/") or re.match(r"^[A-Za-z]:\\", value)):
                value = Path(value).name  # local paths stay local: keep the folder name only
            lines.append(f"- {key}: `{value if isinstance(value, str) else json.dumps(value)}`")
        lines.append("")
    elif made:
        lines += [str(made), ""]
    lines.append(f"Checked with `mmzoo` (format detected, every tensor header readable, index complete) and "
                 f"uploaded with `mmzoo hub push` on {when}.")
    repo = repo_id or "OWNER/NAME"
    lines += ["", "## How to load it", ""]
    if fmt == "hf":
        lines += ["```python", "from transformers import AutoProcessor, LlavaForConditionalGeneration", "",
                  f'model = LlavaForConditionalGeneration.from_pretrained("{repo}")',
                  f'processor = AutoProcessor.from_pretrained("{repo}")', "```", "",
                  "Or download it with mmzoo (verified, pinned to a commit):", ""]
    lines += ["```bash", f"mmzoo hub pull {repo} -o ./model"]
    other = "llava" if fmt == "hf" else "hf"
    lines += [f"mmzoo hub pull {repo} -o ./model-{other} --tgt-fmt {other}   # convert while pulling", "```", ""]
    return "\n".join(front + lines)


# ----------------------------------------------------------------------------------------------
# push
# ----------------------------------------------------------------------------------------------
def _card_info(src: Path, info: dict) -> dict:
    """``info`` plus what the card wants and inspect does not return: architectures and provenance."""
    from .. import api as mmzoo_api

    extra = dict(info)
    try:
        config = load_json(src / "config.json")  # bounded: the card is best-effort, a bad config only drops a line
        if isinstance(config, dict) and isinstance(config.get("architectures"), list):
            extra.setdefault("architectures", config["architectures"])
    except (MmzooError, OSError, ValueError):
        pass
    try:
        provenance = dict(mmzoo_api.read_checkpoint(src).spec.provenance or {})
    except (MmzooError, OSError, ValueError):
        provenance = {}
    if provenance and not extra.get("provenance"):
        extra["provenance"] = provenance
    return extra


def push(
    path: str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    message: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    endpoint: str | None = None,
) -> dict[str, Any]:
    """Check ``path`` and upload it to ``repo_id`` (created if missing; a missing branch is created from main)."""
    from .. import api as mmzoo_api

    src = Path(path)
    _check_repo_id(repo_id)
    ep = resolve_endpoint(endpoint)
    if not src.is_dir():
        raise HubError(f"{src} is not a checkpoint folder" + (" (it does not exist)" if not src.exists() else ""))
    try:
        info = mmzoo_api.check_checkpoint(src)
    except MmzooError as exc:
        raise HubError(f"refusing to push {src}: not a valid checkpoint: {exc.one_line()}") from exc
    to_upload = _push_files(src)  # before any request: a symlink out of the folder is refused here
    if revision and _COMMIT.match(revision):
        raise HubError(f"--revision must name a branch to push to, not a commit ({revision[:12]})")
    if create_pr and revision not in (None, "main"):
        raise HubError("--create-pr opens a pull request against main; leave out --revision (or push to the branch)")

    # The source folder is never modified: a generated model card travels in the commit only.
    card_written = not (src / "README.md").exists()
    card = model_card(_card_info(src, info), repo_id=repo_id).encode("utf-8") if card_written else None

    from huggingface_hub import CommitOperationAdd

    hf = _api(ep, token)
    commit_message = message or f"Upload {info.get('format', '')} checkpoint with mmzoo".replace("  ", " ")
    with _hub_errors(repo_id, ep, revision, "push"):
        hf.create_repo(repo_id, private=private, exist_ok=True)
        branch_created = False
        if revision and revision != "main" and not revision.startswith("refs/"):
            refs = hf.list_repo_refs(repo_id)
            if revision not in {b.name for b in refs.branches}:
                hf.create_branch(repo_id, branch=revision, revision="main", exist_ok=True)
                branch_created = True
        operations = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(src / rel)) for rel in to_upload]
        if card is not None:
            operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card))
        # huggingface_hub skips files the revision already holds and, when none is left, makes no commit (nor
        # pull request) and answers with the current head: compare heads so "nothing changed" can be said.
        head_before = hf.repo_info(repo_id, revision=revision or "main").sha
        commit = hf.create_commit(
            repo_id=repo_id,
            operations=operations,
            revision=revision,
            commit_message=commit_message,
            create_pr=create_pr or None,
        )
    changed = commit.pr_url is not None if create_pr else commit.oid != head_before
    files = sorted(to_upload + (["README.md"] if card is not None else []))
    return {
        "repo_id": repo_id,
        "endpoint": ep,
        "url": f"{ep}/{repo_id}",
        "revision": commit.pr_revision if create_pr and changed else (revision or "main"),
        "changed": changed,
        "commit": commit.oid,
        "commit_url": commit.commit_url,
        "pr_url": commit.pr_url,
        "branch_created": branch_created,
        "card_written": card_written,
        "format": info.get("format"),
        "parameters": info.get("parameters"),
        "files": files,
    }


# ----------------------------------------------------------------------------------------------
# pull
# ----------------------------------------------------------------------------------------------
def _seed_from(existing: Path, target: Path) -> None:
    """Make ``target`` a hard-linked (copy if linking fails) image of ``existing`` so unchanged files are reused.

    A file that changed is downloaded under a temporary name and renamed over its link, never written in place, so
    linking is safe: the old OUT keeps its bytes until the new one replaces it. Our record and the download metadata
    of huggingface_hub (``.cache/``, written by pulls of earlier mmzoo versions) are not carried.
    """
    for src in existing.rglob("*"):
        rel = src.relative_to(existing)
        dst = target / rel
        if src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
            continue
        if rel.as_posix() == HUB_RECORD or rel.parts[0] == ".cache":
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def _differs_from_listing(local: Path, entry) -> str | None:
    """What is wrong with ``local`` as the file ``entry`` of the Hub's listing (size, then LFS sha256 or git oid)."""
    if not local.is_file():
        return f"download incomplete: {entry.path} is missing"
    size = local.stat().st_size
    if entry.size is not None and size != entry.size:
        return f"download corrupt: {entry.path} has {size} bytes, the Hub lists {entry.size}"
    if entry.lfs is not None:
        if file_sha256(local) != entry.lfs.sha256:
            return f"download corrupt: sha256 of {entry.path} does not match the Hub"
    elif entry.blob_id and _git_blob_oid(local) != entry.blob_id:
        return f"download corrupt: git oid of {entry.path} does not match the Hub"
    return None


def _verify_snapshot(folder: Path, tree: list, verified: set[str] = frozenset()) -> None:
    """Every file of the listing is in ``folder`` with the listed size and digest (``verified``: found so already)."""
    for entry in tree:
        if entry.path not in verified and (problem := _differs_from_listing(folder / entry.path, entry)):
            raise HubError(problem)


def _check_free_space(folder: Path, needed: int, repo_id: str) -> None:
    """Refuse a repository larger than the free space where OUT goes, before downloading any of it (the sizes are the
    Hub's listing; a server that sends more than it lists for a file is stopped at that size, mmzoo/hub/download.py)."""
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise HubError(f"refusing to pull {repo_id}: its files take {needed:,} bytes, {folder} has {free:,} bytes free")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def pull(
    repo_id: str,
    out: str | Path,
    *,
    revision: str | None = None,
    tgt_fmt: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Download ``repo_id`` at ``revision`` (pinned to the commit it resolves to) into ``out``, verified.

    With ``tgt_fmt`` the snapshot is converted in the same step. With ``overwrite`` an existing OUT is
    replaced once the new one is complete, and files it already holds are reused instead of downloaded.
    One pull (or convert) at a time writes OUT: a second one fails in one line (mmzoo.io.claim).
    """
    _check_repo_id(repo_id)
    with parents_removed_on_failure(Path(out)):  # a failed pull leaves no empty folders it made for OUT
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        with exclusive_output(Path(out)):
            return _pull(repo_id, Path(out), revision, tgt_fmt, token, endpoint, overwrite)


def _pull(repo_id: str, out: Path, revision: str | None, tgt_fmt: str | None, token: str | None, endpoint: str | None,
          overwrite: bool) -> dict[str, Any]:
    """:func:`pull`, with OUT's lock held."""
    from .. import api as mmzoo_api

    ep = resolve_endpoint(endpoint)
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise OutputExists(f"{out} already exists (pass --overwrite to replace it)", path=out)
    out.parent.mkdir(parents=True, exist_ok=True)

    hf = _api(ep, token)
    tag = f"{os.getpid()}-{os.urandom(3).hex()}"
    download = out.parent / f".{out.name}.mmzoo-pull-{tag}"
    converted = out.parent / f".{out.name}.mmzoo-conv-{tag}"
    old = out.parent / f".{out.name}.mmzoo-old-{tag}"
    reused: list[str] = []
    try:
        with _hub_errors(repo_id, ep, revision, "pull"):
            from huggingface_hub.hf_api import RepoFile

            from .download import download_files

            info = hf.repo_info(repo_id, revision=revision)
            sha = info.sha
            if not sha or not _COMMIT.match(sha):
                raise HubError(f"the Hub at {ep} did not resolve {revision or 'main'!r} of {repo_id} to a commit")
            tree = [f for f in hf.list_repo_tree(repo_id, recursive=True, revision=sha) if isinstance(f, RepoFile)]
            if not tree:
                raise HubError(f"{repo_id}@{sha[:12]} at {ep} is empty")
            _check_repo_paths([e.path for e in tree] + [s.rfilename for s in info.siblings or []], repo_id)
            _check_free_space(out.parent, sum(e.size or 0 for e in tree), repo_id)
            download.mkdir()
            if out.is_dir() and overwrite:
                _seed_from(out, download)
            reused = download_files(repo_id, sha, tree, download, endpoint=ep, token=token,
                                    reusable=lambda local, entry: _differs_from_listing(local, entry) is None)
        # Files the local copy had but this commit lacks must not leak into OUT.
        wanted = {e.path for e in tree}
        for p in sorted(download.rglob("*"), reverse=True):
            rel = p.relative_to(download).as_posix()
            if rel in wanted:
                continue
            if p.is_file() or p.is_symlink():
                p.unlink()
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        _verify_snapshot(download, tree, verified=set(reused))
        try:
            with self_contained():  # a downloaded config may not send mmzoo to read a local folder
                checked = mmzoo_api.check_checkpoint(download)
        except MmzooError as exc:
            raise HubError(f"{repo_id}@{sha[:12]} downloaded but is not a valid checkpoint: {exc.one_line()}") from exc
        src_fmt = checked.get("format")
        record = {
            "repo_id": repo_id,
            "endpoint": ep,
            "revision": revision or "main",
            "commit": sha,
            "format": src_fmt,
            "pulled_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": [{"path": e.path, "size": e.size, "oid": e.blob_id,
                       "sha256": e.lfs.sha256 if e.lfs is not None else None} for e in tree],
        }
        final = download
        if tgt_fmt and tgt_fmt != src_fmt:
            # Written in a temporary sibling: anything that records its own location must name OUT.
            extra = {"llava_vision_tower": str(out.resolve() / "image_model")} if tgt_fmt == "llava" else {}
            with self_contained():
                mmzoo_api.convert(download, converted, tgt_fmt=tgt_fmt, src_fmt=src_fmt, overwrite=True, **extra)
            record["converted_to"] = tgt_fmt
            final = converted
        (final / HUB_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")

        if out.exists() or out.is_symlink():
            os.replace(out, old) if out.is_dir() and not out.is_symlink() else out.unlink()
        os.replace(final, out)
        _remove(old)
    except BaseException:
        if old.exists() and not out.exists():
            os.replace(old, out)  # put the previous OUT back
        raise
    finally:
        for p in (download, converted):
            _remove(p)
    return {
        "repo_id": repo_id,
        "endpoint": ep,
        "revision": revision or "main",
        "commit": sha,
        "path": str(out),
        "format": tgt_fmt or src_fmt,
        "source_format": src_fmt,
        "converted": final is converted,
        "files": [e.path for e in tree],
        "bytes": sum(e.size or 0 for e in tree),
        "reused": reused,
        "record": str(out / HUB_RECORD),
    }
