"""Upcycled models give the dense model's logits (float32, with images) in every format that holds them."""
from __future__ import annotations

import pytest
from upcycle_helpers import TOL, load_hf, max_diff

from mmzoo import convert, load_model

LAYERS = ["all", "even", "odd", "1"]


def _moe(style="mixtral", layers="all", targets=("text",), **kw):
    return dict(num_experts=4, top_k=2, style=style, layers=layers, targets=list(targets), **kw)


@pytest.mark.parametrize("layers", LAYERS)
@pytest.mark.parametrize("style", ["mixtral", "shared"])
def test_hf_loads_with_transformers_and_matches_dense(dense, out, style, layers):
    ref = dense("llama")
    path = out("hf")
    convert(ref.path, path, tgt_fmt="hf", moe=_moe(style, layers), verify=True)
    model = load_hf(path)
    expected = "MixtralModel" if style == "mixtral" and layers == "all" else "Qwen2MoeModel"
    assert type(model.model.language_model).__name__ == expected
    assert max_diff(model, ref) <= TOL
    # the same folder through mmzoo.load_model
    assert max_diff(load_model(path), ref) <= TOL


@pytest.mark.parametrize("layers", LAYERS)
@pytest.mark.parametrize("style", ["mixtral", "shared", "modality"])
def test_internal_load_model_matches_dense(dense, out, style, layers):
    ref = dense("llama")
    path = out("internal")
    convert(ref.path, path, tgt_fmt="internal", moe=_moe(style, layers), verify=True)
    model = load_model(path)
    assert max_diff(model, ref) <= TOL


@pytest.mark.parametrize("arch", ["mistral", "qwen2", "phi3"])
@pytest.mark.parametrize("style,layers", [("mixtral", "all"), ("shared", "odd")])
def test_other_llms_hf(dense, out, arch, style, layers):
    ref = dense(arch)
    path = out("hf")
    convert(ref.path, path, tgt_fmt="hf", moe=_moe(style, layers))
    assert max_diff(load_hf(path), ref) <= TOL


@pytest.mark.parametrize("targets", [("vision",), ("projector",), ("text", "vision", "projector")])
@pytest.mark.parametrize("style", ["mixtral", "shared", "modality"])
def test_vision_and_projector_targets_internal(dense, out, style, targets):
    ref = dense("llama")
    path = out("internal")
    convert(ref.path, path, tgt_fmt="internal", moe=_moe(style, "even", targets), verify=True)
    model = load_model(path)
    assert max_diff(model, ref) <= TOL
    import torch

    with torch.no_grad():
        result = model(**ref.inputs)
    assert result["aux_loss"] is not None and float(result["aux_loss"]) > 0


@pytest.mark.parametrize("style,layers", [("mixtral", "all"), ("mixtral", "even"), ("modality", "odd")])
def test_moe_llava_round_trip_bit_exact(dense, out, style, layers):
    from mmzoo import diff

    ref = dense("llama")
    first_fmt = "internal" if style == "modality" else "hf"
    first, moe_llava, back = out("a"), out("moe-llava"), out("b")
    convert(ref.path, first, tgt_fmt=first_fmt, moe=_moe(style, layers))
    convert(first, moe_llava, tgt_fmt="moe-llava", verify=True)
    convert(moe_llava, back, tgt_fmt=first_fmt, verify=True)
    assert diff(first, back)["equal"] and diff(first, moe_llava)["equal"]
    assert max_diff(load_model(moe_llava), ref) <= TOL
    if first_fmt == "hf":
        assert max_diff(load_hf(back), ref) <= TOL
    # also internal <-> moe-llava
    internal = out("internal")
    convert(moe_llava, internal, tgt_fmt="internal", verify=True)
    assert diff(internal, first)["equal"]


def test_bf16_upcycle_is_exact_copy(dense, out):
    """Cast + upcycle in one pass: experts still equal the (cast) dense MLP."""
    from mmzoo import read_checkpoint

    ref = dense("llama")
    path = out("bf16")
    convert(ref.path, path, tgt_fmt="internal", dtype="bf16", moe=_moe("shared", "all"))
    ckpt = read_checkpoint(path)
    assert ckpt.tensors["text_model.model.layers.0.mlp.gate.weight"].dtype == "BF16"
    assert ckpt.tensors["text_model.model.layers.0.mlp.experts.3.down_proj.weight"].dtype == "BF16"
