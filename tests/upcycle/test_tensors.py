"""Expert tensors are byte copies (or exact x0.5 copies) of the dense MLP; routers are as asked; configs carry over."""
from __future__ import annotations

import pytest
import torch

from mmzoo import convert, read_checkpoint
from mmzoo.io.tensors import digest, materialize
from mmzoo.upcycle import upcycle

MLP = ("gate_proj.weight", "up_proj.weight", "down_proj.weight")


def _up(ckpt, **kw):
    options = dict(num_experts=4, top_k=2, style="mixtral", layers="all", targets=["text"])
    options.update(kw)
    return upcycle(ckpt, **options)


@pytest.fixture()
def ckpt(dense):
    return read_checkpoint(dense("llama").path)


def test_mixtral_experts_are_byte_copies(ckpt):
    moe = _up(ckpt)
    for layer in range(2):
        for name in MLP:
            dense_t = ckpt.tensors[f"text_model.model.layers.{layer}.mlp.{name}"]
            for e in range(4):
                expert = moe.tensors[f"text_model.model.layers.{layer}.mlp.experts.{e}.{name}"]
                assert all(p.is_byte_copy for p in expert.pieces)  # streamed from the source file, no torch
                assert digest(expert) == digest(dense_t)
        assert f"text_model.model.layers.{layer}.mlp.gate_proj.weight" not in moe.tensors


def test_shared_style_scales_routed_down_proj_exactly(ckpt):
    moe = _up(ckpt, style="shared", layers="even")
    prefix = "text_model.model.layers.0.mlp."
    down = materialize(ckpt.tensors[prefix + "down_proj.weight"])
    for e in range(4):
        assert torch.equal(materialize(moe.tensors[f"{prefix}experts.{e}.down_proj.weight"]), down * 0.5)
        assert digest(moe.tensors[f"{prefix}experts.{e}.gate_proj.weight"]) == digest(ckpt.tensors[prefix + "gate_proj.weight"])
    for name in MLP:
        assert digest(moe.tensors[f"{prefix}shared_expert.{name}"]) == digest(ckpt.tensors[prefix + name])
    assert torch.count_nonzero(materialize(moe.tensors[prefix + "shared_expert_gate.weight"])) == 0
    # odd layer stays dense
    assert "text_model.model.layers.1.mlp.gate_proj.weight" in moe.tensors


def test_router_shape_and_init_statistics(ckpt):
    moe = _up(ckpt, num_experts=8, top_k=3, router_init="normal:0.5", seed=1)
    router = materialize(moe.tensors["text_model.model.layers.1.mlp.gate.weight"])
    assert router.shape == (8, 64) and router.dtype == torch.float32
    assert abs(float(router.mean())) < 0.1 and 0.4 < float(router.std()) < 0.6
    zeros = _up(ckpt, router_init="zeros")
    assert torch.count_nonzero(materialize(zeros.tensors["text_model.model.layers.0.mlp.gate.weight"])) == 0


def test_seed_makes_routers_reproducible(ckpt):
    name = "text_model.model.layers.0.mlp.gate.weight"
    a, b, c = (materialize(_up(ckpt, seed=s).tensors[name]) for s in (7, 7, 8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    other_layer = materialize(_up(ckpt, seed=7).tensors["text_model.model.layers.1.mlp.gate.weight"])
    assert not torch.equal(a, other_layer)


def test_seeded_router_survives_writing(dense, out):
    ref = dense("llama")
    a, b = out("a"), out("b")
    for path in (a, b):
        convert(ref.path, path, tgt_fmt="internal", moe=dict(num_experts=4, top_k=2, seed=3))
    name = "text_model.model.layers.1.mlp.gate.weight"
    assert digest(read_checkpoint(a).tensors[name]) == digest(read_checkpoint(b).tensors[name])


@pytest.mark.parametrize("style,layers,model_type", [("mixtral", "all", "mixtral"), ("mixtral", "odd", "qwen2_moe"),
                                                     ("shared", "all", "qwen2_moe"), ("modality", "all", "mmzoo_moe")])
def test_moe_config_carries_every_dense_field(ckpt, style, layers, model_type):
    moe = _up(ckpt, style=style, layers=layers)
    dense_cfg, cfg = ckpt.spec.text_config, moe.spec.text_config
    assert cfg["model_type"] == model_type
    for key in ("rms_norm_eps", "rope_parameters", "vocab_size", "tie_word_embeddings", "hidden_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings", "bos_token_id", "eos_token_id"):
        assert cfg[key] == dense_cfg[key], key
    assert moe.spec.moe["layers"] == {"all": [0, 1], "odd": [1]}[layers]
    assert moe.spec.moe["style"] == style and moe.spec.moe["num_experts"] == 4 and moe.spec.moe["top_k"] == 2


def test_defaults_and_modality_assignment(ckpt):
    plain = _up(ckpt).spec.moe
    assert plain["router_aux_loss_coef"] == 0.01 and plain["capacity_factor"] is None
    modality = _up(ckpt, style="modality", num_experts=6, top_k=2, capacity_factor=1.5).spec.moe
    assert modality["router_aux_loss_coef"] == 0.001 and modality["vision_aux_loss_coef"] == 0.001
    assert modality["modality_experts"] == {"image": [0, 1], "text": [2, 3], "shared": [4, 5]}
    assert modality["capacity_factor"] == 1.5


def test_vision_and_projector_experts(ckpt):
    moe = _up(ckpt, style="shared", targets=["vision", "projector"], layers="1")
    prefix = "image_model.encoder.layers.1.mlp."
    fc2_b = materialize(ckpt.tensors[prefix + "fc2.bias"])
    assert torch.equal(materialize(moe.tensors[prefix + "experts.2.fc2.bias"]), fc2_b * 0.5)
    assert digest(moe.tensors[prefix + "experts.2.fc1.weight"]) == digest(ckpt.tensors[prefix + "fc1.weight"])
    assert moe.tensors[prefix + "gate.weight"].shape == (4, 32)
    assert moe.tensors["projector.gate.weight"].shape == (4, 32)
    assert "projector.linear_1.weight" not in moe.tensors
    assert digest(moe.tensors["projector.experts.0.linear_1.weight"]) == digest(ckpt.tensors["projector.linear_1.weight"])
    assert moe.spec.text_config["model_type"] == "mmzoo_moe" and moe.spec.moe["vision_layers"] == [1]
