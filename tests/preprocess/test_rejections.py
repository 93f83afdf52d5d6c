"""Every way a sample can be rejected: counted by reason, listed in rejected.jsonl, never a crash."""
from __future__ import annotations

import json

import pytest

from mmzoo.errors import MmzooError
from mmzoo.preprocess import preprocess
from pp_rendering import GOOD, N_IMG, collapse, conv, expected, image_runs, read_shards, write_jsonl

BAD = [
    ("{not json", None, "bad_json"),
    ("[1, 2]", None, "bad_schema"),
    ({"id": "noconv"}, "noconv", "bad_schema"),
    ({"id": "role", "conversations": conv(("robot", "hi"), ("gpt", "x"))}, "role", "bad_schema"),
    ({"id": "order", "conversations": conv(("gpt", "x"), ("human", "hi"))}, "order", "bad_schema"),
    ({"id": "noanswer", "conversations": conv(("human", "hi"))}, "noanswer", "bad_schema"),
    ({"id": "imgtype", "image": 5, "conversations": conv(("human", "<image>"), ("gpt", "x"))}, "imgtype", "bad_schema"),
    ({"id": "fewer", "image": "img_000.png", "conversations": conv(("human", "<image><image>"), ("gpt", "x"))}, "fewer", "image_count_mismatch"),
    ({"id": "nomarker", "image": "img_000.png", "conversations": conv(("human", "look"), ("gpt", "x"))}, "nomarker", "image_count_mismatch"),
    ({"id": "textmarker", "conversations": conv(("human", "<image> where?"), ("gpt", "x"))}, "textmarker", "image_count_mismatch"),
    ({"id": "dotdot", "image": "../outside_dir/img_000.png", "conversations": conv(("human", "<image>"), ("gpt", "x"))}, "dotdot", "unsafe_image_path"),
    ({"id": "abs", "image": "/etc/passwd", "conversations": conv(("human", "<image>"), ("gpt", "x"))}, "abs", "unsafe_image_path"),
    ({"id": "symlink", "image": "link.png", "conversations": conv(("human", "<image>"), ("gpt", "x"))}, "symlink", "unsafe_image_path"),
    ({"id": "missing", "image": "nope.png", "conversations": conv(("human", "<image>"), ("gpt", "x"))}, "missing", "missing_image"),
    ({"id": "broken", "image": "broken.png", "conversations": conv(("human", "<image>"), ("gpt", "x"))}, "broken", "unreadable_image"),
]


def test_bad_rows_are_rejected_with_reason_and_location(tmp_path, image_root, tok_dir):
    rows = []
    for i, good in enumerate(GOOD):  # interleave good and bad rows
        rows.append(good)
        rows.extend(raw for raw, _, _ in BAD[2 * i: 2 * i + 2])
    rows.extend(raw for raw, _, _ in BAD[2 * len(GOOD):])
    data = write_jsonl(tmp_path / "mixed.jsonl", rows)
    before = data.read_bytes()
    out = tmp_path / "out"
    manifest = preprocess([data], image_root, tok_dir, out, template="vicuna_v1", num_image_tokens=N_IMG)
    assert data.read_bytes() == before  # inputs are never modified
    assert [s["id"] for s in read_shards(out)] == [str(g["id"]) for g in GOOD]
    records = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert [(r["id"], r["reason"]) for r in records] == [(sid, reason) for _, sid, reason in BAD]
    for record in records:  # the line number points at the offending row
        assert record["source"] == str(data)
        row = rows[record["line"] - 1]
        assert (row.get("id") if isinstance(row, dict) else None) == record["id"]
    stats = manifest["statistics"]
    assert stats["samples_read"] == len(rows) and stats["samples_written"] == len(GOOD)
    counts: dict[str, int] = {}
    for _, _, reason in BAD:
        counts[reason] = counts.get(reason, 0) + 1
    assert stats["rejected"] == counts


def test_json_list_index_and_multiple_files(tmp_path, image_root, tok_dir):
    first = tmp_path / "a.json"
    first.write_text(json.dumps([GOOD[0], {"id": "m", "image": "nope.png", "conversations": conv(("human", "<image>"), ("gpt", "x"))}, GOOD[4]]))
    second = write_jsonl(tmp_path / "b.jsonl", [GOOD[1], "", "{bad"])
    out = tmp_path / "out"
    manifest = preprocess([first, second], image_root, tok_dir, out, template="chatml", num_image_tokens=N_IMG)
    assert [s["id"] for s in read_shards(out)] == ["single", "textonly", "unicode"]
    records = [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines()]
    assert records[0]["source"] == str(first) and records[0]["index"] == 1 and records[0]["reason"] == "missing_image"
    assert records[1]["source"] == str(second) and records[1]["line"] == 3 and records[1]["reason"] == "bad_json"
    assert manifest["statistics"]["samples_read"] == 5


