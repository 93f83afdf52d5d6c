"""The optional ``mmzoo demo --hub-endpoint URL`` step: push the demo checkpoint, pull it back, compare bytes.

Auth comes from ``HF_TOKEN`` or the login cache, exactly like ``mmzoo hub push``. The repository is
``<your user>/mmzoo-demo-<time>`` (the user name from the endpoint's whoami), so it never overwrites
anything. For a self-contained run, start the local Hub look-alike used by the tests:
``python tests/hub/hub_server.py --port 8765 --token hf_demo`` then
``HF_TOKEN=hf_demo mmzoo demo --hub-endpoint http://127.0.0.1:8765``.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from ..errors import HubError


def _digest(folder: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not rel.startswith(".cache/") and rel != ".mmzoo-hub.json":
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            out[rel] = h.hexdigest()
    return out


def _user(endpoint: str) -> str:
    from . import api as hub

    hf = hub._api(endpoint, None)
    with hub._hub_errors("whoami", endpoint, None, "push"):
        return hf.whoami()["name"]


def run_demo_step(checkpoint: Path, workdir: Path, endpoint: str, console) -> dict[str, Any]:
    """Push ``checkpoint`` to ``endpoint``, pull it into ``workdir/hub-pull``, check every file is bit-exact."""
    from . import api as hub

    checkpoint, workdir = Path(checkpoint), Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    repo_id = f"{_user(endpoint)}/mmzoo-demo-{time.strftime('%Y%m%d-%H%M%S')}"
    console.print(f"[bold]hub[/] pushing {checkpoint.name} to {endpoint}/{repo_id}")
    t0 = time.perf_counter()
    pushed = hub.push(checkpoint, repo_id, endpoint=endpoint, private=True,
                      message="mmzoo demo: round trip check")
    out = workdir / "hub-pull"
    console.print(f"[bold]hub[/] pulling {repo_id}@{pushed['commit'][:12]} into {out}")
    pulled = hub.pull(repo_id, out, revision=pushed["commit"], endpoint=endpoint, overwrite=True)
    local, remote = _digest(checkpoint), _digest(out)
    remote.pop(".gitattributes", None)  # created by the Hub with the repository
    if pushed["card_written"]:  # the generated model card exists only in the repository
        remote.pop("README.md", None)
    mismatched = sorted(k for k in set(local) | set(remote) if local.get(k) != remote.get(k))
    if mismatched:
        raise HubError(f"hub round trip is not bit-exact: {', '.join(mismatched[:5])}"
                       + (f" and {len(mismatched) - 5} more" if len(mismatched) > 5 else ""))
    seconds = time.perf_counter() - t0
    console.print(f"[green]hub[/] round trip bit-exact: {len(local)} files, "
                  f"{sum((checkpoint / k).stat().st_size for k in local):,} bytes, {seconds:.1f}s")
    return {
        "repo_id": repo_id,
        "endpoint": endpoint,
        "commit": pushed["commit"],
        "pulled_commit": pulled["commit"],
        "path": str(out),
        "files": len(local),
        "bit_exact": True,
        "seconds": round(seconds, 2),
    }
