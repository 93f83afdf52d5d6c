"""LibMoE's MoE++ (``--moe-router moepp``, Fsoft-AIC/LibMoE ``moe_model/model/moe/moe_plus_plus.py``).

Its zero and constant experts sit in every token's top-k choice, so an upcycled MoE++ model is not
dense-equivalent; what is true at init (and said at convert time): a token whose top-k are all FFN experts
gets exactly the dense MLP's output. The block follows LibMoE's definition on random weights, its aux loss
is LibMoE's (E + 2 columns, column 4 × 1.3, + z-loss), the projector stays plain SMoE (in != out), and the
hf folder (mmzoo's remote code) reloads with the same logits and aux loss."""
from __future__ import annotations

import json

import pytest
import torch
from upcycle_helpers import TOL, max_diff, routed_mix

from mmzoo import convert, load_model, read_checkpoint
from mmzoo.errors import UpcycleError


def _moe(**kw):
    options = dict(num_experts=4, top_k=2, style="mixtral", layers="all", targets=["text"], router="moepp")
    options.update(kw)
    return options


def _block(hidden: int = 16, out: int = 16, num_experts: int = 4, top_k: int = 2):
    from mmzoo.upcycle.moe_modeling import MoeBlock
    from mmzoo.upcycle.remote.modeling_mmzoo_moe import ModalityContext

    torch.manual_seed(0)
    dense = torch.nn.Sequential(torch.nn.Linear(hidden, 24), torch.nn.GELU(), torch.nn.Linear(24, out))
    block = MoeBlock(dense, hidden=hidden, num_experts=num_experts, top_k=top_k, style="mixtral", modality="text",
                     layout={"router": "moepp", "router_aux_loss_coef": 0.01, "router_z_loss_coef": 0.001}, context=ModalityContext())
    return block, dense


def libmoe_moepp_loss(logits: torch.Tensor, balance_coef: float, z_coef: float, top_k: int) -> torch.Tensor:
    """SMoEPlusPlus.balanceloss + MoeLayer.zloss, written from LibMoE's code for logits [B, N, E + 2]."""
    num = logits.shape[-1]
    softmax = torch.softmax(logits.float(), dim=-1)
    first = torch.topk(softmax, top_k, dim=-1).indices[..., 0]
    dens = softmax.mean(dim=1) * torch.nn.functional.one_hot(first, num).float().mean(dim=1)
    t = torch.ones_like(dens)
    t[:, 4] = 1.3
    balance = (t * dens).mean() * float(num ** 2)
    z = torch.logsumexp(logits.float(), dim=-1).square().mean()
    return balance_coef * balance + z_coef * z


def test_moepp_block_follows_libmoes_definition():
    """E FFN experts, a zero expert (E) and a constant expert (E + 1: softmax(wg x) mixes x and a vector); top-k
    of the softmax over E + 2, renormalised; LibMoE's balance (column 4 x 1.3) + z-loss."""
    block, _ = _block()
    assert tuple(block.gate.weight.shape) == (6, 16) and tuple(block.gate_transform.weight.shape) == (6, 6)
    assert "gate_transform.weight" not in dict(block.named_parameters())  # unused by LibMoE's forward: a buffer
    assert "gate_transform.weight" in block.state_dict() and "experts.5.constant" in block.state_dict()
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        got = block(x)
        logits = block.gate(x)
        probs = torch.softmax(logits, dim=-1)
        top_p, top_i = torch.topk(probs, 2, dim=-1)
        weights = top_p / top_p.sum(-1, keepdim=True)
        const = block.experts[5]
        picked = set()

        def expert(i, token):  # 4 FFN experts, the zero expert, the constant expert
            picked.add(i)
            if i < 4:
                return block.experts[i](token)
            if i == 4:
                return torch.zeros(16)
            mix = torch.softmax(const.wg(token), dim=-1)
            return mix[0] * token + mix[1] * const.constant

        want = routed_mix(x, top_i, weights, expert)
        assert {4, 5} <= picked, picked  # the zero and constant experts were exercised
        assert torch.allclose(got, want, atol=1e-6)
        expected = libmoe_moepp_loss(logits, 0.01, 0.001, 2)
    assert torch.allclose(block.last_aux_loss, expected, rtol=1e-6)


def test_moepp_is_plain_smoe_where_the_mlp_changes_width():
    """LibMoE turns MoE++ on only where in == out (``use_moe_plus_plus``): the projector keeps E experts."""
    block, _ = _block(hidden=16, out=12)
    assert not block.plus_plus and tuple(block.gate.weight.shape) == (4, 16) and len(block.experts) == 4
    assert not hasattr(block, "gate_transform")