def test_strict_turns_a_rejection_into_an_error(tmp_path, image_root, tok_dir):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD[0], BAD[-2][0]])
    with pytest.raises(MmzooError, match="missing_image"):
        preprocess([data], image_root, tok_dir, tmp_path / "out", template="chatml", num_image_tokens=N_IMG, strict=True)
    assert not (tmp_path / "out").exists()  # a failed fresh run leaves nothing behind


LONG = {"id": "long", "image": ["img_000.png", "img_001.png"], "conversations": conv(
    ("human", "<image>\nFirst question?"), ("gpt", "Short answer."),
    ("human", "<image>\nSecond image, describe it in detail please."), ("gpt", "A long answer " * 10),
    ("human", "Third?"), ("gpt", "Yes."))}




def test_long_samples_skip_or_truncate_at_a_turn_boundary(tmp_path, image_root, tok_dir, tokenizer):
    image_id = tokenizer.token_to_id("<image>")
    data = write_jsonl(tmp_path / "long.jsonl", [LONG, GOOD[4]])
    probe = read_shards_of(preprocess, data, image_root, tok_dir, tmp_path / "probe")
    full_len = len(probe[0]["ids"])
    text1, trained1 = expected("vicuna_v1", LONG["conversations"][:2])
    first_len = len(tokenizer.encode(text1.replace("<image>", "<image>" * N_IMG), add_special_tokens=False).ids)
    limit = (first_len + full_len) // 2  # first round fits, the second (with its image) does not

    skipped = preprocess([data], image_root, tok_dir, tmp_path / "skip", template="vicuna_v1", num_image_tokens=N_IMG, max_seq_len=limit)
    assert skipped["statistics"]["rejected"] == {"too_long": 1} and skipped["statistics"]["samples_written"] == 1

    out = tmp_path / "cut"
    cut = preprocess([data], image_root, tok_dir, out, template="vicuna_v1", num_image_tokens=N_IMG, max_seq_len=limit, truncate=True)
    assert cut["statistics"]["truncated"] == 1 and cut["statistics"]["rejected"] == {}
    sample = read_shards(out)[0]
    assert len(sample["ids"]) <= limit
    assert tokenizer.decode(collapse(sample["ids"], image_id, N_IMG), skip_special_tokens=False) == text1
    assert tokenizer.decode(sample["ids"][sample["mask"] == 1].tolist(), skip_special_tokens=False) == "".join(trained1)
    assert sample["images"] == ["img_000.png"]  # the dropped turn's image is dropped with it
    assert [n for _, n in image_runs(sample["ids"], image_id)] == [N_IMG]

    # A limit that cuts through the first image span: nothing fits whole, so the sample is rejected.
    tight = preprocess([data], image_root, tok_dir, tmp_path / "tight", template="vicuna_v1", num_image_tokens=N_IMG,
                       max_seq_len=first_len - 1, truncate=True)
    assert tight["statistics"]["rejected"] == {"too_long": 1}
    record = json.loads((tmp_path / "tight" / "rejected.jsonl").read_text())
    assert record["id"] == "long" and "no turn boundary fits" in record["detail"]


def read_shards_of(run, data, image_root, tok_dir, out):
    run([data], image_root, tok_dir, out, template="vicuna_v1", num_image_tokens=N_IMG)
    return read_shards(out)


def test_output_folder_rules(tmp_path, good_jsonl, image_root, tok_dir):
    out = tmp_path / "out"
    first = preprocess([good_jsonl], image_root, tok_dir, out, template="chatml", num_image_tokens=N_IMG)
    with pytest.raises(MmzooError, match="exists and is not empty"):
        preprocess([good_jsonl], image_root, tok_dir, out, template="chatml", num_image_tokens=N_IMG)
    again = preprocess([good_jsonl], image_root, tok_dir, out, template="chatml", num_image_tokens=N_IMG, resume=True)
    assert again == first  # already complete: nothing redone
    with pytest.raises(MmzooError, match="parameters differ"):
        preprocess([good_jsonl], image_root, tok_dir, out, template="qwen", num_image_tokens=N_IMG, resume=True)
    replaced = preprocess([good_jsonl], image_root, tok_dir, out, template="qwen", num_image_tokens=N_IMG, overwrite=True)
    assert replaced["parameters"]["template"] == "qwen"
    assert json.loads((out / "manifest.json").read_text())["parameters"]["template"] == "qwen"
    assert not list(tmp_path.glob(".out.mmzoo-*"))
    # qwen adds a default system turn to every sample, so the replaced shards are longer.
    assert replaced["statistics"]["tokens"] > first["statistics"]["tokens"]
