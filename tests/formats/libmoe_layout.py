"""Shrunk LibMoE checkpoints (Fsoft-AIC/LibMoE's LlavaPhiForCausalLM as its trainer saves it) for the tests.

The config is tests/fixtures/libmoe/config.json: the fields LibMoE's code writes (Phi-3.5's Phi3Config fields
as transformers 4.43 saves them, plus every ModelArguments field of its sft.sh run), with depth and width
shrunk; token ids follow the tiny tokenizer. Tensor names are those of LibMoE's modules: transformers' Phi-3
for the LLM, its SigLIP tower (embeddings + encoder, no post-layernorm or head) whose MLPs are
``moelayer`` MoE layers, and its MLPMoE projector (``moelayer.experts.E.{0,2}``). The SigLIP config comes,
as for LibMoE, by name from a Hugging Face cache (tests/fixtures/libmoe/siglip-*.json, shrunk).
"""
from __future__ import annotations

import json
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "libmoe"
TOWER = "google/siglip-so400m-patch14-224"


def hub_cache_with_siglip(cache: Path) -> Path:
    """The cache layout huggingface_hub reads offline, holding the (shrunk) SigLIP tower LibMoE names."""
    repo = cache / ("models--" + TOWER.replace("/", "--"))
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "config.json").write_text((FIXTURES / "siglip-so400m-patch14-224.config.json").read_text())
    (snapshot / "preprocessor_config.json").write_text((FIXTURES / "siglip-so400m-patch14-224.preprocessor_config.json").read_text())
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


