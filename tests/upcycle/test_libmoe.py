"""LibMoE's SMoE, XMoE, sigmoid gating, SharedE-V2 and SharedE-V3 (``--moe-router smoe|xmoe|sigmoid|sharede_v2|sharede_v3``) with
LibMoE's balance + router z-loss.

Dense-equivalent at init in every format that holds them (internal, hf with mmzoo's remote code), the
aux loss is LibMoE's formula (recomputed here from the router's own scores), XMoE's and SharedE's
outputs equal their definitions on distinct experts, moe-llava refuses them."""
from __future__ import annotations

import json

import pytest
import torch
from upcycle_helpers import TOL, max_diff, routed_mix

from mmzoo import convert, load_model
from mmzoo.errors import UnknownArchitecture, UpcycleError


def _moe(**kw):
    options = dict(num_experts=4, top_k=2, style="mixtral", layers="all", targets=["text"], router="smoe")
    options.update(kw)
    return options


def _tiny_block(router: str, style: str, num_experts: int):
    """A 16-wide MoE block upcycled from a fresh dense MLP (seeded), for checking a router against its definition."""
    from mmzoo.upcycle.moe_modeling import MoeBlock
    from mmzoo.upcycle.remote.modeling_mmzoo_moe import ModalityContext

    torch.manual_seed(0)
    dense_mlp = torch.nn.Sequential(torch.nn.Linear(16, 24), torch.nn.GELU(), torch.nn.Linear(24, 16))
    block = MoeBlock(dense_mlp, hidden=16, num_experts=num_experts, top_k=2, style=style, modality="text",
                     layout={"router": router, "router_aux_loss_coef": 0.01, "router_z_loss_coef": 0.001}, context=ModalityContext())
    return block, dense_mlp


def libmoe_loss(raw: torch.Tensor, scaled: torch.Tensor, balance_coef: float, z_coef: float) -> torch.Tensor:
    """LibMoE's combine_loss for one block (written from its moe.py): ``raw`` router scores [B, N, E] for the
    z-loss, ``scaled`` the ones its softmax routes with (XMoE divides by its temperature)."""
    num = raw.shape[-1]
    softmax = torch.softmax(scaled.float(), dim=-1)
    first = torch.topk(softmax, 2, dim=-1).indices[..., 0]
    density = torch.nn.functional.one_hot(first, num).float().mean(dim=1)  # [B, E]
    proxy = softmax.mean(dim=1)
    balance = (proxy * density).mean() * num * num
    z = torch.logsumexp(raw.float(), dim=-1).square().mean()
    return balance_coef * balance + z_coef * z


ALL = ("text", "vision", "projector")
CASES = [(r, style, t) for r in ("smoe", "xmoe", "sigmoid") for style, t in (("mixtral", ("text",)), ("shared", ("text",)), ("mixtral", ALL))]
CASES += [(r, "shared", t) for r in ("sharede_v2", "sharede_v3") for t in (("text",), ALL)]


