"""preprocess: per-sample problems are rejected rows; resource problems are one line with a path."""
from __future__ import annotations

import errno
import json
import resource
import subprocess
import sys
import time

import pytest

from mmzoo.preprocess import preprocess
from robust_helpers import assert_one_line, run_main


def conv(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"from": role, "value": value} for role, value in turns]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


GOOD = {"id": "good", "image": "img_000.png", "conversations": conv(("human", "<image>\nWhat is it?"), ("gpt", "A cat."))}


def rejected(out):
    return {r["id"]: r for r in map(json.loads, (out / "rejected.jsonl").read_text().splitlines())}


def test_bad_image_paths_are_one_rejected_row_each(tmp_path, pp_tokenizer, pp_images):
    rows = [
        {"id": "loop", "image": "loop.png", "conversations": conv(("human", "<image>\nx"), ("gpt", "y"))},
        {"id": "longname", "image": "a" * 300 + ".png", "conversations": conv(("human", "<image>\nx"), ("gpt", "y"))},
        GOOD,
    ]
    out = tmp_path / "out"
    manifest = preprocess([write_jsonl(tmp_path / "d.jsonl", rows)], pp_images, pp_tokenizer, out,
                          template="vicuna_v1", num_image_tokens=4)
    assert manifest["statistics"]["samples_written"] == 1
    rej = rejected(out)
    assert rej["loop"]["reason"] == "missing_image" and "loop" in rej["loop"]["detail"].lower()
    assert rej["longname"]["reason"] == "missing_image" and "too long" in rej["longname"]["detail"]


def test_a_50mb_string_is_rejected_before_tokenizing(tmp_path, pp_tokenizer, pp_images):
    huge = {"id": "huge", "conversations": conv(("human", "hi"), ("gpt", "word " * 10_000_000))}
    data = write_jsonl(tmp_path / "d.jsonl", [huge, GOOD])
    out = tmp_path / "out"
    # In a child with a 1.5 GiB address-space cap: tokenizing 50 MB took ~9 GB before the length check.
    code = ("import sys; from mmzoo.preprocess import preprocess; "
            f"m = preprocess([{str(data)!r}], {str(pp_images)!r}, {str(pp_tokenizer)!r}, {str(out)!r}, template='vicuna_v1', num_image_tokens=4); "
            "print(m['statistics']['samples_written'])")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (3 << 29, 3 << 29)))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "1"
    assert time.perf_counter() - start < 60
    rej = rejected(out)["huge"]
    assert rej["reason"] == "too_long" and "50,000,002 characters" in rej["detail"] and "not tokenized" in rej["detail"]


def test_truncate_keeps_the_turns_before_a_huge_one(tmp_path, pp_tokenizer, pp_images):
    row = {"id": "cut", "conversations": conv(("human", "hi"), ("gpt", "hello"), ("human", "more"), ("gpt", "x" * 3_000_000))}
    out = tmp_path / "out"
    manifest = preprocess([write_jsonl(tmp_path / "d.jsonl", [row])], pp_images, pp_tokenizer, out,
                          template="chatml", num_image_tokens=4, truncate=True, max_seq_len=64)
    stats = manifest["statistics"]
    assert (stats["samples_written"], stats["truncated"]) == (1, 1)
    # the same sample without the huge turn, tokenized normally, gives the same tokens
    short = {"id": "cut", "conversations": row["conversations"][:2]}
    ref = preprocess([write_jsonl(tmp_path / "s.jsonl", [short])], pp_images, pp_tokenizer, tmp_path / "ref",
                     template="chatml", num_image_tokens=4, max_seq_len=64)
    import h5py

    with h5py.File(out / "shard-00000.h5") as a, h5py.File(tmp_path / "ref" / "shard-00000.h5") as b:
        assert a["input_ids"][:].tolist() == b["input_ids"][:].tolist()
        assert a["loss_mask"][:].tolist() == b["loss_mask"][:].tolist()
    assert ref["statistics"]["tokens"] == stats["tokens"]


def test_disk_full_is_one_line_naming_the_shard_and_resume_finishes(tmp_path, capsys, pp_tokenizer, pp_images, monkeypatch):
    """A full disk while a shard is written (the write raises ENOSPC, as a full filesystem does)."""
    import builtins

    data = write_jsonl(tmp_path / "d.jsonl", [dict(GOOD, id=str(i)) for i in range(6)])
    out = tmp_path / "out"
    real_open = builtins.open
    calls = {"n": 0}

    class FullDisk:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if str(file).endswith("shard-00001.h5.tmp") and "w" in mode:
            calls["n"] += 1
            return FullDisk(handle)
        return handle

    monkeypatch.setattr(builtins, "open", fake_open)
    args = ["preprocess", "--data", data, "--images", pp_images, "--tokenizer", pp_tokenizer, "-o", out, "--num-image-tokens", "4",
            "--template", "vicuna_v1", "--samples-per-shard", "2", "-q"]
    line = assert_one_line(*run_main(capsys, *args), "shard-00001.h5", "No space left on device")
    assert calls["n"] == 1 and "Traceback" not in line
    assert (out / "shard-00000.h5").is_file() and not list(out.glob("*.tmp"))
    monkeypatch.setattr(builtins, "open", real_open)
    code, err = run_main(capsys, *args, "--resume")
    assert code == 0, err
    assert json.loads((out / "manifest.json").read_text())["statistics"]["samples_written"] == 6


