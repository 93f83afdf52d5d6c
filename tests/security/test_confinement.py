"""Every file mmzoo reads from a checkpoint resolves inside its folder: an index entry with ``..`` or an
absolute path, or a symlink to outside, is refused in one line before anything is written."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from cli_helpers import run_cli
from mmzoo.converters.pipeline import convert, read_checkpoint
from mmzoo.errors import MmzooError


@pytest.fixture
def sharded(tiny, tmp_path):
    """A real hf checkpoint sharded in three, copied so each test may damage it."""
    folder = tmp_path / "src"
    convert(tiny.hf(), folder, tgt_fmt="hf", shard_size="150KB")
    assert len(list(folder.glob("model-*.safetensors"))) >= 2
    return folder


def _assert_refused(args, out, *needles):
    code, stdout, stderr = run_cli(*args)
    assert code == 2, (stdout, stderr)
    assert stderr.startswith("mmzoo: error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in stderr, stderr
    assert not out.exists()


def _move_last_shard_outside(folder, name_in_index):
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    last = sorted(set(index["weight_map"].values()))[-1]
    outside = folder.parent / "outside.safetensors"
    shutil.move(folder / last, outside)  # the bytes exist, but outside the checkpoint
    index["weight_map"] = {k: (name_in_index(outside) if v == last else v) for k, v in index["weight_map"].items()}
    index_path.write_text(json.dumps(index))
    return outside


@pytest.mark.parametrize("spelling", ["relative", "absolute"])
def test_index_naming_a_file_outside_is_refused(sharded, tmp_path, spelling):
    name = (lambda p: "../" + p.name) if spelling == "relative" else (lambda p: str(p))
    outside = _move_last_shard_outside(sharded, name)
    out = tmp_path / "out"
    _assert_refused(("convert", str(sharded), "-o", str(out), "--tgt-fmt", "internal"), out,
                    "outside the checkpoint folder", "model.safetensors.index.json")
    _assert_refused(("inspect", str(sharded)), out, "outside the checkpoint folder")
    assert outside.is_file()


def test_weights_symlinked_to_outside_are_refused(tiny, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny.hf(), src)
    outside = tmp_path / "elsewhere.safetensors"
    shutil.move(src / "model.safetensors", outside)
    (src / "model.safetensors").symlink_to(outside)
    out = tmp_path / "out"
    _assert_refused(("convert", str(src), "-o", str(out), "--tgt-fmt", "internal"), out,
                    "is a symlink to", "outside the checkpoint folder")


@pytest.mark.parametrize("name", ["generation_config.json", "tokenizer.json", "config.json"])
def test_side_files_symlinked_to_outside_are_refused(tiny, tmp_path, name):
    src = tmp_path / "src"
    shutil.copytree(tiny.hf(), src)
    secret = tmp_path / "secret.json"
    shutil.copyfile(src / name if (src / name).exists() else tiny.hf() / "config.json", secret)
    (src / name).unlink(missing_ok=True)
    (src / name).symlink_to(secret)  # a valid file of the right kind: only its location is wrong
    out = tmp_path / "out"
    _assert_refused(("convert", str(src), "-o", str(out), "--tgt-fmt", "hf"), out, name, "outside the checkpoint folder")


def test_symlink_to_a_system_file_is_not_copied(tiny, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(tiny.hf(), src)
    (src / "generation_config.json").unlink(missing_ok=True)
    (src / "generation_config.json").symlink_to("/etc/passwd")
    out = tmp_path / "out"
    _assert_refused(("convert", str(src), "-o", str(out), "--tgt-fmt", "hf"), out, "/etc/passwd")


def test_symlinks_inside_the_folder_and_the_hf_cache_layout_are_fine(tiny, tmp_path):
    """huggingface_hub's cache: snapshots/<rev>/* are symlinks into the repo's blobs/ folder."""
    from mmzoo.inspection.api import diff

    repo = tmp_path / "hub" / "models--org--tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, path in enumerate(sorted(p for p in tiny.hf().iterdir() if p.is_file())):
        blob = repo / "blobs" / f"blob{i}"
        shutil.copyfile(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    out = tmp_path / "out"
    convert(snapshot, out, tgt_fmt="internal")
    assert diff(tiny.hf(), out)["equal"]

    local = tmp_path / "local"
    shutil.copytree(tiny.hf(), local)
    os.rename(local / "tokenizer.json", local / "tokenizer.real.json")
    (local / "tokenizer.json").symlink_to("tokenizer.real.json")  # a link within the folder
    assert read_checkpoint(local).tokenizer_files["tokenizer.json"].resolve() == (local / "tokenizer.real.json").resolve()


def test_a_subfolder_symlinked_to_outside_is_refused(tiny, tmp_path):
    internal = tmp_path / "internal"
    convert(tiny.hf(), internal, tgt_fmt="internal")
    shutil.move(internal / "tokenizer", tmp_path / "tok-elsewhere")
    (internal / "tokenizer").symlink_to(tmp_path / "tok-elsewhere")
    with pytest.raises(MmzooError, match="outside the checkpoint folder"):
        read_checkpoint(internal)


def test_init_refuses_an_llm_folder_linking_outside(tmp_path):
    from mmzoo.converters.assemble import init_model
    from mmzoo.demo.tiny import build_llm, build_vision

    build_vision(tmp_path / "clip", "clip")
    build_llm(tmp_path / "llama", "llama")
    shutil.move(tmp_path / "llama" / "tokenizer.json", tmp_path / "elsewhere.json")
    (tmp_path / "llama" / "tokenizer.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(MmzooError, match="tokenizer.json is a symlink to .*outside the checkpoint folder"):
        init_model(tmp_path / "clip", tmp_path / "llama", tmp_path / "vlm", tgt_fmt="internal")
    assert not (tmp_path / "vlm").exists()


def test_moe_llava_image_tower_linking_outside_is_refused(tiny, tmp_path):
    moe = tmp_path / "moe"
    convert(tiny.hf(), moe, tgt_fmt="moe-llava", moe={"num_experts": 2, "top_k": 1, "layers": "all"})
    tower = moe / "image_tower"
    assert tower.is_dir()
    shutil.move(tower / "config.json", tmp_path / "tower-config.json")
    (tower / "config.json").symlink_to(tmp_path / "tower-config.json")
    with pytest.raises(MmzooError, match="image_tower/config.json is a symlink to .*outside the checkpoint folder"):
        read_checkpoint(moe)


@pytest.mark.parametrize("name, needle", [("a\0b.safetensors", "embedded null byte"), ("..", "outside the checkpoint folder"),
                                          ("config.json", "not a safetensors file"),
                                          ("nope.safetensors", "index names shard 'nope.safetensors', which does not exist")])
def test_index_naming_odd_shards_is_one_line(sharded, tmp_path, name, needle):
    """A NUL byte in a shard name was a ValueError traceback from pathlib; a folder or a non-weights file is refused."""
    index_path = sharded / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = name
    index_path.write_text(json.dumps(index))
    out = tmp_path / "out"
    _assert_refused(("convert", str(sharded), "-o", str(out), "--tgt-fmt", "internal"), out, needle)
