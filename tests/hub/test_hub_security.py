"""hub push/pull never reach outside the checkpoint folder: a symlink is not followed out on push, and a
pulled repo cannot make mmzoo read local files (an index naming ``../x``, a config naming a local folder)."""
from __future__ import annotations

import json
import shutil

import pytest
from hub_helpers import WRITE_TOKEN, siblings

from mmzoo.hub import api as hub
from mmzoo.errors import HubError


def _upload_raw(server, repo_id, folder):
    """Publish ``folder`` as it is (mmzoo's push would refuse it): the real client, the local server."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=server.url, token=WRITE_TOKEN)
    api.create_repo(repo_id)
    ops = [CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
           for p in sorted(folder.rglob("*")) if p.is_file()]
    api.create_commit(repo_id=repo_id, operations=ops, commit_message="crafted")


def test_push_refuses_a_symlink_out_of_the_folder(server, tiny_hf, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_hf, ckpt)
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the Hub")
    (ckpt / "notes.txt").symlink_to(secret)
    with pytest.raises(HubError, match="refusing to push .*notes.txt is a symlink to .*secret.txt, outside the checkpoint folder"):
        hub.push(ckpt, "alice/leaky")
    assert "alice/leaky" not in server.state.repos  # refused before any request


def test_pull_refuses_an_index_naming_a_local_file(server, tiny_hf, tmp_path):
    from mmzoo.converters.pipeline import convert

    crafted = tmp_path / "crafted"
    convert(tiny_hf, crafted, tgt_fmt="hf", shard_size="150KB")
    index_path = crafted / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    last = sorted(set(index["weight_map"].values()))[-1]
    dest = tmp_path / "dest"
    dest.mkdir()
    shutil.move(crafted / last, dest / "victim.safetensors")  # a local file beside OUT with the right tensors
    index["weight_map"] = {k: ("../victim.safetensors" if v == last else v) for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    _upload_raw(server, "alice/crafted", crafted)

    out = dest / "pulled"
    with pytest.raises(HubError, match="victim.safetensors.*outside the checkpoint folder"):
        hub.pull("alice/crafted", out, tgt_fmt="internal")
    assert not out.exists() and siblings(out) == []


def test_pull_refuses_a_config_naming_a_local_vision_tower(server, tiny_hf, tmp_path):
    from mmzoo.converters.pipeline import convert

    local = tmp_path / "local-llava"
    convert(tiny_hf, local, tgt_fmt="llava")  # image_model/ + text_model_llava/
    crafted = tmp_path / "crafted"
    shutil.copytree(local / "text_model_llava", crafted)  # the text half only, its tower "on the user's disk"
    config = json.loads((crafted / "config.json").read_text())
    config["mm_vision_tower"] = str(local / "image_model")
    (crafted / "config.json").write_text(json.dumps(config))
    _upload_raw(server, "alice/tower", crafted)

    out = tmp_path / "pulled"
    with pytest.raises(HubError, match="outside the checkpoint folder"):
        hub.pull("alice/tower", out)
    assert not out.exists()


def _publish(server, repo_id, files):
    """Commit ``files`` straight into the server's state, names and all (push would refuse them, as it should)."""
    state = server.state
    repo = state.create_repo(repo_id)
    commit = state.new_commit(repo, repo.refs["main"], "hostile", {**repo.commits[repo.refs["main"]].files, **files})
    repo.refs["main"] = commit.sha


