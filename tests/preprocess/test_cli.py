"""`mmzoo preprocess` through the real CLI entry point: success output and one-line errors (exit 2)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mmzoo.cli import main
from pp_rendering import GOOD, write_jsonl


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exc.value.code or 0, captured.out, captured.err


def _base(data, image_root, tok_dir, out) -> list[str]:
    return ["preprocess", "--data", str(data), "--images", str(image_root), "--tokenizer", str(tok_dir), "-o", str(out),
            "--template", "vicuna_v1", "--num-image-tokens", "4"]


def test_cli_writes_shards_and_prints_statistics(tmp_path, good_jsonl, image_root, tok_dir, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{oops", {"id": "m", "image": "nope.png", "conversations": GOOD[0]["conversations"]}])
    out = tmp_path / "out"
    code, _, err = _run(_base(good_jsonl, image_root, tok_dir, out) + ["--data", str(bad), "--workers", "2"], capsys)
    assert code == 0, err
    assert "samples written" in err and "rejected: bad_json" in err and "rejected: missing_image" in err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["statistics"]["samples_written"] == len(GOOD)
    assert manifest["statistics"]["rejected"] == {"bad_json": 1, "missing_image": 1}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--template", "bogus"], "unknown template 'bogus'"),
        (["--format", "parquet"], "unknown format"),
        (["--strict"], "rejected: missing_image"),
        (["--resume", "--overwrite"], "exclude each other"),
        (["--model", "/nonexistent"], "not both"),
    ],
)
def test_cli_errors_are_one_line(tmp_path, image_root, tok_dir, capsys, extra, message):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD[0], {"id": "m", "image": "nope.png", "conversations": GOOD[0]["conversations"]}])
    code, _, err = _run(_base(data, image_root, tok_dir, tmp_path / "out") + extra + ["--quiet"], capsys)
    assert code == 2
    assert err.startswith("mmzoo: error: ") and message in err and err.count("\n") == 1, err


def test_cli_input_problems(tmp_path, good_jsonl, image_root, tok_dir, capsys):
    cases = [
        (["--data", str(tmp_path / "none.jsonl")], "data file not found"),
        (["--images", str(tmp_path / "noimg")], "image folder not found"),
        (["--tokenizer", str(tmp_path)], "no tokenizer files found"),
    ]
    for override, message in cases:
        args = _base(good_jsonl, image_root, tok_dir, tmp_path / "o")
        args[args.index(override[0]) + 1] = override[1]
        code, _, err = _run(args, capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err
    not_json = tmp_path / "list.json"
    not_json.write_text("[{broken")
    code, _, err = _run(_base(not_json, image_root, tok_dir, tmp_path / "o2"), capsys)
    assert code == 2 and "not valid JSON" in err
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = _run(_base(good_jsonl, image_root, tok_dir, out), capsys)
    assert code == 2 and "exists and is not empty" in err and (out / "keep.txt").read_text() == "x"
    # No image-token count: the plain tokenizer folder has no vision config to derive it from.
    args = _base(good_jsonl, image_root, tok_dir, tmp_path / "o3")
    i = args.index("--num-image-tokens")
    code, _, err = _run(args[:i] + args[i + 2:], capsys)
    assert code == 2 and "--num-image-tokens" in err


def test_help_teaches_and_stays_light():
    code = ("import sys; from mmzoo.cli import main\n"
            "try:\n    main(['preprocess', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'h5py', 'tokenizers') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={"COLUMNS": "200", "PATH": ""})
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr
    for word in ("--template", "vicuna_v1", "--truncate", "--resume", "Example"):
        assert word in result.stdout
