"""A safetensors header is input from someone else: names, shapes and byte ranges are checked, and shards
must agree with their index. Each case is a tiny hand-made file that mmzoo used to accept."""
from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from safetensors.torch import save_file

from cli_helpers import run_cli
from mmzoo.errors import CorruptFile
from mmzoo.io.checkpoint import read_weights
from mmzoo.io.safetensors_file import read_header


def _raw_file(path, header_json: str, data: bytes) -> None:
    raw = header_json.encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)) -> str:
    return json.dumps({"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)})


def test_a_valid_hand_made_file_is_read(tmp_path):  # the helper itself writes what safetensors accepts
    from safetensors.torch import load_file

    path = tmp_path / "ok.safetensors"
    _raw_file(path, '{"a":' + _entry() + ',"b":' + _entry(offsets=(8, 16)) + "}", bytes(16))
    assert set(read_header(path)[0]) == {"a", "b"} and set(load_file(path)) == {"a", "b"}


@pytest.mark.parametrize("header, message", [
    ('{"a":' + _entry() + ',"a":' + _entry(offsets=(8, 16)) + "}", "'a' appears twice"),
    ('{"a":' + _entry(offsets=(0, 8)) + ',"b":' + _entry(offsets=(4, 12)) + "}", "overlap"),
    ('{"a":' + _entry(offsets=(0, 8)) + ',"b":' + _entry(offsets=(0, 8)) + "}", "overlap"),
    ('{"a":' + _entry(shape=(-2,), offsets=(0, 8)) + "}", "invalid shape"),
    ('{"a":' + _entry(shape=(-1, -2), offsets=(0, 8)) + "}", "invalid shape"),
    ('{"a":' + _entry(shape=(2.5,), offsets=(0, 8)) + "}", "invalid shape"),
    ('{"a":' + _entry(shape=(True, 2), offsets=(0, 8)) + "}", "invalid shape"),
    ('{"a":' + _entry(shape=("2",), offsets=(0, 8)) + "}", "invalid shape"),
    ('{"a":' + _entry(offsets=(0.0, 8.0)) + "}", "invalid data_offsets"),
    ('{"a":' + _entry(offsets=(-8, 0)) + "}", "invalid data_offsets"),
    ('{"a":' + _entry(dtype=["F32"]) + "}", "unsupported dtype"),
    # __metadata__ is string -> string in the format; a list or a string there was an AttributeError traceback
    pytest.param('{"__metadata__":[1,2],"a":' + _entry() + "}", "__metadata__ must be a JSON object", id="metadata-list"),
    pytest.param('{"__metadata__":"pt","a":' + _entry() + "}", "__metadata__ must be a JSON object", id="metadata-string"),
    # an integer of more than 4,300 digits makes json.loads raise a plain ValueError (Python's CVE-2020-10735 guard)
    pytest.param('{"a":{"dtype":"F32","shape":[' + "9" * 5000 + '],"data_offsets":[0,8]}}', "not JSON", id="5000-digit-dim"),
    pytest.param('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,' + "9" * 5000 + "]}}", "not JSON", id="5000-digit-offset"),
])
def test_bad_headers_are_refused(tmp_path, header, message):
    path = tmp_path / "model.safetensors"
    _raw_file(path, header, bytes(16))
    with pytest.raises(CorruptFile, match=message):
        read_header(path)


def _copied_weights(tiny, tmp_path):
    """A copy of the tiny model in tmp_path/src: (src, its model.safetensors, the file's bytes, the header length)."""
    src = tmp_path / "src"
    shutil.copytree(tiny.hf(), src)
    weights = src / "model.safetensors"
    raw = weights.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return src, weights, raw, n


def test_cli_refuses_a_duplicate_name_in_one_line_and_writes_nothing(tiny, tmp_path):
    src, weights, raw, n = _copied_weights(tiny, tmp_path)
    header = raw[8:8 + n].decode().rstrip()
    first = next(iter(json.loads(header).items()))  # repeat the first entry under its own name
    doubled = header[:-1] + "," + json.dumps(first[0]) + ":" + json.dumps(first[1]) + "}"
    padded = doubled + " " * (-len(doubled) % 8)
    weights.write_bytes(struct.pack("<Q", len(padded)) + padded.encode() + raw[8 + n:])
    out = tmp_path / "out"
    code, _, stderr = run_cli("convert", str(src), "-o", str(out), "--tgt-fmt", "internal")
    assert code == 2 and stderr.count("\n") == 1 and "appears twice" in stderr, stderr
    assert stderr.startswith("mmzoo: error: ") and "Traceback" not in stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def _two_shards(folder):
    folder.mkdir()
    save_file({"a": torch.ones(2), "b": torch.zeros(3)}, folder / "s1.safetensors")
    save_file({"c": torch.full((4,), 2.0)}, folder / "s2.safetensors")
    index = {"metadata": {}, "weight_map": {"a": "s1.safetensors", "b": "s1.safetensors", "c": "s2.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return index


def test_consistent_shards_are_read(tmp_path):
    _two_shards(tmp_path / "w")
    assert sorted(read_weights(tmp_path / "w")) == ["a", "b", "c"]


def test_a_tensor_in_two_shards_is_refused(tmp_path):
    folder = tmp_path / "w"
    _two_shards(folder)
    save_file({"c": torch.full((4,), 2.0), "a": torch.full((2,), 9.0)}, folder / "s2.safetensors")  # 'a' again
    with pytest.raises(CorruptFile, match="'a' is stored in two shards, s1.safetensors and s2.safetensors"):
        read_weights(folder)


def test_a_tensor_in_another_shard_than_the_index_says_is_refused(tmp_path):
    folder = tmp_path / "w"
    index = _two_shards(folder)
    index["weight_map"]["b"] = "s2.safetensors"  # b lives in s1
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CorruptFile, match="the index puts tensor 'b' in s2.safetensors, but it is stored in s1.safetensors"):
        read_weights(folder)


def test_cli_refuses_hostile_metadata_and_huge_integers_in_one_line(tiny, tmp_path):
    """Through the real CLI: each used to end in a traceback (AttributeError, ValueError)."""
    src, weights, raw, n = _copied_weights(tiny, tmp_path)
    header = json.loads(raw[8:8 + n])
    out = tmp_path / "out"
    for metadata, needle in (("[1, 2]", "__metadata__ must be a JSON object"), ("9" * 5000, "not JSON")):
        text = json.dumps({k: v for k, v in header.items() if k != "__metadata__"})
        _raw_file(weights, '{"__metadata__": ' + metadata + ", " + text[1:], raw[8 + n:])
        for args in (("inspect", str(src)), ("convert", str(src), "-o", str(out), "--tgt-fmt", "internal")):
            code, _, stderr = run_cli(*args)
            assert code == 2 and stderr.count("\n") == 1 and stderr.startswith("mmzoo: error: "), stderr
            assert needle in stderr and "model.safetensors" in stderr, stderr
    assert not out.exists()


def test_a_weight_stored_as_integers_is_refused(tiny, tmp_path):
    """Bytes and shape consistent, dtype I32 where the model has a float weight: it converted silently, and every
    model built from it failed in its first forward."""
    src = tmp_path / "src"
    shutil.copytree(tiny.hf(), src)
    weights = src / "model.safetensors"
    raw = weights.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    name = next(k for k, v in header.items() if k.endswith("q_proj.weight"))
    header[name]["dtype"] = "I32"  # same item size: the byte range still matches
    _raw_file(weights, json.dumps(header), raw[8 + n:])
    out = tmp_path / "out"
    code, _, stderr = run_cli("convert", str(src), "-o", str(out), "--tgt-fmt", "internal")
    assert code == 2 and stderr.count("\n") == 1 and "q_proj.weight' is stored as I32; model weights are floating point" in stderr, stderr
    assert not out.exists()
