"""Absurd, missing or mistyped config numbers: one line naming the key, before any loop or division."""
from __future__ import annotations

import errno
import json
import shutil
import time

import pytest

from mmzoo.archs.checks import check_text_config, check_vision_config
from mmzoo.errors import ConfigError
from robust_helpers import assert_one_line, run_main

TEXT_CASES = [
    ("num_hidden_layers", 1e10, "text_config.num_hidden_layers must be a whole number from 1 to 10,000 (got 10000000000.0)"),
    ("num_hidden_layers", 10**10, "text_config.num_hidden_layers must be a whole number"),  # an int: a loop of 1e10 before
    ("num_hidden_layers", None, "text_config has no num_hidden_layers"),
    ("num_attention_heads", 0, "text_config.num_attention_heads must be a whole number from 1"),
    ("hidden_size", "big", "text_config.hidden_size must be a whole number from 1 to 1,048,576 (got 'big')"),
    ("vocab_size", -5, "text_config.vocab_size"),
    ("intermediate_size", True, "text_config.intermediate_size"),
    ("num_key_value_heads", 0, "text_config.num_key_value_heads"),
    ("head_dim", 2.5, "text_config.head_dim"),
]
VISION_CASES = [
    ("patch_size", 0, "vision_config.patch_size must be a whole number from 1"),  # ZeroDivisionError before
    ("image_size", "x", "vision_config.image_size"),  # TypeError before
    ("num_attention_heads", 0, "vision_config.num_attention_heads"),
    ("num_hidden_layers", 1e10, "vision_config.num_hidden_layers"),
    ("patch_size", 64, "vision_config.patch_size 64 is larger than image_size 32"),
]


def _edit_config(folder, section, key, value):
    config = json.loads((folder / "config.json").read_text())
    config[section][key] = value
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("key,value,message", TEXT_CASES, ids=[f"{k}={v!r}" for k, v, _ in TEXT_CASES])
def test_text_config_numbers(hf_copy, tmp_path, capsys, key, value, message):
    _edit_config(hf_copy, "text_config", key, value)
    start = time.perf_counter()
    assert_one_line(*run_main(capsys, "inspect", hf_copy), str(hf_copy), message)
    assert_one_line(*run_main(capsys, "convert", hf_copy, "-o", tmp_path / "out", "--tgt-fmt", "internal"), message)
    assert time.perf_counter() - start < 10 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("key,value,message", VISION_CASES, ids=[f"{k}={v!r}" for k, v, _ in VISION_CASES])
def test_vision_config_numbers(hf_copy, tmp_path, capsys, key, value, message):
    _edit_config(hf_copy, "vision_config", key, value)
    assert_one_line(*run_main(capsys, "inspect", hf_copy), message)
    assert_one_line(*run_main(capsys, "convert", hf_copy, "-o", tmp_path / "out", "--tgt-fmt", "llava"), message)


def test_wrong_shapes_of_config_sections(hf_copy, capsys):
    config = json.loads((hf_copy / "config.json").read_text())
    config["text_config"] = [1]
    (hf_copy / "config.json").write_text(json.dumps(config))
    assert_one_line(*run_main(capsys, "inspect", hf_copy), "config.json", "must be JSON objects")
    config["text_config"] = {"model_type": "llama", "hidden_size": None}  # null: neither a value nor a default
    (hf_copy / "config.json").write_text(json.dumps(config))
    assert_one_line(*run_main(capsys, "inspect", hf_copy), "text_config has no hidden_size")
    del config["text_config"]  # as transformers: no text_config is a default LlamaConfig, whose shapes do not fit
    (hf_copy / "config.json").write_text(json.dumps(config))
    assert_one_line(*run_main(capsys, "inspect", hf_copy), "the config implies [32000, 4096]")


def test_mmzoo_yaml_with_wrong_types_names_the_file(internal_copy, capsys):
    """pydantic's own errors name the file they came from."""
    import yaml

    manifest = internal_copy / "mmzoo.yaml"
    data = yaml.safe_load(manifest.read_text())
    data["model"]["projector_type"] = "quantum"
    manifest.write_text(yaml.safe_dump(data))
    assert_one_line(*run_main(capsys, "inspect", internal_copy), "mmzoo.yaml", "invalid projector_type")
    data["model"]["projector_type"] = "mlp2x_gelu"
    data["model"]["text_config"]["num_hidden_layers"] = 10**12
    manifest.write_text(yaml.safe_dump(data))
    assert_one_line(*run_main(capsys, "inspect", internal_copy), "mmzoo.yaml", "text_config.num_hidden_layers")


