"""Build transformers models from checkpoints of any format (``mmzoo.load_model``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import MissingDependency, MmzooError

ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


def check_attn_implementation(name: str) -> None:
    if name not in ATTN_IMPLEMENTATIONS:
        raise MmzooError(f"unknown attn_implementation {name!r} (choose from {', '.join(ATTN_IMPLEMENTATIONS)})")
    if name == "flash_attention_2":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is None:
            raise MissingDependency(
                "attn_implementation 'flash_attention_2' needs flash-attn, which is not installed "
                "(pip install 'mmzoo[flash]' on a CUDA machine, or use sdpa)"
            )


def llava_config(spec) -> Any:
    from transformers import LlavaConfig

    from .formats.hf import config_dict

    return LlavaConfig.from_dict(config_dict(spec))


def state_dict_for(ckpt) -> dict[str, Any]:
    """Materialised tensors under the in-memory names of a 5.x LlavaForConditionalGeneration."""
    from .formats.common import native_components
    from .formats.hf import MEMORY_PREFIXES, rename
    from .io.tensors import materialize

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
        with no_init_weights():
            model = cls._from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    finally:
        torch.set_default_dtype(previous)
    return model


def load_model(path: str | Path, *, dtype: str | None = None, attn_implementation: str = "sdpa", fmt: str | None = None):
    """A ready-to-run transformers model (``eval()`` mode) from a checkpoint in any format mmzoo reads."""
    from .conversion import cast, read_checkpoint

    check_attn_implementation(attn_implementation)
    ckpt = read_checkpoint(path, fmt)
    if dtype:
        ckpt = cast(ckpt, dtype)
    if ckpt.spec.moe:
        from .upcycle.modeling import load_moe_model

        return load_moe_model(ckpt, attn_implementation=attn_implementation)
    return model_from_checkpoint(ckpt, attn_implementation=attn_implementation)


def model_from_checkpoint(ckpt, *, attn_implementation: str = "sdpa"):
    config = llava_config(ckpt.spec)
    state = state_dict_for(ckpt)
    model = build_empty(config, dominant_dtype(state), attn_implementation)
    return load_state(model, state, config, ckpt.path).eval()


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


def load_processor(path: str | Path):
    """The LlavaProcessor (tokenizer + PIL image processor) of a checkpoint in any format."""
    import json
    import tempfile

    from transformers import AutoProcessor

    from .conversion import read_checkpoint
    from .formats.common import copy_files, write_json
    from .formats.hf import processor_config

    ckpt = read_checkpoint(path)
    if ckpt.format == "hf":  # the processor never needs the folder's remote MoE modeling code
        return AutoProcessor.from_pretrained(str(path), trust_remote_code=False)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        copy_files(ckpt.tokenizer_files, folder)
        if ckpt.image_processor is not None:
            write_json(folder / "preprocessor_config.json", ckpt.image_processor)
        write_json(folder / "processor_config.json", processor_config(ckpt))
        (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))
        return AutoProcessor.from_pretrained(tmp)
