"""Config-like files (config.json, mmzoo.yaml, indexes) that are bombs, too deep, not UTF-8 or not files."""
from __future__ import annotations

import json
import os
import struct
import time

import pytest

from mmzoo.errors import ConfigError, CorruptFile
from mmzoo.io.structured import MAX_YAML_NODES, load_json, load_yaml, parse_json, safe_yaml

from robust_helpers import assert_one_line, run_main

# 9 levels of 9 aliases each: 9**9 ≈ 387 million values once expanded, 400 bytes on disk
YAML_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")
)
DEEP_JSON = "[" * 100_000 + "]" * 100_000


def test_yaml_alias_bomb_is_refused_before_expansion():
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than"):
        safe_yaml(YAML_BOMB, where="bomb.yaml")
    assert time.perf_counter() - start < 2


def test_yaml_aliases_of_normal_size_still_load():
    data = safe_yaml("base: &b {lr: 1.0e-4, warmup: 10}\nstage1: *b\nstage2: {<<: *b, lr: 2.0e-5}\n")
    assert data == {"base": {"lr": 1e-4, "warmup": 10}, "stage1": {"lr": 1e-4, "warmup": 10}, "stage2": {"lr": 2e-5, "warmup": 10}}


def test_yaml_self_reference_and_depth_are_refused():
    with pytest.raises(ConfigError, match="refers to itself"):
        safe_yaml("a: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="nested more than"):
        safe_yaml("x: " + "[" * 150 + "]" * 150)
    with pytest.raises(ConfigError, match="nested more than"):
        safe_yaml("x: " + "[" * 100_000 + "]" * 100_000)  # the parser's own RecursionError


def test_yaml_bomb_bound_counts_expansion_not_text():
    # exactly at the limit's order: 1000 aliases to a 999-item list expand past the bound
    text = "a: &a [" + ", ".join(["1"] * 999) + "]\nb: [" + ", ".join(["*a"] * 1002) + "]\n"
    with pytest.raises(ConfigError):
        safe_yaml(text)
    assert MAX_YAML_NODES == 1_000_000


def test_json_depth_and_utf8(tmp_path):
    with pytest.raises(ConfigError, match="nested more than"):
        parse_json(DEEP_JSON)
    with pytest.raises(ConfigError, match="nested more than"):
        parse_json("[" * 101 + "]" * 101)
    assert parse_json("[" * 99 + "]" * 99) is not None
    bad = tmp_path / "bad.json"
    bad.write_bytes(b'{"name": "caf\xe9"}')
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 at offset 13\)"):
        load_json(bad)


def test_only_regular_files_are_opened(tmp_path):
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    start = time.perf_counter()
    with pytest.raises(CorruptFile, match="named pipe"):
        load_json(fifo)
    with pytest.raises(CorruptFile, match="folder"):
        load_yaml(tmp_path)
    assert time.perf_counter() - start < 2


def test_size_cap(tmp_path):
    big = tmp_path / "big.json"
    big.write_text("[" + "0," * 600 + "0]")
    with pytest.raises(ConfigError, match="more than the 1,000"):
        load_json(big, limit=1000)


# -- through the CLI: one line, exit 2 ----------------------------------------------------------
def test_mmzoo_yaml_bomb_deep_and_non_utf8(capsys, internal_copy):
    manifest = internal_copy / "mmzoo.yaml"
    original = manifest.read_bytes()
    for extra, needle in ((YAML_BOMB.encode(), "expands to more than"),
                          (b"deep: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", "nested more than"),
                          (b"x: \xff\xfe\n", "not UTF-8")):
        manifest.write_bytes(original + b"\n" + extra)
        for command in ("inspect", "convert"):
            args = [command, internal_copy] + (["-o", internal_copy.parent / "out", "--tgt-fmt", "hf"] if command == "convert" else [])
            assert_one_line(*run_main(capsys, *args), "mmzoo.yaml", needle)
        assert not (internal_copy.parent / "out").exists()


def test_config_json_deep_and_non_utf8(capsys, hf_copy):
    config = hf_copy / "config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps(data)[:-1] + ', "deep": ' + DEEP_JSON + "}")
    assert_one_line(*run_main(capsys, "inspect", hf_copy), "config.json", "nested more than 100")
    config.write_bytes(b'{"model_type": "llava", "x": "\xff"}')
    assert_one_line(*run_main(capsys, "inspect", hf_copy), "config.json", "not UTF-8")


def test_config_json_with_a_5000_digit_integer_or_wrong_architectures(capsys, hf_copy):
    """json.loads raises a plain ValueError (not JSONDecodeError) for an integer of more than 4,300 digits, and every
    format's detect() asks `name in config["architectures"]`: both were tracebacks."""
    config = hf_copy / "config.json"
    data = json.loads(config.read_text())
    config.write_text(json.dumps(data)[:-1] + ', "unused": ' + "9" * 5000 + "}")
    for command in ("inspect", "convert"):
        args = [command, hf_copy] + (["-o", hf_copy.parent / "out", "--tgt-fmt", "internal"] if command == "convert" else [])
        assert_one_line(*run_main(capsys, *args), "config.json", "not valid JSON", "4300 digits")
    for architectures in (5, [{}], "LlavaForConditionalGeneration"):
        config.write_text(json.dumps({**data, "architectures": architectures}))
        assert_one_line(*run_main(capsys, "inspect", hf_copy), "config.json", "architectures must be a list of class names")
    assert not (hf_copy.parent / "out").exists()


def test_index_deep_non_utf8_and_wrong_shape(capsys, hf_copy):
    index = hf_copy / "model.safetensors.index.json"
    for raw, needle in ((b'{"weight_map": ' + DEEP_JSON.encode() + b"}", "nested more than"),
                        (b'{"weight_map": {"\xff": "model.safetensors"}}', "not UTF-8"),
                        (b'{"weight_map": [1, 2]}', "no weight_map"),
                        (b'{"weight_map": {"a": 3}}', "no weight_map")):
        index.write_bytes(raw)
        assert_one_line(*run_main(capsys, "inspect", hf_copy), "model.safetensors.index.json", needle)


def test_safetensors_header_nested_too_deep(capsys, hf_copy):
    header = ('{"x": ' + DEEP_JSON + "}").encode()
    (hf_copy / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    assert_one_line(*run_main(capsys, "inspect", hf_copy), "model.safetensors", "corrupt safetensors header")


def test_named_pipe_as_weights_fails_at_once(capsys, hf_copy, tmp_path):
    weights = hf_copy / "model.safetensors"
    weights.unlink()
    os.mkfifo(weights)
    start = time.perf_counter()
    assert_one_line(*run_main(capsys, "inspect", hf_copy), "model.safetensors", "named pipe")
    assert_one_line(*run_main(capsys, "convert", hf_copy, "-o", tmp_path / "out", "--tgt-fmt", "internal"), "named pipe")
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "out").exists()


def test_named_pipe_as_bin_weights_fails_at_once(capsys, hf_copy):
    (hf_copy / "model.safetensors").unlink()
    os.mkfifo(hf_copy / "pytorch_model.bin")
    start = time.perf_counter()
    assert_one_line(*run_main(capsys, "inspect", hf_copy), "pytorch_model.bin", "named pipe")
    assert time.perf_counter() - start < 10