@pytest.mark.parametrize("name, problem", [
    ("../evil.txt", "'..' path segment"),
    ("sub/../../evil.txt", "'..' path segment"),
    ("/tmp/mmzoo-evil.txt", "absolute path"),
    ("C:/evil.txt", "names a drive"),
    ("a\\..\\..\\evil.txt", "backslash"),
    ("bad\nname.txt", "control character"),
    (".cache/huggingface/download/config.json.metadata", "bookkeeping"),
    (".mmzoo-hub.json", "bookkeeping"),
])
def test_pull_refuses_file_names_that_leave_out_before_downloading(server, tiny_hf, tmp_path, capsys, name, problem):
    """huggingface_hub's own ValueError for `..` used to reach the user as a traceback; a repository file under
    .cache/huggingface was written into the client's download metadata."""
    from mmzoo.cli import main

    files = {p.name: p.read_bytes() for p in tiny_hf.iterdir() if p.is_file()}
    files[name] = b"pwned"
    _publish(server, "alice/names", files)
    out = tmp_path / "d" / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["hub", "pull", "alice/names", "-o", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("mmzoo: error: "), err
    assert "refusing to pull alice/names" in err and problem in err, err
    assert server.state.downloads("alice/names") == []  # refused from the listing, before any file was fetched
    assert sorted(tmp_path.rglob("*")) == [] and not (tmp_path.parent / "evil.txt").exists()


def test_the_downloader_refuses_a_name_leaving_out_itself_in_one_line(server, tiny_hf, tmp_path, monkeypatch, capsys):
    """Without mmzoo's check of the listing, the downloader (mmzoo/hub/download.py) refuses `..` itself before it
    creates or writes anything for that name: one line, not a traceback, and nothing outside OUT."""
    from mmzoo.cli import main

    files = {p.name: p.read_bytes() for p in tiny_hf.iterdir() if p.is_file()}
    files["../evil.txt"] = b"pwned"
    _publish(server, "alice/sly", files)
    out = tmp_path / "out"
    monkeypatch.setattr(hub, "_check_repo_paths", lambda paths, repo_id: None)
    with pytest.raises(SystemExit) as exit_info:
        main(["hub", "pull", "alice/sly", "-o", str(out)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err and err.count("mmzoo: error: ") == 1, err
    assert err.strip().splitlines()[-1].startswith("mmzoo: error: ") and "refusing to write '../evil.txt'" in err, err
    assert not out.exists() and not (tmp_path.parent / "evil.txt").exists()


def test_pull_refuses_a_repository_larger_than_the_free_space(server, tiny_hf, tmp_path, monkeypatch):
    import hub_server

    real_entry = hub_server.Handler._entry

    def huge(self, path, data):  # the listing claims a petabyte for the weights
        entry = real_entry(self, path, data)
        if path == "model.safetensors":
            entry["size"] = 10**15
        return entry

    monkeypatch.setattr(hub_server.Handler, "_entry", huge)
    _publish(server, "alice/huge", {p.name: p.read_bytes() for p in tiny_hf.iterdir() if p.is_file()})
    out = tmp_path / "out"
    with pytest.raises(HubError, match=r"refusing to pull alice/huge: its files take 1,000,000,000,\d{3},\d{3} bytes, .* bytes free"):
        hub.pull("alice/huge", out)
    assert server.state.downloads("alice/huge") == [] and not out.exists() and siblings(out) == []


@pytest.mark.parametrize("listed, refusal", [
    (10, "download refused: the server sent more than the 10 bytes the Hub lists for config.json"),
    (10**6, r"download corrupt: config.json has [\d,]+ bytes, the Hub lists 1,000,000"),
])
def test_pull_refuses_a_server_that_sends_other_sizes_than_it_lists(server, tiny_hf, tmp_path, monkeypatch, listed,
                                                                     refusal):
    import hub_server

    real_entry = hub_server.Handler._entry

    def lying(self, path, data):
        entry = real_entry(self, path, data)
        if path == "config.json":
            entry["size"] = listed
        return entry

    monkeypatch.setattr(hub_server.Handler, "_entry", lying)
    _publish(server, "alice/lie", {p.name: p.read_bytes() for p in tiny_hf.iterdir() if p.is_file()})
    out = tmp_path / "out"
    with pytest.raises(HubError, match=refusal):
        hub.pull("alice/lie", out)
    assert not out.exists() and siblings(out) == []