@pytest.mark.skipif(sys.platform != "linux", reason="needs Linux tmpfs")
def test_disk_full_on_a_real_tmpfs(tmp_path, pp_tokenizer, pp_images):
    """The same on a real full filesystem (a 1 MiB tmpfs), where HDF5 used to end in a segfault.
    Needs permission to mount; where there is none the monkeypatched test above covers the path."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        (mnt / "filler").write_bytes(b"\0" * (1024 * 1024 - 64 * 1024))
        rows = [dict(GOOD, id=str(i), conversations=conv(("human", "<image>\n" + f"question {i} " * 40), ("gpt", f"answer {i} " * 200)))
                for i in range(400)]
        data = write_jsonl(tmp_path / "d.jsonl", rows)
        proc = subprocess.run([sys.executable, "-m", "mmzoo.cli", "preprocess", "--data", str(data), "--images", str(pp_images),
                               "--tokenizer", str(pp_tokenizer), "-o", str(mnt / "out"), "--num-image-tokens", "4",
                               "--template", "vicuna_v1", "--samples-per-shard", "100", "-q"], capture_output=True, text=True, timeout=120)
        assert_one_line(proc.returncode, proc.stderr, str(mnt / "out"), "No space left on device")
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.mark.parametrize("name,content,needle", [
    ("manifest.json", b"{not json", "not valid JSON"),
    ("manifest.json", b'{"parameters": {}, "shards": 7}', "'shards'"),
    (".progress.json", b"\xff\xfe", "not UTF-8"),
    (".progress.json", b"[" * 5000 + b"]" * 5000, "nested more than"),
    (".progress.json", b'{"parameters": {}, "rows_consumed": "x"}', "'rows_consumed'"),
    (".progress.json", b'{"parameters": {}, "statistics": {"samples_read": 1}}', "'statistics'"),
], ids=["manifest-not-json", "manifest-shards", "progress-not-utf8", "progress-deep", "progress-rows", "progress-stats"])
def test_corrupt_state_on_resume_is_one_line(tmp_path, capsys, pp_tokenizer, pp_images, name, content, needle):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    out = tmp_path / "out"
    out.mkdir()
    (out / name).write_bytes(content)
    args = ["preprocess", "--data", data, "--images", pp_images, "--tokenizer", pp_tokenizer, "-o", out, "--num-image-tokens", "4",
            "--template", "vicuna_v1", "--resume", "-q"]
    assert_one_line(*run_main(capsys, *args), name, "corrupt", "--overwrite", needle)
    assert (out / name).read_bytes() == content


def test_deeply_nested_json_data_file_is_one_line(tmp_path, capsys, pp_tokenizer, pp_images):
    data = tmp_path / "d.json"
    data.write_text("[" * 100_000 + "]" * 100_000)
    args = ["preprocess", "--data", data, "--images", pp_images, "--tokenizer", pp_tokenizer, "-o", tmp_path / "out",
            "--num-image-tokens", "4", "--template", "vicuna_v1", "-q"]
    assert_one_line(*run_main(capsys, *args), "d.json", "nested too deeply")


def test_deeply_nested_jsonl_row_is_one_rejected_row(tmp_path, pp_tokenizer, pp_images):
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "deep", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n" + json.dumps(GOOD) + "\n")
    out = tmp_path / "out"
    manifest = preprocess([data], pp_images, pp_tokenizer, out, template="vicuna_v1", num_image_tokens=4)
    assert manifest["statistics"]["samples_written"] == 1
    assert manifest["statistics"]["rejected"] == {"bad_json": 1}


@pytest.mark.parametrize("flag,value", [("--max-seq-len", "1000000000000"), ("--samples-per-shard", "100000000000"),
                                        ("--workers", "100000"), ("--num-image-tokens", "1000000000")])
def test_absurd_preprocess_numbers_are_one_line(tmp_path, capsys, pp_tokenizer, pp_images, flag, value):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    args = ["preprocess", "--data", data, "--images", pp_images, "--tokenizer", pp_tokenizer, "-o", tmp_path / "out",
            "--template", "vicuna_v1", "-q", flag, value] + (["--num-image-tokens", "4"] if flag != "--num-image-tokens" else [])
    assert_one_line(*run_main(capsys, *args), flag, "is more than")
    assert not (tmp_path / "out").exists()


def test_a_model_implying_a_trillion_image_tokens_is_refused(tiny, tmp_path, capsys, pp_images):
    """image_size 2^20 over patch_size 1 passes each number's own bound but is 2^40 tokens per image, past the bound
    --num-image-tokens has; every image sample then asked for that many tokens (MemoryError, or the OOM killer)."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny.hf(), model)
    config = json.loads((model / "config.json").read_text())
    config["vision_config"].update(image_size=1 << 20, patch_size=1)
    (model / "config.json").write_text(json.dumps(config))
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    for source in (["--tokenizer", model], ["--tokenizer", tiny.hf(), "--model", model]):
        args = ["preprocess", "--data", data, "--images", pp_images, *source, "-o", tmp_path / "out", "--template", "plain", "-q"]
        assert_one_line(*run_main(capsys, *args), str(model), "implies 1,099,511,627,776 tokens per image", "more than the 1,048,576")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name,content,needle", [
    ("tokenizer.json", b'{"version": "1.0", "model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "cannot load the tokenizer (recursion limit"),
    ("tokenizer.json", b'{"a": "\xff"}', "is not UTF-8 text"),
    ("tokenizer_config.json", b"[" * 100_000 + b"]" * 100_000, "nested more than"),
    ("chat_template.jinja", b"{% for m in messages %}\xff", "not UTF-8"),
], ids=["tokenizer-deep", "tokenizer-not-utf8", "config-deep", "template-not-utf8"])
def test_broken_tokenizer_files_are_one_line(tmp_path, capsys, pp_tokenizer, pp_images, name, content, needle):
    import shutil

    tok = tmp_path / "tok"
    shutil.copytree(pp_tokenizer, tok)
    (tok / name).write_bytes(content)
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    args = ["preprocess", "--data", data, "--images", pp_images, "--tokenizer", tok, "-o", tmp_path / "out", "--num-image-tokens", "4", "-q"]
    assert_one_line(*run_main(capsys, *args), name, needle)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field, value, needle", [
    ("chat_template", 5, "chat_template must be a template string or a list of {name, template} objects (got int)"),
    ("chat_template", {"x": 1}, "chat_template must be a template string"),
    ("chat_template", [{"name": "default", "template": 7}], "chat_template must be a template string"),
    ("chat_template", [5, {"name": "default"}], "the tokenizer has no chat_template"),
])
def test_tokenizer_config_fields_of_the_wrong_type_are_one_line(tmp_path, capsys, pp_tokenizer, pp_images, field, value, needle):
    """Each was a TypeError, KeyError or AttributeError traceback (jinja compiling an int, a list entry without
    "template"); a bos_token {"content": 5} was a TypeError from the tokenizers library."""
    import shutil

    tok = tmp_path / "tok"
    shutil.copytree(pp_tokenizer, tok)
    (tok / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((tok / "tokenizer_config.json").read_text())
    (tok / "tokenizer_config.json").write_text(json.dumps({**config, field: value, "bos_token": {"content": 5}}))
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD])
    args = ["preprocess", "--data", data, "--images", pp_images, "--tokenizer", tok, "-o", tmp_path / "out",
            "--num-image-tokens", "4", "-q", "--template", "auto"]
    assert_one_line(*run_main(capsys, *args), needle)
    assert not (tmp_path / "out").exists()
    (tok / "tokenizer_config.json").write_text(json.dumps({**config, "bos_token": {"content": 5}}))
    args[-1] = "vicuna_v1"  # the odd bos_token alone counts as unset, as a missing one does
    assert run_main(capsys, *args)[0] == 0