def use_hub_cache_with_siglip(cache: Path, monkeypatch) -> Path:
    """Point huggingface_hub (in this process and in subprocesses) at a cache holding LibMoE's SigLIP tower."""
    from huggingface_hub import constants

    hub_cache_with_siglip(cache)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import: the env var alone is too late
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def folder_tensors(folder: Path) -> dict:
    """Every tensor of a folder's safetensors shards, by name."""
    from safetensors import safe_open

    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(shard, "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def _moe_site(prefix: str, dense: dict, hidden: int, moe_name: str, num_experts: int, num_selected: int, gen, projector: bool) -> dict:
    """A LibMoE MoE layer's tensors: experts (copies of the dense MLP with a little noise each, as after training)
    and the router of ``moe_name``."""
    import torch

    out = {}
    for e in range(num_experts):
        for name, t in dense.items():
            out[f"{prefix}experts.{e}.{name}"] = t + torch.randn(t.shape, generator=gen) * 0.01
    out_dim = dense["2.weight" if projector else "fc2.weight"].shape[0]
    rows = num_experts
    if moe_name == "smoe_tcmoe":
        rows = 2 * num_experts + num_selected
    elif moe_name in ("smoe_share", "smoe_sharev3"):
        rows = num_experts - 1
    elif moe_name == "smoe_plus_plus" and out_dim == hidden:
        rows = num_experts + 2
        out[prefix + "gate_transform.weight"] = torch.randn(rows, rows, generator=gen) * 0.02
        out[f"{prefix}experts.{num_experts + 1}.constant"] = torch.randn(hidden, generator=gen) * 0.002
        out[f"{prefix}experts.{num_experts + 1}.wg.weight"] = torch.randn(2, hidden, generator=gen) * 0.02
    out[prefix + "gate.weight"] = torch.randn(rows, hidden, generator=gen) * 0.02  # XMoE: MoeLayer's gate, saved but unused
    if moe_name == "xmoe":  # xmoe.py: the router is inp_reduction [E/2, hidden] + expert_embeddings [E, E/2] on the layer
        out[prefix + "inp_reduction.weight"] = torch.randn(num_experts // 2, hidden, generator=gen) * 0.2
        out[prefix + "expert_embeddings"] = torch.randn(num_experts, num_experts // 2, generator=gen) * 0.02
    return out


def build_libmoe(out: Path, *, moe_name: str = "smoe", num_experts: int = 4, num_selected: int = 2, clip_smoe: bool = True,
                 mlp_smoe: bool = True, dtype: str = "bfloat16", seed: int = 0, scales: tuple[int, ...] = (1,)) -> Path:
    """A LibMoE folder; ``scales`` (1, 3) is the S² setting of LibMoE's published runs (the projector reads
    len(scales) x the tower's width)."""
    import torch
    from safetensors.torch import save_file
    from transformers import Phi3ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    from mmzoo.demo.tiny import make_tokenizer, text_config

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(with_image_token=False)  # LibMoE splices images at IMAGE_TOKEN_INDEX -200: no <image> token
    tokenizer.save_pretrained(out)
    config = json.loads((FIXTURES / "config.json").read_text())
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    text = Phi3ForCausalLM(text_config("phi3", vocab_size=len(tokenizer), num_attention_heads=4, num_key_value_heads=4))
    tensors = {k: v.detach().clone() for k, v in text.state_dict().items()}
    for name, t in tensors.items():
        if "norm" in name:
            t.add_(torch.randn(t.shape, generator=gen) * 0.1)
    vision_cfg = json.loads((FIXTURES / "siglip-so400m-patch14-224.config.json").read_text())["vision_config"]
    # transformers 5's state dict drops the vision_model. infix that 4.x (and LibMoE's tower) has
    tower = {"vision_model." + k.removeprefix("vision_model."): v for k, v in SiglipVisionModel(SiglipVisionConfig(**vision_cfg)).state_dict().items()}
    hidden = vision_cfg["hidden_size"]
    for name, t in tower.items():
        rest = name.removeprefix("vision_model.")
        if rest.startswith(("post_layernorm.", "head.")):  # LibMoE's tower has neither
            continue
        t = t.detach().clone() + torch.randn(t.shape, generator=gen) * 0.02
        if clip_smoe and ".mlp." in rest:
            continue
        tensors["model.vision_tower.vision_model." + rest] = t
    if clip_smoe:
        for layer in range(vision_cfg["num_hidden_layers"]):
            dense = {n[len(f"vision_model.encoder.layers.{layer}.mlp."):]: t.detach().clone()
                     for n, t in tower.items() if n.startswith(f"vision_model.encoder.layers.{layer}.mlp.")}
            tensors.update(_moe_site(f"model.vision_tower.vision_model.encoder.layers.{layer}.moelayer.", dense, hidden, moe_name,
                                     num_experts, num_selected, gen, projector=False))
    text_hidden = config["hidden_size"] = text.config.hidden_size
    projector_in = hidden * len(scales)
    projector = {"0.weight": torch.randn(text_hidden, projector_in, generator=gen) * 0.1, "0.bias": torch.randn(text_hidden, generator=gen) * 0.1,
                 "2.weight": torch.randn(text_hidden, text_hidden, generator=gen) * 0.1, "2.bias": torch.randn(text_hidden, generator=gen) * 0.1}
    if mlp_smoe:
        tensors.update(_moe_site("model.mm_projector.moelayer.", projector, projector_in, moe_name, num_experts, num_selected, gen, projector=True))
    else:
        tensors.update({"model.mm_projector." + k: v for k, v in projector.items()})
    torch_dtype = getattr(torch, dtype)
    save_file({k: v.to(torch_dtype).contiguous() for k, v in sorted(tensors.items())}, out / "model.safetensors", metadata={"format": "pt"})
    config.update(
        scales=list(scales), moe_name=moe_name, num_experts=num_experts, num_selected=num_selected, clip_smoe=clip_smoe, mlp_smoe=mlp_smoe,
        mm_projector_type="moe" if mlp_smoe else "mlp2x_gelu", mm_hidden_size=hidden, vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        num_hidden_layers=text.config.num_hidden_layers, intermediate_size=text.config.intermediate_size, torch_dtype=dtype,
    )
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                                                             "pad_token_id": tokenizer.pad_token_id, "transformers_version": "4.43.0"}, indent=2) + "\n")
    return out
