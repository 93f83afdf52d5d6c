"""Build a ready-to-run model from an MoE checkpoint (``mmzoo.load_model`` calls ``load_moe_model``).

- Text-only layouts with a Mixtral / Qwen2-MoE ``text_config``: transformers' own
  ``LlavaForConditionalGeneration`` (experts fused in memory as transformers 5.x does).
- Everything else (``mmzoo_moe``: modality routing, residual MoE, vision/projector experts, LLMs the
  built-in MoE classes do not express): ``MmzooMoeLlavaForConditionalGeneration``, the class an ``hf``
  folder of the same layout loads as remote code (``mmzoo/upcycle/remote/modeling_mmzoo_moe.py``): the
  dense transformers Llava with its MLPs replaced by ``MoeBlock``, built from the same config.json dict
  the hf writer writes; forward returns logits plus ``aux_loss`` (added to ``loss`` when labels are given).
"""
from __future__ import annotations

import re

from ..archs import vision_table
from ..archs.moe import MoeSites
from ..io.tensors import Planned, materialize

EXPERT_NAME = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight\Z")


def load_moe_model(ckpt, *, attn_implementation: str = "sdpa"):
    spec = ckpt.spec
    moe = spec.moe or {}
    builtin = spec.text_type in ("mixtral", "qwen2_moe") and not moe.get("vision_layers") and "projector" not in (moe.get("targets") or [])
    model = _builtin_model(ckpt, attn_implementation) if builtin else _mmzoo_model(ckpt, attn_implementation)
    return model.eval()


def vision_and_projector_memory_names(ckpt) -> dict[str, Planned]:
    vision = native_memory_names(ckpt.component("image_model."), vision_table(ckpt.spec.vision_type))
    out = {f"model.vision_tower.{k}": v for k, v in vision.items()}
    out.update({f"model.multi_modal_projector.{k}": v for k, v in ckpt.component("projector.").items()})
    return out


def native_memory_names(tensors: dict[str, Planned], table) -> dict[str, Planned]:
    """Canonical -> in-memory names of one component with MoE sites (``mmzoo.archs.moe.MoeSites``)."""
    return MoeSites(table).from_canonical(tensors)


def _builtin_model(ckpt, attn_implementation: str):
    import torch

    from .build import build_empty, dominant_dtype, llava_config, load_state
    from .multiscale import model_class

    config = llava_config(ckpt.spec)
    text = ckpt.component("text_model.")
    experts: dict[tuple[int, int], dict[str, Planned]] = {}
    state_plan: dict[str, Planned] = {}
    for name, planned in text.items():
        match = EXPERT_NAME.match(name)
        if match:
            experts.setdefault((int(match.group(1)), int(match.group(2))), {})[match.group(3)] = planned
        elif name.startswith("model."):
            state_plan["model.language_model." + name[len("model."):]] = planned
        else:
            state_plan[name] = planned
    state_plan.update(vision_and_projector_memory_names(ckpt))
    state = {k: materialize(v) for k, v in state_plan.items()}
    for layer in sorted({layer for layer, _ in experts}):
        indices = sorted(e for l_, e in experts if l_ == layer)
        parts = [experts[(layer, e)] for e in indices]
        prefix = f"model.language_model.layers.{layer}.mlp.experts."
        state[prefix + "gate_up_proj"] = torch.stack([torch.cat([materialize(p["gate_proj"]), materialize(p["up_proj"])], 0) for p in parts])
        state[prefix + "down_proj"] = torch.stack([materialize(p["down_proj"]) for p in parts])
    model = build_empty(config, dominant_dtype(state), attn_implementation, cls=model_class(None, ckpt.spec.vision_scales))
    return load_state(model, state, config, ckpt.path)


def _mmzoo_model(ckpt, attn_implementation: str):
    """The remote-code class, from the config.json an hf folder of this checkpoint would have."""
    from ..converters.hf import config_dict
    from .build import build_empty, dominant_dtype, load_state, state_dict_for, with_vision_scales
    from .multiscale import model_class
    from ..upcycle.remote import hf_config
    from ..upcycle.remote.modeling_mmzoo_moe import MmzooMoeLlavaConfig, MmzooMoeLlavaForConditionalGeneration

    config = with_vision_scales(MmzooMoeLlavaConfig.from_dict(hf_config(ckpt, config_dict(ckpt.spec))), ckpt.spec)
    state = state_dict_for(ckpt)
    cls = model_class(MmzooMoeLlavaForConditionalGeneration, ckpt.spec.vision_scales)
    model = build_empty(config, dominant_dtype(state), attn_implementation, cls=cls)
    return load_state(model, state, config, ckpt.path)