@pytest.mark.parametrize("router,style,targets", CASES)
def test_libmoe_routers_are_dense_equivalent_and_their_aux_loss_is_libmoes(dense, out, router, style, targets):
    ref = dense("llama")
    path = out(router)
    convert(ref.path, path, tgt_fmt="internal", moe=_moe(router=router, style=style, targets=list(targets), router_z_loss_coef=0.002), verify=True)
    model = load_model(path)
    assert max_diff(model, ref) <= TOL
    from mmzoo.upcycle.moe_modeling import moe_blocks

    blocks = moe_blocks(model)
    assert blocks and all(b.router == router and b.z_coef == 0.002 and b.text_coef == 0.01 for b in blocks)
    seen = []  # (block input shape, raw router scores, scaled scores) per block call

    def record(module, args, _output):
        scaled = module.gate(args[0].reshape(-1, args[0].shape[-1])).float()
        raw = module.gate.last_cosine if router == "xmoe" else scaled
        seen.append((args[0].shape, raw, scaled, module.loss_scale))

    hooks = [b.register_forward_hook(record) for b in blocks]
    with torch.no_grad():
        result = model(**ref.inputs)
    for h in hooks:
        h.remove()
    assert len(seen) == len(blocks)

    def batched(shape, t):
        return t.reshape(shape[0], -1, t.shape[-1]) if len(shape) == 3 else t[None]

    # LibMoE's vision tower averages its layers' losses: each vision block counts 1 / (vision MoE layers)
    vision = sum(1 for b in blocks if b.modality == "image" and b is not getattr(model.model, "multi_modal_projector", None))
    assert {scale for *_, scale in seen} == ({1.0, 1.0 / vision} if vision else {1.0})
    expected = sum(scale * libmoe_loss(batched(shape, raw), batched(shape, scaled), 0.01, 0.002) for shape, raw, scaled, scale in seen)
    assert torch.allclose(result["aux_loss"].float(), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("router", ["smoe", "xmoe", "sigmoid", "sharede_v2", "sharede_v3", "tcmoe"])
def test_libmoe_hf_uses_remote_code_and_reads_back(dense, out, router, capsys):
    from transformers import AutoModelForImageTextToText

    ref = dense("llama")
    path = out(f"{router}-hf")
    style = "shared" if router.startswith("sharede") else "mixtral"
    result = convert(ref.path, path, tgt_fmt="hf", moe=_moe(router=router, style=style, router_init="zeros" if router == "tcmoe" else "normal:0.02"), verify=True)
    assert any(f"LibMoE {router} router losses" in n for n in result.notes)
    config = json.loads((path / "config.json").read_text())
    assert config["text_config"]["mmzoo_moe"]["router"] == router and config["text_config"]["mmzoo_moe"]["router_z_loss_coef"] == 0.001
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True).eval()
    assert max_diff(model, ref) <= (1e-3 if router == "tcmoe" else TOL)  # TC-MoE: its null experts (see below)
    with torch.no_grad():
        aux = model(**ref.inputs).aux_loss
    with torch.no_grad():
        assert torch.allclose(aux, load_model(path)(**ref.inputs)["aux_loss"])
    back = out("internal")
    convert(path, back, tgt_fmt="internal", verify=True)
    from mmzoo import read_checkpoint

    assert read_checkpoint(back).spec.moe["router"] == router
    from mmzoo.cli import main

    capsys.readouterr()
    main(["inspect", str(back)])  # the CLI in this process (its subprocess behaviour: tests/test_core_cli.py)
    assert f"LibMoE {router} router" in " ".join(capsys.readouterr().out.split())


def test_libmoe_router_refusals(dense, out):
    with pytest.raises(UpcycleError, match="use --moe-style mixtral or shared"):
        convert(dense("llama").path, out(), tgt_fmt="internal", moe=_moe(style="modality"))
    with pytest.raises(UpcycleError, match="--router-z-loss-coef is a non-negative weight of the LibMoE routers"):
        convert(dense("llama").path, out(), tgt_fmt="internal", moe=_moe(router="softmax_topk", router_z_loss_coef=0.1))
    with pytest.raises(UpcycleError, match="invalid upcycling option router"):
        convert(dense("llama").path, out(), tgt_fmt="internal", moe=_moe(router="moe_plus_plus"))
    with pytest.raises(UnknownArchitecture, match="no LibMoE smoe router"):
        convert(dense("llama").path, out(), tgt_fmt="moe-llava", moe=_moe())
    with pytest.raises(UpcycleError, match="sharede_v2 \\(LibMoE SharedE\\) needs \\-\\-moe\\-style shared"):
        convert(dense("llama").path, out(), tgt_fmt="internal", moe=_moe(router="sharede_v2"))
    with pytest.raises(UpcycleError, match="xmoe needs at least 2 experts"):
        convert(dense("llama").path, out(), tgt_fmt="internal", moe=_moe(router="xmoe", num_experts=1, top_k=1))


def test_xmoe_routing_follows_its_definition_on_distinct_experts():
    """XMoE (LibMoE xmoe.py): cosine of the L2-normalised E/2-dim projection against embeddings rescaled to
    norm 1.5, softmax at temperature 0.3, top-k, weights = softmax over the chosen probabilities."""

    block, _ = _tiny_block("xmoe", "mixtral", num_experts=6)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        got = block(x)
        emb = block.gate.expert_embeddings
        assert torch.allclose(emb.norm(dim=-1), torch.full((6,), 1.5))  # rescaled in place, as LibMoE does
        reduced = torch.nn.functional.normalize(block.gate.inp_reduction(x), dim=-1, eps=1e-4)
        probs = torch.softmax(reduced @ emb.t() / 0.3, dim=-1)
        top_p, top_i = torch.topk(probs, 2, dim=-1)
        weights = torch.softmax(top_p, dim=-1)
        want = routed_mix(x, top_i, weights, lambda i, token: block.experts[i](token))
    assert torch.allclose(got, want, atol=1e-6)



