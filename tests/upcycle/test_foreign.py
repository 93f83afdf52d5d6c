"""MoE checkpoints mmzoo did not write: a transformers Mixtral Llava, and MoE-LLaVA folders without mmzoo's notes."""
from __future__ import annotations

import json

import pytest
import torch
from upcycle_helpers import TOL, load_hf, max_diff

from mmzoo import convert, inspect, load_model, read_checkpoint
from mmzoo.errors import UpcycleError


def test_transformers_mixtral_llava_is_read_as_moe(tmp_path):
    from transformers import LlavaConfig, LlavaForConditionalGeneration, MixtralConfig

    from mmzoo.demo.tiny import make_tokenizer, sample_inputs, vision_config

    tok = make_tokenizer()
    text = MixtralConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, num_local_experts=3, num_experts_per_tok=2, rms_norm_eps=1e-5)
    config = LlavaConfig(vision_config=vision_config("clip"), text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                         image_seq_length=16)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.save_pretrained(tmp_path / "mixtral")
    info = inspect(tmp_path / "mixtral")
    assert info["text"] == "mixtral" and info["moe"]["num_experts"] == 3 and info["moe"]["top_k"] == 2 and info["moe"]["layers"] == [0, 1]
    inputs = sample_inputs(model)
    with torch.no_grad():
        ref = model(**inputs).logits
        got = load_model(tmp_path / "mixtral")(**inputs).logits
    assert float((got - ref).abs().max()) <= TOL
    with pytest.raises(UpcycleError, match="already MoE"):
        convert(tmp_path / "mixtral", tmp_path / "again", tgt_fmt="hf", moe=dict(num_experts=4, top_k=2))
    # canonical names, and a bit-exact hf -> internal -> hf round trip
    ckpt = read_checkpoint(tmp_path / "mixtral")
    assert "text_model.model.layers.1.mlp.experts.2.down_proj.weight" in ckpt.tensors
    convert(tmp_path / "mixtral", tmp_path / "internal", tgt_fmt="internal", verify=True)
    convert(tmp_path / "internal", tmp_path / "hf", tgt_fmt="hf", verify=True)


def _strip_notes(folder):
    config = json.loads((folder / "config.json").read_text())
    config.pop("mmzoo")
    (folder / "config.json").write_text(json.dumps(config))
    return config


def test_foreign_moe_llava_converts_to_hf(dense, out):
    ref = dense("llama")
    folder = out("moe-llava")
    convert(ref.path, folder, tgt_fmt="moe-llava", moe=dict(num_experts=4, top_k=2, layers="even", capacity_factor=1.5))
    config = _strip_notes(folder)
    assert config["moe"]["moe_layers_idx"] == [0] and config["moe"]["capacity_factor"] == 1.5
    ckpt = read_checkpoint(folder)
    assert ckpt.spec.moe["style"] == "mixtral" and ckpt.spec.moe["layers"] == [0] and ckpt.spec.moe["capacity_factor"] == 1.5
    hf = out("hf")
    convert(folder, hf, tgt_fmt="hf", verify=True)
    assert max_diff(load_hf(hf), ref) <= TOL
    assert max_diff(load_model(folder), ref) <= TOL


def test_foreign_moe_llava_with_residual(dense, out):
    from safetensors.torch import load_file, save_file

    ref = dense("llama")
    folder = out("moe-llava")
    convert(ref.path, folder, tgt_fmt="moe-llava", moe=dict(num_experts=4, top_k=2, layers="all"))
    config = _strip_notes(folder)
    config["moe"]["use_residual"] = True
    (folder / "config.json").write_text(json.dumps(config))
    weights = load_file(folder / "model.safetensors")
    for layer in (0, 1):
        p = f"model.layers.{layer}.mlp."
        for name in ("gate_proj", "up_proj", "down_proj"):
            weights[f"{p}mlp.{name}.weight"] = weights[f"{p}deepspeed_moe.experts.deepspeed_experts.0.{name}.weight"].clone()
        weights[p + "coefficient.weight"] = torch.zeros(2, 64)
        weights[p + "coefficient.bias"] = torch.zeros(2)
    save_file(weights, folder / "model.safetensors")
    ckpt = read_checkpoint(folder)
    assert ckpt.spec.moe["style"] == "residual" and ckpt.spec.text_config["model_type"] == "mmzoo_moe"
    assert "text_model.model.layers.1.mlp.residual.down_proj.weight" in ckpt.tensors
    assert max_diff(load_model(folder), ref) <= TOL  # softmax(0, 0) mixes MoE and residual 50/50
    internal, back = out("internal"), out("back")
    convert(folder, internal, tgt_fmt="internal", verify=True)
    convert(internal, back, tgt_fmt="moe-llava", verify=True)
    assert max_diff(load_model(back), ref) <= TOL
    # hf: mmzoo's residual MoE blocks as remote code
    from transformers import AutoModelForImageTextToText

    hf = out("hf")
    convert(folder, hf, tgt_fmt="hf", verify=True)
    assert json.loads((hf / "config.json").read_text())["mmzoo_moe_blocks"] == {"residual": True, "coefficient_bias": True}
    assert max_diff(AutoModelForImageTextToText.from_pretrained(hf, trust_remote_code=True).eval(), ref) <= TOL
    again = out("moe-llava")
    convert(hf, again, tgt_fmt="moe-llava", verify=True)
    from mmzoo import diff

    assert diff(folder, hf)["equal"] and diff(folder, again)["equal"]


def test_training_forward_adds_aux_loss(dense, out):
    ref = dense("llama")
    path = out("internal")
    convert(ref.path, path, tgt_fmt="internal", moe=dict(num_experts=4, top_k=2, style="modality", layers="all",
                                                          capacity_factor=1.0, router_aux_loss_coef=0.01, vision_aux_loss_coef=0.02))
    model = load_model(path)
    assert model.mmzoo_moe["vision_aux_loss_coef"] == 0.02
    labels = ref.inputs["input_ids"].clone()
    model.train()
    result = model(**ref.inputs, labels=labels)
    assert result["aux_loss"] > 0
    result.loss.backward()
    router = model.model.language_model.layers[0].mlp.gate.weight
    assert router.grad is not None and float(router.grad.abs().sum()) > 0
