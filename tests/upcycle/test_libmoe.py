"""LibMoE's SMoE router (``--moe-router smoe``): Mixtral routing, LibMoE's balance + router z-loss.

Dense-equivalent at init in every format that holds it (internal, hf with mmzoo's remote code), the
aux loss is LibMoE's formula (recomputed here from the router's own logits), moe-llava refuses it."""
from __future__ import annotations

import json

import pytest
import torch
from upcycle_helpers import TOL, max_diff

from mmzoo import convert, load_model
from mmzoo.errors import UnknownArchitecture, UpcycleError


def _moe(**kw):
    options = dict(num_experts=4, top_k=2, style="mixtral", layers="all", targets=["text"], router="smoe")
    options.update(kw)
    return options


def libmoe_loss(logits: torch.Tensor, balance_coef: float, z_coef: float) -> torch.Tensor:
    """LibMoE's combine_loss for one block, on router logits [B, N, E] (written from its moe.py)."""
    num = logits.shape[-1]
    softmax = torch.softmax(logits.float(), dim=-1)
    first = torch.topk(softmax, 2, dim=-1).indices[..., 0]
    density = torch.nn.functional.one_hot(first, num).float().mean(dim=1)  # [B, E]
    proxy = softmax.mean(dim=1)
    balance = (proxy * density).mean() * num * num
    z = torch.logsumexp(logits.float(), dim=-1).square().mean()
    return balance_coef * balance + z_coef * z


@pytest.mark.parametrize("style,targets", [("mixtral", ("text",)), ("shared", ("text",)), ("mixtral", ("text", "vision", "projector"))])
def test_smoe_is_dense_equivalent_and_its_aux_loss_is_libmoes(dense, out, style, targets):
    ref = dense("llama")
    path = out("smoe")
    convert(ref.path, path, tgt_fmt="internal", moe=_moe(style=style, targets=list(targets), router_z_loss_coef=0.002), verify=True)
    model = load_model(path)
    assert max_diff(model, ref) <= TOL
    from mmzoo.upcycle.moe_modeling import moe_blocks

    blocks = moe_blocks(model)
    assert blocks and all(b.router == "smoe" and b.z_coef == 0.002 and b.text_coef == 0.01 for b in blocks)
    seen = []  # (block input shape, router logits) per block call
    hooks = [b.register_forward_hook(lambda m, a, o: seen.append((a[0].shape, m.gate(a[0].reshape(-1, a[0].shape[-1]))))) for b in blocks]
    with torch.no_grad():
        result = model(**ref.inputs)
    for h in hooks:
        h.remove()
    assert len(seen) == len(blocks)
    expected = sum(libmoe_loss(logits.reshape(shape[0], -1, logits.shape[-1]) if len(shape) == 3 else logits[None], 0.01, 0.002)
                   for shape, logits in seen)
    assert torch.allclose(result["aux_loss"].float(), expected, rtol=1e-5, atol=1e-7)


def test_smoe_hf_uses_remote_code_and_reads_back(dense, out):
    from transformers import AutoModelForImageTextToText

    ref = dense("llama")
    path = out("smoe-hf")
    result = convert(ref.path, path, tgt_fmt="hf", moe=_moe(), verify=True)
    assert any("LibMoE smoe router losses" in n for n in result.notes)
    config = json.loads((path / "config.json").read_text())
    assert config["text_config"]["mmzoo_moe"]["router"] == "smoe" and config["text_config"]["mmzoo_moe"]["router_z_loss_coef"] == 0.001
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True).eval()
    assert max_diff(model, ref) <= TOL
    with torch.no_grad():
        aux = model(**ref.inputs).aux_loss
    with torch.no_grad():
        assert torch.allclose(aux, load_model(path)(**ref.inputs)["aux_loss"])
    back = out("internal")
    convert(path, back, tgt_fmt="internal", verify=True)
    from mmzoo import read_checkpoint

    assert read_checkpoint(back).spec.moe["router"] == "smoe"


def test_smoe_refusals(dense, out):
    with pytest.raises(UpcycleError, match="use --moe-style mixtral or shared"):
        convert(dense("llama").path, out(), tgt_fmt="internal", moe=_moe(style="modality"))
    with pytest.raises(UpcycleError, match="--router-z-loss-coef is a non-negative weight of --moe-router smoe"):
        convert(dense("llama").path, out(), tgt_fmt="internal", moe=_moe(router="softmax_topk", router_z_loss_coef=0.1))
    with pytest.raises(UpcycleError, match="invalid upcycling option router"):
        convert(dense("llama").path, out(), tgt_fmt="internal", moe=_moe(router="tcmoe"))
    with pytest.raises(UnknownArchitecture, match="no LibMoE smoe router"):
        convert(dense("llama").path, out(), tgt_fmt="moe-llava", moe=_moe())