def test_init_checks_both_folders_before_arithmetic(tiny, tmp_path, capsys):
    from mmzoo.demo.tiny import build_llm, build_vision

    vision, text = tmp_path / "vision", tmp_path / "llm"
    build_vision(vision)
    build_llm(text)
    config = json.loads((vision / "config.json").read_text())
    config["patch_size"] = 0
    (vision / "config.json").write_text(json.dumps(config))
    assert_one_line(*run_main(capsys, "init", "--vision", vision, "--text", text, "-o", tmp_path / "out"),
                    str(vision / "config.json"), "patch_size")
    config["patch_size"] = 8
    (vision / "config.json").write_text(json.dumps(config))
    config = json.loads((text / "config.json").read_text())
    config["num_hidden_layers"] = 1e10
    (text / "config.json").write_text(json.dumps(config))
    assert_one_line(*run_main(capsys, "init", "--vision", vision, "--text", text, "-o", tmp_path / "out"),
                    str(text / "config.json"), "num_hidden_layers")


def test_init_checks_the_weights_before_drawing_the_projector(tmp_path, capsys):
    """A text config claiming hidden_size 2^20 (within the bounds) over tiny weights: the fresh projector would be
    2^20 x 2^20 floats, 4 TiB, and init allocated it before comparing any shape with the weights."""
    import resource

    from mmzoo.demo.tiny import build_llm, build_vision

    vision, text = tmp_path / "vision", tmp_path / "llm"
    build_vision(vision)
    build_llm(text)
    config = json.loads((text / "config.json").read_text())
    config["hidden_size"] = 1 << 20
    (text / "config.json").write_text(json.dumps(config))
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (min(hard, 64 << 30) if hard != resource.RLIM_INFINITY else 64 << 30, hard))
    try:  # 64 GiB of address space: far above what the test process maps, far below the 4 TiB projector
        line = assert_one_line(*run_main(capsys, "init", "--vision", vision, "--text", text, "-o", tmp_path / "out"),
                               "embed_tokens.weight", "the config implies")
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert str(text) in line and not (tmp_path / "out").exists()
    config["hidden_size"] = 64
    (text / "config.json").write_text(json.dumps(config))
    config = json.loads((vision / "config.json").read_text())
    config["hidden_size"] = 1 << 20
    (vision / "config.json").write_text(json.dumps(config))
    line = assert_one_line(*run_main(capsys, "init", "--vision", vision, "--text", text, "-o", tmp_path / "out"),
                           "image_model.", "the config implies")
    assert line.startswith(f"mmzoo: error: {vision}:"), line  # the folder whose weights disagree, not the LLM's


def test_bounds_accept_real_model_sizes():
    """A Llama-3-405B-like text config and a SigLIP-so400m-like vision config pass."""
    check_text_config({"hidden_size": 16384, "num_hidden_layers": 126, "num_attention_heads": 128, "num_key_value_heads": 8,
                       "intermediate_size": 53248, "vocab_size": 128256})
    check_vision_config({"hidden_size": 1152, "num_hidden_layers": 27, "num_attention_heads": 16, "intermediate_size": 4304,
                         "image_size": 384, "patch_size": 14})
    with pytest.raises(ConfigError):
        check_text_config({"hidden_size": 1})


@pytest.mark.parametrize("size", ["nan", "inf", "1e400", "0.1B", "-1GB", "1e30GB"])
def test_shard_size_nan_inf_huge(tiny, tmp_path, capsys, size):
    assert_one_line(*run_main(capsys, "convert", tiny.hf(), "-o", tmp_path / "out", "--tgt-fmt", "internal", "--shard-size", size),
                    f"invalid size {size!r}")
    assert not (tmp_path / "out").exists()


def test_disk_full_during_convert_names_the_output(tiny, tmp_path, capsys, monkeypatch):
    """copy_file_range raising ENOSPC (as on a full disk) gives a line with OUT and leaves nothing there."""
    import os

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "copy_file_range", full, raising=False)
    monkeypatch.setattr(os, "write", full)
    out = tmp_path / "out"
    line = assert_one_line(*run_main(capsys, "convert", tiny.hf(), "-o", out, "--tgt-fmt", "internal"), "No space left on device")
    assert str(out) in line
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


def test_absurd_expert_count_is_refused_at_once(tiny, tmp_path, capsys):
    src = tiny.hf()
    start = time.perf_counter()
    assert_one_line(*run_main(capsys, "convert", src, "-o", tmp_path / "out", "--tgt-fmt", "internal", "--moe-experts", "100000000"),
                    "--moe-experts must be at least 1 and at most 4096")
    assert time.perf_counter() - start < 10 and not (tmp_path / "out").exists()