def test_named_pipe_as_data_file_is_one_line(tmp_path, capsys, pp_tokenizer, pp_images):
    import os

    data = tmp_path / "d.jsonl"
    os.mkfifo(data)
    start = time.perf_counter()
    args = ["preprocess", "--data", data, "--images", pp_images, "--tokenizer", pp_tokenizer, "-o", tmp_path / "out",
            "--num-image-tokens", "4", "--template", "vicuna_v1", "-q"]
    assert_one_line(*run_main(capsys, *args), "d.jsonl", "named pipe")
    assert time.perf_counter() - start < 10


def test_a_decompression_bomb_image_is_one_rejected_row(tmp_path, pp_tokenizer, pp_images):
    """400 M pixels in a 50 KB PNG: PIL's bomb limit refuses it while the image is checked, as one rejected row."""
    import shutil

    from PIL import Image

    images = tmp_path / "images"
    shutil.copytree(pp_images, images, symlinks=True)
    Image.new("1", (20000, 20000)).save(images / "bomb.png")
    bomb = {**GOOD, "id": "bomb", "image": "bomb.png"}
    out = tmp_path / "out"
    manifest = preprocess([write_jsonl(tmp_path / "d.jsonl", [bomb, GOOD])], images, pp_tokenizer, out,
                          template="vicuna_v1", num_image_tokens=4)
    assert manifest["statistics"]["samples_written"] == 1
    assert rejected(out)["bomb"]["reason"] == "unreadable_image" and "DecompressionBombError" in rejected(out)["bomb"]["detail"]
