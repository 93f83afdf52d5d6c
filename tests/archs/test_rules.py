import pytest
import torch
from safetensors.torch import save_file

from mmzoo.archs import text_table, vision_table
from mmzoo.archs.base import Rule, Table
from mmzoo.errors import UnexpectedTensor, UnknownArchitecture
from mmzoo.io.checkpoint import read_weights
from mmzoo.io.tensors import Planned, materialize


def _planned(tmp_path, tensors):
    save_file(tensors, tmp_path / "model.safetensors")
    return {n: Planned.of(s) for n, s in read_weights(tmp_path).items()}


def test_placeholders_and_alternatives_map_both_ways(tmp_path):
    table = Table("t", (Rule("blk.{L}.{a|b}.w", "layers.{L}.{a|b}.weight"), Rule("buf.{L}", None)))
    planned = _planned(tmp_path, {"blk.0.a.w": torch.zeros(1), "blk.3.b.w": torch.ones(1), "buf.1": torch.zeros(1)})
    canonical = table.to_canonical(planned, {})
    assert set(canonical) == {"layers.0.a.weight", "layers.3.b.weight"}
    assert set(table.from_canonical(canonical)) == {"blk.0.a.w", "blk.3.b.w"}


def test_unmatched_key_is_an_error_naming_it_unless_dropped(tmp_path):
    planned = _planned(tmp_path, {"model.layers.0.mystery.weight": torch.zeros(1)})
    with pytest.raises(UnexpectedTensor, match="model.layers.0.mystery.weight"):
        text_table("llama").to_canonical(planned, {})
    assert text_table("llama").to_canonical(planned, {}, drop_unmatched=True) == {}


def test_phi3_fused_tensors_split_and_fuse_exactly(tmp_path):
    cfg = {"hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 6}
    qkv = torch.randn(8 + 4 + 4, 8)
    gate_up = torch.randn(12, 8)
    planned = _planned(tmp_path, {"model.layers.0.self_attn.qkv_proj.weight": qkv, "model.layers.0.mlp.gate_up_proj.weight": gate_up})
    canonical = text_table("phi3").to_canonical(planned, cfg)
    assert torch.equal(materialize(canonical["model.layers.0.self_attn.q_proj.weight"]), qkv[:8])
    assert torch.equal(materialize(canonical["model.layers.0.self_attn.k_proj.weight"]), qkv[8:12])
    assert torch.equal(materialize(canonical["model.layers.0.self_attn.v_proj.weight"]), qkv[12:])
    assert torch.equal(materialize(canonical["model.layers.0.mlp.up_proj.weight"]), gate_up[6:])
    # slices are pure byte ranges of the source file: no tensor maths needed to write them
    assert all(p.is_byte_copy for t in canonical.values() for p in t.pieces)
    fused = text_table("phi3").from_canonical(canonical)
    assert torch.equal(materialize(fused["model.layers.0.self_attn.qkv_proj.weight"]), qkv)
    assert torch.equal(materialize(fused["model.layers.0.mlp.gate_up_proj.weight"]), gate_up)


def test_unknown_architectures_name_the_supported_ones():
    with pytest.raises(UnknownArchitecture, match="llama, mistral, qwen2, phi3"):
        text_table("gpt2")
    with pytest.raises(UnknownArchitecture, match="clip_vision_model, siglip_vision_model"):
        vision_table("dinov2")
