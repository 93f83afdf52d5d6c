"""The ``cerebras`` checkpoint layout: the folder Cerebras modelzoo's LLaVA converter reads (image_model/ +
text_model/, indexed weights, an mlp<N>x_gelu projector), read back bit-exactly, and loaded by Cerebras' own
weight reader.

Cerebras modelzoo is not on PyPI (only cerebras-pytorch / cerebras-appliance, its Wafer-Scale runtime), so the
test that runs its code needs a checkout: set MMZOO_CEREBRAS_MODELZOO_SRC to the ``src/`` folder of a clone of
Cerebras/modelzoo (Release 2.10); without it that test is skipped and says so. It loads
``tools/checkpoint_converters/streaming_checkpoints.py`` — the reader the converter uses for a ``*.index.json`` —
with one stub: ``cerebras.pytorch`` (the Wafer-Scale runtime, used there only to save Cerebras-side checkpoints), so
it runs in-process. The converter itself, with the real cerebras-pytorch, runs in test_cerebras_code.py.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli

import mmzoo
from mmzoo.io.tensors import materialize


@pytest.fixture(scope="module")
def cerebras_folder(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("cerebras") / "cb"
    result = mmzoo.convert(tiny.hf("llama", "clip"), out, tgt_fmt="cerebras", verify=True)
    return out, result


def test_layout_is_what_the_converter_reads(cerebras_folder):
    folder, result = cerebras_folder
    assert result.verified
    assert sorted(p.name for p in folder.iterdir()) == ["image_model", "text_model"]
    for sub in ("image_model", "text_model"):  # the converter finds weights by *.index.json or pytorch_model.bin only
        index = json.loads((folder / sub / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"].values()) == {"model.safetensors"}
    assert (folder / "image_model" / "preprocessor_config.json").is_file()
    text = json.loads((folder / "text_model" / "config.json").read_text())
    assert text["mm_projector_type"] == "mlp2x_gelu" and text["mm_vision_tower"] == str((folder / "image_model").resolve())
    index = json.loads((folder / "text_model" / "model.safetensors.index.json").read_text())
    assert {"model.mm_projector.0.weight", "model.mm_projector.2.weight"} <= set(index["weight_map"])  # its projector rule
    assert any("tokenizer.model" in note for note in result.notes)  # the tiny tokenizer has none, and the note says so


def test_reads_back_bit_exact_and_converts(cerebras_folder, tiny, tmp_path):
    folder, _ = cerebras_folder
    assert mmzoo.inspect(folder)["format"] == "cerebras"
    mmzoo.convert(folder, tmp_path / "hf", tgt_fmt="hf", verify=True)
    code, out, _ = run_cli("diff", str(tiny.hf("llama", "clip")), str(tmp_path / "hf"))
    assert code == 0, out


def test_linear_projector_is_refused(tmp_path):
    from mmzoo.demo.tiny import build_llm, build_vision

    build_vision(tmp_path / "clip", "clip")
    build_llm(tmp_path / "llama", "llama")
    mmzoo.init_model(tmp_path / "clip", tmp_path / "llama", tmp_path / "lin", tgt_fmt="internal", projector="linear")
    code, _, stderr = run_cli("convert", str(tmp_path / "lin"), "-o", str(tmp_path / "cb"), "--tgt-fmt", "cerebras")
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("mmzoo: error:") and "mlp<N>x_gelu" in lines[0], stderr
    assert not (tmp_path / "cb").exists()


def _cerebras_streaming_reader():
    src = os.environ.get("MMZOO_CEREBRAS_MODELZOO_SRC")
    if not src:
        pytest.skip("Cerebras modelzoo is not on PyPI: set MMZOO_CEREBRAS_MODELZOO_SRC to the src/ folder of a Cerebras/modelzoo checkout")
    path = Path(src) / "cerebras" / "modelzoo" / "tools" / "checkpoint_converters" / "streaming_checkpoints.py"
    if not path.is_file():
        pytest.fail(f"MMZOO_CEREBRAS_MODELZOO_SRC={src} holds no {path.relative_to(src)}")
    stubs = {name: sys.modules.get(name) for name in ("cerebras", "cerebras.pytorch")}
    sys.modules.setdefault("cerebras", types.ModuleType("cerebras"))
    sys.modules["cerebras.pytorch"] = types.ModuleType("cerebras.pytorch")
    try:
        spec = importlib.util.spec_from_file_location("cerebras_streaming_checkpoints", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, old in stubs.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return module.StreamingShardedHFReader


def test_cerebras_reader_loads_every_tensor_bit_exact(cerebras_folder):
    reader_class = _cerebras_streaming_reader()
    folder, _ = cerebras_folder
    from safetensors.torch import load_file

    for sub in ("image_model", "text_model"):
        reader = reader_class(str(folder / sub / "model.safetensors.index.json"))
        theirs = {name: reader[name] for name in reader}
        ours = load_file(folder / sub / "model.safetensors")
        assert set(theirs) == set(ours) and len(theirs) > 0
        for name, tensor in ours.items():
            assert theirs[name].dtype == tensor.dtype and torch.equal(theirs[name], tensor), name
    # and what it loaded is the checkpoint mmzoo reads (projector included)
    ckpt = mmzoo.read_checkpoint(folder)
    reader = reader_class(str(folder / "text_model" / "model.safetensors.index.json"))
    assert torch.equal(reader["model.mm_projector.0.weight"], materialize(ckpt.tensors["projector.linear_1.weight"]))


def test_reads_the_pytorch_model_bin_folders_the_converter_writes(cerebras_folder, tmp_path):
    """Its CS -> HF direction saves each component as pytorch_model.bin beside the config (mm_vision_tower = image_model/)."""
    import shutil

    from safetensors.torch import load_file

    folder, _ = cerebras_folder
    converted = tmp_path / "from-cerebras"
    shutil.copytree(folder, converted)
    for sub in ("image_model", "text_model"):
        state = load_file(converted / sub / "model.safetensors")
        (converted / sub / "model.safetensors").unlink()
        (converted / sub / "model.safetensors.index.json").unlink()
        torch.save(state, converted / sub / "pytorch_model.bin")
    config_path = converted / "text_model" / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("mmzoo")
    config.update(model_type="llama", architectures=["LlamaForCausalLM"], mm_vision_tower=str(converted / "image_model"))
    config_path.write_text(json.dumps(config))
    assert mmzoo.inspect(converted)["format"] == "cerebras"
    ours, theirs = mmzoo.read_checkpoint(folder), mmzoo.read_checkpoint(converted)
    assert set(ours.tensors) == set(theirs.tensors)
    for name in ours.tensors:
        assert torch.equal(materialize(ours.tensors[name]), materialize(theirs.tensors[name])), name
