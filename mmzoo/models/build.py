"""The building blocks of a transformers model from a canonical checkpoint: its config, its state dict
under the in-memory names, an empty model and the assignment of the weights. ``load.py`` (dense) and
``moe.py`` (MoE) assemble models from these, so neither needs the other."""
from __future__ import annotations

from typing import Any

from ..errors import MmzooError, third_party_load


def llava_config(spec) -> Any:
    from transformers import LlavaConfig

    from ..converters.hf import config_dict

    return with_vision_scales(LlavaConfig.from_dict(config_dict(spec)), spec)


def with_vision_scales(config, spec):
    """The model config carries S² scales (``multiscale.py`` reads them); no hf config.json does."""
    if spec.multiscale:
        config.vision_scales = list(spec.vision_scales)
    return config


def state_dict_for(ckpt) -> dict[str, Any]:
    """Materialised tensors under the in-memory names of a 5.x LlavaForConditionalGeneration."""
    from ..converters.common import native_components
    from ..converters.hf import MEMORY_PREFIXES, rename
    from ..io.tensors import materialize

    return {name: materialize(planned) for name, planned in rename(native_components(ckpt), MEMORY_PREFIXES).items()}


def build_empty(config, dtype, attn_implementation: str, cls=None):
    """Instantiate ``cls`` (default: LlavaForConditionalGeneration) without spending time on random
    init (every parameter is overwritten)."""
    import torch
    from transformers.initialization import no_init_weights

    if cls is None:
        from transformers import LlavaForConditionalGeneration as cls
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype)
        with no_init_weights(), third_party_load(None, "a model from this config"):
            model = cls._from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    finally:
        torch.set_default_dtype(previous)
    return model


def dominant_dtype(state: dict[str, Any]):
    """The floating dtype most tensors have: the dtype to build the model in."""
    import torch

    floats = [t.dtype for t in state.values() if t.is_floating_point()]
    return max(set(floats), key=floats.count) if floats else torch.float32


def load_state(model, state: dict[str, Any], config, where):
    """Assign every tensor (no copies, dtypes kept); the only key allowed missing is a tied lm_head."""
    result = model.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if config.text_config.tie_word_embeddings else set()
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise MmzooError(f"checkpoint does not fit the model: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}", path=where)
    if tied:
        model.tie_weights()
    return model
