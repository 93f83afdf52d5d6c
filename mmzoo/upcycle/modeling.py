"""Build a ready-to-run model from an MoE checkpoint (``mmzoo.load_model`` calls ``load_moe_model``).

- Text-only layouts with a Mixtral / Qwen2-MoE ``text_config``: transformers' own
  ``LlavaForConditionalGeneration`` (experts fused in memory as transformers 5.x does).
- Everything else (``mmzoo_moe``: modality routing, residual MoE, vision/projector experts, LLMs the
  built-in MoE classes do not express): the dense transformers Llava with its MLPs replaced by
  ``mmzoo.upcycle.moe_modeling.MoeBlock``; forward returns logits plus ``aux_loss`` (added to ``loss``
  when labels are given).
"""
from __future__ import annotations

import re
from typing import Any

from ..archs import text_table, vision_table
from ..archs.moe import base_text_config
from ..errors import MmzooError
from ..io.tensors import Planned, materialize

_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight\Z")
_GROUP = re.compile(r"(.*?\.mlp\.)(experts\.\d+\.|shared_expert\.|residual\.)(.*)\Z")


def load_moe_model(ckpt, *, attn_implementation: str = "sdpa"):
    spec = ckpt.spec
    moe = spec.moe or {}
    builtin = spec.text_type in ("mixtral", "qwen2_moe") and not moe.get("vision_layers") and "projector" not in (moe.get("targets") or [])
    model = _builtin_model(ckpt, attn_implementation) if builtin else _mmzoo_model(ckpt, attn_implementation)
    return model.eval()


def _dtype_of(state: dict[str, Any]):
    import torch

    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    return max(set(floats), key=floats.count) if floats else torch.float32


def _finish(model, state: dict[str, Any], config, ckpt):
    result = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if config.text_config.tie_word_embeddings else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise MmzooError(f"MoE checkpoint does not fit the model: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}", path=ckpt.path)
    if tied:
        model.tie_weights()
    return model


def _vision_and_projector(ckpt) -> dict[str, Planned]:
    vision = _native(ckpt.component("image_model."), vision_table(ckpt.spec.vision_type))
    out = {f"model.vision_tower.{k}": v for k, v in vision.items()}
    out.update({f"model.multi_modal_projector.{k}": v for k, v in ckpt.component("projector.").items()})
    return out


def _native(tensors: dict[str, Planned], table) -> dict[str, Planned]:
    """Canonical -> in-memory names of one component. Inside expert/shared/residual groups the dense
    MLP's names go through ``table`` too (fusing what the dense architecture fuses, e.g. Phi-3
    gate_up_proj); routers, gates and coefficients keep their canonical names."""
    plain: dict[str, Planned] = {}
    extra: dict[str, Planned] = {}
    grouped: dict[tuple[str, str], dict[str, Planned]] = {}
    for name, planned in tensors.items():
        match = _GROUP.match(name)
        if match:
            grouped.setdefault((match.group(1), match.group(2)), {})[match.group(1) + match.group(3)] = planned
        elif _is_moe_extra(name):
            extra[name] = planned
        else:
            plain[name] = planned
    out = table.from_canonical(plain)
    out.update(extra)
    for (site, group), members in grouped.items():
        native = table.from_canonical(members)
        out.update({site + group + k[len(site):]: v for k, v in native.items()})
    return out


def _builtin_model(ckpt, attn_implementation: str):
    import torch

    from ..modeling import build_empty, llava_config

    config = llava_config(ckpt.spec)
    text = ckpt.component("text_model.")
    experts: dict[tuple[int, int], dict[str, Planned]] = {}
    state_plan: dict[str, Planned] = {}
    for name, planned in text.items():
        match = _EXPERT.match(name)
        if match:
            experts.setdefault((int(match.group(1)), int(match.group(2))), {})[match.group(3)] = planned
        elif name.startswith("model."):
            state_plan["model.language_model." + name[len("model."):]] = planned
        else:
            state_plan[name] = planned
    state_plan.update(_vision_and_projector(ckpt))
    state = {k: materialize(v) for k, v in state_plan.items()}
    for layer in sorted({layer for layer, _ in experts}):
        indices = sorted(e for l_, e in experts if l_ == layer)
        parts = [experts[(layer, e)] for e in indices]
        prefix = f"model.language_model.layers.{layer}.mlp.experts."
        state[prefix + "gate_up_proj"] = torch.stack([torch.cat([materialize(p["gate_proj"]), materialize(p["up_proj"])], 0) for p in parts])
        state[prefix + "down_proj"] = torch.stack([materialize(p["down_proj"]) for p in parts])
    model = build_empty(config, _dtype_of(state), attn_implementation)
    return _finish(model, state, config, ckpt)


def _mmzoo_model(ckpt, attn_implementation: str):
    from ..modeling import build_empty, llava_config
    from .moe_modeling import ModalityContext, MoeBlock, install_hooks

    spec = ckpt.spec
    moe = spec.moe or {}
    dense_text = base_text_config(spec.text_config) if spec.text_type == "mmzoo_moe" else spec.text_config
    dense_spec = spec.model_copy(update={"text_config": dense_text})
    config = llava_config(dense_spec)
    dense_type = dense_text.get("model_type", "llama")

    native = _native(ckpt.component("text_model."), text_table(dense_type))
    state_plan = {("model.language_model." + k[len("model."):] if k.startswith("model.") else k): v for k, v in native.items()}
    state_plan.update(_vision_and_projector(ckpt))
    state = {k: materialize(v) for k, v in state_plan.items()}
    model = build_empty(config, _dtype_of(state), attn_implementation)

    context = ModalityContext(image_token_id=spec.image_token_id)
    residual = any(".residual." in k for k in ckpt.tensors)
    coefficient_bias = any(k.endswith("coefficient.bias") for k in ckpt.tensors)
    common = dict(num_experts=moe["num_experts"], top_k=moe["top_k"], style=moe["style"], layout=moe, context=context,
                  residual=residual, coefficient_bias=coefficient_bias)
    lm, tower = model.model.language_model, model.model.vision_tower
    for layer in moe.get("layers") or []:
        block = lm.layers[layer]
        block.mlp = MoeBlock(block.mlp, hidden=dense_text["hidden_size"], modality="text", **common)
    for layer in moe.get("vision_layers") or []:
        block = tower.encoder.layers[layer]
        block.mlp = MoeBlock(block.mlp, hidden=spec.vision_config["hidden_size"], modality="image", **common)
    if "projector" in (moe.get("targets") or []):
        model.model.multi_modal_projector = MoeBlock(
            model.model.multi_modal_projector, hidden=spec.vision_config["hidden_size"], modality="image", **common)
    model = _finish(model, state, config, ckpt)
    context.blocks = [m for m in model.modules() if isinstance(m, MoeBlock)]
    install_hooks(model, context)
    model.mmzoo_moe = moe
    return model


def _is_moe_extra(name: str) -> bool:
    return name.endswith((".mlp.gate.weight", ".mlp.shared_expert_gate.weight", ".mlp.coefficient.weight", ".mlp.coefficient.bias"))