@pytest.mark.parametrize("router", ["sharede_v2", "sharede_v3"])
def test_sharede_follows_its_definition_on_distinct_experts(dense, out, router):
    """SharedE (LibMoE shard_smoe.py / shard_smoe_v3.py): 0.5 * shared + 0.5 * routed, no gate; V2 weighs the
    top-k by renormalised softmax, V3 by renormalised sigmoid. Upcycled: no shared-expert gate, unscaled copies."""
    from mmzoo import read_checkpoint

    path = out(router)
    convert(dense("llama").path, path, tgt_fmt="internal", moe=_moe(router=router, style="shared", num_experts=3, top_k=1))
    names = set(read_checkpoint(path).tensors)
    assert "text_model.model.layers.0.mlp.shared_expert.down_proj.weight" in names
    assert not any("shared_expert_gate" in n for n in names)
    block, _ = _tiny_block(router, "shared", num_experts=4)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        got = block(x)
        logits = block.gate(x)
        scores = torch.sigmoid(logits) if router == "sharede_v3" else torch.softmax(logits, dim=-1)
        top_s, top_i = torch.topk(scores, 2, dim=-1)
        weights = top_s / top_s.sum(dim=-1, keepdim=True)
        want = 0.5 * block.shared_expert(x) + 0.5 * routed_mix(x, top_i, weights, lambda i, token: block.experts[i](token))
    assert torch.allclose(got, want, atol=1e-6)



def test_tcmoe_is_dense_up_to_its_null_experts_and_follows_its_definition(dense, out):
    """TC-MoE (LibMoE moe_tcmoe.py): softmax over [E experts, E negated copies - 1, k null experts - 10], top-k,
    weights = p / (chosen non-null p + all null p), a negated copy subtracts. With zero routers the top-k are
    k positive experts weighted 1 / (k (1 + e^-10)) each: the dense output scaled by 1 / (1 + e^-10)."""
    import math

    from mmzoo.upcycle.moe_modeling import MoeBlock

    ref = dense("llama")
    path = out("tcmoe")
    convert(ref.path, path, tgt_fmt="internal", moe=_moe(router="tcmoe", router_init="zeros"), verify=True)
    model = load_model(path)
    blocks = [b for b in model.modules() if isinstance(b, MoeBlock)]
    assert blocks and all(tuple(b.gate.weight.shape) == (2 * 4 + 2, 64) for b in blocks)
    diff = max_diff(model, ref)
    assert 0 < diff <= 1e-3  # the exception: null experts' probability e^-10 stays in the denominator
    block, dense_mlp = _tiny_block("tcmoe", "mixtral", num_experts=4)
    zero = torch.zeros(3, 16)
    with torch.no_grad():
        block.gate.weight.zero_()
        scale = 1 / (1 + math.exp(-10))
        assert torch.allclose(block(zero[None]), scale * dense_mlp(zero)[None], atol=1e-6)  # experts are still copies
        for p in block.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        x = torch.randn(2, 6, 16)
        got = block(x)
        logits = block.gate(x)
        shifted = logits.clone()
        shifted[..., 4:8] -= 1
        shifted[..., 8:] -= 10
        probs = torch.softmax(shifted, dim=-1)
        top_p, top_i = torch.topk(probs, 2, dim=-1)
        want = torch.zeros_like(x)
        negated = 0
        for b in range(2):
            for t in range(6):
                denom = sum(top_p[b, t, s] for s in range(2) if top_i[b, t, s] < 8) + probs[b, t, 8:].sum()
                for s in range(2):
                    i = int(top_i[b, t, s])
                    if i < 8:
                        negated += i >= 4
                        want[b, t] += (1 if i < 4 else -1) * top_p[b, t, s] / denom * block.experts[i % 4](x[b, t])
    assert negated > 0  # the negated copies were exercised
    assert torch.allclose(got, want, atol=1e-5)
