"""Registry of supported architectures, keyed by the HF ``model_type`` of each component."""
from __future__ import annotations

from typing import Any

from ..errors import UnknownArchitecture
from . import moe, text, vision
from .base import Table

TEXT_TABLES: dict[str, Table] = {"llama": text.LLAMA, "mistral": text.MISTRAL, "qwen2": text.QWEN2, "phi3": text.PHI3}
# MoE LLMs (mmzoo.archs.moe): Mixtral and Qwen2-MoE natively, mmzoo_moe for layouts only mmzoo models
TEXT_TABLES.update({"mixtral": moe.MIXTRAL, "qwen2_moe": moe.QWEN2_MOE, "mmzoo_moe": moe.MMZOO_MOE})
VISION_TABLES: dict[str, Table] = {"clip_vision_model": vision.CLIP, "siglip_vision_model": vision.SIGLIP}

# model_type -> the HF class a folder of that family declares in "architectures"
TEXT_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM", "phi3": "Phi3ForCausalLM"}
TEXT_CLASSES.update({"mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM"})
VISION_CLASSES = {"clip_vision_model": "CLIPVisionModel", "siglip_vision_model": "SiglipVisionModel"}
# a full CLIP/SigLIP config (not just the vision part) can be given as a vision folder
VISION_ALIASES = {"clip": "clip_vision_model", "siglip": "siglip_vision_model"}


def text_table(model_type: str, where: str = "") -> Table:
    try:
        return TEXT_TABLES[model_type]
    except KeyError:
        raise UnknownArchitecture(
            f"text architecture {model_type!r} is not supported (supported: {', '.join(TEXT_TABLES)})", path=where or None
        ) from None


def vision_table(model_type: str, where: str = "") -> Table:
    try:
        return VISION_TABLES[VISION_ALIASES.get(model_type, model_type)]
    except KeyError:
        raise UnknownArchitecture(
            f"vision architecture {model_type!r} is not supported (supported: {', '.join(VISION_TABLES)})", path=where or None
        ) from None


def component_tables(spec, where: str = "") -> dict[str, Any]:
    """The tables mapping each component of ``spec`` (text, vision, projector) between native and
    canonical names: the architecture's own, or ``MoeSites`` over the dense one where mmzoo's MoE
    blocks sit. ``projector`` is None for a dense projector (its names need no mapping)."""
    layout = spec.moe or {}
    if spec.text_type == "mmzoo_moe":
        base = spec.text_config.get("base_model_type") or layout.get("base_model_type") or "llama"
        if base in moe.MOE_TEXT_TYPES:
            raise UnknownArchitecture(f"an mmzoo_moe text model cannot be based on {base!r}", path=where or None)
        text: Any = moe.MoeSites(text_table(base, where))
    else:
        text = text_table(spec.text_type, where)
    vision: Any = vision_table(spec.vision_type, where)
    if layout.get("vision_layers"):
        vision = moe.MoeSites(vision)
    projector = moe.MoeSites(moe.PROJECTOR) if "projector" in (layout.get("targets") or []) else None
    return {"text": text, "vision": vision, "projector": projector}