def test_upcycled_moepp_is_dense_for_tokens_routed_to_ffn_experts(dense, out):
    """The stated exception: not dense-equivalent, but exact for every token whose top-k are FFN experts; the
    convert note says so; the projector (vision 32 -> text 64 wide) stays plain SMoE."""
    from mmzoo.upcycle.moe_modeling import moe_blocks

    ref = dense("llama")
    path = out("moepp")
    result = convert(ref.path, path, tgt_fmt="internal", moe=_moe(targets=["text", "vision", "projector"]), verify=True)
    assert any("MoE++ (--moe-router moepp) is not dense-equivalent at init" in n for n in result.notes)
    names = read_checkpoint(path).tensors
    assert tuple(names["text_model.model.layers.0.mlp.gate.weight"].shape) == (6, 64)
    assert tuple(names["text_model.model.layers.0.mlp.gate_transform.weight"].shape) == (6, 6)
    assert tuple(names["text_model.model.layers.0.mlp.experts.5.constant"].shape) == (64,)
    assert tuple(names["image_model.encoder.layers.0.mlp.experts.5.wg.weight"].shape) == (2, 32)
    assert tuple(names["projector.gate.weight"].shape) == (4, 32) and "projector.gate_transform.weight" not in names
    model = load_model(path)
    blocks = moe_blocks(model)
    assert [b.plus_plus for b in blocks].count(False) == 1  # the projector
    checked = 0
    for block in blocks:
        if not block.plus_plus:
            continue
        seen = {}
        hook = block.register_forward_hook(lambda m, a, o: seen.update(x=a[0].detach(), y=o.detach()))
        with torch.no_grad():
            model(**ref.inputs)
        hook.remove()
        x = seen["x"].reshape(-1, seen["x"].shape[-1])
        y = seen["y"].reshape(-1, seen["y"].shape[-1])
        with torch.no_grad():
            top_i = torch.topk(torch.softmax(block.gate(x).float(), -1), block.top_k, dim=-1).indices
            ffn_only = (top_i < block.num_experts).all(-1)
            dense_out = block.experts[0](x)
        assert ffn_only.any() and (~ffn_only).any()  # both kinds of token occur
        assert torch.allclose(y[ffn_only], dense_out[ffn_only], atol=1e-6)
        assert not torch.allclose(y[~ffn_only], dense_out[~ffn_only], atol=1e-4)
        checked += 1
    assert checked == len(blocks) - 1
    assert max_diff(model, ref) > TOL  # so the model as a whole is not dense-equivalent


def test_moepp_aux_loss_is_libmoes_and_hf_reloads(dense, out):
    from transformers import AutoModelForImageTextToText

    from mmzoo.upcycle.moe_modeling import moe_blocks

    ref = dense("llama")
    path = out("moepp-hf")
    convert(ref.path, path, tgt_fmt="hf", moe=_moe(num_experts=3, top_k=2, layers="odd"), verify=True)
    config = json.loads((path / "config.json").read_text())
    assert config["text_config"]["mmzoo_moe"]["router"] == "moepp"
    engine = load_model(path)
    seen = []
    hooks = [b.register_forward_hook(lambda m, a, o: seen.append(m.gate(a[0]).detach())) for b in moe_blocks(engine)]
    with torch.no_grad():
        mine = engine(**ref.inputs)
    for h in hooks:
        h.remove()
    expected = sum(libmoe_moepp_loss(logits, 0.01, 0.001, 2) for logits in seen)
    assert torch.allclose(mine["aux_loss"].float(), expected, rtol=1e-5)
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True).eval()
    with torch.no_grad():
        theirs = model(**ref.inputs)
    assert torch.equal(theirs.logits, mine["logits"]) and torch.allclose(theirs.aux_loss, mine["aux_loss"])
    back = out("moepp-internal")
    convert(path, back, tgt_fmt="internal", verify=True)
    assert read_checkpoint(back).spec.moe["router"] == "moepp"


def test_moepp_refusals(dense, out):
    with pytest.raises(UpcycleError, match="moepp needs at least 3 experts"):
        convert(dense("llama").path, out(), tgt_fmt="internal", moe=_moe(num_experts=2, top_k=1))
    with pytest.raises(UpcycleError, match="MoE\\+\\+\\) has no shared expert"):
        convert(dense("llama").path, out(), tgt_fmt="internal", moe=_moe(style="shared"))
