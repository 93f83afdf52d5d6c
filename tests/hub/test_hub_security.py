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
