"""mmzoo's own MoE modules (plain torch), for layouts no built-in transformers class expresses and for training.

The implementation lives in ``mmzoo/upcycle/remote/modeling_mmzoo_moe.py``, the self-contained file
(torch + transformers only) that is also copied verbatim into ``hf`` folders as transformers remote
code: one implementation, in-process and in every folder. This module re-exports it under its
historical name.

``MoeBlock`` replaces a dense MLP (LLM MLP, CLIP/SigLIP MLP, or the LLaVA projector); its parameters
use mmzoo's canonical names relative to the replaced module (``gate.weight``, ``experts.E.*``,
``shared_expert.*``, ``shared_expert_gate.weight``, ``residual.*``, ``coefficient.*``), so a canonical
checkpoint loads with a plain ``load_state_dict``. Routing, capacity and load-balancing loss: see the
module docstring of ``modeling_mmzoo_moe``.
"""
from __future__ import annotations

from .remote.configuration_mmzoo_moe import MmzooMoeLlavaConfig
from .remote.modeling_mmzoo_moe import (
    MmzooMoeLlavaForConditionalGeneration,
    ModalityContext,
    MoeBlock,
    image_token_mask,
    install_hooks,
    install_moe,
    moe_blocks,
)

__all__ = ["MoeBlock", "ModalityContext", "MmzooMoeLlavaConfig", "MmzooMoeLlavaForConditionalGeneration",
           "install_moe", "install_hooks", "image_token_mask", "moe_blocks"]
