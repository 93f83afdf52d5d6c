import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from mmzoo.errors import CorruptFile, MissingTensor, MmzooError
from mmzoo.io.checkpoint import parse_size, read_weights, write_weights
from mmzoo.io.safetensors_file import read_header
from mmzoo.io.tensors import Planned, materialize


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(5, 3, generator=g),
        "b": torch.randn(7, generator=g).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "d": torch.tensor(3.5),
        "e": torch.randn(3, 1, generator=g).to(torch.float16),
    }


def test_header_matches_safetensors_library(tmp_path):
    tensors = _tensors()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    header, meta = read_header(tmp_path / "model.safetensors")
    assert meta == {"format": "pt"}
    sources = read_weights(tmp_path)
    for name, tensor in tensors.items():
        assert header[name].shape == tuple(tensor.shape)
        assert torch.equal(materialize(Planned.of(sources[name])), tensor)


def test_writer_output_loads_with_safetensors_and_slices_are_bytes(tmp_path):
    tensors = _tensors()
    save_file(tensors, tmp_path / "model.safetensors")
    src = read_weights(tmp_path)
    planned = {name: Planned.of(s) for name, s in src.items()}
    top, bottom = planned["a"].split_rows([2, 3])
    plan = {"top": top, "bottom": bottom, "joined": Planned.concat_rows([bottom, top]), "b": planned["b"],
            "d": planned["d"], "half": planned["a"].cast("BF16"), "scaled": planned["e"].scale(0.5)}
    out = tmp_path / "out"
    write_weights(out, plan, max_shard_bytes=10**9)
    loaded = load_file(out / "model.safetensors")
    assert torch.equal(loaded["top"], tensors["a"][:2])
    assert torch.equal(loaded["bottom"], tensors["a"][2:])
    assert torch.equal(loaded["joined"], torch.cat([tensors["a"][2:], tensors["a"][:2]]))
    assert torch.equal(loaded["b"], tensors["b"]) and loaded["b"].dtype == torch.bfloat16
    assert torch.equal(loaded["d"], tensors["d"])
    assert torch.equal(loaded["half"], tensors["a"].to(torch.bfloat16))
    assert torch.equal(loaded["scaled"], tensors["e"] * 0.5)


def test_sharding_writes_index_and_reads_back(tmp_path):
    tensors = {f"t{i}": torch.full((10, 10), float(i)) for i in range(6)}  # 400 bytes each
    save_file(tensors, tmp_path / "model.safetensors")
    plan = {n: Planned.of(s) for n, s in read_weights(tmp_path).items()}
    out = tmp_path / "out"
    files = write_weights(out, plan, max_shard_bytes=900)
    assert [f.name for f in files] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 2400 and len(index["weight_map"]) == 6
    back = read_weights(out)
    for name, tensor in tensors.items():
        assert torch.equal(materialize(Planned.of(back[name])), tensor)


def test_truncated_file_is_reported(tmp_path):
    save_file(_tensors(), tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(CorruptFile, match="truncated"):
        read_weights(tmp_path)


def test_garbage_header_is_reported(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 6) + b"nojson" + b"\0" * 8)
    with pytest.raises(CorruptFile, match="not JSON"):
        read_weights(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 4)
    with pytest.raises(CorruptFile):
        read_weights(tmp_path)


def test_index_naming_missing_shard(tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "model-00001-of-00002.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(MissingTensor, match="model-00002-of-00002"):
        read_weights(tmp_path)


def test_bin_weights_load_safely(tmp_path):
    tensors = _tensors()
    torch.save(tensors, tmp_path / "pytorch_model.bin")
    back = read_weights(tmp_path)
    assert all(torch.equal(materialize(Planned.of(back[n])), t) for n, t in tensors.items())
    torch.save({"evil": Evil()}, tmp_path / "pytorch_model.bin")  # arbitrary classes are refused by weights_only
    with pytest.raises(CorruptFile, match="cannot load .bin weights safely"):
        read_weights(tmp_path)


@pytest.mark.parametrize("text,expected", [("5GB", 5 * 10**9), ("400MB", 4 * 10**8), ("2GiB", 2 * 2**30), ("1.5KB", 1500)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


def test_parse_size_rejects_nonsense():
    with pytest.raises(MmzooError, match="invalid size"):
        parse_size("five gigs")


class Evil:
    def __reduce__(self):  # would run code when unpickled without weights_only
        return (print, ("unpickled!",))


@pytest.mark.parametrize("make, message", [
    (lambda good: struct.pack("<Q", 2**63) + good[8:], "header length out of range"),  # 8 EiB of header
    (lambda good: struct.pack("<Q", len(good)) + good[8:], "header length out of range"),  # beyond the file
    (lambda good: struct.pack("<Q", 200_000_000) + b" " * 16, "header length out of range"),  # over the 100 MB cap
    (lambda good: b"", "shorter than 8 bytes"),
    (lambda good: struct.pack("<Q", 8) + b'{"\xff":1}' + b"\0" * 8, "not JSON"),  # not UTF-8
], ids=["2**63", "beyond-the-file", "over-the-cap", "empty", "not-utf8"])
def test_header_lengths_and_bytes_that_cannot_be_a_header(tmp_path, make, message):
    """Each is refused from the first 8 bytes or the header alone: nothing is allocated from the length."""
    save_file({"a": torch.ones(4)}, tmp_path / "good.safetensors")
    (tmp_path / "model.safetensors").write_bytes(make((tmp_path / "good.safetensors").read_bytes()))
    with pytest.raises(CorruptFile, match=message):
        read_header(tmp_path / "model.safetensors")


def test_a_shape_whose_product_overflows_any_file_is_refused(tmp_path):
    raw = json.dumps({"a": {"dtype": "F32", "shape": [2**32] * 40, "data_offsets": [0, 4]}}).encode()
    raw += b" " * (-len(raw) % 8)
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(4))
    with pytest.raises(CorruptFile, match="byte range does not match its shape"):
        read_header(tmp_path / "model.safetensors")
