"""`mmzoo preprocess --kind preference`: RLAIF-V and LLaVA-MoD records → pairs of samples in the mmzoo H5 layout.

Records are written in the two published spellings (RLAIF-V's question/chosen/rejected strings, LLaVA-MoD's
``LazyDPODataset`` chosen/rejected conversations); the tokenizer is the real Qwen2 vocabulary (LLaVA-MoD's
students) with the qwen template (LLaVA-MoD's ``--version qwen``)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pp_rendering import write_jsonl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import real_tokenizers  # noqa: E402

# RLAIF-V's fields (openbmb/RLAIF-V-Dataset: ds_name, image, question, chosen, rejected, origin_dataset, origin_split,
# idx, image_path), the image given as a path under --images
RLAIF_V = [
    {"ds_name": "RLAIF-V", "image": "img_000.png", "question": "What is the color of the square in the image?",
     "chosen": "The square in the image is red, and it sits on a white background.",
     "rejected": "The square is blue and there is a cat beside it.", "origin_dataset": "VQAv2",
     "origin_split": "train", "idx": "rlaifv-0", "image_path": "img_000.png"},
    {"ds_name": "RLAIF-V", "image": "img_001.png", "question": "<image>\nDescribe the image briefly.",
     "chosen": "Green dots on a grey field.", "rejected": "Two dogs playing in the snow near a red house.",
     "origin_dataset": "COCO", "origin_split": "train", "idx": "rlaifv-1", "image_path": "img_001.png"},
]
# LLaVA-MoD's docstring record (llavamod/data/dataset.py LazyDPODataset), multi-turn here
LLAVA_MOD = [{
    "id": "GCC_train_001870201", "image": "img_002.png",
    "chosen": [{"from": "human", "value": "<image>\nProvide a brief description of the given image."},
               {"from": "gpt", "value": "A cartoon of a winged buffalo."},
               {"from": "human", "value": "What is its expression?"},
               {"from": "gpt", "value": "It looks angry."}],
    "rejected": [{"from": "human", "value": "<image>\nProvide a brief description of the given image."},
                 {"from": "gpt", "value": "A cartoon of a winged buffalo."},
                 {"from": "human", "value": "What is its expression?"},
                 {"from": "gpt", "value": "It is smiling happily at a crowd of people."}],
}]
BAD = [
    {"id": "prompts-differ", "image": "img_000.png",
     "chosen": [{"from": "human", "value": "<image>\nA?"}, {"from": "gpt", "value": "x"}],
     "rejected": [{"from": "human", "value": "<image>\nB?"}, {"from": "gpt", "value": "y"}]},
    {"id": "no-question", "image": "img_000.png", "chosen": "x", "rejected": "y"},
    {"id": "mixed", "image": "img_000.png", "question": "q", "chosen": "x", "rejected": [{"from": "gpt", "value": "y"}]},
    {"id": "missing-image", "image": "nope.png", "question": "q", "chosen": "x", "rejected": "y"},
    {"id": "escapes", "image": "../outside_dir/img_000.png", "question": "q", "chosen": "x", "rejected": "y"},
]


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("qwen2-image")
    tok = AutoTokenizer.from_pretrained(str(real_tokenizers.qwen2()))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.save_pretrained(folder)
    return folder


def _run(tmp_path, image_root, qwen_dir, rows, **kw):
    from mmzoo.preprocess import preprocess

    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "out"
    manifest = preprocess([data], image_root, qwen_dir, out, kind="preference", template="qwen", num_image_tokens=3,
                          max_seq_len=kw.pop("max_seq_len", 256), **kw)
    return out, manifest


def _scored_text(tok, record):
    ids = record["input_ids"][record["loss_mask"].astype(bool)]
    return tok.decode(ids.tolist())


def test_pairs_schema_masks_and_shared_prompt(tmp_path, image_root, qwen_dir):
    from transformers import AutoTokenizer

    from mmzoo.preprocess import H5Dataset
    from mmzoo.preprocess.reader import IGNORE_INDEX

    out, manifest = _run(tmp_path, image_root, qwen_dir, RLAIF_V + LLAVA_MOD + BAD, samples_per_shard=2)
    stats = manifest["statistics"]
    assert stats["samples_read"] == 8 and stats["samples_written"] == 3
    assert stats["rejected"] == {"bad_schema": 3, "unsafe_image_path": 1, "missing_image": 1}
    assert manifest["parameters"]["kind"] == "preference"
    # shards hold whole pairs: samples_per_shard counts pairs
    assert [s["n_samples"] for s in manifest["shards"]] == [4, 2]
    import h5py

    with h5py.File(out / "shard-00000.h5") as f:
        assert f.attrs["kind"] == "preference"
    rejected = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rejected] == ["prompts-differ", "no-question", "mixed", "missing-image", "escapes"]
    assert rejected[3]["detail"].startswith("chosen: nope.png")

    tok = AutoTokenizer.from_pretrained(str(qwen_dir))
    ds = H5Dataset(out, image_root)
    assert len(ds) == 6
    answers = [(r["chosen"], r["rejected"]) for r in RLAIF_V] + [("It looks angry.", "It is smiling happily at a crowd of people.")]
    for k, (chosen_text, rejected_text) in enumerate(answers):
        chosen, rejected = ds.raw(2 * k), ds.raw(2 * k + 1)
        assert chosen["id"] == rejected["id"] and chosen["image_paths"] == rejected["image_paths"]
        # only the final answer and its end-of-turn token are scored
        assert _scored_text(tok, chosen) == chosen_text + "<|im_end|>"
        assert _scored_text(tok, rejected) == rejected_text + "<|im_end|>"
        # the prompt (everything before the scored answer) is the same tokens on both sides
        start_c, start_r = (int(np.flatnonzero(r["loss_mask"])[0]) for r in (chosen, rejected))
        assert start_c == start_r
        assert np.array_equal(chosen["input_ids"][:start_c], rejected["input_ids"][:start_r])
        # one image, as num_image_tokens image tokens, in the prompt
        image_id = manifest["parameters"]["image_token_id"]
        assert int((chosen["input_ids"] == image_id).sum()) == 3
        # the loss labels the training reader builds from it
        item = ds[2 * k]
        assert int((item["labels"] != IGNORE_INDEX).sum()) == int(chosen["loss_mask"].sum())
    # the RLAIF-V question without a marker got <image>\n in front, like the one that had it
    text = tok.decode(ds.raw(0)["input_ids"].tolist())
    assert "<|im_start|>user\n<image><image><image>\nWhat is the color" in text
    assert ds.raw(0)["id"] == "rlaifv-0" and ds.raw(4)["id"] == "GCC_train_001870201"


def test_same_as_preprocessing_each_side_as_a_conversation(tmp_path, image_root, qwen_dir):
    """A side is exactly the conversation `mmzoo preprocess` writes, its earlier answers unscored."""
    from mmzoo.preprocess import H5Dataset, preprocess

    out, _ = _run(tmp_path, image_root, qwen_dir, LLAVA_MOD)
    conv = write_jsonl(tmp_path / "conv.jsonl", [{"id": "c", "image": "img_002.png", "conversations": LLAVA_MOD[0]["rejected"]}])
    preprocess([conv], image_root, qwen_dir, tmp_path / "conv", template="qwen", num_image_tokens=3, max_seq_len=256)
    pair = H5Dataset(out, image_root).raw(1)
    single = H5Dataset(tmp_path / "conv", image_root).raw(0)
    assert np.array_equal(pair["input_ids"], single["input_ids"])
    assert single["loss_mask"].sum() > pair["loss_mask"].sum()  # the conversation also scores the first answer
    last = np.flatnonzero(pair["loss_mask"])
    assert np.array_equal(pair["loss_mask"][last[0]:], single["loss_mask"][last[0]:])


def test_too_long_pairs_are_rejected_and_resume_is_exact(tmp_path, image_root, qwen_dir):
    from mmzoo.preprocess import preprocess

    rows = (RLAIF_V + LLAVA_MOD) * 3
    out, whole = _run(tmp_path, image_root, qwen_dir, rows, max_seq_len=64, samples_per_shard=1)
    # the multi-turn record: chosen 61 tokens, rejected 67 > 64; the whole pair goes
    assert whole["statistics"]["rejected"] == {"too_long": 3} and whole["statistics"]["samples_written"] == 6
    assert json.loads((out / "rejected.jsonl").read_text().splitlines()[0])["detail"].startswith("rejected: ")
    # an interrupted run: the last shard and the manifest lost; --resume redoes only the rest
    data = tmp_path / "pairs.jsonl"
    partial = tmp_path / "partial"
    preprocess([data], image_root, qwen_dir, partial, kind="preference", template="qwen", num_image_tokens=3,
               max_seq_len=64, samples_per_shard=1)
    state = {"parameters": whole["parameters"], "rows_consumed": 2, "statistics": None, "rejected_bytes": 0,
             "shards": whole["shards"][:2]}
    (partial / "manifest.json").unlink()
    for s in whole["shards"][2:]:
        (partial / s["file"]).unlink()
    stats = {"samples_read": 2, "samples_written": 2, "rejected": {}, "truncated": 0,
             "tokens": sum(s["n_tokens"] for s in whole["shards"][:2]),
             "loss_tokens": 0, "images": 2}
    state["statistics"] = stats
    (partial / ".progress.json").write_text(json.dumps(state))
    (partial / "rejected.jsonl").write_text("")
    resumed = preprocess([data], image_root, qwen_dir, partial, kind="preference", template="qwen", num_image_tokens=3,
                         max_seq_len=64, samples_per_shard=1, resume=True)
    assert resumed["shards"] == whole["shards"]  # same bytes (sha256) for every shard
    assert (partial / "rejected.jsonl").read_text() == (out / "rejected.jsonl").read_text()


def test_the_cli_writes_pairs_and_refuses_bad_options_in_one_line(tmp_path, image_root, qwen_dir, capsys):
    from mmzoo.cli import main

    data = write_jsonl(tmp_path / "p.jsonl", RLAIF_V)
    base = ["preprocess", "--data", str(data), "--images", str(image_root), "--tokenizer", str(qwen_dir),
            "--num-image-tokens", "3", "--template", "qwen"]
    for extra, message in ((["--kind", "dpo"], "unknown kind 'dpo'"),
                           (["--kind", "preference", "--format", "cerebras"], "--format mmzoo only"),
                           (["--kind", "preference", "--truncate"], "never truncates")):
        out = tmp_path / "o"
        with pytest.raises(SystemExit) as exc:
            main(base + ["-o", str(out)] + extra)
        assert exc.value.code == 2
        assert not out.exists()
    import subprocess

    from cli_helpers import mmzoo_command

    with pytest.raises(SystemExit) as exc:
        main(base + ["-o", str(tmp_path / "ok"), "--kind", "preference"])
        raise SystemExit(0)
    assert exc.value.code in (0, None) and (tmp_path / "ok" / "manifest.json").is_file()
    assert "pairs written" in capsys.readouterr().err
    proc = subprocess.run(mmzoo_command(*base, "-o", str(tmp_path / "o"), "--kind", "dpo"), capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("mmzoo: error:") and "unknown kind 'dpo'" in proc.stderr
