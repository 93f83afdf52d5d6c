"""Hostile repositories and huggingface_hub's own errors: one line, exit 2, nothing left at OUT."""
from __future__ import annotations

import pytest

from hub_helpers import siblings
from mmzoo.hub import api as hub
from mmzoo.errors import HubError

# 9 levels of 9 aliases: 9**9 values once expanded, 400 bytes in the repository
YAML_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)


def _publish(server, repo_id: str, files: dict[str, bytes]) -> None:
    """Commit ``files`` straight into the server's state (push would refuse them, as it should)."""
    state = server.state
    repo = state.create_repo(repo_id)
    commit = state.new_commit(repo, repo.refs["main"], "hostile", {**repo.commits[repo.refs["main"]].files, **files})
    repo.refs["main"] = commit.sha


@pytest.mark.parametrize("name,content,needle", [
    ("mmzoo.yaml", YAML_BOMB.encode(), "expands to more than"),
    ("mmzoo.yaml", b"model: " + b"[" * 50_000 + b"]" * 50_000, "nested more than"),
    ("config.json", b'{"model_type": "llava", "text_config": {"num_hidden_layers": 1e10}}', "num_hidden_layers"),
    ("config.json", b'{"model_type": "llava", "x": "\xff"}', "not UTF-8"),
], ids=["yaml-bomb", "deep-yaml", "absurd-layers", "non-utf8"])
def test_pulled_repo_with_hostile_files_is_one_line(server, tiny_hf, tmp_path, capsys, name, content, needle):
    files = {p.name: p.read_bytes() for p in tiny_hf.iterdir() if p.is_file()}
    files[name] = content
    _publish(server, "alice/hostile", files)
    out = tmp_path / "out"
    with pytest.raises(HubError, match="not a valid checkpoint") as info:
        hub.pull("alice/hostile", out)
    line = info.value.one_line()
    assert needle in line and "\n" not in line
    assert not out.exists() and siblings(out) == []


@pytest.mark.parametrize("repo_id", ["alice/b--c", "alice/" + "x" * 100])
def test_huggingface_hub_validation_errors_are_wrapped(server, repo_id, tmp_path, tiny_hf):
    with pytest.raises(HubError, match="huggingface_hub refused to pull"):
        hub.pull(repo_id, tmp_path / "out")
    with pytest.raises(HubError, match="huggingface_hub refused to push"):
        hub.push(tiny_hf, repo_id)
    assert not (tmp_path / "out").exists()


def test_failed_pull_removes_the_parent_folders_it_made_and_only_those(server, tiny_hf, tmp_path, capsys):
    from mmzoo.cli import main

    kept = tmp_path / "existing"
    kept.mkdir()
    out = kept / "new" / "deeper" / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["hub", "pull", "alice/does-not-exist", "-o", str(out)])
    code, err = exit_info.value.code, capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1].startswith("mmzoo: error:") and "Traceback" not in err
    assert not (kept / "new").exists()  # made by mmzoo for OUT, removed with the failure
    assert kept.is_dir() and list(kept.iterdir()) == []  # existed before: kept, and nothing left in it
