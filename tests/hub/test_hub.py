"""mmzoo hub push/pull against a real local HTTP server speaking the Hub API, with the real client."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import free_port, mmzoo_command
from hub_helpers import READ_TOKEN, USER, WRITE_TOKEN, siblings, tree_digest

from mmzoo.hub import api as hub
from mmzoo.errors import HubError, OutputExists


@pytest.fixture
def ckpt(tiny_hf, tmp_path) -> Path:
    """A private copy of the tiny checkpoint (tests add their own README.md to it)."""
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_hf, dst)
    return dst


def test_push_pull_round_trip_bit_exact(server, ckpt, tmp_path):
    before = tree_digest(ckpt)
    res = hub.push(ckpt, "alice/tiny-llava")
    assert res["card_written"] and "README.md" in res["files"]
    assert tree_digest(ckpt) == before  # the source folder is never modified
    assert len(res["commit"]) == 40 and res["endpoint"] == server.url
    repo = server.state.repos["alice/tiny-llava"]
    assert repo.refs["main"] == res["commit"] and not repo.private
    card = repo.commits[res["commit"]].files["README.md"].decode()
    assert "| format | `hf` |" in card and "parameters" in card and "How to load it" in card
    assert "LlavaForConditionalGeneration.from_pretrained(\"alice/tiny-llava\")" in card

    out = tmp_path / "pulled"
    got = hub.pull("alice/tiny-llava", out)
    assert got["commit"] == res["commit"] and got["format"] == "hf" and not got["converted"]
    pulled = tree_digest(out)
    assert pulled.pop(".gitattributes")  # created with the repo, like on the Hub
    assert pulled.pop("README.md") and pulled == before
    record = json.loads((out / ".mmzoo-hub.json").read_text())
    assert record["commit"] == res["commit"] and record["repo_id"] == "alice/tiny-llava"
    assert {f["path"] for f in record["files"]} == set(pulled) | {".gitattributes", "README.md"}
    assert siblings(out) == ["pulled"]  # no temp siblings left
    # The weights travelled as LFS objects (sha256-verified) and were checked as a checkpoint.
    assert any(f["sha256"] for f in record["files"] if f["path"].endswith(".safetensors"))


def test_push_to_new_branch_and_pull_that_revision(server, ckpt, tmp_path):
    main = hub.push(ckpt, "alice/tiny-llava")
    (ckpt / "README.md").write_text("# dev build\n")
    dev = hub.push(ckpt, "alice/tiny-llava", revision="dev", message="dev card")
    assert dev["branch_created"] and dev["revision"] == "dev"
    repo = server.state.repos["alice/tiny-llava"]
    assert repo.refs["dev"] == dev["commit"] != main["commit"] == repo.refs["main"]
    assert repo.commits[dev["commit"]].parent == main["commit"] and repo.commits[dev["commit"]].message == "dev card"

    got = hub.pull("alice/tiny-llava", tmp_path / "dev", revision="dev")
    assert got["commit"] == dev["commit"]
    assert (tmp_path / "dev" / "README.md").read_text() == "# dev build\n"
    got_main = hub.pull("alice/tiny-llava", tmp_path / "main")
    assert got_main["commit"] == main["commit"]
    assert (tmp_path / "main" / "README.md").read_text() != "# dev build\n"
    # pinned: pulling by commit sha gives the same bytes
    by_sha = hub.pull("alice/tiny-llava", tmp_path / "sha", revision=dev["commit"])
    assert tree_digest(tmp_path / "sha") == tree_digest(tmp_path / "dev") and by_sha["commit"] == dev["commit"]


def test_create_pr(server, ckpt, tmp_path):
    hub.push(ckpt, "alice/tiny-llava", private=True)
    assert server.state.repos["alice/tiny-llava"].private
    (ckpt / "README.md").write_text("# proposed card\n")
    pr = hub.push(ckpt, "alice/tiny-llava", create_pr=True, message="Better card")
    assert pr["pr_url"].endswith("/alice/tiny-llava/discussions/1") and pr["revision"] == "refs/pr/1"
    got = hub.pull("alice/tiny-llava", tmp_path / "pr", revision="refs/pr/1")
    assert got["commit"] == pr["commit"] and (tmp_path / "pr" / "README.md").read_text() == "# proposed card\n"
    assert (tmp_path / "pr" / "README.md").read_text() != server.state.repos["alice/tiny-llava"].commits[
        server.state.repos["alice/tiny-llava"].refs["main"]].files["README.md"].decode()


def test_pull_with_conversion(server, ckpt, tmp_path):
    from mmzoo.api import check_checkpoint, diff

    hub.push(ckpt, "alice/tiny-llava")
    out = tmp_path / "as-llava"
    got = hub.pull("alice/tiny-llava", out, tgt_fmt="llava")
    assert got["converted"] and got["format"] == "llava" and got["source_format"] == "hf"
    assert check_checkpoint(out)["format"] == "llava"
    assert json.loads((out / ".mmzoo-hub.json").read_text())["converted_to"] == "llava"
    assert diff(ckpt, out)["equal"]
    assert siblings(out) == ["as-llava"]
    configs = " ".join(p.read_text() for p in out.rglob("*.json"))
    assert "mmzoo-conv" not in configs and "mmzoo-pull" not in configs  # no temp paths baked in
    assert str(out.resolve() / "image_model") in configs


def test_layouts_people_publish(server, ckpt, tmp_path):
    """llava-hf style (sharded safetensors + index, org namespace) and mmzoo's own formats."""
    from mmzoo.api import convert, diff

    sharded = tmp_path / "sharded"
    convert(ckpt, sharded, tgt_fmt="hf", shard_size="100KB")
    assert len(list(sharded.glob("model-*.safetensors"))) > 2 and (sharded / "model.safetensors.index.json").is_file()
    pushed = hub.push(sharded, "llava-hf/tiny-llava-sharded")
    out = tmp_path / "sharded-pulled"
    got = hub.pull("llava-hf/tiny-llava-sharded", out)
    assert got["commit"] == pushed["commit"] and diff(ckpt, out)["equal"]
    assert {k: v for k, v in tree_digest(out).items() if k not in (".gitattributes", "README.md")} == tree_digest(sharded)

    internal = tmp_path / "internal"
    convert(ckpt, internal, tgt_fmt="internal")
    assert hub.push(internal, "alice/tiny-internal")["format"] == "internal"
    back = hub.pull("alice/tiny-internal", tmp_path / "back-to-hf", tgt_fmt="hf")
    assert back["source_format"] == "internal" and back["format"] == "hf" and diff(ckpt, tmp_path / "back-to-hf")["equal"]

    # a pulled folder can be pushed again as is (local metadata and the pull record stay home)
    again = hub.push(out, "alice/re-share")
    assert ".mmzoo-hub.json" not in again["files"]
    files = server.state.repos["alice/re-share"].commits[again["commit"]].files
    assert not any(p.startswith(".cache") or p == ".mmzoo-hub.json" for p in files)

    # an incomplete index is refused before anything is uploaded
    broken = tmp_path / "broken"
    shutil.copytree(sharded, broken)
    next(broken.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(HubError, match="refusing to push"):
        hub.push(broken, "alice/broken")
    assert "alice/broken" not in server.state.repos


def test_second_pull_reuses_what_is_there(server, ckpt, tmp_path):
    hub.push(ckpt, "alice/tiny-llava")
    out = tmp_path / "out"
    first = hub.pull("alice/tiny-llava", out)
    served = len(server.state.downloads())
    assert served == len(first["files"])
    with pytest.raises(OutputExists):
        hub.pull("alice/tiny-llava", out)
    again = hub.pull("alice/tiny-llava", out, overwrite=True)
    assert len(server.state.downloads()) == served  # nothing downloaded twice
    assert sorted(again["reused"]) == sorted(first["files"])
    assert tree_digest(out) == tree_digest(tmp_path / "out") and siblings(out) == ["out"]

    # a new commit: only the changed file travels
    (ckpt / "README.md").write_text("# v2\n")
    hub.push(ckpt, "alice/tiny-llava")
    third = hub.pull("alice/tiny-llava", out, overwrite=True)
    assert server.state.downloads()[served:] == ["README.md"]
    assert "README.md" not in third["reused"] and (out / "README.md").read_text() == "# v2\n"


def test_dropped_connection_once_is_resumed(server, ckpt, tmp_path, fast_retries):
    hub.push(ckpt, "alice/tiny-llava")
    weights = next(p.name for p in ckpt.glob("*.safetensors"))
    server.state.drop[weights] = "once"
    out = tmp_path / "out"
    hub.pull("alice/tiny-llava", out)
    assert (out / weights).read_bytes() == (ckpt / weights).read_bytes()
    assert server.state.downloads().count(weights) == 2


def test_dropped_connection_fails_cleanly(server, ckpt, tmp_path, fast_retries):
    hub.push(ckpt, "alice/tiny-llava")
    weights = next(p.name for p in ckpt.glob("*.safetensors"))
    server.state.drop[weights] = "always"
    out = tmp_path / "out"
    with pytest.raises(HubError, match=r"^network failure talking to http://127\.0\.0\.1:\d+ during pull"):
        hub.pull("alice/tiny-llava", out)
    assert not out.exists() and siblings(out) == []
    assert server.state.downloads().count(weights) == 6  # the client's own 5 retries were used up

    # an existing OUT survives a failed --overwrite pull untouched
    server.state.drop.clear()
    hub.pull("alice/tiny-llava", out)
    snapshot = tree_digest(out)
    (ckpt / "README.md").write_text("# changed\n")
    (ckpt / weights).write_bytes((ckpt / weights).read_bytes())  # same bytes: not re-uploaded
    hub.push(ckpt, "alice/tiny-llava")
    server.state.drop["README.md"] = "always"
    before = {p.relative_to(out): (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*")}
    with pytest.raises(HubError, match="network failure"):
        hub.pull("alice/tiny-llava", out, overwrite=True)
    assert tree_digest(out) == snapshot and siblings(out) == ["out"]
    assert {p.relative_to(out): (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.rglob("*")} == before


def test_errors_are_one_line_and_leave_nothing(server, ckpt, tmp_path, monkeypatch):
    hub.push(ckpt, "alice/private-llava", private=True)
    out = tmp_path / "out"
    cases = [
        (dict(repo_id="alice/nope"), rf"^repository 'alice/nope' not found at {server.url}$"),
        (dict(repo_id="alice/private-llava", revision="nope"), r"^revision 'nope' not found in alice/private-llava"),
        (dict(repo_id="alice/private-llava", token="hf_wrong"), r"^401 unauthorized .*token was rejected.*HF_TOKEN.*hf auth login"),
    ]
    for kwargs, pattern in cases:
        with pytest.raises(HubError, match=pattern) as info:
            hub.pull(out=out, **kwargs)
        assert "\n" not in info.value.one_line()
        assert not out.exists() and siblings(out) == []

    monkeypatch.delenv("HF_TOKEN")  # no token anywhere (the login cache path points to nothing)
    with pytest.raises(HubError, match=r"^401 unauthorized for alice/private-llava.*set HF_TOKEN, pass --token, or run `hf auth login`"):
        hub.pull("alice/private-llava", out)
    with pytest.raises(HubError, match=r"^401 unauthorized for alice/x.*write access"):
        hub.push(ckpt, "alice/x")
    assert not out.exists() and siblings(out) == [] and "alice/x" not in server.state.repos
    # the token can also come from the login cache
    from huggingface_hub import constants

    Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True, exist_ok=True)
    Path(constants.HF_TOKEN_PATH).write_text(WRITE_TOKEN)
    assert hub.pull("alice/private-llava", out)["commit"] == server.state.repos["alice/private-llava"].refs["main"]
    with pytest.raises(HubError, match=r"^403 forbidden.*push alice/x.*write"):
        hub.push(ckpt, "alice/x", token=READ_TOKEN)


def test_push_refuses_a_path_that_is_not_a_checkpoint(server, tmp_path, ckpt):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with pytest.raises(HubError, match=r"refusing to push .*junk: not a valid checkpoint"):
        hub.push(junk, "alice/junk")
    with pytest.raises(HubError, match="does not exist"):
        hub.push(tmp_path / "missing", "alice/junk")
    broken = tmp_path / "broken"
    shutil.copytree(ckpt, broken)
    shard = next(broken.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated weights
    with pytest.raises(HubError, match="refusing to push"):
        hub.push(broken, "alice/junk")
    assert "alice/junk" not in server.state.repos and not (junk / "README.md").exists()
    with pytest.raises(HubError, match="invalid repository id"):
        hub.push(ckpt, "no-owner")


def test_network_unreachable(server, tmp_path, monkeypatch):
    port = free_port()  # nothing listens there
    dead = f"http://127.0.0.1:{port}"
    out = tmp_path / "out"
    with pytest.raises(HubError, match=rf"^network failure talking to {dead} during pull of alice/x: ConnectError"):
        hub.pull("alice/x", out, endpoint=dead)
    assert not out.exists() and siblings(out) == []


def test_model_card_moe_and_other_formats():
    info = {"format": "internal", "vision": "clip_vision_model", "text": "llama", "projector": "mlp2x_gelu",
            "parameters": 1_234_567, "parameters_by_component": {"vision": 1000, "text": 1_233_567},
            "dtypes": {"float32": 10}, "moe": {"num_experts": 4, "top_k": 2, "layers": [0, 1]},
            "tokenizer": True, "image_processor": True, "size_bytes": 42}
    card = hub.model_card(info, repo_id="bob/moe")
    assert card.startswith("---\n") and "mixture-of-experts" in card and "| num_experts | 4 |" in card
    assert "1,234,567 (1.23M)" in card and "--tgt-fmt hf" in card and "library_name" not in card


def _cli(capsys, *args):
    """The real CLI entry point, in-process (exit code, stdout, stderr)."""
    from mmzoo.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_push_pull_and_errors(server, hub_env, ckpt, tmp_path, capsys):
    code, out, err = _cli(capsys, "hub", "push", str(ckpt), "alice/cli-llava", "--revision", "exp", "-m", "from cli")
    assert code == 0, err
    assert "alice/cli-llava" in out and server.state.repos["alice/cli-llava"].refs["exp"]
    dest = tmp_path / "cli-out"
    code, out, err = _cli(capsys, "hub", "pull", "alice/cli-llava", "-o", str(dest), "--revision", "exp",
                          "--tgt-fmt", "internal", "--json")
    assert code == 0, err
    assert json.loads(out)["format"] == "internal"
    assert json.loads((dest / ".mmzoo-hub.json").read_text())["converted_to"] == "internal"
    code, out, err = _cli(capsys, "hub", "pull", "alice/cli-llava", "-o", str(tmp_path / "x"), "--token", "bad")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "mmzoo: error: 401 unauthorized" in err
    code, out, err = _cli(capsys, "hub", "push", str(tmp_path), "alice/cli-llava")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "mmzoo: error: refusing to push" in err
    # and once as a real process: exit status 2, one line on stderr
    proc = subprocess.run(mmzoo_command("hub", "pull", "alice/missing", "-o", str(tmp_path / "x")),
                          capture_output=True, text=True, env=hub_env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"mmzoo: error: repository 'alice/missing' not found at {server.url}"]
    assert not (tmp_path / "x").exists()


def test_hub_cli_import_is_light():
    code = ("import sys, mmzoo.cli, mmzoo.hub.cli; "
            "heavy = [m for m in ('huggingface_hub', 'torch', 'transformers') if m in sys.modules]; "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_demo_step(server, ckpt, tmp_path):
    from rich.console import Console

    from mmzoo.hub.demo_step import run_demo_step

    result = run_demo_step(ckpt, tmp_path / "work", server.url, Console(quiet=True))
    assert result["bit_exact"] and result["commit"] == result["pulled_commit"]
    assert result["repo_id"].startswith(f"{USER}/")


def test_pushing_what_is_already_there_says_so(server, hub_env, ckpt, tmp_path, capsys):
    first = hub.push(ckpt, "alice/same")
    assert first["changed"]
    again = hub.push(ckpt, "alice/same")
    assert not again["changed"] and again["commit"] == first["commit"] and again["revision"] == "main"
    pr = hub.push(ckpt, "alice/same", create_pr=True)
    assert not pr["changed"] and pr["pr_url"] is None and pr["revision"] == "main"
    assert not server.state.repos["alice/same"].refs.get("refs/pr/1")
    code, out, err = _cli(capsys, "hub", "push", str(ckpt), "alice/same", "--create-pr")
    assert code == 0, err
    line = " ".join(out.split())
    assert "unchanged" in line and "nothing pushed" in line and "no pull request opened" in line and "None" not in line
    (ckpt / "README.md").write_text("# a new card\n")
    code, out, err = _cli(capsys, "hub", "push", str(ckpt), "alice/same", "--create-pr")
    assert code == 0 and "discussions/1" in out and "None" not in out
