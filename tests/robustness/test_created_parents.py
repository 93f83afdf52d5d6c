"""A failed command removes the empty parent folders it created for its output, and never any other folder.

`convert`, `init` and `export` did this already (tests/test_core_cli.py); `preprocess` and `hub pull`
(tests/hub/test_hub_robustness.py) now do too. Kept: folders that existed before the command, and a preprocess
output that holds finished shards (``--resume`` continues from them)."""
from __future__ import annotations

import json

import pytest

from mmzoo.errors import MmzooError
from mmzoo.io.parents import parents_removed_on_failure
from mmzoo.preprocess import preprocess
from robust_helpers import assert_one_line, run_main

BAD_ROW = {"id": "bad", "image": "missing.png", "conversations": [{"from": "human", "value": "<image>\nx"}, {"from": "gpt", "value": "y"}]}


def test_failed_preprocess_removes_the_parents_it_made(tmp_path, capsys, pp_tokenizer, pp_images):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(BAD_ROW) + "\n")
    existing = tmp_path / "existing"
    existing.mkdir()
    out = existing / "made" / "by" / "mmzoo" / "shards"
    code, err = run_main(capsys, "preprocess", "--data", data, "--images", pp_images, "--tokenizer", pp_tokenizer, "-o", out,
                         "--template", "vicuna_v1", "--num-image-tokens", "4", "--strict")
    assert_one_line(code, err, "missing")
    assert not (existing / "made").exists()
    assert existing.is_dir() and list(existing.iterdir()) == []


def test_failed_preprocess_keeps_parents_that_existed(tmp_path, pp_tokenizer, pp_images):
    data = tmp_path / "d.jsonl"
    data.write_text("{not json\n")
    out = tmp_path / "out"
    with pytest.raises(MmzooError):
        preprocess([data], pp_images, pp_tokenizer, out, template="vicuna_v1", num_image_tokens=4, strict=True)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_only_empty_folders_made_in_the_block_are_removed(tmp_path):
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C too
        with parents_removed_on_failure(out):
            out.parent.mkdir(parents=True)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []

    with pytest.raises(RuntimeError):
        with parents_removed_on_failure(out):
            out.mkdir(parents=True)
            (out / "shard_00000.h5").write_bytes(b"kept for --resume")
            raise RuntimeError("interrupted")
    assert (out / "shard_00000.h5").is_file()  # a folder with content stops the removal

    with parents_removed_on_failure(tmp_path / "x" / "out"):
        (tmp_path / "x").mkdir()
    assert (tmp_path / "x").is_dir()  # success: nothing is removed
