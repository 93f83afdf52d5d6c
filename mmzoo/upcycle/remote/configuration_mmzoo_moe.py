"""Configuration of mmzoo's upcycled MoE LLaVA models (transformers remote code; needs only transformers).

mmzoo copies this file verbatim into ``hf`` folders whose MoE layout no built-in transformers class
expresses (modality routing, vision / projector experts, DeepSpeed residual MoE, LLMs with biases or
partial rotary). ``config.json`` is a ``LlavaConfig`` plus:

- ``model_type: mmzoo_moe_llava`` and ``auto_map`` (load with ``trust_remote_code=True``);
- ``text_config`` spelled ``{..dense LLM config.., "model_type": "mmzoo_moe", "base_model_type": "llama",
  "mmzoo_moe": {..layout..}}``: the dense LLM config plus the MoE layout (style, num_experts, top_k,
  layers, vision_layers, targets, modality_experts, aux coefficients, ...). A plain
  ``LlavaForConditionalGeneration`` cannot parse it, so loading without this code fails instead of
  silently building a dense model;
- ``mmzoo_moe_blocks``: module options the layout does not state (``residual``, ``coefficient_bias``).

In memory ``text_config`` is the dense LLM config (``LlamaConfig``, ...) and the layout is
``config.mmzoo_moe``; ``to_dict`` writes the folder spelling back, so ``save_pretrained`` round-trips.
"""
from __future__ import annotations

from typing import Any

from transformers import LlavaConfig

TEXT_MODEL_TYPE = "mmzoo_moe"


class MmzooMoeLlavaConfig(LlavaConfig):
    model_type = "mmzoo_moe_llava"

    mmzoo_moe: dict | None = None
    mmzoo_moe_blocks: dict | None = None

    def __post_init__(self, **kwargs):
        text = self.text_config
        if isinstance(text, dict) and text.get("model_type") == TEXT_MODEL_TYPE:
            text = dict(text)
            layout = text.pop(TEXT_MODEL_TYPE, None)
            text["model_type"] = text.pop("base_model_type", "llama")
            self.text_config = text
            if self.mmzoo_moe is None:
                self.mmzoo_moe = layout
        if self.mmzoo_moe is None:
            raise ValueError("an mmzoo_moe_llava config needs its MoE layout (text_config.mmzoo_moe)")
        self.mmzoo_moe = dict(self.mmzoo_moe)
        blocks = dict(self.mmzoo_moe_blocks or {})
        blocks.setdefault("residual", self.mmzoo_moe.get("style") == "residual")
        blocks.setdefault("coefficient_bias", True)
        self.mmzoo_moe_blocks = blocks
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        text = out.get("text_config")
        layout = out.pop(TEXT_MODEL_TYPE, None)
        if isinstance(text, dict) and text.get("model_type") != TEXT_MODEL_TYPE:
            out["text_config"] = {**text, "model_type": TEXT_MODEL_TYPE, "base_model_type": text.get("model_type"),
                                  TEXT_MODEL_TYPE: layout}
        return out


__all__ = ["MmzooMoeLlavaConfig"]