def test_genuine_sparse_llava_hf_config_gets_transformers_defaults():
    """The published llava-hf/llava-1.5-7b-hf config.json (transformers 4.36, verbatim) saves its
    text_config as a diff against LlamaConfig: no hidden_size, layers, heads or intermediate size.
    The required numbers come from transformers' defaults, as when transformers loads it; the shapes
    they imply are those of the published 7B weights."""
    from pathlib import Path

    from mmzoo.archs import text as text_arch
    from mmzoo.archs import vision as vision_arch
    from mmzoo.converters.hf import spec_from_config

    config = json.loads((Path(__file__).parents[1] / "fixtures" / "genuine" / "llava-1.5-7b-hf" / "config.json").read_text())
    assert "hidden_size" not in config["text_config"]
    spec = spec_from_config(config, Path("llava-1.5-7b-hf"))
    text = text_arch.expected_shapes(spec.text_config)
    assert text["model.embed_tokens.weight"] == (32064, 4096) and text["lm_head.weight"] == (32064, 4096)
    assert text["model.layers.31.mlp.gate_proj.weight"] == (11008, 4096) and "model.layers.32.mlp.gate_proj.weight" not in text
    assert text["model.layers.0.self_attn.k_proj.weight"] == (4096, 4096)
    vision = vision_arch.expected_shapes(spec.vision_config)
    assert vision["embeddings.position_embedding.weight"] == (577, 1024)
    assert vision["embeddings.patch_embedding.weight"] == (1024, 3, 14, 14)
    assert spec.text_config["rms_norm_eps"] == 1e-05  # what the file says is kept


def test_sparse_config_against_tiny_weights_is_a_shape_error_not_a_key_error(hf_copy, capsys):
    from pathlib import Path

    genuine = (Path(__file__).parents[1] / "fixtures" / "genuine" / "llava-1.5-7b-hf" / "config.json").read_text()
    (hf_copy / "config.json").write_text(genuine)
    assert_one_line(*run_main(capsys, "inspect", hf_copy), "the config implies [32064, 4096]")


NOTE_CASES = [(5, "'mmzoo' must be a JSON object"), ({"replaced": 3}, "mmzoo.replaced must be a JSON object"),
              ({"added_keys": 5}, "mmzoo.added_keys must be a JSON list"), ({"vision_replaced": [1]}, "mmzoo.vision_replaced")]


@pytest.mark.parametrize("layout,config", [("llava", "text_model_llava/config.json"), ("moe-llava", "config.json")])
@pytest.mark.parametrize("notes,message", NOTE_CASES, ids=[m.split()[0] for _, m in NOTE_CASES])
def test_wrong_types_in_the_mmzoo_block(layouts, tmp_path, capsys, layout, config, notes, message):
    folder = tmp_path / layout
    shutil.copytree(layouts[layout], folder)
    data = json.loads((folder / config).read_text())
    data["mmzoo"] = notes
    (folder / config).write_text(json.dumps(data))
    assert_one_line(*run_main(capsys, "inspect", folder), str(folder / config), message)


@pytest.mark.parametrize("change,message", [
    ({"moe": 5}, "'moe' must be a JSON object"),
    ({"moe": {"num_experts": "x"}}, "moe.num_experts must be a number"),
    ({"moe": {"top_k_experts": 1.5}}, "moe.top_k_experts must be a whole number"),
    ({"moe": {"num_experts": 10**9}}, "num_local_experts must be a whole number from 1 to 4,096"),
    ({"moe": {"moe_layers_idx": [0, 10**9]}}, "moe.layers must be a list of layer indices"),
    ({"num_hidden_layers": 10**10}, "config.num_hidden_layers must be a whole number"),
], ids=["moe-not-object", "experts-str", "topk-float", "experts-huge", "layer-huge", "layers-huge"])
def test_genuine_moe_llava_config_with_wrong_moe_block(layouts, tmp_path, capsys, change, message):
    """A MoE-LLaVA config as its own code writes it (no mmzoo block): the DeepSpeed-MoE ``moe`` block."""
    folder = tmp_path / "moe"
    shutil.copytree(layouts["moe-llava"], folder)
    data = json.loads((folder / "config.json").read_text())
    data.pop("mmzoo")
    (folder / "config.json").write_text(json.dumps(data))
    assert run_main(capsys, "inspect", folder)[0] == 0  # readable as it is
    (folder / "config.json").write_text(json.dumps({**data, **change}))
    start = time.perf_counter()
    assert_one_line(*run_main(capsys, "inspect", folder), message)
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("layer", [1000, -4, [-2, 7]])
def test_a_vision_feature_layer_the_tower_does_not_have(hf_copy, capsys, layer):
    """The tiny tower has 2 layers, so hidden states -3..2: layer 1000 converted silently and every generate with an
    image ended in an IndexError inside transformers."""
    config = json.loads((hf_copy / "config.json").read_text())
    config["vision_feature_layer"] = layer
    (hf_copy / "config.json").write_text(json.dumps(config))
    for args in (("inspect", hf_copy), ("convert", hf_copy, "-o", hf_copy.parent / "out", "--tgt-fmt", "internal")):
        assert_one_line(*run_main(capsys, *args), str(hf_copy), "does not exist: the vision tower has 2 layers (hidden states -3 to 2)")
    assert not (hf_copy.parent / "out").exists()
